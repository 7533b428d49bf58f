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

from .plan import Plan
from .scenario import domain_of

FINAL = ("delivered", "rejected", "silently_discarded")
_RANK = {"traffic": 0, "gateway": 1, "eop": 2, "sink": 2}


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

    @property
    def ok(self) -> Optional[bool]:
        return None if self.expected is None else self.expected == self.outcome

    def as_dict(self) -> dict:
        d = {"id": self.msgid, "from": self.sender, "to": self.rcpt, "outcome": self.outcome,
             "expected": self.expected, "ok": self.ok, "hops": self.hops, "attribution": self.attribution,
             "recipient_trace_visible": self.recipient_trace_visible, "recipient_tenant": self.recipient_tenant,
             "ndr": self.ndr, "why": self.why}
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


class _Index:
    """Events grouped by (msgid, rcpt) and by service/event."""

    def __init__(self, events: list[dict]):
        self.by_key: dict[tuple, list[dict]] = defaultdict(list)
        self.received: dict[str, dict] = {}
        self.trace: set[tuple] = set()
        self.ndr: dict[str, list[dict]] = defaultdict(list)
        for e in sorted(events, key=lambda e: e.get("ts", 0)):
            msgid, rcpt = e.get("msgid"), (e.get("rcpt") or "").lower()
            if e["event"] == "ndr":
                self.ndr[msgid].append(e)
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

    delivered = [e for e in evs if e["event"] == "delivered"]
    if delivered:
        e = delivered[-1]
        res.outcome = "delivered"
        res.why = f"in mailbox {e.get('mailbox')} ({'tenant ' + e['tenant'] if e.get('tenant') else 'internet sink'})"
        if e["service"] == "sink":
            res.recipient_trace_visible = True
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
        return res

    # A gateway bounce is a rejection whatever its words (Postfix's own DNS or policy failures).
    rejects = [e for e in evs if (e["event"] == "bounced")
               or (e["event"] in ("submitted", "sent") and _code(e.get("reply")) >= 500)
               or (e["event"] == "rcpt" and e.get("action") == "reject" and _code(e.get("reply")) >= 500)]
    if rejects:
        e = next((x for x in rejects if x["event"] == "rcpt"), rejects[-1])
        res.outcome = "rejected"
        res.why = f"{e['service']} rejected it: {e.get('reply')}" + (f" ({e['reason']})" if e.get("reason") else "")
        # The gateway accepted it, so the gateway owes the sender an NDR (a rejection at
        # submission is told to the submitting client instead).
        res.ndr_expected = bool(sender) and any(x["service"] == "gateway" and x["event"] == "bounced" for x in evs)
        ndr = next((n for n in idx.ndr.get(msgid, []) if n.get("to", "").lower() == sender.lower()), None)
        if ndr:
            res.ndr = {"service": ndr["service"], "mailbox": ndr.get("mailbox"), "file": ndr.get("file")}
        return res

    # Not final: find where it is now.
    submitted = idx.find(msgid, rcpt, "traffic", "submitted")
    if not submitted:
        res.why = "the traffic generator has no record of submitting it"
        return res
    sub = submitted[-1]
    if not 200 <= _code(sub.get("reply")) < 300:
        res.outcome = "deferred"
        res.why = f"could not be submitted: {sub.get('reply')}"
        return res
    gw = [e for e in evs if e["service"] == "gateway"]
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
    """Every recipient final, and every NDR the gateway owes a sender arrived."""
    return all(r.outcome in FINAL and (r.ndr or not r.ndr_expected) for r in results)


def summary(results: list[RcptResult]) -> dict:
    s = {"total": len(results), "delivered": 0, "silently_discarded": 0, "rejected": 0, "deferred": 0,
         "unaccounted": 0, "expectations_failed": 0}
    for r in results:
        s[r.outcome] += 1
        if r.ok is False:
            s["expectations_failed"] += 1
    return s
