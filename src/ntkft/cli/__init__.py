"""`ntkft ...`: parse, call the API, print a summary, map errors to one line and an exit code.

One module per command group registers its commands on the shared `app`."""

from __future__ import annotations

import logging
import os
import sys

from ..errors import NtkftError
from ._common import app, flag_message

log = logging.getLogger("ntkft")


def _register() -> None:
    from . import finetune, kernel, misc, spectrum  # noqa: F401  (each module adds its commands to `app`)

    for optional in ("taskvec", "theory", "reproduce", "select", "efficiency"):
        try:
            __import__(f"{__name__}.{optional}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{optional}":
                raise


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
        print(f"ntkft: error: {flag_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ntkft: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)
    finally:
        from .._runs import release_all

        release_all()  # run-folder locks of a failed command (a finished one has released its own)


__all__ = ["app", "main"]
