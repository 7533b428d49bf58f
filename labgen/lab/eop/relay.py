"""EOP's outbound leg: a message relayed through a tenant (rules.Route of kind 'smtp') is sent
on over real SMTP to the route's host (an outbound connector's smart host, or the recipient
domain's MX found in the lab DNS), with the connector's TLS settings checked as Exchange Online
checks them (New-OutboundConnector: TlsSettings, TlsDomain). Blocking: the server runs it in a
thread after it has answered the client."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from ...model.plan import Plan
from .. import nexthop, smtp_client
from ..smtp_client import client_tls_context
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


def open_session(
    plan: Plan,
    ca_root: str,
    hop: nexthop.Hop,
    tls_settings: str | None,
    tls_domain: str | None,
    source_ip: str,
    client_cert: tuple[str, str] | None = None,
) -> tuple[smtp_client.Session | None, tuple[int, str] | None]:
    """Exchange Online's outbound SMTP session to a host, its TLS as an outbound connector's
    TlsSettings ask (None: opportunistic): the open session, or what every recipient is told."""
    ctx = client_tls_context(*(client_cert or (None, None)))
    if tls_settings in ("CertificateValidation", "DomainValidation"):
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca_root)
    session = smtp_client.Session(
        host=hop.host,
        ip=hop.ip,
        port=plan.smtp_port,
        helo=EXO_OUTBOUND_HELO,
        source_ip=source_ip,
        tls="encrypt" if tls_settings else "may",
        tls_context=ctx,
    )
    failed = session.open()
    if failed is not None:
        code, text = failed
        if code == 0:
            # Exchange Online reports a next hop it could not talk to as 4.4.317 and retries.
            why = "UntrustedRoot" if "CERTIFICATE_VERIFY_FAILED" in text else text
            return None, (450, f"450 4.4.317 Cannot connect to remote server [Message={why}]")
        return None, failed
    sock = session.smtp.sock if session.smtp else None
    if isinstance(sock, ssl.SSLSocket):
        route = rules.Route("smtp", hop.host, tls_settings=tls_settings, tls_domain=tls_domain)
        problem = check_server_certificate(route, sock.getpeercert(binary_form=True), verified=True)
        if problem:
            session.close()
            return None, (450, problem)
    return session, None


def send(
    plan: Plan,
    ca_root: str,
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
    relay = f"{hop.host}[{hop.ip}]:{plan.smtp_port}"
    session, failed = open_session(
        plan, ca_root, hop, route.tls_settings, route.tls_domain, plan.ip("eop"), client_cert
    )
    if session is None:
        code, text = failed or (450, "no session")
        return {r: _outcome(code, text, relay, hop.host, None) for r in rcpts}
    tls = session.tls_version
    res = session.transact(data, mail_from, rcpts, envid)
    session.quit()
    return {r: _outcome(*res.replies.get(r, (0, res.error or "no answer")), relay, hop.host, tls) for r in rcpts}


def _outcome(code: int, reply: str, relay: str | None, host: str, tls: str | None) -> Outcome:
    if 200 <= code < 300:
        return Outcome("relayed", reply, relay, host, tls)
    if code >= 500:
        return Outcome("relay_bounced", reply, relay, host, tls)
    if code == 0:
        reply = f"450 4.4.317 Cannot connect to remote server [Message={reply}]"
    return Outcome("relay_deferred", reply, relay, host, tls)
