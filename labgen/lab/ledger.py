"""The ledger: every service appends JSON-lines events to its own file in the run directory;
the collector reads them all back. Events carry the traffic's message id (`msgid`) and, where
it concerns one recipient, `rcpt`, which is what joins them."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, cast

from ..errors import InfraError, escape
from ..results.contracts import AnyEvent, Service, dump_event
from ..textsafe import MESSAGE_ID

MSGID_HEADER = "X-Labgen-Id"


_OPEN: weakref.WeakSet[Ledger] = weakref.WeakSet()

# Lab faults: a ledger that cannot be written (disk full, quota, I/O error, read-only file system)
# leaves the run without its ground truth. Raising into the service would only become 451 replies
# and event-loop tracebacks while the run waited out its deadline, so the first failure per run
# directory is kept here as one line naming the file, for whoever drives the lab to act on: the
# runner polls it (local engine, same process), a lab container's entry point stops on it.
_FAULTS: dict[Path, str] = {}
_FAULT_LOCK = threading.Lock()
_FAULT_LISTENERS: list[Callable[[Path, str], object]] = []


def cannot_write(what: str, path: Path, e: OSError) -> str:
    """The one line for a write that failed: which file, why, what to do."""
    return f"cannot write {what} {path}: {e.strerror or e}; free space there or choose another --workdir"


def note_fault(run_dir: Path, message: str) -> None:
    """Record a lab fault; the first one per run directory stands (later ones are its echoes)."""
    run_dir = Path(run_dir)
    with _FAULT_LOCK:
        if run_dir in _FAULTS:
            return
        _FAULTS[run_dir] = message
        listeners = list(_FAULT_LISTENERS)
    for listener in listeners:
        listener(run_dir, message)


def lab_fault(run_dir: Path) -> str | None:
    with _FAULT_LOCK:
        return _FAULTS.get(Path(run_dir))


def clear_fault(run_dir: Path) -> None:
    """A new run in run_dir starts without its predecessor's fault."""
    with _FAULT_LOCK:
        _FAULTS.pop(Path(run_dir), None)


def on_fault(listener: Callable[[Path, str], object]) -> None:
    """Call listener(run_dir, message) on every new fault, from the thread that hit it (what it
    returns is ignored)."""
    with _FAULT_LOCK:
        _FAULT_LISTENERS.append(listener)


E = TypeVar("E", bound=AnyEvent)


class Ledger:
    def __init__(self, run_dir: Path, service: str):
        self.service = service
        self.path = Path(run_dir) / f"{service}.jsonl"
        self._lock = threading.Lock()  # the built-in gateway writes from worker threads
        self._failed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open in append mode; each event is flushed at once so the collector sees it.
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as e:
            raise InfraError(cannot_write("the lab's ledger", self.path, e)) from None
        _OPEN.add(self)

    def emit(self, event: E) -> E:
        """Append one typed event (results/contracts.py), stamped with the time and this ledger's
        service. A write error never reaches the service: it becomes the lab's fault (note_fault)
        and this ledger writes nothing more, as its file now has a hole."""
        event.ts = round(time.time(), 6)
        event.service = cast(Service, self.service)
        line = dump_event(event) + "\n"
        with self._lock:
            if self._file.closed or self._failed:  # after close: the run's verdict is already taken
                return event
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as e:
                self._failed = True
                note_fault(self.path.parent, cannot_write("the lab's ledger", self.path, e))
        return event

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()  # the file is closed even when flushing what is left fails
            except OSError as e:
                if not self._failed:
                    self._failed = True
                    note_fault(self.path.parent, cannot_write("the lab's ledger", self.path, e))


def close_ledgers(run_dir: Path) -> None:
    """Close every ledger of this process writing into run_dir (the local engine's services)."""
    for ledger in list(_OPEN):
        if ledger.path.parent == Path(run_dir):
            ledger.close()


P = ParamSpec("P")
R = TypeVar("R")


def _faults_noted(write: Callable[Concatenate[Path, P], R]) -> Callable[Concatenate[Path, P], R]:
    """For writers into <run dir>/mailboxes: an OSError (disk full...) is also the lab's fault,
    so that the runner stops at once instead of waiting for mail that can no longer arrive."""

    @functools.wraps(write)
    def wrapper(root: Path, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return write(root, *args, **kwargs)
        except OSError as e:
            note_fault(Path(root).parent, cannot_write("a mailbox file in", Path(root), e))
            raise

    return wrapper


def read_events(run_dir: Path) -> Iterator[dict]:
    """Every complete event of run/*.jsonl as raw dicts (for quick looks such as readiness; the
    verdict reads typed events through results.collect)."""
    for path in sorted(Path(run_dir).glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line being written right now


# Client text in ledger fields (HELO names, addresses, reasons quoting them) is bounded: a field is
# at most this many characters, a longer one is cut with an ellipsis.
FIELD_MAX = 512
# Mailbox directory names: an address's characters outside this set are percent-encoded.
_MAILBOX_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._+-")
_MAILBOX_NAME_MAX = 200  # well under NAME_MAX (255 bytes), room for the hash suffix


def clip(value: object, limit: int = FIELD_MAX) -> str:
    """Client text made fit for a ledger field and whatever later prints it: non-printable
    characters (controls, ESC, lone surrogates from undecodable bytes) escaped as Python does,
    at most `limit` characters."""
    return escape(value, limit)


def safe_id(value: str | None) -> str | None:
    """`value` if it is a traffic id, else None: anything else is no id at all."""
    return value if value is not None and MESSAGE_ID.fullmatch(value) else None


def header(message: bytes, name: str) -> str | None:
    """A header of a message's top-level header block only (a bounce carrying the original as an
    attachment is a different message). Raw client text: callers validate or clip it. Only the
    first MiB is searched, so that a 150 MB message without a blank line is not copied whole to
    find one header (Postfix's header_size_limit is 100 kB per header)."""
    head = message[: 1 << 20].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    head = head.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ")  # unfold
    prefix = (name + ":").lower().encode()
    for line in head.split(b"\n"):
        if line[: len(prefix)].lower() == prefix:
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def labgen_id(message: bytes) -> str | None:
    """The traffic's message id, which joins every service's events; None unless the header holds
    a well-formed id (a client chooses it, and it names files)."""
    return safe_id(header(message, MSGID_HEADER))


_SEQ = itertools.count(1)


def _utf8(text: str) -> bytes:
    """Client text as the bytes it came as (undecodable bytes are lone surrogates after decoding
    with surrogateescape; any other lone surrogate is kept by surrogatepass)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def mailbox_dir(address: str) -> str:
    """The directory name of a mailbox: the address with its domain lower-cased and every
    character outside [a-z0-9._+-] (and a leading '.') percent-encoded as UTF-8, '@' kept between
    local part and domain. Reversible, one path segment, never '.' or '..'. A name longer than
    _MAILBOX_NAME_MAX is cut and given a hash of the whole address so that it stays unique."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""

    def enc(part: str) -> str:
        out = "".join(c if c in _MAILBOX_SAFE else "".join(f"%{b:02X}" for b in _utf8(c)) for c in part)
        return "%2E" + out[1:] if out.startswith(".") else out

    name = enc(local) + (at and "@" + enc(domain.lower()))
    if not name:
        raise ValueError("no mailbox for an empty address")  # its name would be the root itself
    if len(name) > _MAILBOX_NAME_MAX:
        digest = hashlib.sha256(_utf8(address)).hexdigest()[:16]
        name = f"{name[: _MAILBOX_NAME_MAX - 18]}~{digest}"
    return name


@_faults_noted
def write_mailbox(root: Path, address: str, msgid: str | None, data: bytes) -> Path:
    """One .eml per delivery under mailboxes/<mailbox_dir(address)>/, numbered in arrival order.
    The address may be a client's: mailbox_dir makes it one safe segment, the final directory
    must lie directly inside root, and neither it nor the file may be a symlink (O_NOFOLLOW)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = mailbox_dir(address)
    if (root / name).resolve().parent != root.resolve():  # '..', '/' or a symlink elsewhere
        raise ValueError("mailbox outside the mailbox root")  # defence in depth: mailbox_dir allows none
    box = root / name
    try:
        box.mkdir()
    except FileExistsError:
        pass  # an existing symlink or file is refused by the O_NOFOLLOW | O_DIRECTORY open below
    dir_fd = os.open(box, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        while True:  # O_EXCL: never overwrite, e.g. another process's file with the same number
            file = f"{next(_SEQ):06d}-{safe_id(msgid) or 'unknown'}.eml"
            try:
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return box / file
