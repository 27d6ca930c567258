"""What every script does around its work: logging setup and turning user errors into exit code 2."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, List, Optional

from utils.errors import EXIT_RUN_ERROR, EXIT_USER_ERROR, RunError, UserError, one_line

__all__ = ["setup_logging", "run_cli"]


def setup_logging(verbose: bool = True) -> None:
    """Plain ``LEVEL message`` logging on stderr; INFO when verbose, WARNING otherwise. Under ``torchrun`` only the
    first process logs INFO; the others log warnings and errors (with their rank)."""
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.INFO if verbose and rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=level, format=f"%(levelname)s {prefix}%(message)s", stream=sys.stderr, force=True)


def run_cli(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]], prog: str) -> int:
    """Call ``main(argv)``; a :class:`UserError` becomes ``"<prog>: error: <message>"`` and exit code 2, a
    :class:`RunError` the same line and exit code 1."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunError as exc:
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_RUN_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
