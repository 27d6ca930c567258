"""What every script does around its work: its command line (one table of named flags, each setting one config key
or a few to one value, plus ``-c`` and ``--set`` with an example of the script's own keys), logging, and turning user
errors into exit code 2."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, Type, TypeVar

from utils.config import load_config
from utils.errors import EXIT_RUN_ERROR, EXIT_USER_ERROR, RunError, UserError, first_line, one_line

__all__ = ["Flag", "OneLineParser", "build_parser", "load_script_config", "setup_logging", "end_startup", "run_cli"]

T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """A named flag that sets one config key."""

    names: Tuple[str, ...]             # ("--images",) or ("-q", "--quiet")
    key: str                           # the dotted config key it sets (dataset.loc)
    help: str                          # what it is; the key is added to the help text
    also: Tuple[str, ...] = ()         # more keys set to the same value (one --workers for both training loaders)
    type: Callable[[str], Any] = str
    const: Any = None                  # a switch: given, it sets key to this value
    choices: Optional[Callable[[], Sequence[str]]] = None  # called for the allowed values (variant_names)
    nargs: Optional[str] = None        # + for a list
    append: bool = False               # repeatable; the values form a list
    convert: Optional[Callable[[Any], Any]] = None  # parsed value -> config value (LABEL=FILE -> a mapping)
    metavar: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.names[-1].lstrip("-").replace("-", "_")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line, as every other user error (no usage block before it)."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def build_parser(prog: str, doc: str, flags: Sequence[Flag], set_example: str,
                 config_help: str = "YAML config") -> argparse.ArgumentParser:
    """The script's parser: ``-c/--config``, the named ``flags`` and ``--set KEY=VALUE`` (any key of the schema;
    ``set_example`` is one of the script's own, shown in the help: ``optimizer.group_1.lr=1e-4``)."""
    parser = OneLineParser(prog=prog, description=doc.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help=config_help)
    for flag in flags:
        text = f"{flag.help} ({', '.join((flag.key, *flag.also))})"
        if flag.const is not None:
            parser.add_argument(*flag.names, dest=flag.dest, action="store_const", const=flag.const, help=text)
            continue
        kwargs: Dict[str, Any] = {"dest": flag.dest, "type": flag.type, "help": text, "metavar": flag.metavar}
        if flag.choices is not None:
            kwargs["choices"] = list(flag.choices())
        if flag.nargs:
            kwargs["nargs"] = flag.nargs
        if flag.append:
            kwargs["action"] = "append"
        parser.add_argument(*flag.names, **kwargs)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"set any config key (repeatable; applied last), e.g. --set {set_example}; the value "
                        "is read as YAML and checked against the schema")
    return parser


def load_script_config(cls: Type[T], args: argparse.Namespace, flags: Sequence[Flag]) -> T:
    """The config of a parsed command line: ``-c`` file, then the named flags given, then ``--set`` items."""
    overrides: Dict[str, Any] = {}
    names: Dict[str, str] = {}
    for flag in flags:
        value = getattr(args, flag.dest)
        if value is not None:
            for name in (flag.key, *flag.also):
                overrides[name] = flag.convert(value) if flag.convert is not None else value
                names[name] = flag.names[-1]
    return load_config(cls, args.config, overrides, sets=args.set, flags=names)


def _log_warning(message: Warning, category: Type[Warning], filename: str, lineno: int, file: Any = None,
                 line: Optional[str] = None) -> None:
    """``warnings.showwarning`` of the scripts: a library's warning (matplotlib's, torch's, NumPy's) is one line of
    the ``py.warnings`` logger, which :func:`setup_logging` silences under ``-q``."""
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, one_line(first_line(message)))


def setup_logging(verbose: bool = True) -> None:
    """Plain ``LEVEL message`` logging on stderr; INFO when verbose, WARNING otherwise. Under ``torchrun`` only the
    first process logs INFO; the others log warnings and errors (with their rank).

    Warnings of libraries (Python's ``warnings``) become one log line each when verbose and are not shown otherwise:
    ``-q`` prints only the summary and the project's own warnings. Installed on every call (not with
    ``logging.captureWarnings``, which installs itself once per process), so each script run in one process gets it.

    Every script calls it once its config is loaded, as its work begins: it ends the start-up (:func:`end_startup`).
    """
    end_startup()
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.INFO if verbose and rank == 0 else logging.WARNING
    prefix = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=level, format=f"%(levelname)s {prefix}%(message)s", stream=sys.stderr, force=True)
    warnings.showwarning = _log_warning
    logging.getLogger("py.warnings").setLevel(logging.NOTSET if verbose else logging.ERROR)


#: Whether :func:`run_cli` holds the cyclic garbage collector paused for a script's start-up.
_startup_paused = False


def end_startup() -> None:
    """End the start-up pause of :func:`run_cli`, if one is on: what start-up made (modules, classes, the parsed
    config: objects that live as long as the process) is frozen out of the cyclic garbage collector's reach, and
    the collector resumes. Later collections then walk only what the work makes."""
    global _startup_paused
    if _startup_paused:
        _startup_paused = False
        gc.freeze()
        gc.enable()


def run_cli(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]], prog: str) -> int:
    """Call ``main(argv)``; a :class:`UserError` becomes ``"<prog>: error: <message>"`` and exit code 2, a
    :class:`RunError` the same line and exit code 1.

    For the process's own command line (``argv`` None: a script run as ``python SCRIPT``) the cyclic garbage
    collector is paused from here until the work begins (:func:`setup_logging`, or the end of ``main``). Start-up
    imports torch and more, hundreds of thousands of objects that never become garbage, and each full collection
    while they are made walks all of them: a few tenths of a second of a small job. Imports a script makes before
    :func:`setup_logging` are made in the pause. Not done when ``main`` runs in another program's process.
    """
    global _startup_paused
    if argv is None and gc.isenabled():
        gc.disable()
        _startup_paused = True
    try:
        return main(argv)
    except (UserError, RunError) as exc:
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(exc, UserError) else EXIT_RUN_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse's own errors (exit 2) and --help (exit 0), when main runs in-process
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        end_startup()
