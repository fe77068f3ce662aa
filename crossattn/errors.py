"""The one exception type for bad input: what the user asked for was wrong, and the message says what is allowed.

Front ends (CLI, demo) show an `InputError` as one line; anything else is a bug and is reported as one.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a prompt, size, seed, word, statement, filter, model name or file the user gave."""

    def __str__(self) -> str:  # subclasses that are also KeyErrors would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownWordError(InputError, KeyError):
    """A requested word is not in the prompt; the message lists the prompt's words."""


def one_line(exc: BaseException) -> str:
    """An exception's message as one line: what the CLI and the demo show."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
