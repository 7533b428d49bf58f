"""The ledger: every service appends JSON-lines events to its own file in the run directory;
the collector reads them all back. Events carry the traffic's message id (`msgid`) and, where
it concerns one recipient, `rcpt`, which is what joins them."""

from __future__ import annotations

import itertools
import json
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator

MSGID_HEADER = "X-Labgen-Id"


_OPEN: "weakref.WeakSet[Ledger]" = weakref.WeakSet()


class Ledger:
    def __init__(self, run_dir: Path, service: str):
        self.service = service
        self.path = Path(run_dir) / f"{service}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the built-in gateway writes from worker threads
        # Kept open in append mode; each event is flushed at once so the collector sees it.
        self._file = self.path.open("a", encoding="utf-8")
        _OPEN.add(self)

    def emit(self, event: str, **fields) -> dict:
        record = {"ts": round(time.time(), 6), "service": self.service, "event": event, **fields}
        line = json.dumps(record, default=str) + "\n"
        with self._lock:
            if not self._file.closed:  # after close: the run's verdict is already taken
                self._file.write(line)
                self._file.flush()
        return record

    def close(self) -> None:
        with self._lock:
            self._file.close()


def close_ledgers(run_dir: Path) -> None:
    """Close every ledger of this process writing into run_dir (the local engine's services)."""
    for ledger in list(_OPEN):
        if ledger.path.parent == Path(run_dir):
            ledger.close()


def read_events(run_dir: Path) -> Iterator[dict]:
    for path in sorted(Path(run_dir).glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line being written right now


def header(message: bytes, name: str) -> str | None:
    """A header of a message's top-level header block only (a bounce carrying the original as an
    attachment is a different message)."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    head = head.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ")  # unfold
    prefix = (name + ":").lower().encode()
    for line in head.split(b"\n"):
        if line[:len(prefix)].lower() == prefix:
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def labgen_id(message: bytes) -> str | None:
    """The traffic's message id, which joins every service's events."""
    return header(message, MSGID_HEADER)


_SEQ = itertools.count(1)


def write_mailbox(root: Path, address: str, msgid: str | None, data: bytes) -> Path:
    """One .eml per delivery under mailboxes/<address>/, numbered in arrival order."""
    box = root / address
    box.mkdir(parents=True, exist_ok=True)
    path = box / f"{next(_SEQ):06d}-{msgid or 'unknown'}.eml"
    path.write_bytes(data)
    return path
