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
import hashlib
import itertools
import re
import secrets
import threading
import time
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path

import dns.resolver
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..model.plan import Plan, gateway_server_cert
from ..model.scenario import Scenario, SendConnector, domain_of, routing_domain
from ..results.contracts import DeliveryError, GatewayStatus, GatewayTls, NdrQueued, RcptDecision, Received
from . import nexthop, routing
from .dsn import build_ndr
from .ledger import Ledger, labgen_id
from .pki import TrustStore, exo_client_fingerprint
from .smtp_client import TLS_HANDSHAKE_FAILED, Result, Session, client_tls_context, secure_tls_context
from .smtpd import LabEnvelope, LabSession, LabSMTP
from .tls import ServerTls

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
# At tls 'may', Postfix retries a failed TLS handshake in plaintext once the message has spent
# minimal_backoff_time in the queue (smtp.h PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE). The lab's
# queue manager retries every second, but its smtp transports keep Postfix's default of 300 s for
# this test (master.cf -o minimal_backoff_time), so a TLS failure stays visible as deferred during a
# run instead of becoming an unattributed plaintext delivery a second later; the built-in gateway
# does the same.
PLAINTEXT_FALLBACK_AFTER_S = 300.0
# Postfix smtpd's replies (smtpd_check.c) to RCPT.
RELAY_DENIED = "554 5.7.1 <{}>: Relay access denied"
UNKNOWN_RELAY_RECIPIENT = "550 5.1.1 <{}>: Recipient address rejected: User unknown in relay recipient table"
UNKNOWN_VIRTUAL_ALIAS = "550 5.1.1 <{}>: Recipient address rejected: User unknown in virtual alias table"
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


# ---------------------------------------------------------------- the gateway's policy
# Shared with the Postfix configuration (engines/postfix.py), so both gateways decide alike.


def relay_recipients(s: Scenario) -> list[str] | None:
    """The recipients the gateway accepts for the domains whose MX it is (relay_recipient_maps):
    the tenants' mailboxes in those domains; None = no recipient validation (accept any)."""
    if not s.gateway.recipient_validation:
        return None
    relay = set(routing.inbound_domains(s))
    return sorted({m.lower() for t in s.tenants.values() for m in t.mailboxes if domain_of(m) in relay})


def gateway_tenants(s: Scenario) -> list[str]:
    """The tenants whose mail this gateway carries: it is MX for one of their domains, or their
    outbound routing (an outbound connector, or outbound_via_gateway) points at it."""
    host = s.gateway.hostname
    return [
        name
        for name, t in s.tenants.items()
        if any(d.mx == "gateway" for d in t.domains) or any(host in c.smart_hosts for c in t.outbound(host))
    ]


def relay_sender_domains(s: Scenario) -> list[str]:
    """exchange_online_relay 'certificate': the P1 sender domains Exchange Online may relay
    through the gateway (the gateway's tenants' accepted and routing domains), matched exactly."""
    out = []
    for name in gateway_tenants(s):
        out += [d.name for d in s.tenants[name].domains] + [routing_domain(name)]
    return sorted(set(out))


def postmaster_alias(s: Scenario) -> str | None:
    """Where postmaster@<gateway hostname> goes (Postfix virtual_alias_maps): the first mailbox of
    the gateway's tenants (else of any tenant); None when the scenario has no mailbox at all."""
    for name in [*gateway_tenants(s), *s.tenants]:
        if s.tenants[name].mailboxes:
            return s.tenants[name].mailboxes[0].lower()
    return None


def postmaster_domain(s: Scenario) -> str | None:
    """The gateway's own name as a virtual alias domain (so postmaster@ it is accepted at RCPT),
    unless it is already a relay domain (Postfix: a domain is in one class only)."""
    if postmaster_alias(s) is None or s.gateway.hostname in routing.inbound_domains(s):
        return None
    return s.gateway.hostname


def postmaster_address(s: Scenario) -> str:
    return f"postmaster@{s.gateway.hostname}"


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
        self.relay_by_ip = self.s.gateway.exchange_online_relay == "ip"
        self.relay_senders = frozenset(relay_sender_domains(self.s))
        self.exo_fingerprint = exo_client_fingerprint(plan, labdir).replace(":", "").lower()
        self.trust = TrustStore.from_plan(plan, labdir)
        self.relay_domains = frozenset(routing.inbound_domains(self.s))
        recipients = relay_recipients(self.s)
        self.recipients = None if recipients is None else frozenset(recipients)
        self.alias_domain = postmaster_domain(self.s)
        alias = postmaster_alias(self.s)
        self.aliases = {postmaster_address(self.s): alias} if alias else {}
        # Every address the gateway listens on or sends from: a next hop there is itself
        # (Postfix's own_inet_addr_list with inet_interfaces = all).
        self.own_ips = frozenset(plan.hosts["gateway"])
        self.tasks: set[asyncio.Task] = set()
        self.queued_bytes = 0  # what the delivery tasks hold, against QUEUE_MAX_BYTES
        self._idle: dict[tuple[str, str, str], list[tuple[float, Session]]] = {}  # connector, hop ip, name -> sessions
        self._expired: list[Session] = []
        self._cache_lock = threading.Lock()
        self.resolver.cache = dns.resolver.Cache()  # the lab's records carry a TTL, as a host's resolver caches
        self._tls = {}
        for c in self.s.gateway.connectors:
            files = plan.certs[c.certificate] if c.certificate else None
            chain, key = (str(labdir / files.chain), str(labdir / files.key)) if files else (None, None)
            versions = c.tls_range  # smtp_tls_protocols
            if c.tls == "secure":  # smtp_tls_CAfile: the lab's root
                self._tls[c.name] = secure_tls_context(str(labdir / plan.ca_root), chain, key, versions)
            else:
                self._tls[c.name] = client_tls_context(chain, key, versions)

    def _exo_client(self, server: LabSMTP) -> bool:
        """Did the client present Exchange Online's certificate (check_ccert_access by its
        SHA-256 fingerprint; the chain need not verify for that, as in Postfix)?"""
        der = server.peer_certificate()
        return der is not None and hashlib.sha256(der).hexdigest() == self.exo_fingerprint

    def may_relay(self, server: LabSMTP, session: LabSession, envelope: LabEnvelope) -> bool:
        """smtpd_relay_restrictions: permit_mynetworks ('ip'), or ('certificate') a P1 sender of
        the gateway's tenants' domains with Exchange Online's client certificate."""
        if self.relay_by_ip:
            return session.client_ip in self.trusted_clients
        sender = envelope.mail_from or ""
        return "@" in sender and domain_of(sender) in self.relay_senders and self._exo_client(server)

    async def handle_RCPT(
        self, server: LabSMTP, session: LabSession, envelope: LabEnvelope, address: str, options: list[str]
    ) -> str:
        domain = domain_of(address)
        local = domain in self.relay_domains or domain == self.alias_domain  # reject_unauth_destination passes
        if not local and not self.may_relay(server, session, envelope):
            return RELAY_DENIED.format(address)
        # smtpd_reject_unlisted_recipient: the recipient tables of the domain's class.
        if domain == self.alias_domain and self._alias(address) is None:
            return UNKNOWN_VIRTUAL_ALIAS.format(address)
        if domain in self.relay_domains and self.recipients is not None and address.lower() not in self.recipients:
            if self._alias(address) is None:
                return UNKNOWN_RELAY_RECIPIENT.format(address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    def _alias(self, rcpt: str) -> str | None:
        """virtual_alias_maps: postmaster@<gateway hostname> -> a lab mailbox."""
        return self.aliases.get(rcpt.lower())

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
        # virtual_alias_maps rewrites the recipients as cleanup queues the message.
        rcpts = list(dict.fromkeys(self._alias(r) or r for r in envelope.rcpt_tos))
        self._enqueue(qid, msgid, envelope.mail_from, rcpts, data, envelope.envid)
        return f"250 2.0.0 Ok: queued as {qid}"

    def _received_header(self, server, session, envelope, qid: str) -> bytes:
        """The trace header Postfix's smtpd prepends (smtpd.c; the lab DNS has no PTR records, so
        the client's name is 'unknown'), with the TLS line of smtpd_tls_received_header = yes."""
        ip = session.peer[0]
        lines = [f"Received: from {printable(session.host_name or 'unknown')} (unknown [{ip}])"]
        cipher = server.tls_cipher_bits()
        if cipher is not None:
            name, bits = cipher
            lines += [
                f"\t(using {server.tls_version()} with cipher {name} ({bits}/{bits} bits))",
                self._ccert_line(server),
            ]
        proto = ("ESMTP" if session.extended_smtp else "SMTP") + ("S" if cipher is not None else "")
        lines.append(f"\tby {self.s.gateway.hostname} (labgen) with {proto} id {qid}")
        when = trace_date()
        if len(envelope.rcpt_tos) == 1:
            lines.append(f"\tfor <{printable(envelope.rcpt_tos[0], 512)}>; {when}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{when}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def _ccert_line(self, server: LabSMTP) -> str:
        """smtpd_tls_ask_ccert = yes: what Postfix's Received: header says of the client
        certificate, verified against smtpd_tls_CAfile (the lab root) with what was presented."""
        chain = server.peer_chain()
        if not chain:
            return "\t(Client did not present a certificate)"
        cert = x509.load_der_x509_certificate(chain[0])

        def cn(name: x509.Name) -> str:
            attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
            return str(attrs[0].value) if attrs else ""

        trusted, _ = self.trust.judge(chain, dt.datetime.now(dt.UTC))
        return (
            f'\t(Client CN "{printable(cn(cert.subject))}", Issuer "{printable(cn(cert.issuer))}" '
            f"({'verified OK' if trusted else 'not verified'}))"
        )

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
        arrival = time.monotonic()
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
                    self._attempt, qid, msgid, mail_from, group, data, envid, cname, target, by_mx, arrival
                )
                still += retry
                failures += bounced
            self._bounce(qid, mail_from, envid or msgid, failures, data)
            pending = still

    def _attempt(self, qid, msgid, mail_from, rcpts, data, envid, cname, target, by_mx, arrival):
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
            # smtp_tls_secure_cert_match = nexthop, dot-nexthop: the smarthost, or the recipient domain.
            result = self._send(c, hop, data, mail_from, rcpts, envid or msgid, target, arrival)
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
        self,
        c: SendConnector,
        hop: nexthop.Hop,
        data: bytes,
        mail_from: str,
        rcpts: list[str],
        envid: str | None,
        tls_nexthop: str,
        arrival: float,
    ) -> Result:
        # A session verified for one next hop is not reused for another (Postfix keys its TLS
        # connection cache by the TLS policy's next hop too).
        key = (c.name, hop.ip, tls_nexthop if c.tls == "secure" else "")
        source = c.source_ip or self.plan.ip("gateway")
        for attempt in (1, 2):
            session = self._take(key)
            fresh = session is None
            if session is None:
                session = self._open(c, hop, source, c.tls, tls_nexthop)
                failed = session.open()
                if failed == (0, TLS_HANDSHAKE_FAILED) and c.tls == "may":
                    if time.monotonic() - arrival >= PLAINTEXT_FALLBACK_AFTER_S:
                        session = self._open(c, hop, source, "none", tls_nexthop)  # RETRY_AS_PLAINTEXT
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

    def _open(self, c: SendConnector, hop: nexthop.Hop, source: str, tls: str, tls_nexthop: str) -> Session:
        return Session(
            host=hop.host,
            ip=hop.ip,
            port=self.plan.smtp_port,
            helo=c.helo or self.s.gateway.hostname,  # master.cf -o smtp_helo_name
            source_ip=source,
            tls=tls,
            tls_context=self._tls[c.name],
            tls_nexthop=tls_nexthop,
        )

    def _take(self, key: tuple[str, str, str]) -> Session | None:
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

    def _put(self, key: tuple[str, str, str], session: Session) -> None:
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
    # smtpd_tls_ask_ccert = yes, smtpd_tls_CAfile = the lab root: a client certificate is asked for,
    # never required. (Unlike Postfix, Python's ssl fails the handshake on a client certificate that
    # does not chain to the lab's CA; in the lab only Exchange Online presents one, and its does.)
    # smtpd_tls_ask_ccert = yes: a client certificate is asked for, never required, and like
    # Postfix any certificate completes the handshake (tls.ServerTls); the policy judges it.
    tls = ServerTls(str(labdir / files.chain), str(labdir / files.key))

    def factory() -> LabSMTP:
        return LabSMTP(handler, banner_host=plan.scenario.gateway.hostname, banner_text="ESMTP", tls=tls)

    return factory, handler
