"""The verdict: join every service's events per message and recipient, and say what happened.

Outcomes (DESIGN.md §2):
- delivered: a mailbox (EOP tenant or internet sink) holds it.
- rejected: a hop answered 5xx; the sender is (or would be) notified.
- silently_discarded: a hop answered 2xx and then dropped it, no NDR; the dropping service says so.
- deferred: not settled when the deadline passed (4xx, unreachable, still queued).
Anything else is `unaccounted`: the logs contradict each other (a hop says it handed the message
on, the next hop has no record). That is a lab failure, never an outcome.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from ..model.plan import Plan
from ..model.scenario import domain_of
from .contracts import (
    AnyEvent,
    Delivered,
    Discarded,
    DroppedBy,
    EopRelay,
    GatewayStatus,
    Hop,
    MessageResult,
    Ndr,
    NdrFound,
    NdrQueued,
    Outcome,
    RcptDecision,
    Received,
    ResultAttribution,
    Submitted,
    Summary,
    TraceEntry,
    TraceSeen,
    dump,
)
from .contracts import Verdict as VerdictValue  # the outcome values; `Verdict` below is the builder

_RANK = {"traffic": 0, "gateway": 1, "eop": 2, "sink": 3}  # EOP may relay to a sink
# Services that log every recipient they answer: a reply of theirs that another hop logged is
# only final once their own record of it is there too.
_LEDGERED = ("eop", "sink")


@dataclass
class RcptResult:
    msgid: str
    sender: str
    rcpt: str
    outcome: str  # one of scenario.OUTCOMES, or "unaccounted"
    expected: str | None
    expected_reply: str | None = None  # a text one of its hops' replies must contain
    expected_spf: str | None = None  # the SPF result EOP must have recorded delivering it
    hops: list[Hop] = field(default_factory=list)
    attribution: ResultAttribution | None = None
    recipient_trace_visible: bool = False
    trace: list[TraceSeen] = field(default_factory=list)  # every tenant's message trace line for it
    why: str = ""  # one sentence a person can read
    dropped_by: DroppedBy | None = None  # for silently_discarded: the hop, reason and certificate
    recipient_tenant: str | None = None  # None: an internet (non-Microsoft 365) recipient
    ndr: NdrFound | None = None  # the non-delivery report that reached the sender, if any
    ndr_expected: bool = False  # a gateway bounce: the sender is owed an NDR
    ndr_lost: str | None = None  # an owed NDR that reached no mailbox: what became of it
    # Every hop that saw it has logged its own disposition, and so has the NDR it is owed:
    # nothing more can happen to it (settled() waits for this, never for a clock).
    final: bool = False

    @property
    def ok(self) -> bool | None:
        if self.expected is None and self.expected_reply is None and self.expected_spf is None:
            return None
        return (
            (self.expected is None or self.expected == self.outcome)
            and self.reply_seen in (None, True)
            and self.spf_seen in (None, True)
        )

    @property
    def spf_seen(self) -> bool | None:
        """Did EOP record the expected SPF result where it delivered it (None: none is expected)?"""
        if self.expected_spf is None:
            return None
        return any((h.spf or "").split(" ", 1)[0] == self.expected_spf for h in self.hops)

    @property
    def reply_seen(self) -> bool | None:
        """Did a hop answer with the expected reply text (None: none is expected)?"""
        if self.expected_reply is None:
            return None
        want = self.expected_reply.lower()
        return any(want in (h.reply or "").lower() for h in self.hops)

    def as_model(self) -> MessageResult:
        return MessageResult(
            id=self.msgid,
            sender=self.sender,
            to=self.rcpt,
            outcome=cast(VerdictValue, self.outcome),
            expected=cast(Outcome | None, self.expected),
            expected_reply=self.expected_reply,
            expected_spf=self.expected_spf,
            ok=self.ok,
            hops=self.hops,
            attribution=self.attribution,
            recipient_trace_visible=self.recipient_trace_visible,
            trace=self.trace,
            recipient_tenant=self.recipient_tenant,
            ndr=self.ndr,
            ndr_lost=self.ndr_lost,
            why=self.why,
            dropped_by=self.dropped_by,
        )

    def as_dict(self) -> dict[str, Any]:
        """The message's entry in labgen.result/v1, as JSON-ready values."""
        return cast(dict[str, Any], dump(self.as_model()))


def _code(reply: str | None) -> int:
    """The reply's class as a number: '550 5.7.64 ...' -> 550; an MTA's own words that start with
    an enhanced status code ('5.4.4 Host not found') -> 500; anything else -> 0."""
    reply = (reply or "").strip()
    if reply[:3].isdigit():
        return int(reply[:3])
    if re.match(r"^[245]\.\d{1,3}\.\d{1,3}\b", reply):
        return int(reply[0]) * 100
    return 0


_RELAY_IP = re.compile(r"\[([0-9.]+)\]")
_BARE_IP = re.compile(r"[0-9.]+")


class _Index:
    """Events grouped by (msgid, rcpt), by service/event, and the gateway's by queue id; grown
    event by event (`add`), each list kept in time order."""

    def __init__(self, plan: Plan):
        self.ip_service = {ip: svc for svc, ips in reversed(plan.hosts.items()) for ip in reversed(ips)}
        self.by_key: dict[tuple[str | None, str], list[AnyEvent]] = defaultdict(list)
        self.received: dict[str, Received] = {}
        # (msgid, rcpt) -> the tenants whose message trace shows it, with the status shown
        self.trace: dict[tuple[str | None, str], dict[str, str]] = defaultdict(dict)
        self.ndr: dict[str | None, list[Ndr]] = defaultdict(list)
        self.ndr_queued: dict[str, list[NdrQueued]] = defaultdict(list)  # original queue id -> NDRs
        self.by_qid: dict[str, list[GatewayStatus]] = defaultdict(list)  # gateway delivery status per queue id
        # For the incremental verdict: which messages a queue id belongs to (an NDR's status
        # lines carry no message id, only their queue id).
        self.qid_msgids: dict[str, set[str]] = defaultdict(set)
        self.ndr_original: dict[str, str] = {}  # NDR queue id -> the bounced message's queue id
        # Ties in time are broken by service, then by arrival within the service (a service's
        # events arrive in its file's order): the same order however the events are fed.
        self._seq: dict[str | None, int] = defaultdict(int)
        self._order: dict[int, tuple[float, str, int]] = {}

    def order(self, e: AnyEvent) -> tuple[float, str, int]:
        """Time order; ties by service, then by arrival within the service."""
        return self._order[id(e)]

    def _insort(self, lst: list[Any], e: AnyEvent) -> None:
        bisect.insort(lst, e, key=self.order)

    def service_at(self, relay: str | None) -> str | None:
        """The lab service behind a relay 'host[ip]:port' (or a bare address), by its address."""
        m = _RELAY_IP.search(relay or "") or _BARE_IP.fullmatch(relay or "")
        return self.ip_service.get(m.group(1) if m.re is _RELAY_IP else m.group(0)) if m else None

    def add(self, e: AnyEvent) -> tuple[set[str], set[tuple[str, str]]]:
        """Index one event; returns the messages (all their recipients) and the (message,
        recipient) pairs whose classification it may change."""
        self._seq[e.service] += 1
        self._order[id(e)] = (e.ts, e.service or "", self._seq[e.service])
        stored = True
        fields = e.__dict__  # not getattr: pydantic's miss path raises and catches
        msgid: str | None = fields.get("msgid")
        rcpt = (fields.get("rcpt") or "").lower()
        msgs: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        if isinstance(e, GatewayStatus) and e.service == "gateway":
            self._insort(self.by_qid[e.queue_id], e)
            if msgid:
                self.qid_msgids[e.queue_id].add(msgid)
            else:  # a non-delivery report's delivery: the bounced message's recipients follow it
                msgs |= self.qid_msgids.get(self.ndr_original.get(e.queue_id, ""), set())
        if isinstance(e, Ndr):
            self._insort(self.ndr[msgid], e)
            msgs.add(e.msgid)
        elif isinstance(e, NdrQueued):
            self._insort(self.ndr_queued[e.original_queue_id], e)
            self.ndr_original[e.queue_id] = e.original_queue_id
            msgs |= self.qid_msgids.get(e.original_queue_id, set())
        elif isinstance(e, TraceEntry):
            stored = False
            self.trace[(msgid, rcpt)][e.tenant] = e.status
            if msgid:
                pairs.add((msgid, rcpt))
        elif isinstance(e, Received) and msgid:
            old = self.received.get(msgid)
            if old is None or self.order(old) < self.order(e):  # the latest in time counts
                self.received[msgid] = e
            self.qid_msgids[e.queue_id].add(msgid)
            msgs.add(msgid)
        elif msgid and rcpt:
            self._insort(self.by_key[(msgid, rcpt)], e)
            pairs.add((msgid, rcpt))
        elif not isinstance(e, GatewayStatus):
            stored = False
        if not stored:
            del self._order[id(e)]  # kept by no list: its id may be reused
        return msgs, pairs

    def find(self, msgid: str, rcpt: str, service: str | None, kind: type[Any], event: str) -> list[Any]:
        return [
            e
            for e in self.by_key.get((msgid, rcpt), [])
            if e.service == service and isinstance(e, kind) and e.event == event
        ]


def _hop(e: AnyEvent) -> Hop:
    keep = Hop.OMIT_NONE  # the optional fields a hop shows when set
    fields = e.__dict__
    return Hop(
        service=e.service,
        event=e.event,
        reply=fields.get("reply"),
        **{k: v for k in keep if (v := fields.get(k)) is not None},
    )


def _recorded(idx: _Index, msgid: str, rcpt: str, e: Submitted | GatewayStatus) -> bool:
    """A reply logged by the hop before (traffic or gateway) from a lab service that keeps a
    ledger is final only once that service's own record of the recipient is there."""
    answered = (e.reply or "").strip()[:3].isdigit()  # not an MTA's own words
    svc = idx.service_at(e.relay) if answered else None
    return svc not in _LEDGERED or any(x.service == svc for x in idx.by_key.get((msgid, rcpt), []))


def _downstream_done(
    idx: _Index, msgid: str, rcpt: str, e: Submitted | GatewayStatus | EopRelay, depth: int = 0
) -> bool:
    """A 2xx hand-off to a lab service is final once that service delivered or discarded it, or
    (EOP) relayed it on and that relay is final in turn."""
    svc = idx.service_at(e.relay)
    if not svc:
        return False
    done = idx.find(msgid, rcpt, svc, Delivered, "delivered") + idx.find(msgid, rcpt, svc, Discarded, "discarded")
    if done:
        # EOP's message trace line for a delivery is written right after it, in trace.jsonl.
        last = done[-1]
        return not (isinstance(last, Delivered) and last.tenant and last.tenant not in idx.trace.get((msgid, rcpt), {}))
    relays = [x for x in idx.by_key.get((msgid, rcpt), []) if isinstance(x, EopRelay) and x.service == svc]
    if not relays or depth > 3:
        return False
    last = relays[-1]
    # EOP does not retry in the lab: a deferral or a bounce of its relay is its last word.
    return last.event != "relayed" or _downstream_done(idx, msgid, rcpt, last, depth + 1)


def _follow_ndr(res: RcptResult, idx: _Index, bounce: GatewayStatus) -> None:
    """A gateway bounce owes the sender an NDR: follow it by its queue id until its own fate is
    logged (in a mailbox, or bounced by the gateway), and say so."""
    res.ndr_expected = True
    ndr = next(iter(idx.ndr.get(res.msgid, [])), None)  # every NDR of this message goes to its sender
    if ndr:
        res.ndr = NdrFound(service=ndr.service, mailbox=ndr.mailbox, file=ndr.file)
        return
    res.final = False
    queued = [q for q in idx.ndr_queued.get(bounce.queue_id or "", []) if q.ts >= bounce.ts]
    if not queued:
        res.ndr_lost = "the gateway bounced it but logged no non-delivery report for it"
        return
    status = idx.by_qid.get(queued[0].queue_id or "", [])
    if not status:
        res.ndr_lost = f"the non-delivery report {queued[0].queue_id} is still queued at the gateway"
        return
    last = status[-1]
    where = f" ({last.relay})" if last.relay else ""
    if last.event == "bounced":
        res.ndr_lost = f"the gateway bounced the non-delivery report{where}: {last.reply}"
        res.final = True  # a bounce is never bounced back
    elif last.event == "deferred":
        res.ndr_lost = f"the gateway deferred the non-delivery report{where}: {last.reply}"
    else:
        res.ndr_lost = (
            f"the gateway handed the non-delivery report to {last.relay} ('{last.reply}') but no mailbox has it"
        )


# An image gateway (gateway.image) keeps no log labgen reads: its verdicts say so.
NO_GATEWAY_LOG = "the gateway is your image: its own log was not read; this rests on what EOP and the sinks recorded"


def _ground_truth_done(idx: _Index, msgid: str, rcpt: str) -> bool:
    """For an image gateway, which logs nothing labgen reads: is the recipient's fate recorded
    where it ended? In a mailbox (EOP's with its message trace line), discarded by EOP, refused
    by EOP or a sink at RCPT, or EOP's relay of it bounced, deferred or delivered."""
    evs = idx.by_key.get((msgid, rcpt), [])
    for e in reversed(evs):
        if isinstance(e, Delivered):
            return not (e.tenant and e.tenant not in idx.trace.get((msgid, rcpt), {}))
        if isinstance(e, Discarded):
            return True
    if any(
        isinstance(e, RcptDecision) and e.service in _LEDGERED and e.action == "reject" and _code(e.reply) >= 500
        for e in evs
    ):
        return True
    relays = [e for e in evs if isinstance(e, EopRelay)]
    return bool(relays) and (relays[-1].event != "relayed" or _downstream_done(idx, msgid, rcpt, relays[-1]))


def classify_one(plan: Plan, idx: _Index, msgid: str, sender: str, rcpt: str, expected: str | None) -> RcptResult:
    res = _classify(plan, idx, msgid, sender, rcpt, expected)
    if plan.scenario.gateway.image is not None:
        sub = idx.find(msgid, rcpt, "traffic", Submitted, "submitted")
        if sub and idx.service_at(sub[-1].relay) == "gateway":
            res.why = f"{res.why} ({NO_GATEWAY_LOG})" if res.why else NO_GATEWAY_LOG
    return res


def _classify(plan: Plan, idx: _Index, msgid: str, sender: str, rcpt: str, expected: str | None) -> RcptResult:
    res = RcptResult(
        msgid, sender, rcpt, "unaccounted", expected, recipient_tenant=plan.scenario.tenant_of_domain(domain_of(rcpt))
    )
    # Hops in the order the message travels (a service logs its own reply after the next hop's,
    # and clocks differ between log files), each service's events in its own order.
    evs = sorted(idx.by_key.get((msgid, rcpt), []), key=lambda e: (_RANK.get(e.service or "", 9), idx.order(e)))
    res.hops = [_hop(e) for e in evs]
    eop_rcpt = idx.find(msgid, rcpt, "eop", RcptDecision, "rcpt")
    if eop_rcpt and eop_rcpt[-1].attribution:
        a = eop_rcpt[-1].attribution
        res.attribution = ResultAttribution(tenant=a.tenant, by=a.by, connector=a.connector)
    traced = idx.trace.get((msgid, rcpt), {})
    res.recipient_trace_visible = res.recipient_tenant in traced
    res.trace = [TraceSeen(tenant=t, status=st) for t, st in sorted(traced.items())]
    submitted = idx.find(msgid, rcpt, "traffic", Submitted, "submitted")
    sub: Submitted | None = submitted[-1] if submitted else None
    gw = [e for e in evs if isinstance(e, GatewayStatus) and e.service == "gateway"]
    # Final: the submission's answer is logged with the answering hop's own record, and the
    # gateway (if it took the message) logged a disposition whose next hop logged its own.
    chain_done = bool(sub) and _recorded(idx, msgid, rcpt, sub) if sub else False
    image_gateway = plan.scenario.gateway.image is not None
    if sub and 200 <= _code(sub.reply) < 300:
        if idx.service_at(sub.relay) == "gateway" and image_gateway:
            chain_done = chain_done and _ground_truth_done(idx, msgid, rcpt)
        elif idx.service_at(sub.relay) == "gateway":
            last_gw = gw[-1] if gw else None
            chain_done = (
                chain_done
                and last_gw is not None
                and last_gw.event != "deferred"
                and (
                    _recorded(idx, msgid, rcpt, last_gw)
                    if last_gw.event == "bounced"
                    else _downstream_done(idx, msgid, rcpt, last_gw)
                )
            )
        else:
            chain_done = chain_done and _downstream_done(idx, msgid, rcpt, sub)

    delivered = [e for e in evs if isinstance(e, Delivered)]
    if delivered:
        d = delivered[-1]
        res.outcome = "delivered"
        res.why = f"in mailbox {d.mailbox} ({'tenant ' + d.tenant if d.tenant else 'internet sink'})"
        if d.service == "sink":
            res.recipient_trace_visible = True
        res.final = chain_done
        return res

    discarded = idx.find(msgid, rcpt, "eop", Discarded, "discarded")
    if discarded:
        x = discarded[-1]
        res.outcome = "silently_discarded"
        upstream = [
            h
            for h in evs
            if isinstance(h, (GatewayStatus, Submitted))
            and h.event in ("sent", "submitted")
            and 200 <= _code(h.reply) < 300
        ]
        told = f"answered the {upstream[-1].service} {_code(upstream[-1].reply)}" if upstream else "accepted it"
        if image_gateway and upstream and idx.service_at(upstream[-1].relay) == "gateway":
            # The gateway's own log is not read: what EOP answered it is EOP's record of RCPT.
            told = f"answered the gateway {_code(eop_rcpt[-1].reply)}" if eop_rcpt else "accepted it from the gateway"
        res.dropped_by = DroppedBy(
            service="eop", reason=x.reason, attribution=x.attribution, certificate=x.certificate, client_ip=x.client_ip
        )
        res.why = f"EOP {told} and discarded it: {x.reason}"
        res.final = chain_done
        return res

    # A gateway bounce is a rejection whatever its words (Postfix's own DNS or policy failures).
    rejects = [
        e
        for e in evs
        if (isinstance(e, GatewayStatus) and e.event == "bounced")
        or (isinstance(e, (Submitted, GatewayStatus)) and e.event in ("submitted", "sent") and _code(e.reply) >= 500)
        or (isinstance(e, RcptDecision) and e.action == "reject" and _code(e.reply) >= 500)
        or (isinstance(e, EopRelay) and e.event == "relay_bounced")
    ]
    if rejects:
        r = next((x for x in rejects if isinstance(x, RcptDecision)), rejects[-1])
        res.outcome = "rejected"
        reason = getattr(r, "reason", None)
        res.why = f"{r.service} rejected it: {r.reply}" + (f" ({reason})" if reason else "")
        if isinstance(r, EopRelay):
            res.why = f"EOP relayed it to {r.relay_host or r.relay}, which rejected it: {r.reply}"
        elif isinstance(r, GatewayStatus) and r.event == "bounced" and (r.relay_host or r.relay):
            # The next hop refused it (its reply is quoted); a hop without a ledger says no more.
            res.why = f"{r.relay_host or r.relay} refused it and the gateway bounced it: {r.reply}"
        res.final = chain_done
        # The gateway accepted it, so the gateway owes the sender an NDR (a rejection at
        # submission is told to the submitting client instead).
        bounce = gw[-1] if gw and gw[-1].event == "bounced" else None
        if sender and bounce:
            _follow_ndr(res, idx, bounce)
            if res.ndr_lost:
                res.why += f"; the sender got no non-delivery report: {res.ndr_lost}"
        return res

    eop_relays = [e for e in evs if isinstance(e, EopRelay)]
    if eop_relays and eop_relays[-1].event == "relay_deferred":
        last_relay = eop_relays[-1]
        res.outcome = "deferred"
        via = f" by outbound connector '{last_relay.connector}'" if last_relay.connector else ""
        res.why = f"EOP accepted it and could not relay it to {last_relay.relay_host}{via}: {last_relay.reply}"
        res.final = chain_done
        return res

    # Not final: find where it is now.
    if not sub:
        res.why = "the traffic generator has no record of submitting it"
        return res
    if not 200 <= _code(sub.reply) < 300:
        res.outcome = "deferred"
        res.why = f"could not be submitted: {sub.reply}"
        res.final = chain_done  # the traffic generator does not retry
        return res
    if image_gateway and idx.service_at(sub.relay) == "gateway":
        res.outcome = "deferred"  # queued at the gateway, or on its way: its own log is not read
        res.why = f"the gateway answered '{sub.reply}'; neither EOP nor a sink has a record of it yet"
        return res
    # Through the gateway: submitted to it, or an internet sender's mail for a domain whose MX it is.
    received = idx.received.get(msgid)
    if (
        sub.entry == "gateway"
        or sub.relay_host == plan.scenario.gateway.hostname
        or gw
        or rcpt in ((received.rcpts if received else None) or [])
    ):
        if received is None:
            res.why = f"the gateway answered '{sub.reply}' to the traffic generator but its log has no record of it"
            return res
        if not gw:
            res.outcome = "deferred"
            res.why = "queued at the gateway, no delivery attempt logged yet"
            return res
        last = gw[-1]
        if last.event == "deferred":
            res.outcome = "deferred"
            res.why = f"deferred at the gateway ({last.connector} connector): {last.reply}"
            return res
        if last.event == "sent":
            res.why = (
                f"the gateway logged '{last.reply}' from {last.relay} but that hop has no record "
                "of delivering or dropping it"
            )
            return res
    res.why = f"accepted by {sub.relay} ('{sub.reply}') with no further record"
    return res


class Verdict:
    """The verdict built as events arrive: `add` indexes new events and notes which recipients
    they concern; `results` re-classifies only those. Its results equal classify()'s over all
    the events added so far, in whatever pieces they came."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.idx = _Index(plan)
        self.keys: list[tuple[str, str]] = []
        self._meta: dict[
            tuple[str, str], tuple[str, str | None, str | None, str | None]
        ] = {}  # sender, expected, reply, spf
        self.rcpts_of: dict[str, list[str]] = defaultdict(list)
        for m in plan.scenario.traffic:
            msgid = cast(str, m.id)  # every message has an id once validated
            for rcpt in m.to:
                key = (msgid, rcpt.lower())
                self.keys.append(key)
                self._meta[key] = (m.sender, m.expected_for(rcpt), m.expect_reply, m.expect_spf)
                self.rcpts_of[msgid].append(key[1])
        self._results: dict[tuple[str, str], RcptResult] = {}
        self._dirty: set[tuple[str, str]] = set(self.keys)
        self._open = len(self._meta)  # results not final

    def add(self, events: Iterable[AnyEvent]) -> None:
        for e in events:
            msgs, pairs = self.idx.add(e)
            for msgid in msgs:
                self._dirty.update((msgid, r) for r in self.rcpts_of.get(msgid, ()))
            self._dirty.update(p for p in pairs if p in self._meta)

    def results(self) -> list[RcptResult]:
        for key in self._dirty:
            old = self._results.get(key)
            sender, expected, reply, spf = self._meta[key]
            new = classify_one(self.plan, self.idx, key[0], sender, key[1], expected)
            new.expected_reply, new.expected_spf = reply, spf
            self._open += (not new.final) - (old is not None and not old.final) - (old is None)
            self._results[key] = new
        self._dirty.clear()
        return [self._results[k] for k in self.keys]

    def settled(self) -> bool:
        """Nothing more can happen to any recipient (as settled(self.results()))."""
        self.results()
        return self._open == 0


def classify(plan: Plan, events: Iterable[AnyEvent]) -> list[RcptResult]:
    """Every recipient of every message, from these events (from scratch)."""
    v = Verdict(plan)
    v.add(events)
    return v.results()


def settled(results: list[RcptResult]) -> bool:
    """Nothing more can happen to any recipient: each hop that saw it logged its own
    disposition, and every NDR the gateway owes a sender has a known fate."""
    return all(r.final for r in results)


def summary(results: list[RcptResult]) -> Summary:
    s = Summary(total=len(results))
    for r in results:
        setattr(s, r.outcome, getattr(s, r.outcome) + 1)
        if r.ok is False:
            s.expectations_failed += 1
    return s
