"""Errors that end a command with a one-line message and a documented exit code (DESIGN.md §3)."""

from __future__ import annotations


class LabgenError(Exception):
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(LabgenError):
    """Bad input or usage: name the file, the YAML path, and what to do."""

    exit_code = 2


class InfraError(LabgenError):
    """The lab itself could not run: name the resource in the way."""

    exit_code = 3


# ---------------------------------------------------------------- quoting untrusted text
# Scenario files and lab clients are untrusted: anything they say that reaches a message goes
# through these, so no value can add a line, a terminal escape or megabytes to an error.

QUOTE_LIMIT = 60  # characters of one quoted value
LINE_LIMIT = 300  # characters of a whole error line


def escape(text: object, limit: int | None = None) -> str:
    """`text` with every non-printable character (newline, NUL, ESC, bidi controls, ...) written
    as \\xNN, \\uNNNN or \\UNNNNNNNN; cut to at most `limit` characters, ending in '…' when cut."""
    s = str(text)
    out: list[str] = []
    used = 0
    for i, ch in enumerate(s):
        piece = (
            ch
            if ch.isprintable()
            else (
                f"\\x{ord(ch):02x}"
                if ord(ch) < 0x100
                else f"\\u{ord(ch):04x}"
                if ord(ch) < 0x10000
                else f"\\U{ord(ch):08x}"
            )
        )
        # Stop early on huge input; keep one character for the ellipsis unless this is the end.
        if limit is not None and used + len(piece) > limit - (0 if i == len(s) - 1 else 1):
            out.append("…")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """One input value as an error message shows it: in quotes, escaped and shortened."""
    return f"'{escape(value, limit)}'"


def one_line(message: str, limit: int = LINE_LIMIT) -> str:
    """The last guard before a terminal: one escaped line of at most `limit` characters."""
    return escape(message, limit)
