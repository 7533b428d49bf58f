"""A verdict never depends on timing: whatever order the services' log lines reach the reader in,
once `settled()` says nothing more can happen, the classification is the final one.

The event logs are real runs of examples/strict-eop-reject.yaml (EOP rejects with 550 5.7.64, the
gateway bounces, its NDR lands in alice's mailbox), recorded on the local engine (built-in
gateway) and on Docker (Postfix's own log). Each service's events stay in their own order (a log
file is append-only); the services are interleaved in every order of whole services and in many
seeded random orders, and every prefix is classified.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from labgen.engines import postfix
from labgen.model.plan import Plan
from labgen.results.contracts import AnyEvent, parse_event
from labgen.results.verdict import classify, settled

DATA = Path(__file__).parent / "data"
RECORDED = ["strict-eop-local", "strict-eop-docker"]
RANDOM_ORDERS = 300


def streams(run: str) -> tuple[Plan, list[list[AnyEvent]]]:
    """The run's plan and one event stream per log file, each in its file's order."""
    lab = DATA / run
    plan = Plan.load(lab / "plan.json")
    out = []
    for path in sorted((lab / "run").glob("*.jsonl")):
        out.append([parse_event(line) for line in path.read_text().splitlines() if line.strip()])
    log = lab / postfix.LOG_FILE
    if log.is_file():  # parse_log reads line by line: a prefix of lines gives a prefix of events
        out.append(list(postfix.parse_log(log.read_text().splitlines(), plan)))
    return plan, [s for s in out if s]


def view(plan: Plan, events: list[AnyEvent]) -> list[dict]:
    return [r.as_dict() for r in classify(plan, events)]


def check_order(plan: Plan, order: list[int], data: list[list[AnyEvent]], final: list[dict]) -> int:
    """Feed the events in `order` (indices of streams); return how many prefixes were settled."""
    pos = [0] * len(data)
    seen: list[AnyEvent] = []
    settled_prefixes = 0
    for i in order:
        seen.append(data[i][pos[i]])
        pos[i] += 1
        results = classify(plan, seen)
        if settled(results):
            settled_prefixes += 1
            assert [r.as_dict() for r in results] == final, f"settled early after {len(seen)} events"
    return settled_prefixes


@pytest.fixture(params=RECORDED)
def recorded(request):
    plan, data = streams(request.param)
    final = view(plan, [e for s in data for e in s])
    return plan, data, final


def test_the_recorded_run_is_settled_with_the_ndr_named(recorded):
    plan, data, final = recorded
    assert settled(classify(plan, [e for s in data for e in s]))
    fab = next(m for m in final if m["id"] == "to-fabrikam")
    assert fab["outcome"] == "rejected" and fab["ndr"]["mailbox"] == "alice@contoso.example"
    assert fab["ndr_lost"] is None
    assert any(h["service"] == "gateway" and h["event"] == "bounced" for h in fab["hops"])
    assert [m["outcome"] for m in final] == ["rejected", "delivered", "delivered", "delivered"]


def test_every_order_of_whole_services(recorded):
    plan, data, final = recorded
    for perm in itertools.permutations(range(len(data))):
        order = [i for i in perm for _ in data[i]]
        assert check_order(plan, order, data, final) >= 1  # the last prefix is the whole run


def test_seeded_random_interleavings(recorded):
    plan, data, final = recorded
    rng = random.Random(20261127)
    for _ in range(RANDOM_ORDERS):
        order = [i for i, s in enumerate(data) for _ in s]
        rng.shuffle(order)  # a shuffled multiset of stream indices: each stream stays in order
        assert check_order(plan, order, data, final) >= 1


def test_the_bounce_alone_is_not_settled(recorded):
    """The race that gave `ndr: null`: EOP's rejection is logged, the gateway's bounce is not."""
    plan, data, _ = recorded
    events = [
        e
        for s in data
        for e in s
        if not (e.service == "gateway" and (e.event in ("bounced", "ndr_queued") or getattr(e, "msgid", 0) is None))
    ]
    events = [e for e in events if e.event != "ndr"]
    assert not settled(classify(plan, events))


# ---------------------------------------------------------------- the NDR's own fate


def _strict_run(data: list[list[AnyEvent]]) -> list[AnyEvent]:
    return [e for s in data for e in s]


def _ndr_qid(events: list[AnyEvent]) -> str:
    return next(e.queue_id for e in events if e.event == "ndr_queued")


def _drop_ndr_delivery(events: list[AnyEvent]) -> list[AnyEvent]:
    """As if the NDR never reached a mailbox: no EOP record of it, no gateway status for it."""
    qid = _ndr_qid(events)
    return [
        e
        for e in events
        if e.event != "ndr"
        and not (e.service == "gateway" and getattr(e, "queue_id", None) == qid and e.event != "ndr_queued")
    ]


def _ndr_status(events: list[AnyEvent], event: str, reply: str) -> list[AnyEvent]:
    qid = _ndr_qid(events)
    q = next(e for e in events if e.event == "ndr_queued")
    return events + [
        parse_event(
            {
                "ts": q.ts + 1,
                "service": "gateway",
                "event": event,
                "msgid": None,
                "queue_id": qid,
                "rcpt": "alice@contoso.example",
                "connector": "Office 365",
                "relay": "contoso.mail.protection.outlook.test[198.19.201.25]:25",
                "reply": reply,
            }
        )
    ]


NDR_FATES = [
    # id, what becomes of the NDR, settled, words in ndr_lost
    (
        "bounced-by-the-next-hop",
        lambda ev: _ndr_status(_drop_ndr_delivery(ev), "bounced", "550 5.7.1 Relay access denied"),
        True,
        "bounced the non-delivery report",
    ),
    (
        "deferred",
        lambda ev: _ndr_status(_drop_ndr_delivery(ev), "deferred", "451 4.7.0 try later"),
        False,
        "deferred the non-delivery report",
    ),
    (
        "handed-on-but-in-no-mailbox",
        lambda ev: _ndr_status(_drop_ndr_delivery(ev), "sent", "250 2.6.0 Queued mail for delivery"),
        False,
        "no mailbox has it",
    ),
    ("still-queued", _drop_ndr_delivery, False, "still queued"),
    (
        "never-queued",
        lambda ev: [e for e in _drop_ndr_delivery(ev) if e.event != "ndr_queued"],
        False,
        "logged no non-delivery report",
    ),
]


@pytest.mark.parametrize("fate, is_settled, words", [c[1:] for c in NDR_FATES], ids=[c[0] for c in NDR_FATES])
def test_the_ndr_fate_is_known_before_settling(recorded, fate, is_settled, words):
    plan, data, _ = recorded
    results = classify(plan, fate(_strict_run(data)))
    fab = next(r for r in results if r.msgid == "to-fabrikam")
    assert fab.outcome == "rejected" and fab.ndr is None and fab.ndr_lost is not None
    assert words in fab.ndr_lost and fab.ndr_lost in fab.why
    assert settled(results) is is_settled
