"""Collect: every event of a run, from the services' JSON-lines ledgers and from Postfix's own log
(turned into the same gateway events), for the verdict. The same code runs on the host and in
the traffic container."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..engines import postfix
from ..lab.ledger import read_events
from ..model.plan import Plan


def collect_events(labdir: Path, plan: Optional[Plan] = None) -> list[dict]:
    events = list(read_events(labdir / "run"))
    log = labdir / postfix.LOG_FILE
    if log.is_file():
        plan = plan or Plan.load(labdir / "plan.json")
        with log.open(encoding="utf-8", errors="replace") as f:
            events += postfix.parse_log(f, plan)
    return events
