"""Traffic generators: submit the scenario's messages where they enter the lab (Exchange Online's
outbound hand-off to the gateway, or an internet sender's MX delivery), each with a unique id
header that joins every service's log, and record each recipient's answer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

from . import nexthop
from ..results.contracts import Injected, PlannedMessage, Submitted, TrafficStart
from .ledger import MSGID_HEADER, Ledger
from ..model.plan import Plan, message_entry
from ..model.scenario import Message
from .smtp_client import send

TRAFFIC_HELO = {"gateway": "outbound.protection.outlook.test", "mx": "sender.internet.test"}


def build(plan: Plan, m: Message) -> bytes:
    msg = EmailMessage()
    msg["From"] = m.sender
    msg["To"] = ", ".join(m.to)
    msg["Subject"] = m.subject or f"labgen {plan.lab} message {m.id}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{m.id}.{plan.run_id}@traffic.labgen.test>"
    msg[MSGID_HEADER] = m.id
    msg.set_content(f"Message {m.id} of lab {plan.lab} (run {plan.run_id}).\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _targets(plan: Plan, m: Message) -> list[tuple[str, list[str], str, bool]]:
    """(entry, recipients, name, by_mx) groups: the gateway, or each recipient domain's MX."""
    if message_entry(plan.scenario, m.sender, m.via) == "gateway":
        return [("gateway", list(m.to), plan.scenario.gateway.hostname, False)]
    groups: dict[str, list[str]] = {}
    for r in m.to:
        groups.setdefault(r.rpartition("@")[2], []).append(r)
    return [("mx", rcpts, domain, True) for domain, rcpts in groups.items()]


def submit(plan: Plan, m: Message, ledger: Ledger) -> None:
    data = build(plan, m)
    r = nexthop.resolver(plan.ip("dns"), plan.dns_port)
    for entry, rcpts, name, by_mx in _targets(plan, m):
        source = plan.hosts["traffic"][1] if entry == "gateway" else plan.hosts["traffic"][0]
        try:
            hop = nexthop.next_hops(r, name, mx=by_mx)[0]
        except nexthop.DnsFailure as e:
            for rcpt in rcpts:
                ledger.emit(Submitted(event="submitted", msgid=m.id, rcpt=rcpt, entry=entry, relay=None, code=0,
                                      reply=str(e)))
            continue
        res = send(data, m.sender, rcpts, host=hop.host, ip=hop.ip, port=plan.smtp_port,
                   helo=TRAFFIC_HELO[entry], source_ip=source, tls="may", envid=m.id)
        for rcpt in rcpts:
            code, reply = res.replies.get(rcpt, (0, res.error or "no answer"))
            ledger.emit(Submitted(event="submitted", msgid=m.id, rcpt=rcpt, entry=entry, relay=res.relay,
                                  relay_host=hop.host, code=code, reply=reply, tls=res.tls_version))


def run_traffic(plan: Plan, run_dir: Path) -> None:
    ledger = Ledger(run_dir, "traffic")
    ledger.emit(TrafficStart(event="start", run_id=plan.run_id,
                             messages=[PlannedMessage(msgid=m.id, sender=m.sender, to=m.to)
                                       for m in plan.scenario.traffic]))
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda m: submit(plan, m, ledger), plan.scenario.traffic))
        ledger.emit(Injected(event="injected", count=len(plan.scenario.traffic)))
    finally:
        ledger.close()
