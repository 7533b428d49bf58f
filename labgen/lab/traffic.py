"""Traffic generators: submit the scenario's messages where they enter the lab (Exchange Online's
outbound hand-off to the gateway, or an internet sender's MX delivery), each with a unique id
header that joins every service's log, and record each recipient's answer."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import dns.resolver

from ..model.plan import Plan, message_entry
from ..model.scenario import Message, OutboundConnector
from ..results.contracts import Injected, PlannedMessage, Submitted, TrafficStart
from . import nexthop
from .eop import relay
from .ledger import MSGID_HEADER, Ledger
from .pki import exo_client_files
from .smtp_client import Result, Session

TRAFFIC_HELO = {"gateway": relay.EXO_OUTBOUND_HELO, "mx": "sender.internet.test"}


def _content(m: Message, what: str, size: int) -> bytes:
    """`size` bytes that are the same on every run for this message (an attachment's content)."""
    return hashlib.shake_256(f"labgen/{m.id}/{what}".encode()).digest(size)


def _padding(size: int) -> str:
    """About `size` bytes of plain text lines (7bit, 76 characters and CRLF each)."""
    lines = -(-size // 78)
    return "".join(f"labgen padding line {n:09d} {'.' * 46}\n" for n in range(1, lines + 1))  # 76 + CRLF


def build(plan: Plan, m: Message) -> bytes:
    """The message as sent: labgen's headers and ids, the scenario's extra headers, a text body
    (padded to `size`), then the attachments."""

    def make(pad: int) -> bytes:
        msg = EmailMessage()
        msg["From"] = m.sender
        msg["To"] = ", ".join(m.to)
        msg["Subject"] = m.subject or f"labgen {plan.lab} message {m.id}"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = f"<{m.id}.{plan.run_id}@traffic.labgen.test>"
        msg[MSGID_HEADER] = m.id
        for name, value in m.headers.items():
            msg[name] = value
        msg.set_content(f"Message {m.id} of lab {plan.lab} (run {plan.run_id}).\n" + (_padding(pad) if pad else ""))
        for a in m.attachments:
            maintype, subtype = a.type.split("/", 1)
            msg.add_attachment(_content(m, a.name, a.bytes), maintype=maintype, subtype=subtype, filename=a.name)
        if m.attachments:  # not Python's random boundary: the same message every run
            msg.set_boundary(f"labgen-{m.id}-{plan.run_id}=_")
        return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))

    data, pad = make(0), 0
    while m.size and len(data) < m.size:  # once, unless the MIME layout moved (it does not)
        pad += m.size - len(data)
        data = make(pad)
    return data


def _targets(plan: Plan, m: Message) -> list[tuple[str, list[str], str, bool, OutboundConnector | None]]:
    """(entry, recipients, name, by_mx, connector) groups: the gateway, by the Exchange Online
    outbound connector that sends there, or each recipient domain's MX."""
    to_gateway: dict[str, tuple[OutboundConnector, list[str]]] = {}
    groups: dict[str, list[str]] = {}
    for r in m.to:
        entry, connector = message_entry(plan.scenario, m, r)
        if entry == "gateway" and connector is not None:
            to_gateway.setdefault(connector.name, (connector, []))[1].append(r)
        else:
            groups.setdefault(r.rpartition("@")[2], []).append(r)
    host = plan.scenario.gateway.hostname
    out = [("gateway", rcpts, host, False, c) for c, rcpts in to_gateway.values()]
    return out + [("mx", rcpts, domain, True, None) for domain, rcpts in groups.items()]


# Several messages per SMTP session, as an MTA's connection cache sends them (Postfix's
# smtp_connection_reuse_count_limit), from a bounded number of sending threads.
REUSE_LIMIT = 100
WORKERS = 8


class _Sender:
    """One sending thread's sessions, one per next hop (address, source address, HELO name)."""

    def __init__(self, plan: Plan, ledger: Ledger, resolver: dns.resolver.Resolver, labdir: Path):
        self.plan, self.ledger, self.resolver = plan, ledger, resolver
        self.sessions: dict[tuple[str | None, ...], Session] = {}
        self.ca_root = str(labdir / plan.ca_root)
        # Exchange Online presents its client certificate to the gateway (pki.exo_client_files).
        files = exo_client_files(plan)
        self.exo_cert = (str(labdir / files.chain), str(labdir / files.key))

    def _send(
        self,
        hop: nexthop.Hop,
        source: str,
        helo: str,
        data: bytes,
        m: Message,
        rcpts: list[str],
        connector: OutboundConnector | None,
    ) -> Result:
        tls = (connector.tls_settings, connector.tls_domain) if connector else (None, None)
        key = (hop.ip, source, helo, *tls)
        for attempt in (1, 2):
            session = self.sessions.get(key)
            if session is not None and (session.smtp is None or session.used >= REUSE_LIMIT):
                session.quit()
                session = None
            fresh = session is None
            if session is None:
                if connector is not None:  # Exchange Online, by its outbound connector's TlsSettings
                    session, failed = relay.open_session(
                        self.plan,
                        self.ca_root,
                        hop,
                        connector.tls_settings,
                        connector.tls_domain,
                        source,
                        client_cert=self.exo_cert,
                    )
                else:
                    session = Session(
                        host=hop.host, ip=hop.ip, port=self.plan.smtp_port, helo=helo, source_ip=source, tls="may"
                    )
                    failed = session.open()
                if session is None or failed is not None:
                    return Result.unopened(hop.host, hop.ip, self.plan.smtp_port, rcpts, failed or (0, "no session"))
                self.sessions[key] = session
            res = session.transact(data, m.sender, rcpts, envid=m.id)
            # A reused connection the server has meanwhile closed (idle timeout) is no answer
            # about this message: once more on a new one.
            if fresh or attempt == 2 or session.smtp is not None or any(code for code, _ in res.replies.values()):
                break
        return res

    def submit(self, m: Message) -> None:
        plan, ledger = self.plan, self.ledger
        data = build(plan, m)
        for entry, rcpts, name, by_mx, connector in _targets(plan, m):
            if entry == "gateway":  # Exchange Online's outbound servers
                source, helo = plan.hosts["traffic"][1], TRAFFIC_HELO["gateway"]
            else:
                source, helo = m.source_ip or plan.hosts["traffic"][0], m.helo or TRAFFIC_HELO["mx"]
            try:
                hop = nexthop.next_hops(self.resolver, name, mx=by_mx)[0]
            except nexthop.DnsFailure as e:
                for rcpt in rcpts:
                    ledger.emit(
                        Submitted(
                            event="submitted", msgid=m.id, rcpt=rcpt, entry=entry, relay=None, code=0, reply=str(e)
                        )
                    )
                continue
            res = self._send(hop, source, helo, data, m, rcpts, connector)
            for rcpt in rcpts:
                code, reply = res.replies.get(rcpt, (0, res.error or "no answer"))
                ledger.emit(
                    Submitted(
                        event="submitted",
                        msgid=m.id,
                        rcpt=rcpt,
                        entry=entry,
                        relay=res.relay,
                        relay_host=hop.host,
                        code=code,
                        reply=reply,
                        tls=res.tls_version,
                    )
                )

    def close(self) -> None:
        for session in self.sessions.values():
            session.quit()


def run_traffic(plan: Plan, run_dir: Path) -> None:
    ledger = Ledger(run_dir, "traffic")
    messages = plan.scenario.traffic
    ledger.emit(
        TrafficStart(
            event="start",
            run_id=plan.run_id,
            messages=[PlannedMessage(msgid=m.id, sender=m.sender, to=m.to) for m in messages],
        )
    )
    resolver = nexthop.resolver(plan.ip("dns"), plan.dns_port)
    resolver.cache = dns.resolver.Cache()  # the lab's records carry a TTL: one lookup per name, not per message
    pending = iter(messages)
    lock = threading.Lock()

    def work() -> None:
        sender = _Sender(plan, ledger, resolver, run_dir.parent)
        try:
            while True:
                with lock:
                    m = next(pending, None)
                if m is None:
                    return
                sender.submit(m)
        finally:
            sender.close()

    try:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(messages))) as pool:
            for f in [pool.submit(work) for _ in range(min(WORKERS, len(messages)))]:
                f.result()
        ledger.emit(Injected(event="injected", count=len(messages)))
    finally:
        ledger.close()
