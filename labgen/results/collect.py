"""Collect: every event of a run, from the services' JSON-lines ledgers and from Postfix's own log
(turned into the same gateway events), as typed events (results/contracts.py) for the verdict.
The same code runs on the host and in the traffic container.

`Collector` is incremental: each `poll` reads only what was appended to each file since the last
one, whole lines only (a line being written is left for the next poll), and keeps Postfix's
parse state between polls. A run's cost to collect is then linear in its events, however often
the settle loop polls."""

from __future__ import annotations

from pathlib import Path

import pydantic

from ..engines import postfix
from ..errors import InfraError, escape
from ..model.plan import Plan
from .contracts import AnyEvent, parse_event


class _Tail:
    """The unread rest of one append-only file: whole lines from where the last read stopped."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.line = 0  # whole lines read so far, for error messages

    def read_lines(self) -> list[bytes]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise InfraError(f"cannot read the lab's log {self.path}: {e.strerror or e}") from None
        end = data.rfind(b"\n") + 1  # a line without its newline is still being written
        self.offset += end
        lines = data[:end].splitlines()
        self.line += len(lines)
        return lines


class Collector:
    """Typed events of one lab directory's run/, new ones on each poll."""

    def __init__(self, labdir: Path, plan: Plan | None = None):
        self.labdir = Path(labdir)
        self.run_dir = self.labdir / "run"
        self._plan = plan
        self._tails: dict[Path, _Tail] = {}
        self._postfix: postfix.LogReader | None = None

    def poll(self) -> list[AnyEvent]:
        """Events appended since the last poll: each ledger file's in its order (files by name),
        then the Postfix log's."""
        events: list[AnyEvent] = []
        for path in sorted(self.run_dir.glob("*.jsonl")):
            tail = self._tails.setdefault(path, _Tail(path))
            first = tail.line
            for n, line in enumerate(tail.read_lines(), first + 1):
                if not line.strip():
                    continue
                try:
                    events.append(parse_event(line))
                except pydantic.ValidationError as e:
                    # Written by labgen's own services: a line that is no event is a labgen bug or
                    # a damaged run directory, never something to skip in silence.
                    raise InfraError(
                        f"{path} line {n} is not a labgen ledger event "
                        f"({escape(e.errors()[0]['msg'], 120)}); rerun the lab"
                    ) from None
        log = self.labdir / postfix.LOG_FILE
        if log.is_file():
            if self._postfix is None:
                self._plan = self._plan or Plan.load(self.labdir / "plan.json")
                self._postfix = postfix.LogReader(self._plan)
                self._tails[log] = _Tail(log)
            lines = self._tails[log].read_lines()
            events += self._postfix.feed(line.decode("utf-8", "replace") for line in lines)
        return events


def collect_events(labdir: Path, plan: Plan | None = None) -> list[AnyEvent]:
    """Every event of the run so far."""
    return Collector(labdir, plan).poll()
