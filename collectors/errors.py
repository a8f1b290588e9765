"""The one exception type for mistakes in what a user gave us.

An :class:`InputError` names the file, the line and the field, and says what was
expected, so the CLI can print it as one line and exit 2 without a traceback.
Faults in the world (a driver error, an API that is down) are not input errors.
"""

from __future__ import annotations

import reprlib
import sys


class InputError(Exception):
    """A user's input is wrong in a way they can fix.

    ``str(err)`` reads ``FILE:LINE: field 'x': expected ..., got ...``; every part but
    the message is optional.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        what = f"field '{self.field}': " if self.field else ""
        return where + what + self.message

    def at(self, file: str | None = None, line: int | None = None) -> "InputError":
        """A copy of this error placed in ``file``/``line`` where it had none."""
        return InputError(
            self.message,
            file=self.file or file,
            line=self.line if self.line is not None else line,
            field=self.field,
        )


class Unavailable(Exception):
    """Something a command needs is missing on this machine (no NVIDIA driver, no GPU,
    no permission): not a mistake in the user's input, and nothing a retry fixes now.
    The CLI prints it as one line and exits 1."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 4, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 64, 40, 64


def describe(value: object) -> str:
    """A short rendering of a bad value for an error message (bounded work, whatever its
    size: a value from a hostile file may be huge, deep or shared many times over)."""
    try:
        text = repr(value[:61]) if isinstance(value, str) else _SHORT.repr(value)
    except ValueError:  # an integer too long to print
        text = f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= 60 else text[:57] + "..."
