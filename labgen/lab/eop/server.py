"""The fake EOP front end: one shared, multi-tenant SMTP server that every tenant's
<tenant>.mail.protection name resolves to. It speaks like EOP (banner, EHLO keywords, TLS 1.2+,
"250 2.6.0 ... Queued mail for delivery") and hands every decision to eop.rules.

What it writes:
- eop.jsonl: the ground truth. Every session (source IP, TLS, client certificate facts), every
  recipient decision with the attribution and why, every delivery and every discard.
- trace.jsonl: the tenants' message trace, one line per (tenant, message, recipient), holding
  only what that tenant's admin would see. Discarded mail is in nobody's trace.
- mailboxes/<address>/<n>-<id>.eml: delivered mail (ledger.mailbox_dir names the directory).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ...model.plan import EOP_POOL_HOST, Plan
from ...results.contracts import (
    Accepted,
    Attribution,
    Certificate,
    Delivered,
    Discarded,
    EopRelay,
    RcptDecision,
    Session,
    TlsFailed,
    TraceEntry,
)
from ..dsn import note_ndr
from ..faults import Facts, Faults, connection_fault, fault_delay, fault_disconnect, fault_reply
from ..ledger import Ledger, clip, header, write_mailbox
from ..pki import TrustStore, cert_info, exo_client_files
from ..smtpd import LabEnvelope, LabSession, LabSMTP, message_id
from ..tls import ServerTls
from . import relay, rules, spf

BANNER = "Microsoft ESMTP MAIL Service ready at {date}"
MAX_SIZE = 157286400  # EOP's 150 MB
# A Message-ID EOP may quote in its reply: one printable token in angle brackets.
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,250}>")
EHLO_KEYWORDS = (
    f"SIZE {MAX_SIZE}",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "STARTTLS",
    "8BITMIME",
    "BINARYMIME",
    "CHUNKING",
    "SMTPUTF8",
)


# The internal server name real rejections end with: [<server>.<region>.prod.outlook.com <time> <id>]
# (TLS Certificates in Exchange Hybrid, Exchange Team blog 2025).
DIAGNOSTIC_HOST = "DM6PR12MB4011.namprd12.prod.outlook.test"


def tenant_guid(tenant: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{tenant}.onmicrosoft.test"))


def with_diagnostic(reply: str, session_id: str) -> str:
    """A 4xx/5xx reply as EOP ends it: with the bracketed server, time and session id admins grep."""
    if reply[:1] not in ("4", "5"):
        return reply
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return f"{reply} [{DIAGNOSTIC_HOST} {now} {session_id}]"


class EopSession(LabSession):
    """A session with what EOP learned of its client, at the first MAIL or RCPT (a STARTTLS
    makes a new session, so the facts after it are the TLS session's)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.facts: rules.Session | None = None
        self.cert: Certificate | None = None  # the client certificate, as the ledger shows it
        self.session_id = secrets.token_hex(8).upper()  # as EOP's banner and replies carry one


class EopEnvelope(LabEnvelope):
    def __init__(self) -> None:
        super().__init__()
        # Each accepted recipient's attribution and decision, acted on at the end of DATA.
        self.decisions: dict[str, tuple[rules.Attribution, rules.Decision]] = {}
        self.prior_from_ip = 0  # transactions from the client's address before this one


class EopSMTP(LabSMTP):
    session: EopSession | None
    envelope: EopEnvelope | None

    def _create_session(self) -> EopSession:
        return EopSession(self.loop)

    def _create_envelope(self) -> EopEnvelope:
        return EopEnvelope()


class EopHandler:
    def __init__(self, plan: Plan, labdir: Path, run_dir: Path):
        self.plan, self.s = plan, plan.scenario
        self.trust = TrustStore.from_plan(plan, labdir)
        self.ledger = Ledger(run_dir, "eop")
        self.trace = Ledger(run_dir, "trace")
        self.mailroot = Path(run_dir) / "mailboxes"
        self.ca_root = str(labdir / plan.ca_root)
        spf.use_lab_dns(plan)
        # Exchange Online presents its certificate when it sends on (a gateway may ask for it).
        exo = exo_client_files(plan)
        self.exo_cert = (str(labdir / exo.chain), str(labdir / exo.key))
        self._ids = itertools.count(1)
        self._from_ip: Counter[str] = Counter()  # messages per source address (throttling)
        self._relays: set[asyncio.Future] = set()
        self.faults = Faults(self.s, "eop")

    # --- aiosmtpd hooks
    async def handle_EHLO(
        self, server: EopSMTP, session: EopSession, envelope: EopEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        tls_active = server.tls_version() is not None
        words = [k for k in EHLO_KEYWORDS if not (k == "STARTTLS" and tls_active)]
        lines = [f"{EOP_POOL_HOST} Hello [{session.client_ip}]"] + words
        return [("250-" if i < len(lines) - 1 else "250 ") + line for i, line in enumerate(lines)]

    def connection_fault(self, do: str, client_ip: str) -> bool:
        """A scenario fault for this connection (down, no-starttls, tls-fail): smtpd acts on it."""
        return connection_fault(self.ledger, self.faults, do, client_ip)

    async def greeting_fault(self, client_ip: str) -> None:
        """A scenario fault: the greeting held back (smtpd waits for this before its 220)."""
        await fault_delay(self.ledger, self.faults, "greeting", Facts(client_ip))

    def tls_failed(self, session: EopSession, reason: str) -> None:
        self.ledger.emit(
            TlsFailed(
                event="tls_failed", client_ip=session.client_ip, helo=clip(session.host_name), reason=clip(reason)
            )
        )

    def _facts(self, server: EopSMTP, session: EopSession) -> rules.Session:
        facts = session.facts
        if facts is None:
            # The chain as the client presented it: any certificate passes the TLS layer (tls.py),
            # and is judged here, as EOP judges it after the handshake.
            chain = server.peer_chain()
            cert = cert_info(chain, self.trust) if chain else None
            facts = rules.Session(
                source_ip=session.client_ip,
                tls=server.tls_version() is not None,
                cert_names=cert["names"] if cert else [],
                cert_trusted=bool(cert and cert["trusted"]),
                cert_problem=cert["problem"] if cert else None,
            )
            session.facts = facts
            session.cert = Certificate.model_validate(cert) if cert else None
            self.ledger.emit(
                Session(
                    event="session",
                    client_ip=session.client_ip,
                    helo=clip(session.host_name),
                    local_ip=server.local_ip(),
                    tls=server.tls_version(),
                    certificate=session.cert,
                )
            )
        return facts

    async def handle_MAIL(
        self, server: EopSMTP, session: EopSession, envelope: EopEnvelope, address: str, options: list[str]
    ) -> str:
        facts = self._facts(server, session)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        # Throttling counts transactions per source address; which of them crosses the limit
        # follows their arrival, how many do not.
        envelope.prior_from_ip = self._from_ip[facts.source_ip]
        self._from_ip[facts.source_ip] += 1
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: EopSMTP, session: EopSession, envelope: EopEnvelope, address: str, options: list[str]
    ) -> str:
        facts = self._facts(server, session)
        mail_from = envelope.mail_from
        if mail_from is None:  # aiosmtpd answers a RCPT before MAIL itself
            raise RuntimeError("RCPT before MAIL reached the handler")
        facts.messages_from_ip = envelope.prior_from_ip
        fault_facts = Facts(facts.source_ip, tuple(facts.cert_names), mail_from, (address,))
        await fault_delay(self.ledger, self.faults, "rcpt", fault_facts, envelope.envid)
        hit = self.faults.take("reply", fault_facts)
        if hit is not None:
            return fault_reply(self.ledger, hit, envelope.envid, address, facts.source_ip, mail_from)
        att = rules.attribute(self.s, facts, mail_from, address)
        dec = rules.decide(self.s, facts, mail_from, address, att)
        reply = with_diagnostic(dec.reply, session.session_id)
        self.ledger.emit(
            RcptDecision(
                event="rcpt",
                msgid=envelope.envid,
                mail_from=clip(mail_from),
                rcpt=clip(address.lower()),
                client_ip=facts.source_ip,
                tls=facts.tls,
                certificate=session.cert,
                attribution=Attribution(**att.as_dict()),
                action=dec.action,
                reply=clip(reply),
                reason=clip(dec.reason),
                tenant=dec.tenant,
            )
        )
        if dec.action == "reject":
            return reply  # a protocol-level rejection: in nobody's message trace
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.decisions[address] = (att, dec)
        return reply

    async def handle_DATA(self, server: EopSMTP, session: EopSession, envelope: EopEnvelope) -> str:
        facts = self._facts(server, session)  # known since the first RCPT
        data = envelope.original_content or b""
        msgid, refused = message_id(envelope, data)
        fault_facts = Facts(facts.source_ip, tuple(facts.cert_names), envelope.mail_from, tuple(envelope.rcpt_tos))
        await fault_delay(self.ledger, self.faults, "data", fault_facts, msgid)
        hit = self.faults.take("disconnect", fault_facts)
        if hit is not None:
            return fault_disconnect(self.ledger, hit[0], server, facts.source_ip, msgid, envelope.rcpt_tos)
        internal = next(self._ids)
        # EOP quotes the message's Message-ID; the client wrote it, so only a well-formed one.
        header_id = header(data, "Message-ID")
        if header_id is None or not _MESSAGE_ID.fullmatch(header_id):
            header_id = f"<{internal}@{EOP_POOL_HOST}>"
        reply = f"250 2.6.0 {header_id} [InternalId={internal:013d}, Hostname={EOP_POOL_HOST}] Queued mail for delivery"
        self.ledger.emit(
            Accepted(
                event="accepted",
                msgid=msgid,
                mail_from=clip(envelope.mail_from),
                rcpts=[clip(r) for r in envelope.rcpt_tos],
                reply=reply,
                size=len(data),
                **refused,
            )
        )
        relays: dict[rules.Route, list[str]] = {}
        checked = await self._spf(session, facts, envelope, data)
        for rcpt, (att, dec) in envelope.decisions.items():
            if dec.action != "deliver":  # a delivery's trace line follows it (below)
                for traced, status in dec.traces:
                    self._trace(traced, msgid, envelope.mail_from, rcpt, status)
            if dec.action == "deliver":
                tenant, mailbox = dec.tenant, dec.mailbox
                if tenant is None or mailbox is None:  # rules.decide names both
                    raise RuntimeError(f"delivery to {clip(rcpt)} names no tenant or mailbox")
                verdict = checked.get(tenant) if att.by == "recipient" else None
                stamped = self._stamp(session, facts, att, tenant, internal, verdict) + data
                path = write_mailbox(self.mailroot, mailbox, msgid, stamped)
                self.ledger.emit(
                    Delivered(
                        event="delivered",
                        msgid=msgid,
                        rcpt=clip(rcpt.lower()),
                        mailbox=mailbox,
                        tenant=tenant,
                        file=str(path.relative_to(self.mailroot.parent)),
                        **({"spf": f"{verdict[0].result} (sender IP is {verdict[0].ip})"} if verdict else {}),
                    )
                )
                note_ndr(self.ledger, data, mailbox, path, self.mailroot)
                for t, status in dec.traces:  # after the delivery: the verdict waits for the trace line
                    self._trace(t, msgid, envelope.mail_from, rcpt, status)
            elif dec.action == "relay" and dec.route is not None:
                relays.setdefault(dec.route, []).append(rcpt)
            else:
                self.ledger.emit(
                    Discarded(
                        event="discarded",
                        msgid=msgid,
                        rcpt=clip(rcpt.lower()),
                        reason=clip(dec.reason),
                        attribution=Attribution(**att.as_dict()),
                        certificate=session.cert,
                        client_ip=session.client_ip,
                    )
                )
        for route, rcpts in relays.items():
            att = envelope.decisions[rcpts[0]][0]
            verdict = checked.get(route.tenant or "") if att.by == "recipient" else None
            stamped = self._stamp(session, facts, att, route.tenant, internal, verdict) + data
            task = asyncio.ensure_future(self._relay(route, stamped, envelope.mail_from or "", rcpts, msgid))
            self._relays.add(task)
            task.add_done_callback(self._relays.discard)
        return reply

    async def _spf(
        self, session: EopSession, facts: rules.Session, envelope: EopEnvelope, data: bytes
    ) -> dict[str, tuple[spf.SpfVerdict, str | None]]:
        """SPF for inbound (unattributed) mail, once per recipient tenant (its connectors decide
        Enhanced Filtering). Mail an OnPremises connector attributed is the tenant's own."""
        tenants = {
            dec.tenant
            for att, dec in envelope.decisions.values()
            if att.by == "recipient" and dec.tenant and dec.action in ("deliver", "relay")
        }
        loop = asyncio.get_running_loop()
        out = {}
        for tenant in sorted(tenants):
            try:
                out[tenant] = await loop.run_in_executor(
                    None, spf.evaluate, self.s, facts, session.host_name, envelope.mail_from or "", tenant, data
                )
            except Exception as e:  # a lab fault (DNS gone): say so in the header, keep the mail
                out[tenant] = (spf.SpfVerdict("temperror", facts.source_ip, f"lab fault: {type(e).__name__}"), None)
        return out

    def _stamp(
        self,
        session: EopSession,
        facts: rules.Session,
        att: rules.Attribution,
        tenant: str | None,
        internal: int,
        checked: tuple[spf.SpfVerdict, str | None] | None = None,
    ) -> bytes:
        """The headers EOP adds: its Received line and how it classified the message
        (Message Attribution blog; Demystifying hybrid mail flow; eopfieldnotes)."""
        attributed = att.tenant or tenant
        internal_mail = att.by in ("certificate", "ip")
        auth_as = "Internal" if internal_mail else "Anonymous"
        lines = [
            f"Received: from {session.host_name} ({session.client_ip}) by {EOP_POOL_HOST} "
            f"with ESMTP{'S' if facts.tls else ''}; id {internal}",
            f"X-MS-Exchange-Organization-AuthAs: {auth_as}",
            f"X-MS-Exchange-Organization-AuthSource: {EOP_POOL_HOST}",
            f"X-MS-Exchange-CrossTenant-AuthAs: {auth_as}",
        ]
        if attributed:
            org = self.s.tenants[attributed].domains[0].name
            lines += [
                f"X-MS-Exchange-CrossTenant-Id: {tenant_guid(attributed)}",
                f"X-OriginatorOrg: {org}",
                f"X-EOPTenantAttributedMessage: {tenant_guid(attributed)}:0",
            ]
        if checked is not None:
            verdict, helo = checked
            lines += verdict.headers(helo)
        lines.append("X-EOPAttributedMessage: 0")
        return ("\r\n".join(lines) + "\r\n").encode()

    async def _relay(
        self, route: rules.Route, data: bytes, mail_from: str, rcpts: list[str], msgid: str | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                None, relay.send, self.plan, self.ca_root, route, data, mail_from, rcpts, msgid, self.exo_cert
            )
        except Exception as e:  # a lab fault, not EOP behaviour: say so in the ledger, keep serving
            why = f"451 4.3.0 the lab's EOP failed to relay: {type(e).__name__}: {e}"
            outcomes = {r: relay.Outcome("relay_deferred", why, None, route.host, None) for r in rcpts}
        for rcpt in rcpts:
            o = outcomes[rcpt]
            self.ledger.emit(
                EopRelay(
                    event=o.event,
                    msgid=msgid,
                    rcpt=clip(rcpt.lower()),
                    tenant=route.tenant,
                    connector=route.connector,
                    relay=o.relay,
                    relay_host=o.relay_host,
                    reply=clip(o.reply),
                    tls=o.tls,
                )
            )

    def _trace(self, tenant: str, msgid: str | None, sender: str | None, rcpt: str, status: str) -> None:
        self.trace.emit(
            TraceEntry(
                event="trace", tenant=tenant, msgid=msgid, sender=clip(sender), rcpt=clip(rcpt.lower()), status=status
            )
        )


def eop_factory(plan: Plan, labdir: Path, run_dir: Path) -> Callable[[], EopSMTP]:
    handler = EopHandler(plan, labdir, run_dir)
    files = plan.certs["eop-server"]
    # EOP asks for a client certificate and takes any at the TLS layer (pyOpenSSL: tls.py). It sees
    # a TLS 1.0/1.1 client's attempt and refuses it itself (rules.tls_refusal), not OpenSSL's floor.
    tls = ServerTls(
        str(labdir / files.chain), str(labdir / files.key), request_client_cert=True, refuse_version=rules.tls_refusal
    )

    def factory() -> EopSMTP:
        return EopSMTP(handler, banner_host=EOP_POOL_HOST, banner_text=BANNER, tls=tls, data_size_limit=MAX_SIZE)

    return factory
