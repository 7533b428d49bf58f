"""EOP's decisions as plain functions: which tenant a message is attributed to, and what happens
to each recipient. No SMTP here, so every rule is table-tested (tests/test_eop_rules.py).

Sources (DESIGN.md §1): MC1226222 (attribution order: certificate name of an OnPremises inbound
connector, then P1 MAIL FROM domain, then RCPT TO domain), New-InboundConnector
(TlsSenderCertificateName matching; '*.contoso.com' covers the domain and all subdomains),
KB 3212877 (550 5.7.64 TenantAttribution), Directory Based Edge Blocking (550 5.4.1).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Literal

from ...model.scenario import Scenario, domain_of, routing_domain

By = Literal["certificate", "ip", "recipient"]

REPLY_QUEUED = "250 2.1.5 Recipient OK"
REPLY_RELAY_DENIED = "550 5.7.64 TenantAttribution; Relay Access Denied"
REPLY_DBEB = "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)"
REPLY_TLS_REQUIRED = "451 5.7.3 STARTTLS is required to send mail"
REPLY_PARTNER_MISMATCH = (
    "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that "
    "matched the message's sender domain, but the message did not meet its {what} requirement"
)


@dataclass(frozen=True)
class Attribution:
    tenant: str | None
    by: By | None
    connector: str | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    action: Literal["deliver", "discard", "reject"]
    reply: str
    reason: str
    mailbox: str | None = None  # the mailbox the message lands in (deliver)
    tenant: str | None = None  # the recipient's tenant, whose message trace may show it
    trace_visible: bool = False  # does the recipient tenant's admin see it in message trace?


@dataclass
class Session:
    """What EOP knows about an SMTP session when it decides."""

    source_ip: str
    tls: bool = False
    cert_names: list[str] = field(default_factory=list)  # CN + SANs of the client certificate
    cert_trusted: bool = False


def name_matches(connector_name: str, cert_name: str) -> bool:
    """TlsSenderCertificateName vs one CN/SAN of the presented certificate.

    '*.contoso.com' covers contoso.com and every subdomain of it (so also a certificate meant
    for Internet mail, which is Microsoft's warning); a plain name must match exactly.
    Certificate names are compared as written (a wildcard certificate's '*.x' is just a name).
    """
    pattern, name = connector_name.lower(), cert_name.lower()
    if pattern.startswith("*."):
        base = pattern[2:]
        name = name[2:] if name.startswith("*.") else name
        return name == base or name.endswith("." + base)
    return pattern == name


def _ip_in(ip: str, cidrs: list[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(c) for c in cidrs)


def attribute(s: Scenario, session: Session, mail_from: str, rcpt: str) -> Attribution:
    onprem = [(t, c) for t, ten in s.tenants.items() for c in ten.inbound_connectors if c.type == "OnPremises"]
    # 1. The certificate's CN/SAN matches an OnPremises connector's TlsSenderCertificateName.
    if session.tls and session.cert_names:
        for tenant, c in onprem:
            if c.tls_sender_certificate_name:
                hit = next((n for n in session.cert_names if name_matches(c.tls_sender_certificate_name, n)), None)
                if hit:
                    return Attribution(
                        tenant,
                        "certificate",
                        c.name,
                        f"certificate name '{hit}' matches TlsSenderCertificateName "
                        f"'{c.tls_sender_certificate_name}' of tenant {tenant}'s OnPremises connector",
                    )
    # 2. The source IP is in an OnPremises connector's SenderIPAddresses and the P1 MAIL FROM
    # domain is one of that tenant's accepted domains (Microsoft: EOP "verifies that the sender
    # domain is an accepted domain for your organization"). This also picks among tenants that
    # list one shared IP.
    sender_tenant = s.tenant_of_domain(domain_of(mail_from)) if mail_from else None
    for tenant, c in onprem:
        if tenant == sender_tenant and c.sender_ip_addresses and _ip_in(session.source_ip, c.sender_ip_addresses):
            return Attribution(
                tenant,
                "ip",
                c.name,
                f"source IP {session.source_ip} is in SenderIPAddresses of tenant {tenant}'s "
                f"OnPremises connector and the sender domain is {tenant}'s",
            )
    # 3. Otherwise the recipient's domain decides.
    rcpt_tenant = s.tenant_of_domain(domain_of(rcpt))
    if rcpt_tenant:
        return Attribution(
            rcpt_tenant, "recipient", None, f"no connector matched; recipient domain belongs to {rcpt_tenant}"
        )
    return Attribution(None, None, None, "no connector matched and the recipient domain is not hosted here")


def mailbox_for(s: Scenario, tenant: str, rcpt: str) -> str | None:
    """The tenant mailbox an address reaches; <user>@<tenant>.mail.onmicrosoft routes to user@any domain."""
    rcpt = rcpt.lower()
    mailboxes = [m.lower() for m in s.tenants[tenant].mailboxes]
    if rcpt in mailboxes:
        return rcpt
    local, _, domain = rcpt.rpartition("@")
    if domain == routing_domain(tenant):
        return next((m for m in mailboxes if m.rpartition("@")[0] == local), None)
    return None


def decide(s: Scenario, session: Session, mail_from: str, rcpt: str, att: Attribution) -> Decision:
    rcpt_tenant = s.tenant_of_domain(domain_of(rcpt))
    if rcpt_tenant is None:
        return Decision(
            "reject",
            REPLY_RELAY_DENIED,
            f"recipient domain {domain_of(rcpt)} is not hosted in EOP and the lab's EOP does not relay to the internet",
        )
    if att.by in ("certificate", "ip"):
        if att.tenant is None:  # attribute() names the connector's tenant for these
            raise ValueError(f"attribution by {att.by} without a tenant: {att}")
        connector = next(c for c in s.tenants[att.tenant].inbound_connectors if c.name == att.connector)
        if connector.require_tls and not session.tls:
            return Decision(
                "reject",
                REPLY_TLS_REQUIRED,
                f"connector '{connector.name}' of {att.tenant} requires TLS",
                tenant=rcpt_tenant,
            )
        if att.by == "certificate" and s.eop.require_trusted_certificate and not session.cert_trusted:
            return Decision(
                "reject",
                REPLY_RELAY_DENIED,
                "the client certificate does not chain to a trusted root (KB 3212877)",
                tenant=rcpt_tenant,
            )
        if att.tenant != rcpt_tenant:
            why = (
                f"attributed to tenant {att.tenant} by {att.by} (connector '{att.connector}') but the "
                f"recipient belongs to tenant {rcpt_tenant}: cross-tenant misattribution"
            )
            if s.eop.misattribution == "discard":
                return Decision("discard", REPLY_QUEUED, why + "; accepted and discarded", tenant=rcpt_tenant)
            return Decision("reject", REPLY_RELAY_DENIED, why + "; rejected", tenant=rcpt_tenant)
    else:
        partner = _partner_check(s, session, mail_from, rcpt_tenant)
        if partner:
            return partner
    mailbox = mailbox_for(s, rcpt_tenant, rcpt)
    if mailbox is None:
        return Decision(
            "reject",
            REPLY_DBEB,
            f"{rcpt} is not a recipient in tenant {rcpt_tenant} (Directory Based Edge Blocking)",
            tenant=rcpt_tenant,
            trace_visible=True,
        )
    return Decision(
        "deliver",
        REPLY_QUEUED,
        f"delivered to {mailbox} in tenant {rcpt_tenant}",
        mailbox=mailbox,
        tenant=rcpt_tenant,
        trace_visible=True,
    )


def _partner_check(s: Scenario, session: Session, mail_from: str, tenant: str) -> Decision | None:
    sender_domain = domain_of(mail_from) if mail_from else ""
    for c in s.tenants[tenant].inbound_connectors:
        if c.type != "Partner":
            continue
        if not any(d == "*" or name_matches(d, sender_domain) for d in c.sender_domains):
            continue
        if c.require_tls and not session.tls:
            return Decision(
                "reject",
                REPLY_TLS_REQUIRED,
                f"partner connector '{c.name}' of {tenant} requires TLS",
                tenant=tenant,
                trace_visible=True,
            )
        if c.tls_sender_certificate_name and not any(
            name_matches(c.tls_sender_certificate_name, n) for n in session.cert_names
        ):
            return Decision(
                "reject",
                REPLY_PARTNER_MISMATCH.format(what="certificate name"),
                f"partner connector '{c.name}' of {tenant} requires certificate '{c.tls_sender_certificate_name}'",
                tenant=tenant,
                trace_visible=True,
            )
        if c.sender_ip_addresses and not _ip_in(session.source_ip, c.sender_ip_addresses):
            return Decision(
                "reject",
                REPLY_PARTNER_MISMATCH.format(what="sender IP address"),
                f"partner connector '{c.name}' of {tenant} restricts sender IPs to {', '.join(c.sender_ip_addresses)}",
                tenant=tenant,
                trace_visible=True,
            )
    return None
