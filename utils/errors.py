"""Errors that mean "the user's input is wrong", as opposed to a bug."""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "CheckpointError", "DataError", "RunError", "EXIT_USER_ERROR", "EXIT_RUN_ERROR",
           "first_line", "one_line"]

#: Exit code of every script for a user mistake (argparse uses the same).
EXIT_USER_ERROR = 2
#: Exit code of a run that had to stop for a reason other than the user's input (a diverged training).
EXIT_RUN_ERROR = 1


class UserError(Exception):
    """A mistake in the user's input. Scripts print the message on one line and exit with code 2."""


class ConfigError(UserError):
    """A config file or command-line value is unknown, of the wrong type or out of range."""


class CheckpointError(UserError):
    """A weights file is missing, unreadable or of another model."""


class DataError(UserError):
    """An input folder or data file is missing, empty or malformed."""


class RunError(Exception):
    """The run cannot go on although the input was valid (the loss became NaN, say). Scripts print the message on
    one line and exit with code 1."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes (``\\n``), so that a message
    naming a file whose name holds a newline stays on one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
