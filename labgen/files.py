"""Writing a file whole: to a temporary name beside it, renamed over it, so that a reader (a
browser, `labgen report`, a status command) sees the old file or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` atomically; an OSError leaves no temporary file behind. The
    temporary is opened without following a link someone put in its place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def read_limited(path: Path, label: str, limit: int, what: str, env: str | None = None) -> bytes:
    """A file someone handed over, read only up to `limit` bytes: a larger one is refused before
    more of it is read. Any failure is one InputError line naming the file."""
    from .errors import InputError, escape

    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{label}: cannot read it ({escape(exc.strerror or exc, 80)})") from None
    if len(raw) > limit:
        raise_it = f"; raise it with {env}=N if the file is meant to be this big" if env else ""
        raise InputError(f"{label}: larger than {limit} bytes, the limit for {what}{raise_it}")
    return raw
