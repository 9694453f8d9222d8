"""The ``dask-em`` command.

Subcommands: ``demo``, ``fit``, ``resume``, ``predict``, ``score``,
``info``, ``select`` and ``report``; ``dask-em COMMAND --help`` shows an
example of each.

Exit codes: 0 on success, 2 for bad usage or bad input (unknown option,
missing file, data the model cannot take), 1 for any other failure, 130
when interrupted. Errors are one line on standard error; ``--debug`` shows
the traceback.

The parts: :mod:`.parser` (the arguments), :mod:`.commands` (what each
subcommand does, imported once the arguments are parsed), :mod:`.models`
(model names, derived from the estimators), :mod:`.common` (errors, output,
checks). Heavy modules (numpy, dask, distributed, the estimators) are
imported inside the subcommands so that ``--help`` answers at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .common import PROG, NotAvailableError, UsageError
from .parser import build_parser

__all__ = ["NotAvailableError", "UsageError", "build_parser", "main"]


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _exit_code(exc: BaseException) -> int:
    code = getattr(exc, "exit_code", None)
    if code is not None:
        return int(code)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2
    try:
        from ..errors import CheckpointError, InvalidDataError
    except Exception:  # pragma: no cover
        return 1
    return 2 if isinstance(exc, (InvalidDataError, CheckpointError)) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dask-em`` with ``argv`` (default: the process arguments); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import logging
    import warnings

    logger = logging.getLogger("distributed")
    saved = (warnings.showwarning, logger.level)
    if not args.debug:
        warnings.showwarning = _show_warning
        # Shutdown chatter of a LocalCluster is not the user's business.
        logger.setLevel(logging.ERROR)
    try:
        from . import commands

        return int(getattr(commands, f"cmd_{args.command}")(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return _exit_code(exc)
    finally:
        warnings.showwarning = saved[0]
        logger.setLevel(saved[1])
