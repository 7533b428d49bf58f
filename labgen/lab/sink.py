"""Internet MX sinks: the mail servers of the non-Microsoft domains. They accept any recipient in
their domains, keep each message as an .eml file, and log what they received."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import spf

from ..model.plan import Plan, sink_host
from ..model.scenario import domain_of
from ..results.contracts import Delivered, RcptDecision
from .dsn import note_ndr
from .eop.spf import use_lab_dns
from .faults import Facts, Faults, connection_fault, fault_delay, fault_disconnect, fault_reply
from .ledger import Ledger, clip, write_mailbox
from .smtpd import LabEnvelope, LabSession, LabSMTP, message_id, server_tls_context

# Fix NDR error 550 5.7.23 in Exchange Online: the destination checks SPF and the sending
# address is not in the sender domain's record.
REPLY_SPF_FAIL = "550 5.7.23 The message was rejected because of Sender Policy Framework violation"


class SinkHandler:
    def __init__(self, plan: Plan, run_dir: Path):
        self.domains = set(plan.scenario.internet.domains)
        self.check_spf = plan.scenario.internet.check_spf
        self.faults = Faults(plan.scenario, "sink")
        self.ledger = Ledger(run_dir, "sink")
        self.mailroot = Path(run_dir) / "mailboxes"

    # Any local part in the sink's domains is a mailbox: the client names it, so its directory is
    # write_mailbox's encoding of the address and ledger fields show it clipped.
    async def handle_RCPT(
        self, server: LabSMTP, session: LabSession, envelope: LabEnvelope, address: str, options: list[str]
    ) -> str:
        if domain_of(address) not in self.domains:
            return self._refuse(envelope, address, "554 5.7.1 Relay access denied")
        fault_facts = Facts(session.client_ip, (), envelope.mail_from, (address,))
        await fault_delay(self.ledger, self.faults, "rcpt", fault_facts, envelope.envid)
        hit = self.faults.take("reply", fault_facts)
        if hit is not None:
            return fault_reply(self.ledger, hit, envelope.envid, address, session.client_ip, envelope.mail_from)
        failed = await self._spf_fail(session, envelope) if self.check_spf else None
        if failed:
            return self._refuse(envelope, address, REPLY_SPF_FAIL, reason=failed, client_ip=session.client_ip)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    def connection_fault(self, do: str, client_ip: str) -> bool:
        """A scenario fault for this connection (down, no-starttls, tls-fail): smtpd acts on it."""
        return connection_fault(self.ledger, self.faults, do, client_ip)

    async def greeting_fault(self, client_ip: str) -> None:
        """A scenario fault: the greeting held back (smtpd waits for this before its 220)."""
        await fault_delay(self.ledger, self.faults, "greeting", Facts(client_ip))

    def _refuse(self, envelope: LabEnvelope, address: str, reply: str, **why: str) -> str:
        """A refused recipient, in the ledger as the verdict reads it."""
        self.ledger.emit(
            RcptDecision(
                event="rcpt",
                msgid=envelope.envid,
                rcpt=clip(address.lower()),
                action="reject",
                reply=reply,
                mail_from=clip(envelope.mail_from or "") if why else None,
                **{k: clip(v) for k, v in why.items()},
            )
        )
        return reply

    async def _spf_fail(self, session: LabSession, envelope: LabEnvelope) -> str | None:
        """Why the sender's SPF hard-fails for this client (None: it does not). Judged once per
        transaction; the MAIL FROM identity, or postmaster@HELO for a null sender (RFC 7208 2.4)."""
        if envelope.spf_result is None:
            identity = envelope.mail_from or f"postmaster@{session.host_name or 'unknown'}"
            try:
                result, _ = await asyncio.to_thread(
                    spf.check2, i=session.client_ip, s=identity, h=session.host_name or "unknown"
                )
            except Exception as e:  # a lab fault (DNS gone): temperror, which refuses nothing
                result = f"temperror ({type(e).__name__})"
            envelope.spf_result = f"spf={result} for {domain_of(identity)} from {session.client_ip}"
        return envelope.spf_result if envelope.spf_result.startswith("spf=fail ") else None

    async def handle_DATA(self, server: LabSMTP, session: LabSession, envelope: LabEnvelope) -> str:
        data = envelope.original_content or b""
        msgid, refused = message_id(envelope, data)
        fault_facts = Facts(session.client_ip, (), envelope.mail_from, tuple(envelope.rcpt_tos))
        await fault_delay(self.ledger, self.faults, "data", fault_facts, msgid)
        hit = self.faults.take("disconnect", fault_facts)
        if hit is not None:
            return fault_disconnect(self.ledger, hit[0], server, session.client_ip, msgid, envelope.rcpt_tos)
        for rcpt in envelope.rcpt_tos:
            path = write_mailbox(self.mailroot, rcpt.lower(), msgid, data)
            self.ledger.emit(
                Delivered(
                    event="delivered",
                    msgid=msgid,
                    rcpt=clip(rcpt.lower()),
                    mailbox=clip(rcpt.lower()),
                    client_ip=session.client_ip,
                    tls=server.tls_version(),
                    file=str(path.relative_to(self.mailroot.parent)),
                    **refused,
                )
            )
            note_ndr(self.ledger, data, clip(rcpt.lower()), path, self.mailroot)
        return "250 2.0.0 Ok: queued"


def sink_factory(plan: Plan, labdir: Path, run_dir: Path) -> Callable[[], LabSMTP]:
    handler = SinkHandler(plan, run_dir)
    if plan.scenario.internet.check_spf:
        use_lab_dns(plan)
    files = plan.certs["sink-server"]
    tls = server_tls_context(str(labdir / files.chain), str(labdir / files.key))
    host = sink_host(plan.scenario)

    def factory() -> LabSMTP:
        return LabSMTP(handler, banner_host=host, banner_text="ESMTP", tls_context=tls)

    return factory
