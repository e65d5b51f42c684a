"""`ntkft ...`: parse, call the API, print a summary, map errors to one line and an exit code.

One module per command group registers its commands on the shared `app`."""

from __future__ import annotations

import logging
import sys

from ..errors import NtkftError
from ._common import app, flag_message

log = logging.getLogger("ntkft")


def _register() -> None:
    from . import finetune, kernel, misc, spectrum  # noqa: F401  (each module adds its commands to `app`)

    for optional in ("taskvec", "theory", "reproduce", "distributed"):
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
        app(standalone_mode=True)
    except NtkftError as e:
        print(f"ntkft: error: {flag_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("ntkft: interrupted (finished work is kept; rerun the same command to resume)", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
