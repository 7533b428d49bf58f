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

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from ..model.plan import Plan
from ..model.scenario import domain_of

_RANK = {"traffic": 0, "gateway": 1, "eop": 2, "sink": 2}
# Services that log every recipient they answer: a reply of theirs that another hop logged is
# only final once their own record of it is there too.
_LEDGERED = ("eop", "sink")


@dataclass
class RcptResult:
    msgid: str
    sender: str
    rcpt: str
    outcome: str  # one of scenario.OUTCOMES, or "unaccounted"
    expected: Optional[str]
    hops: list[dict] = field(default_factory=list)
    attribution: Optional[dict] = None
    recipient_trace_visible: bool = False
    why: str = ""  # one sentence a person can read
    dropped_by: Optional[dict] = None  # for silently_discarded: the hop, reason and certificate
    recipient_tenant: Optional[str] = None  # None: an internet (non-Microsoft 365) recipient
    ndr: Optional[dict] = None  # the non-delivery report that reached the sender, if any
    ndr_expected: bool = False  # a gateway bounce: the sender is owed an NDR
    ndr_lost: Optional[str] = None  # an owed NDR that reached no mailbox: what became of it
    # Every hop that saw it has logged its own disposition, and so has the NDR it is owed:
    # nothing more can happen to it (settled() waits for this, never for a clock).
    final: bool = False

    @property
    def ok(self) -> Optional[bool]:
        return None if self.expected is None else self.expected == self.outcome

    def as_dict(self) -> dict:
        d = {"id": self.msgid, "from": self.sender, "to": self.rcpt, "outcome": self.outcome,
             "expected": self.expected, "ok": self.ok, "hops": self.hops, "attribution": self.attribution,
             "recipient_trace_visible": self.recipient_trace_visible, "recipient_tenant": self.recipient_tenant,
             "ndr": self.ndr, "ndr_lost": self.ndr_lost, "why": self.why}
        if self.dropped_by:
            d["dropped_by"] = self.dropped_by
        return d


def _code(reply: Optional[str]) -> int:
    """The reply's class as a number: '550 5.7.64 ...' -> 550; an MTA's own words that start with
    an enhanced status code ('5.4.4 Host not found') -> 500; anything else -> 0."""
    reply = (reply or "").strip()
    if reply[:3].isdigit():
        return int(reply[:3])
    if re.match(r"^[245]\.\d{1,3}\.\d{1,3}\b", reply):
        return int(reply[0]) * 100
    return 0


def _service_at(plan: Plan, relay: Optional[str]) -> Optional[str]:
    """The lab service behind a relay 'host[ip]:port' (or a bare address), by its address."""
    m = re.search(r"\[([0-9.]+)\]", relay or "") or re.fullmatch(r"([0-9.]+)", relay or "")
    if not m:
        return None
    return next((svc for svc, ips in plan.hosts.items() if m.group(1) in ips), None)


class _Index:
    """Events grouped by (msgid, rcpt), by service/event, and the gateway's by queue id."""

    def __init__(self, events: list[dict]):
        self.by_key: dict[tuple, list[dict]] = defaultdict(list)
        self.received: dict[str, dict] = {}
        self.trace: set[tuple] = set()
        self.ndr: dict[str, list[dict]] = defaultdict(list)
        self.ndr_queued: dict[str, list[dict]] = defaultdict(list)  # original queue id -> NDRs
        self.by_qid: dict[str, list[dict]] = defaultdict(list)  # gateway delivery status per queue id
        for e in sorted(events, key=lambda e: e.get("ts", 0)):
            msgid, rcpt = e.get("msgid"), (e.get("rcpt") or "").lower()
            if e["service"] == "gateway" and e["event"] in ("sent", "deferred", "bounced") and e.get("queue_id"):
                self.by_qid[e["queue_id"]].append(e)
            if e["event"] == "ndr":
                self.ndr[msgid].append(e)
            elif e["event"] == "ndr_queued" and e.get("original_queue_id"):
                self.ndr_queued[e["original_queue_id"]].append(e)
            elif e["service"] == "trace":
                self.trace.add((msgid, rcpt))
            elif e["event"] == "received" and msgid:
                self.received[msgid] = e
            elif msgid and rcpt:
                self.by_key[(msgid, rcpt)].append(e)

    def find(self, msgid, rcpt, service, event) -> list[dict]:
        return [e for e in self.by_key.get((msgid, rcpt), []) if e["service"] == service and e["event"] == event]


def _hop(e: dict) -> dict:
    keep = ("relay", "reply", "connector", "action", "reason", "mailbox", "queue_id", "tls", "client_ip",
            "source_ip", "entry", "certificate", "attribution", "file")
    return {"service": e["service"], "event": e["event"], "reply": e.get("reply"),
            **{k: e[k] for k in keep if k in e and e[k] is not None and k != "reply"}}


def _recorded(plan: Plan, idx: _Index, msgid: str, rcpt: str, e: dict) -> bool:
    """A reply logged by the hop before (traffic or gateway) from a lab service that keeps a
    ledger is final only once that service's own record of the recipient is there."""
    answered = (e.get("reply") or "").strip()[:3].isdigit()  # not an MTA's own words
    svc = _service_at(plan, e.get("relay")) if answered else None
    return svc not in _LEDGERED or any(x["service"] == svc for x in idx.by_key.get((msgid, rcpt), []))


def _downstream_done(plan: Plan, idx: _Index, msgid: str, rcpt: str, e: dict) -> bool:
    """A 2xx hand-off to a lab service is final once that service delivered or discarded it."""
    svc = _service_at(plan, e.get("relay"))
    done = idx.find(msgid, rcpt, svc, "delivered") + idx.find(msgid, rcpt, svc, "discarded") if svc else []
    # EOP's message trace line for a delivery is written right after it, in trace.jsonl.
    return bool(done) and not (done[-1]["event"] == "delivered" and done[-1].get("tenant")
                               and (msgid, rcpt) not in idx.trace)


def _follow_ndr(res: RcptResult, idx: _Index, bounce: dict) -> None:
    """A gateway bounce owes the sender an NDR: follow it by its queue id until its own fate is
    logged (in a mailbox, or bounced by the gateway), and say so."""
    res.ndr_expected = True
    ndr = next(iter(idx.ndr.get(res.msgid, [])), None)  # every NDR of this message goes to its sender
    if ndr:
        res.ndr = {"service": ndr["service"], "mailbox": ndr.get("mailbox"), "file": ndr.get("file")}
        return
    res.final = False
    queued = [q for q in idx.ndr_queued.get(bounce.get("queue_id") or "", []) if q.get("ts", 0) >= bounce.get("ts", 0)]
    if not queued:
        res.ndr_lost = "the gateway bounced it but logged no non-delivery report for it"
        return
    status = idx.by_qid.get(queued[0].get("queue_id") or "", [])
    if not status:
        res.ndr_lost = f"the non-delivery report {queued[0].get('queue_id')} is still queued at the gateway"
        return
    last = status[-1]
    where = f" ({last['relay']})" if last.get("relay") else ""
    if last["event"] == "bounced":
        res.ndr_lost = f"the gateway bounced the non-delivery report{where}: {last.get('reply')}"
        res.final = True  # a bounce is never bounced back
    elif last["event"] == "deferred":
        res.ndr_lost = f"the gateway deferred the non-delivery report{where}: {last.get('reply')}"
    else:
        res.ndr_lost = (f"the gateway handed the non-delivery report to {last.get('relay')} "
                        f"('{last.get('reply')}') but no mailbox has it")


def classify_one(plan: Plan, idx: _Index, msgid: str, sender: str, rcpt: str, expected) -> RcptResult:
    res = RcptResult(msgid, sender, rcpt, "unaccounted", expected,
                     recipient_tenant=plan.scenario.tenant_of_domain(domain_of(rcpt)))
    # Hops in the order the message travels (a service logs its own reply after the next hop's,
    # and clocks differ between log files), each service's events in its own order.
    evs = sorted(idx.by_key.get((msgid, rcpt), []), key=lambda e: (_RANK.get(e["service"], 9), e.get("ts", 0)))
    res.hops = [_hop(e) for e in evs]
    eop_rcpt = idx.find(msgid, rcpt, "eop", "rcpt")
    if eop_rcpt:
        res.attribution = {k: eop_rcpt[-1]["attribution"].get(k) for k in ("tenant", "by", "connector")}
    res.recipient_trace_visible = (msgid, rcpt) in idx.trace
    submitted = idx.find(msgid, rcpt, "traffic", "submitted")
    sub = submitted[-1] if submitted else None
    gw = [e for e in evs if e["service"] == "gateway" and e["event"] in ("sent", "deferred", "bounced")]
    # Final: the submission's answer is logged with the answering hop's own record, and the
    # gateway (if it took the message) logged a disposition whose next hop logged its own.
    chain_done = bool(sub) and _recorded(plan, idx, msgid, rcpt, sub)
    if sub and 200 <= _code(sub.get("reply")) < 300:
        if _service_at(plan, sub.get("relay")) == "gateway":
            last = gw[-1] if gw else None
            chain_done = chain_done and bool(last) and last["event"] != "deferred" and (
                _recorded(plan, idx, msgid, rcpt, last) if last["event"] == "bounced"
                else _downstream_done(plan, idx, msgid, rcpt, last))
        else:
            chain_done = chain_done and _downstream_done(plan, idx, msgid, rcpt, sub)

    delivered = [e for e in evs if e["event"] == "delivered"]
    if delivered:
        e = delivered[-1]
        res.outcome = "delivered"
        res.why = f"in mailbox {e.get('mailbox')} ({'tenant ' + e['tenant'] if e.get('tenant') else 'internet sink'})"
        if e["service"] == "sink":
            res.recipient_trace_visible = True
        res.final = chain_done
        return res

    discarded = idx.find(msgid, rcpt, "eop", "discarded")
    if discarded:
        e = discarded[-1]
        res.outcome = "silently_discarded"
        upstream = [h for h in evs if h["event"] in ("sent", "submitted") and 200 <= _code(h.get("reply")) < 300]
        told = f"answered the {upstream[-1]['service']} {_code(upstream[-1].get('reply'))}" if upstream else "accepted it"
        res.dropped_by = {"service": "eop", "reason": e.get("reason"), "attribution": e.get("attribution"),
                          "certificate": e.get("certificate"), "client_ip": e.get("client_ip")}
        res.why = f"EOP {told} and discarded it: {e.get('reason')}"
        res.final = chain_done
        return res

    # A gateway bounce is a rejection whatever its words (Postfix's own DNS or policy failures).
    rejects = [e for e in evs if (e["event"] == "bounced")
               or (e["event"] in ("submitted", "sent") and _code(e.get("reply")) >= 500)
               or (e["event"] == "rcpt" and e.get("action") == "reject" and _code(e.get("reply")) >= 500)]
    if rejects:
        e = next((x for x in rejects if x["event"] == "rcpt"), rejects[-1])
        res.outcome = "rejected"
        res.why = f"{e['service']} rejected it: {e.get('reply')}" + (f" ({e['reason']})" if e.get("reason") else "")
        res.final = chain_done
        # The gateway accepted it, so the gateway owes the sender an NDR (a rejection at
        # submission is told to the submitting client instead).
        bounce = gw[-1] if gw and gw[-1]["event"] == "bounced" else None
        if sender and bounce:
            _follow_ndr(res, idx, bounce)
            if res.ndr_lost:
                res.why += f"; the sender got no non-delivery report: {res.ndr_lost}"
        return res

    # Not final: find where it is now.
    if not sub:
        res.why = "the traffic generator has no record of submitting it"
        return res
    if not 200 <= _code(sub.get("reply")) < 300:
        res.outcome = "deferred"
        res.why = f"could not be submitted: {sub.get('reply')}"
        res.final = chain_done  # the traffic generator does not retry
        return res
    # Through the gateway: submitted to it, or an internet sender's mail for a domain whose MX it is.
    if (sub.get("entry") == "gateway" or sub.get("relay_host") == plan.scenario.gateway.hostname or gw
            or rcpt in (idx.received.get(msgid, {}).get("rcpts") or [])):
        if msgid not in idx.received:
            res.why = f"the gateway answered '{sub.get('reply')}' to the traffic generator but its log has no record of it"
            return res
        if not gw:
            res.outcome = "deferred"
            res.why = "queued at the gateway, no delivery attempt logged yet"
            return res
        last = gw[-1]
        if last["event"] == "deferred":
            res.outcome = "deferred"
            res.why = f"deferred at the gateway ({last.get('connector')} connector): {last.get('reply')}"
            return res
        if last["event"] == "sent":
            res.why = (f"the gateway logged '{last.get('reply')}' from {last.get('relay')} but that hop has no record "
                       "of delivering or dropping it")
            return res
    res.why = f"accepted by {sub.get('relay')} ('{sub.get('reply')}') with no further record"
    return res


def classify(plan: Plan, events: list[dict]) -> list[RcptResult]:
    idx = _Index(events)
    out = []
    for m in plan.scenario.traffic:
        for rcpt in m.to:
            out.append(classify_one(plan, idx, m.id, m.sender, rcpt.lower(), m.expected_for(rcpt)))
    return out


def settled(results: list[RcptResult]) -> bool:
    """Nothing more can happen to any recipient: each hop that saw it logged its own
    disposition, and every NDR the gateway owes a sender has a known fate."""
    return all(r.final for r in results)


def summary(results: list[RcptResult]) -> dict:
    s = {"total": len(results), "delivered": 0, "silently_discarded": 0, "rejected": 0, "deferred": 0,
         "unaccounted": 0, "expectations_failed": 0}
    for r in results:
        s[r.outcome] += 1
        if r.ok is False:
            s["expectations_failed"] += 1
    return s
