"""The built-in gateway (local engine): the customer's on-premises MTA with its send connectors.
Same semantics as the Postfix gateway of the Docker lab: receive on port 25 (relay for Exchange
Online's outbound address, inbound for the domains whose MX it is), route each recipient by
connector address space, resolve MX through the lab DNS or use the smarthost, STARTTLS with the
connector's client certificate from its source IP, retry 4xx until the run's deadline, and log
every attempt. Mail loops end as in Postfix: a next hop that is one of the gateway's own addresses
bounces (5.4.6), and every accepted message gets a Received: header whose count is checked against
Postfix's hopcount_limit on receipt, so a loop through other hops ends too."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path

import dns.resolver

from ..model.plan import Plan, gateway_server_cert
from ..model.scenario import SendConnector
from ..results.contracts import DeliveryError, GatewayStatus, GatewayTls, NdrQueued, RcptDecision, Received
from . import nexthop, routing
from .dsn import build_ndr
from .ledger import Ledger, labgen_id
from .smtp_client import Result, Session, client_tls_context
from .smtpd import LabEnvelope, LabSession, LabSMTP, server_tls_context

RETRY_S = (0.5, 1.0, 2.0, 4.0)
# Postfix's smtp_connection_cache_time_limit (2 s), smtp_connection_reuse_count_limit, and a bound
# on idle sessions per next hop.
CACHE_TIME_S = 2.0
CACHE_REUSE_LIMIT = 100
CACHE_PER_HOP = 8
NO_CONNECTOR = "5.4.4 no send connector covers this domain"
# Postfix's hopcount_limit default (the lab's main.cf keeps it): a message whose Received: headers,
# the gateway's own included, reach it is refused at end of DATA with cleanup's CLEANUP_STAT_HOPS
# reply (global/cleanup_strerror.c, the same since Postfix 2.3).
HOPCOUNT_LIMIT = 50
TOO_MANY_HOPS = "554 5.4.0 Error: too many hops"
# A header line as Postfix's is_header() sees it: a name of printable ASCII without ':' or space,
# optional blanks, then ':' (RFC 822 allowed blanks before the colon).
_HEADER = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# The built-in gateway's queue lives in memory: beyond this many bytes of queued mail it answers
# as Postfix does when its queue file system runs short (queue_minfree), so a flood of messages
# from a hostile client defers instead of exhausting the machine. Generous for any lab run: the
# scenario limit of 50,000 recipients of the traffic's small messages is a few tens of MB.
QUEUE_MAX_BYTES = 512 * 1024 * 1024
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def hop_count(message: bytes) -> int:
    """The Received: headers in a message's primary header block (which ends at the first line
    that is neither a header nor a continuation), as Postfix's cleanup counts them."""
    count, start = 0, 0
    while start < len(message):  # line by line, never splitting the (maybe large) body
        end = message.find(b"\n", start)
        end = len(message) if end < 0 else end
        line, start = message[start:end].rstrip(b"\r"), end + 1
        if line[:1] in (b" ", b"\t"):
            continue  # a folded continuation of the header before
        m = _HEADER.match(line)
        if not m:
            break
        count += m.group(1).lower() == b"received"
    return count


def trace_date() -> str:
    """The date of a Received: header as Postfix's mail_date() writes it (the lab runs in UTC)."""
    return format_datetime(dt.datetime.now(dt.UTC)) + " (UTC)"


def printable(text: str, limit: int = 255) -> str:
    """Client text fit for a header line, as Postfix's printable(): anything but printable ASCII
    becomes '?' (so no CR, LF or control character reaches the message), then shortened."""
    return _UNPRINTABLE.sub("?", text[:limit])


class GatewayHandler:
    def __init__(self, plan: Plan, labdir: Path, run_dir: Path, deadline: float):
        self.plan, self.s, self.labdir = plan, plan.scenario, labdir
        self.ledger = Ledger(run_dir, "gateway")
        self.deadline = deadline
        self.resolver = nexthop.resolver(plan.ip("dns"), plan.dns_port)
        self.trusted_clients = set(plan.hosts["traffic"][1:])  # Exchange Online's outbound address
        # Every address the gateway listens on or sends from: a next hop there is itself
        # (Postfix's own_inet_addr_list with inet_interfaces = all).
        self.own_ips = frozenset(plan.hosts["gateway"])
        self.tasks: set[asyncio.Task] = set()
        self.queued_bytes = 0  # what the delivery tasks hold, against QUEUE_MAX_BYTES
        self._idle: dict[tuple[str, str], list[tuple[float, Session]]] = {}  # connector, hop ip -> sessions
        self._expired: list[Session] = []
        self._cache_lock = threading.Lock()
        self.resolver.cache = dns.resolver.Cache()  # the lab's records carry a TTL, as a host's resolver caches
        self._tls = {}
        for c in self.s.gateway.connectors:
            if c.certificate:
                files = plan.certs[c.certificate]
                self._tls[c.name] = client_tls_context(str(labdir / files.chain), str(labdir / files.key))
            else:
                self._tls[c.name] = client_tls_context(None, None)

    async def handle_RCPT(
        self, server: LabSMTP, session: LabSession, envelope: LabEnvelope, address: str, options: list[str]
    ) -> str:
        if not routing.may_relay(self.s, session.client_ip in self.trusted_clients, address):
            return f"554 5.7.1 <{address}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    def _refuse(
        self, envelope: LabEnvelope, session: LabSession, msgid: str | None, action: str, reply: str, reason: str
    ) -> str:
        """Refuse a message at end of DATA, as Postfix's cleanup does: nothing is queued, each
        recipient's refusal is logged, and the client gets `reply`."""
        for r in envelope.rcpt_tos:
            self.ledger.emit(
                RcptDecision(
                    event="rcpt",
                    msgid=msgid,
                    rcpt=r.lower(),
                    action=action,
                    reply=reply,
                    reason=reason,
                    client_ip=session.client_ip,
                )
            )
        return reply

    async def handle_DATA(self, server: LabSMTP, session: LabSession, envelope: LabEnvelope) -> str:
        qid = secrets.token_hex(5).upper()
        data = envelope.original_content or b""
        msgid = labgen_id(data) or envelope.envid
        if hop_count(data) + 1 >= HOPCOUNT_LIMIT:  # + 1: the Received: header this hop adds
            # Nothing is queued; the client (or the MTA before it) bounces, as with Postfix.
            return self._refuse(
                envelope, session, msgid, "reject", TOO_MANY_HOPS, f"hop count exceeded (limit {HOPCOUNT_LIMIT})"
            )
        if self.queued_bytes + len(data) > QUEUE_MAX_BYTES:
            return self._refuse(
                envelope, session, msgid, "defer", INSUFFICIENT_STORAGE, f"queue full ({QUEUE_MAX_BYTES} bytes held)"
            )
        self.ledger.emit(
            Received(
                event="received",
                msgid=msgid,
                queue_id=qid,
                mail_from=envelope.mail_from,
                rcpts=[r.lower() for r in envelope.rcpt_tos],
                client_ip=session.client_ip,
                tls=server.tls_version(),
            )
        )
        data = self._received_header(server, session, envelope, qid) + data
        self._enqueue(qid, msgid, envelope.mail_from, list(envelope.rcpt_tos), data, envelope.envid)
        return f"250 2.0.0 Ok: queued as {qid}"

    def _received_header(self, server, session, envelope, qid: str) -> bytes:
        """The trace header Postfix's smtpd prepends (smtpd.c; the lab DNS has no PTR records, so
        the client's name is 'unknown'), with the TLS line of smtpd_tls_received_header = yes."""
        ip = session.peer[0]
        lines = [f"Received: from {printable(session.host_name or 'unknown')} (unknown [{ip}])"]
        ssl_object = server.transport.get_extra_info("ssl_object") if server.transport else None
        if ssl_object is not None:
            cipher, protocol, bits = ssl_object.cipher()
            lines += [
                f"\t(using {protocol} with cipher {cipher} ({bits}/{bits} bits))",
                "\t(No client certificate requested)",
            ]
        proto = ("ESMTP" if session.extended_smtp else "SMTP") + ("S" if ssl_object is not None else "")
        lines.append(f"\tby {self.s.gateway.hostname} (labgen) with {proto} id {qid}")
        when = trace_date()
        if len(envelope.rcpt_tos) == 1:
            lines.append(f"\tfor <{printable(envelope.rcpt_tos[0], 512)}>; {when}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{when}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _enqueue(self, qid, msgid, mail_from, rcpts, data, envid):
        task = asyncio.create_task(self._deliver(qid, msgid, mail_from, rcpts, data, envid))
        self.tasks.add(task)
        self.queued_bytes += len(data)
        task.add_done_callback(lambda t: self._delivery_done(t, qid, msgid, len(data)))

    def _delivery_done(self, task: asyncio.Task, qid: str, msgid, size: int) -> None:
        """Retrieve every delivery task's outcome: a failure is one ledger event, never an asyncio
        "exception was never retrieved" traceback (e.g. a task still running when the lab stops)."""
        self.tasks.discard(task)
        self.queued_bytes -= size
        if not self.tasks and self._idle:
            # Nothing queued: nothing to reuse the cached sessions for. QUIT waits for the next
            # hop's answer, which may be served by this very loop: from a thread.
            threading.Thread(target=self.close_idle, name="labgen-gateway-quit", daemon=True).start()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.ledger.emit(
                DeliveryError(
                    event="delivery_error",
                    msgid=msgid,
                    queue_id=qid,
                    error=printable(f"{type(exc).__name__}: {exc}", 300),
                )
            )

    def _bounce(self, qid, mail_from, envid, failures, data):
        """Tell the sender, as Postfix does: an NDR from MAILER-DAEMON with the null sender."""
        if not mail_from or not failures:
            return  # never bounce a bounce
        ndr_qid = secrets.token_hex(5).upper()
        # As Postfix's bounce daemon posts it: with the one Received: header of local mail.
        ndr = f"Received: by {self.s.gateway.hostname} (labgen)\r\n\tid {ndr_qid}; {trace_date()}\r\n".encode(
            "ascii"
        ) + build_ndr(self.s.gateway.hostname, qid, mail_from, envid, failures, data)
        self.ledger.emit(
            NdrQueued(event="ndr_queued", queue_id=ndr_qid, original_queue_id=qid, to=mail_from, original_msgid=envid)
        )
        self._enqueue(ndr_qid, None, "", [mail_from], ndr, None)

    async def _deliver(self, qid, msgid, mail_from, rcpts, data, envid):
        pending = list(rcpts)  # as given: the local part's case is the recipient's own
        for delay in itertools.chain([0.0], RETRY_S, itertools.repeat(RETRY_S[-1])):
            if delay:
                await asyncio.sleep(delay)
            if not pending or time.monotonic() > self.deadline:
                return
            groups: dict[tuple, list[str]] = {}
            failures: list[tuple[str, str]] = []
            for r in pending:
                domain = r.rpartition("@")[2].lower()
                c = routing.pick_connector(domain, self.s.gateway.connectors)
                if c is None:  # as Postfix's default_transport = error:5.4.4 ...
                    self.ledger.emit(
                        GatewayStatus(
                            event="bounced",
                            msgid=msgid,
                            queue_id=qid,
                            rcpt=r.lower(),
                            connector=None,
                            relay=None,
                            reply=NO_CONNECTOR,
                        )
                    )
                    failures.append((r, NO_CONNECTOR))
                    continue
                groups.setdefault((c.name, c.smarthost or domain, c.smarthost is None), []).append(r)
            still = []
            for (cname, target, by_mx), group in groups.items():
                retry, bounced = await asyncio.to_thread(
                    self._attempt, qid, msgid, mail_from, group, data, envid, cname, target, by_mx
                )
                still += retry
                failures += bounced
            self._bounce(qid, mail_from, envid or msgid, failures, data)
            pending = still

    def _attempt(self, qid, msgid, mail_from, rcpts, data, envid, cname, target, by_mx):
        """One delivery round for recipients sharing a connector and next hop; returns the
        recipients to retry and the (recipient, reply) pairs that bounced."""
        c = next(c for c in self.s.gateway.connectors if c.name == cname)
        try:
            hops = nexthop.next_hops(self.resolver, target, mx=by_mx, own=self.own_ips)
        except nexthop.DnsFailure as e:  # no next hop: DNS, or it would be the gateway itself
            kind = "bounced" if e.permanent else "deferred"
            for r in rcpts:
                self.ledger.emit(
                    GatewayStatus(
                        event=kind,
                        msgid=msgid,
                        queue_id=qid,
                        connector=cname,
                        rcpt=r.lower(),
                        relay=None,
                        reply=e.reply,
                        dsn=e.status,
                    )
                )
            return ([], [(r, e.reply) for r in rcpts]) if e.permanent else (rcpts, [])
        result: Result | None = None
        for hop in hops:
            result = self._send(c, hop, data, mail_from, rcpts, envid or msgid)
            if not any(code == 0 for code, _ in result.replies.values()):
                break  # the host answered; only connection-level failures move on to the next MX
        if result is None:  # next_hops raises DnsFailure rather than return no hop
            raise RuntimeError(f"no next hop for {target}")
        if len(self.tasks) <= 1:
            # The last delivery in the queue: no message will reuse a cached session, so they end
            # now, before this attempt's result is logged (and the lab may be stopped).
            self.close_idle()
        cert = self.plan.scenario.certificates.get(c.certificate) if c.certificate else None
        tls = (
            GatewayTls(
                version=result.tls_version,
                client_certificate=c.certificate,
                client_certificate_cn=cert.cn if cert else None,
            )
            if result.tls_version
            else None
        )
        retry, bounced = [], []
        for r in rcpts:
            code, reply = result.replies.get(r, (0, result.error or "no answer"))
            kind = "sent" if 200 <= code < 300 else "bounced" if code >= 500 else "deferred"
            self.ledger.emit(
                GatewayStatus(
                    event=kind,
                    msgid=msgid,
                    queue_id=qid,
                    connector=cname,
                    rcpt=r.lower(),
                    relay=result.relay,
                    relay_host=result.host,
                    relay_ip=result.ip,
                    reply=reply,
                    source_ip=c.source_ip or self.plan.ip("gateway"),
                    tls=tls,
                )
            )
            if kind == "deferred":
                retry.append(r)
            elif kind == "bounced":
                bounced.append((r, f"host {result.relay} said: {reply}"))
        return retry, bounced

    # ---- the connection cache (Postfix's smtp_connection_cache_on_demand): a session that just
    # delivered waits up to CACHE_TIME_S for the next message to the same next hop.

    def _send(
        self, c: SendConnector, hop: nexthop.Hop, data: bytes, mail_from: str, rcpts: list[str], envid: str | None
    ) -> Result:
        key = (c.name, hop.ip)
        source = c.source_ip or self.plan.ip("gateway")
        for attempt in (1, 2):
            session = self._take(key)
            fresh = session is None
            if session is None:
                session = Session(
                    host=hop.host,
                    ip=hop.ip,
                    port=self.plan.smtp_port,
                    helo=self.s.gateway.hostname,
                    source_ip=source,
                    tls=c.tls,
                    tls_context=self._tls[c.name],
                )
                failed = session.open()
                if failed is not None:
                    return Result.unopened(hop.host, hop.ip, self.plan.smtp_port, rcpts, failed)
            res = session.transact(data, mail_from, rcpts, envid)
            if session.smtp is not None:
                self._put(key, session)
            # A cached connection the next hop has meanwhile closed told nothing about this
            # message: once more on a new one.
            if fresh or attempt == 2 or session.smtp is not None or any(code for code, _ in res.replies.values()):
                break
        return res

    def _take(self, key: tuple[str, str]) -> Session | None:
        now = time.monotonic()
        with self._cache_lock:
            idle = self._idle.get(key, [])
            while idle:
                since, session = idle.pop()
                if now - since <= CACHE_TIME_S and session.used < CACHE_REUSE_LIMIT:
                    return session
                self._expired.append(session)
        self._quit_expired()
        return None

    def _put(self, key: tuple[str, str], session: Session) -> None:
        with self._cache_lock:
            idle = self._idle.setdefault(key, [])
            idle.append((time.monotonic(), session))
            while len(idle) > CACHE_PER_HOP:
                self._expired.append(idle.pop(0)[1])
        self._quit_expired()

    def _quit_expired(self) -> None:
        with self._cache_lock:
            expired, self._expired = self._expired, []
        for session in expired:
            session.quit()

    def close_idle(self) -> None:
        """QUIT every cached session (blocking: from a thread, never the event loop's)."""
        with self._cache_lock:
            self._expired += [session for idle in self._idle.values() for _, session in idle]
            self._idle.clear()
        self._quit_expired()


def gateway_factory(
    plan: Plan, labdir: Path, run_dir: Path, deadline: float
) -> tuple[Callable[[], LabSMTP], GatewayHandler]:
    handler = GatewayHandler(plan, labdir, run_dir, deadline)
    files = plan.certs[gateway_server_cert(plan)]
    tls = server_tls_context(str(labdir / files.chain), str(labdir / files.key))

    def factory() -> LabSMTP:
        return LabSMTP(handler, banner_host=plan.scenario.gateway.hostname, banner_text="ESMTP", tls_context=tls)

    return factory, handler
