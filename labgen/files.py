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
