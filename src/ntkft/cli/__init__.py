"""`ntkft ...`: parse, call the API, print a summary, map errors to one line and an exit code.

One module per command group registers its commands on the shared `app`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ..errors import NtkftError
from ._common import app, flag_message

log = logging.getLogger("ntkft")


def _register() -> None:
    from . import finetune, kernel, misc, spectrum  # noqa: F401  (each module adds its commands to `app`)

    for optional in ("taskvec", "theory", "reproduce", "distributed", "efficiency"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{optional}":
                raise


def _as_typed(msg: str) -> str:
    """A message that opens with a flag names it as the user typed it (`--samples`, not its alias `--n`)."""
    flag = msg.split(":", 1)[0]
    args = sys.argv[1:]
    if not flag.startswith("--") or " " in flag or any(a.split("=")[0] == flag for a in args):
        return msg
    try:
        import typer.main

        group: Any = typer.main.get_command(app)
        cmd = group.commands.get(next((a for a in args if not a.startswith("-")), ""))
        opts = next((list(p.opts) for p in cmd.params if flag in getattr(p, "opts", ())), []) if cmd else []
    except Exception:  # noqa: BLE001  (only a nicer message is at stake)
        return msg
    typed = next((o for o in opts for a in args if a.split("=")[0] == o), None)
    return typed + msg[len(flag):] if typed else msg


def main() -> None:
    """Entry point: NtkftError -> one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "httpx", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    _register()
    try:
        if os.environ.get("NTKFT_GEMM"):  # checked before any command writes its run folder (imports torch: only then)
            from ..kernel import gemm

            gemm.check_env()
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except Exception as e:  # click (or typer's vendored click) usage errors: one line, exit 2
        names = {c.__name__ for c in type(e).__mro__}
        if "NoArgsIsHelpError" in names:
            ctx = getattr(e, "ctx", None)
            print(ctx.get_help() if ctx else "see ntkft --help")
            sys.exit(0)
        if "UsageError" in names:
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx else ""
            print(f"ntkft: error: {e.format_message()}{where}".replace("\n", " "), file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(2)
        if "Abort" in names:
            print("ntkft: interrupted", file=sys.stderr)
            sys.exit(130)
        if not isinstance(e, NtkftError):
            raise
        print(f"ntkft: error: {_as_typed(flag_message(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ntkft: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)
    finally:
        from .._runs import release_all

        release_all()  # run-folder locks of a failed command (a finished one has released its own)


__all__ = ["app", "main"]
