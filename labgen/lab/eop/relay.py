"""EOP's outbound leg: a message relayed through a tenant (rules.Route of kind 'smtp') is sent
on over real SMTP to the route's host (an outbound connector's smart host, or the recipient
domain's MX found in the lab DNS), with the connector's TLS settings checked as Exchange Online
checks them (New-OutboundConnector: TlsSettings, TlsDomain). Blocking: the server runs it in a
thread after it has answered the client."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from ...model.plan import Plan
from .. import nexthop
from ..smtp_client import Result, _reply, client_tls_context
from . import rules

EXO_OUTBOUND_HELO = "outbound.protection.outlook.test"  # as the traffic generator's Exchange Online


@dataclass(frozen=True)
class Outcome:
    event: Literal["relayed", "relay_deferred", "relay_bounced"]
    reply: str
    relay: str | None
    relay_host: str | None
    tls: str | None


def _names(der: bytes) -> tuple[str, list[str]]:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        sans = []
    return cn, sans


def check_server_certificate(route: rules.Route, der: bytes | None, verified: bool) -> str | None:
    """What Exchange Online says when the smart host's certificate fails the connector's
    TlsSettings (None: it passes). The texts follow the documented 450 4.4.317 form."""
    settings = route.tls_settings
    if settings in (None, "EncryptionOnly"):
        return None
    if der is None:
        return "450 4.4.317 Cannot connect to remote server [Message=no certificate was presented]"
    cn, sans = _names(der)
    if not verified:
        return f"450 4.4.317 Cannot connect to remote server [Message=UntrustedRoot Presented Subject: CN={cn}]"
    if settings == "DomainValidation" and route.tls_domain:
        if not any(rules.name_matches(route.tls_domain, n) for n in [cn, *sans]):
            return (
                f"450 4.4.317 Cannot connect to remote server [Message=SubjectMismatch Expected Subject: "
                f"{route.tls_domain}. Presented Subject: CN={cn}]"
            )
    return None


def send(
    plan: Plan,
    labdir_ca: str,
    route: rules.Route,
    data: bytes,
    mail_from: str,
    rcpts: list[str],
    envid: str | None,
    client_cert: tuple[str, str] | None = None,
) -> dict[str, Outcome]:
    """Relay one message to the route's host for these recipients; each recipient's outcome."""
    resolver = nexthop.resolver(plan.ip("dns"), plan.dns_port)
    try:
        hop = nexthop.next_hops(resolver, route.host, mx=route.mx)[0]
    except nexthop.DnsFailure as e:
        if e.permanent:
            return {r: Outcome("relay_bounced", f"550 {e.reply}", None, route.host, None) for r in rcpts}
        return {r: Outcome("relay_deferred", f"451 {e.reply}", None, route.host, None) for r in rcpts}
    required = route.tls_settings is not None
    ctx = client_tls_context(*(client_cert or (None, None)))
    if route.tls_settings in ("CertificateValidation", "DomainValidation"):
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(labdir_ca)
    relay = f"{hop.host}[{hop.ip}]:{plan.smtp_port}"
    try:
        smtp = smtplib.SMTP(timeout=10, source_address=(plan.ip("eop"), 0))
        smtp.connect(hop.ip, plan.smtp_port)
        smtp.ehlo(EXO_OUTBOUND_HELO)
        tls = None
        if smtp.has_extn("starttls"):
            try:
                smtp.starttls(context=ctx)
            except ssl.SSLCertVerificationError as e:
                smtp.close()
                msg = f"450 4.4.317 Cannot connect to remote server [Message=UntrustedRoot {e.verify_message}]"
                return {r: Outcome("relay_deferred", msg, relay, hop.host, None) for r in rcpts}
            sock = smtp.sock
            if isinstance(sock, ssl.SSLSocket):
                tls = sock.version()
                problem = check_server_certificate(
                    route, sock.getpeercert(binary_form=True), verified=ctx.verify_mode != ssl.CERT_NONE
                )
                if problem:
                    smtp.close()
                    return {r: Outcome("relay_deferred", problem, relay, hop.host, tls) for r in rcpts}
            smtp.ehlo(EXO_OUTBOUND_HELO)
        elif required:
            smtp.close()
            msg = "451 5.7.3 STARTTLS is required to send mail"  # the connector requires TLS; the host offers none
            return {r: Outcome("relay_deferred", msg, relay, hop.host, None) for r in rcpts}
        res = Result(host=hop.host, ip=hop.ip, port=plan.smtp_port, tls_version=tls)
        dsn = smtp.has_extn("dsn")
        code, text = smtp.mail(mail_from, [f"ENVID={envid}"] if envid and dsn else [])
        if code >= 300:
            res.replies = {r: (code, _reply(code, text)) for r in rcpts}
        else:
            accepted: list[str] = []
            for r in rcpts:
                rcode, rtext = smtp.rcpt(r)
                res.replies[r] = (rcode, _reply(rcode, rtext))
                if rcode < 300:
                    accepted.append(r)
            if accepted:
                dcode, dtext = smtp.data(data)
                res.replies.update({r: (dcode, _reply(dcode, dtext)) for r in accepted})
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    except (TimeoutError, OSError, smtplib.SMTPException) as e:
        return {
            r: Outcome("relay_deferred", f"451 4.4.0 conversation with {relay} failed: {e}", relay, hop.host, None)
            for r in rcpts
        }
    out: dict[str, Outcome] = {}
    for r in rcpts:
        c, reply = res.replies.get(r, (0, "no answer"))
        if 200 <= c < 300:
            out[r] = Outcome("relayed", reply, relay, hop.host, tls)
        else:
            out[r] = Outcome("relay_bounced" if c >= 500 else "relay_deferred", reply, relay, hop.host, tls)
    return out
