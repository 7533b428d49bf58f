"""EOP's decisions as plain functions: which tenant a message is attributed to, and what happens
to each recipient. No SMTP here, so every rule is table-tested (tests/test_eop_rules.py), and
docs/fidelity.md gives each rule's source, its profile and the test that pins it.

Two behaviour sets (`eop.profile`):
- current: Exchange Online as Microsoft documents it today. A certificate attributes only when it
  chains to a trusted CA (KB 3212877); a plain TlsSenderCertificateName must be an accepted domain
  (Exchange Team blog, 2025: else 5.7.51); mail an OnPremises connector attributes is relayed
  through that tenant's outbound routing (Set-InboundConnector: OnPremises grants "relay through
  the tenant to internet destinations"), never back on-premises by centralized mail transport.
- seed: what the field report saw. A self-signed certificate attributes; a misattributed message
  for another tenant is accepted with 250 and discarded; EOP relays nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Literal

from ...model.scenario import Scenario, domain_of, routing_domain

By = Literal["certificate", "ip", "recipient"]
Action = Literal["deliver", "discard", "reject", "relay"]

REPLY_RCPT_OK = "250 2.1.5 Recipient OK"
# KB 3212877, Fix 5.7.64 (KB 4051495), the Nov 2023 relay requirements.
REPLY_RELAY_DENIED = "550 5.7.64 TenantAttribution; Relay Access Denied"
# Directory Based Edge Blocking.
REPLY_DBEB = "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)"
# Unsourced text: Exchange Server's receive-connector reply; EOP's own is not documented.
REPLY_TLS_REQUIRED = "451 5.7.3 STARTTLS is required to send mail"
# TLS Certificates in Exchange Hybrid (Exchange Team blog, 2025), quoted in full.
REPLY_RESTRICTED = (
    "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the "
    "message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or "
    "RestrictDomainsToCertificate set"
)
# Introducing more control over Direct Send (Exchange Team blog, 2025).
REPLY_DIRECT_SEND = (
    "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources"
)
# Fix error code 451 4.7.500-699 (ASxxx) in Exchange Online.
REPLY_THROTTLED = "451 4.7.500 Server busy. Please try again later from [{ip}]. (AS761)"
# The NDR table in Exchange Online: 5.4.14 hop count exceeded.
REPLY_HOP_COUNT = "554 5.4.14 Hop count exceeded - possible mail loop"


# TLS 1.0 and 1.1 on EOP's mail flow endpoints (docs/fidelity.md S12): refused since MC229914
# (enforced from 2021-01-11; "we will no longer accept TLS 1.0 and TLS 1.1 email connections from
# external sources", Exchange Team blog 2021). What the sender sees is a failed TLS negotiation
# (KB "Can't send or receive email when using TLS 1.1 or TLS 1.0": "TLS negotiation failed with
# error SocketError"), not an SMTP reply: no page documents one for port 25 (421 4.7.66 is SMTP
# AUTH client submission's), so EOP refuses the handshake with a protocol_version alert.
LEGACY_TLS = ("TLSv1", "TLSv1.1")


def tls_refusal(version: str) -> str | None:
    """Why EOP refuses a TLS session whose ClientHello chose `version` (OpenSSL's name, e.g.
    "TLSv1.1"); None when it does not. Both profiles: the field report says nothing of TLS
    versions, so the seed keeps today's floor."""
    if version in LEGACY_TLS:
        return (
            f"the client offered at most {version}; Exchange Online accepts TLS 1.2 or later "
            "(TLS 1.0 and 1.1 deprecated): protocol_version alert"
        )
    return None


@dataclass(frozen=True)
class Attribution:
    tenant: str | None
    by: By | None
    connector: str | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Route:
    """Where EOP sends a message on: into a tenant of its own (internal), or over SMTP to a host
    (an outbound connector's smart host, or the recipient domain's MX)."""

    kind: Literal["internal", "smtp"]
    host: str  # the smart host or MX host name; for internal: the tenant
    connector: str | None = None  # the outbound connector that chose it
    tenant: str | None = None  # the tenant whose routing chose it
    tls_settings: str | None = None
    tls_domain: str | None = None
    mx: bool = False  # host is a domain whose MX to look up


@dataclass(frozen=True)
class Decision:
    action: Action
    reply: str
    reason: str
    mailbox: str | None = None  # the mailbox the message lands in (deliver)
    tenant: str | None = None  # the recipient's tenant
    route: Route | None = None  # relay: where to
    # The message trace lines this message gets: (tenant, status). Rejections at the SMTP
    # protocol level are in nobody's trace.
    traces: tuple[tuple[str, str], ...] = ()

    @property
    def trace_visible(self) -> bool:
        """Does the recipient's tenant see it in message trace?"""
        return any(t == self.tenant for t, _ in self.traces)


@dataclass
class Session:
    """What EOP knows about an SMTP session when it decides."""

    source_ip: str
    tls: bool = False
    cert_names: list[str] = field(default_factory=list)  # CN + SANs of the client certificate
    cert_trusted: bool = False
    cert_problem: str | None = None  # why it is not trusted (self-signed, incomplete chain, expired, ...)
    # Messages from this source address before this one (for the throttling of new addresses).
    messages_from_ip: int = 0


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


def accepted_domains(s: Scenario, tenant: str) -> set[str]:
    return {d.name for d in s.tenants[tenant].domains} | {routing_domain(tenant)}


def is_accepted(s: Scenario, tenant: str, name: str) -> bool:
    """Is `name` one of the tenant's accepted domains (exactly)?"""
    return name.lower() in accepted_domains(s, tenant)


def cert_name_accepted(s: Scenario, tenant: str, name: str) -> bool:
    """Is TlsSenderCertificateName's domain an accepted domain of the tenant: the value itself,
    or for '*.contoso.com' contoso.com (TLS Certificates in Exchange Hybrid, 2025; MC1226222)?"""
    return is_accepted(s, tenant, name.lower().removeprefix("*."))


def unaccepted_connector(s: Scenario, session: Session, tenant: str) -> str | None:
    """The tenant's OnPremises connector whose plain TlsSenderCertificateName matches the
    presented certificate but is no accepted domain of the tenant (None: there is none)."""
    if not (session.tls and session.cert_names):
        return None
    for c in s.tenants[tenant].inbound_connectors:
        name = c.tls_sender_certificate_name
        if c.type != "OnPremises" or not c.enabled or not name or name.startswith("*."):
            continue
        if not cert_name_accepted(s, tenant, name) and any(name_matches(name, n) for n in session.cert_names):
            return c.name
    return None


# ---------------------------------------------------------------- attribution


def attribute(s: Scenario, session: Session, mail_from: str, rcpt: str) -> Attribution:
    """MC1226222's order for OnPremises connectors: the certificate, then the P1 MAIL FROM domain
    with the source IP, then the RCPT TO domain."""
    onprem = [
        (t, c) for t, ten in s.tenants.items() for c in ten.inbound_connectors if c.type == "OnPremises" and c.enabled
    ]
    not_trusted = ""
    # 1. The certificate's CN/SAN matches an OnPremises connector's TlsSenderCertificateName.
    # Today (Message Attribution blog; MC1226222) the connector's tenant is kept only if the
    # name's domain is one of its accepted domains, and the most exact match wins; the seed's
    # EOP took the first connector whose name matched.
    if session.tls and session.cert_names:
        current = s.eop.profile == "current"
        matches = []
        for tenant, c in onprem:
            name = c.tls_sender_certificate_name
            hit = next((n for n in session.cert_names if name and name_matches(name, n)), None)
            if name and hit and not (current and not cert_name_accepted(s, tenant, name)):
                matches.append((not name.startswith("*."), tenant, c, hit))
        if current:
            matches.sort(key=lambda m: not m[0])  # exact names before wildcards, else in file order
        for _, tenant, c, hit in matches[:1]:
            what = (
                f"certificate name '{hit}' matches TlsSenderCertificateName "
                f"'{c.tls_sender_certificate_name}' of tenant {tenant}'s OnPremises connector"
            )
            if current and s.eop.trusted_certificate_required and not session.cert_trusted:
                # KB 3212877: a connector matches only a certificate from a trusted CA.
                not_trusted = f"{what}, but the certificate is not trusted ({session.cert_problem or 'untrusted'}); "
            else:
                return Attribution(tenant, "certificate", c.name, what)
    # 2. The source IP is in an OnPremises connector's SenderIPAddresses and the P1 MAIL FROM
    # domain is one of that tenant's accepted domains. This also picks among tenants that list
    # one shared IP.
    sender_tenant = s.tenant_of_domain(domain_of(mail_from)) if mail_from else None
    for tenant, c in onprem:
        if tenant == sender_tenant and c.sender_ip_addresses and _ip_in(session.source_ip, c.sender_ip_addresses):
            return Attribution(
                tenant,
                "ip",
                c.name,
                not_trusted + f"source IP {session.source_ip} is in SenderIPAddresses of tenant {tenant}'s "
                f"OnPremises connector and the sender domain is {tenant}'s",
            )
    # 3. Otherwise the recipient's domain decides.
    rcpt_tenant = s.tenant_of_domain(domain_of(rcpt))
    if rcpt_tenant:
        return Attribution(
            rcpt_tenant,
            "recipient",
            None,
            not_trusted + f"no connector matched; recipient domain belongs to {rcpt_tenant}",
        )
    return Attribution(
        None, None, None, not_trusted + "no connector matched and the recipient domain is not hosted here"
    )


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


# ---------------------------------------------------------------- routing


def mx_target(s: Scenario, domain: str) -> tuple[str, str]:
    """Where a domain's MX points in the lab: ('tenant', name), ('gateway', host) or ('internet', domain)."""
    owner = s.tenant_of_domain(domain)
    if owner is not None:
        d = next((d for d in s.tenants[owner].domains if d.name == domain), None)
        if d is not None and d.mx == "gateway":
            return "gateway", s.gateway.hostname
        return "tenant", owner
    return "internet", domain


def route(s: Scenario, tenant: str, rcpt: str, from_onprem: bool) -> Route | Decision:
    """Tenant `tenant`'s outbound routing for a recipient outside it: an outbound connector whose
    RecipientDomains covers the domain, else the domain's MX. A message that came from
    on-premises is not sent back there: centralized mail transport skips it (Demystifying
    Centralized Mail Transport), any other connector or MX that leads back would loop until the
    hop count runs out (5.4.14)."""
    domain = domain_of(rcpt)
    c = s.tenants[tenant].outbound_for(domain, s.gateway.hostname, resident=False)
    if c is not None and c.route_all_messages_via_on_premises and from_onprem:
        c = None  # CMT "will not send the message back to Exchange on-premises"
    if c is not None and not c.use_mx_record:
        if from_onprem:
            return Decision(
                "reject",
                REPLY_HOP_COUNT,
                f"tenant {tenant}'s outbound connector '{c.name}' sends {domain} back to the gateway it came from: "
                "a mail loop (the lab refuses it at RCPT; Exchange Online ends it when the hop count runs out)",
            )
        return Route(
            "smtp",
            c.smart_hosts[0],
            connector=c.name,
            tenant=tenant,
            tls_settings=c.tls_settings,
            tls_domain=c.tls_domain,
        )
    kind, target = mx_target(s, domain)
    tls = (c.tls_settings, c.tls_domain, c.name) if c is not None else (None, None, None)
    if kind == "tenant":
        return Route("internal", target, connector=tls[2], tenant=tenant)
    if kind == "gateway" and from_onprem:
        return Decision(
            "reject",
            REPLY_HOP_COUNT,
            f"the MX of {domain} is the gateway the message came from: a mail loop (the lab refuses it at RCPT; "
            "Exchange Online ends it when the hop count runs out)",
        )
    return Route(
        "smtp", target, connector=tls[2], tenant=tenant, tls_settings=tls[0], tls_domain=tls[1], mx=kind == "internet"
    )


# ---------------------------------------------------------------- decisions


def _reject(reply: str, reason: str, tenant: str | None = None) -> Decision:
    return Decision("reject", reply, reason, tenant=tenant)


def _deliver_in(
    s: Scenario, tenant: str, rcpt: str, why: str, traces: tuple = (), from_onprem: bool = False
) -> Decision:
    """Delivery into one of the lab's tenants: its mailbox, DBEB for an Authoritative domain,
    routing on for an InternalRelay domain."""
    mailbox = mailbox_for(s, tenant, rcpt)
    if mailbox is not None:
        return Decision(
            "deliver",
            REPLY_RCPT_OK,
            f"{why}delivered to {mailbox} in tenant {tenant}",
            mailbox=mailbox,
            tenant=tenant,
            traces=(*traces, (tenant, "Delivered")),
        )
    domain = domain_of(rcpt)
    d = next((d for d in s.tenants[tenant].domains if d.name == domain), None)
    if d is not None and d.domain_type == "InternalRelay":
        r = route(s, tenant, rcpt, from_onprem=from_onprem)
        if isinstance(r, Decision):
            return r
        if r.kind == "internal":  # the MX is EOP itself: routing would go round in circles
            return _reject(
                REPLY_HOP_COUNT,
                f"{rcpt} is not in tenant {tenant}, whose domain {domain} is InternalRelay, and no outbound "
                "connector takes it: its MX leads back to Exchange Online, a mail loop",
                tenant,
            )
        return Decision(
            "relay",
            REPLY_RCPT_OK,
            f"{why}{rcpt} is not in tenant {tenant}; its domain is InternalRelay, so it is routed on",
            tenant=tenant,
            route=r,
            traces=(*traces, (tenant, "Relayed")),
        )
    return _reject(REPLY_DBEB, f"{rcpt} is not a recipient in tenant {tenant} (Directory Based Edge Blocking)", tenant)


def decide(s: Scenario, session: Session, mail_from: str, rcpt: str, att: Attribution) -> Decision:
    rcpt_tenant = s.tenant_of_domain(domain_of(rcpt))
    if att.by in ("certificate", "ip"):
        if att.tenant is None:  # attribute() names the connector's tenant for these
            raise ValueError(f"attribution by {att.by} without a tenant: {att}")
        return _onprem(s, session, mail_from, rcpt, att, att.tenant, rcpt_tenant)
    if s.eop.profile == "current" and rcpt_tenant is not None:
        refused = unaccepted_connector(s, session, rcpt_tenant)
        if refused is not None:
            # "If TlsSenderCertificateName is not a wildcard ..., make sure the value is added as an
            # AcceptedDomain, otherwise the same error occurs when sending from on-premises to
            # Exchange Online" (TLS Certificates in Exchange Hybrid, 2025).
            return _reject(
                REPLY_RESTRICTED,
                f"the certificate matches TlsSenderCertificateName of tenant {rcpt_tenant}'s OnPremises connector "
                f"'{refused}', which is not a wildcard and not one of {rcpt_tenant}'s accepted domains",
                rcpt_tenant,
            )
    if rcpt_tenant is None:
        return _reject(
            REPLY_RELAY_DENIED,
            f"recipient domain {domain_of(rcpt)} is not hosted in Exchange Online and no OnPremises connector "
            "matched, so nothing allows relaying it",
        )
    return _anonymous(s, session, mail_from, rcpt, rcpt_tenant)


def _onprem(
    s: Scenario, session: Session, mail_from: str, rcpt: str, att: Attribution, tenant: str, rcpt_tenant: str | None
) -> Decision:
    """Mail an OnPremises connector attributed to `tenant`: the tenant's own, to relay."""
    connector = next(c for c in s.tenants[tenant].inbound_connectors if c.name == att.connector)
    current = s.eop.profile == "current"
    # Set-InboundConnector: RequireTls "applies only to Partner type connectors"; the seed's EOP
    # enforced it on OnPremises connectors too (unsourced).
    if not current and connector.require_tls and not session.tls:
        return _reject(REPLY_TLS_REQUIRED, f"connector '{connector.name}' of {tenant} requires TLS", rcpt_tenant)
    name = connector.tls_sender_certificate_name
    if not current and att.by == "certificate" and s.eop.trusted_certificate_required and not session.cert_trusted:
        # The seed-era reading of KB 3212877 (eop.require_trusted_certificate on a seed lab).
        return _reject(
            REPLY_RELAY_DENIED,
            "the client certificate does not chain to a trusted root "
            f"({session.cert_problem or 'untrusted'}; KB 3212877)",
            rcpt_tenant,
        )
    if rcpt_tenant == tenant:
        return _deliver_in(s, tenant, rcpt, f"attributed to {tenant} by {att.by}; ", from_onprem=True)
    policy = s.eop.misattribution_policy
    where = f"tenant {rcpt_tenant}" if rcpt_tenant else f"the internet ({domain_of(rcpt)})"
    why = f"attributed to tenant {tenant} by {att.by} (connector '{att.connector}') but the recipient is in {where}"
    if policy == "discard" and rcpt_tenant is not None:
        return Decision(
            "discard",
            REPLY_RCPT_OK,
            why + ": cross-tenant misattribution; accepted and discarded",
            tenant=rcpt_tenant,
            traces=((tenant, "Failed"),),
        )
    if policy != "relay":
        return _reject(
            REPLY_RELAY_DENIED,
            why + ("; rejected" if rcpt_tenant else "; this EOP does not relay to the internet"),
            rcpt_tenant,
        )
    # Relay (Nov 2023): the certificate's domain or the P1 sender's must be an accepted domain.
    cert_ok = att.by == "certificate" and bool(name) and cert_name_accepted(s, tenant, name or "")
    sender_ok = bool(mail_from) and is_accepted(s, tenant, domain_of(mail_from))
    if not (cert_ok or sender_ok):
        return _reject(
            REPLY_RELAY_DENIED,
            why + f"; neither the certificate's domain nor the sender domain is an accepted domain of {tenant}, "
            "which relaying requires",
            rcpt_tenant,
        )
    r = route(s, tenant, rcpt, from_onprem=True)
    if isinstance(r, Decision):
        return Decision(r.action, r.reply, why + "; " + r.reason, tenant=rcpt_tenant)
    if r.kind == "internal":
        return _deliver_in(s, r.host, rcpt, why + "; relayed through it: ", traces=((tenant, "Delivered"),))
    return Decision(
        "relay",
        REPLY_RCPT_OK,
        why
        + f"; relayed through {tenant} to {r.host}"
        + (f" by outbound connector '{r.connector}'" if r.connector else ""),
        tenant=rcpt_tenant,
        route=r,
        traces=((tenant, "Relayed"),),
    )


def _connector_ids(s: Scenario, session: Session) -> bool:
    """Does any enabled connector of any tenant name this source (its IP or its certificate)?"""
    for ten in s.tenants.values():
        for c in ten.inbound_connectors:
            if not c.enabled:
                continue
            if c.sender_ip_addresses and _ip_in(session.source_ip, c.sender_ip_addresses):
                return True
            name = c.tls_sender_certificate_name
            if name and session.tls and any(name_matches(name, n) for n in session.cert_names):
                return True
    return False


def _anonymous(s: Scenario, session: Session, mail_from: str, rcpt: str, tenant: str) -> Decision:
    """Mail for one of the lab's tenants that no OnPremises connector attributed: inbound mail.
    The recipient tenant's Partner connectors, Reject Direct Send, throttling, then DBEB."""
    sender_domain = domain_of(mail_from) if mail_from else ""
    authorized = False
    for c in s.tenants[tenant].inbound_connectors:
        if c.type != "Partner" or not c.enabled:
            continue
        if not any(d == "*" or name_matches(d, sender_domain) for d in c.sender_domains):
            continue
        by_cert = bool(
            c.tls_sender_certificate_name
            and session.tls
            and any(name_matches(c.tls_sender_certificate_name, n) for n in session.cert_names)
        )
        by_ip = bool(c.sender_ip_addresses and _ip_in(session.source_ip, c.sender_ip_addresses))
        if c.require_tls and not session.tls:
            return _reject(REPLY_TLS_REQUIRED, f"partner connector '{c.name}' of {tenant} requires TLS", tenant)
        if c.restrict_domains_to_certificate and not by_cert:
            return _reject(
                REPLY_RESTRICTED,
                f"partner connector '{c.name}' of {tenant} has RestrictDomainsToCertificate: mail from "
                f"{sender_domain or '<>'} must present '{c.tls_sender_certificate_name}'",
                tenant,
            )
        if c.restrict_domains_to_ip_addresses and not by_ip:
            return _reject(
                REPLY_RESTRICTED,
                f"partner connector '{c.name}' of {tenant} has RestrictDomainsToIPAddresses: mail from "
                f"{sender_domain or '<>'} must come from {', '.join(c.sender_ip_addresses)}",
                tenant,
            )
        authorized = authorized or by_cert or by_ip
    if s.tenants[tenant].reject_direct_send and not authorized and is_accepted(s, tenant, sender_domain):
        return _reject(
            REPLY_DIRECT_SEND,
            f"tenant {tenant} has RejectDirectSend and the sender domain {sender_domain} is its own, "
            "but no connector matched this source",
            tenant,
        )
    limit = s.eop.throttle_new_ips_after
    if limit is not None and session.messages_from_ip >= limit and not _connector_ids(s, session):
        return _reject(
            REPLY_THROTTLED.format(ip=session.source_ip),
            f"{session.messages_from_ip} messages from {session.source_ip}, which no connector names "
            f"(eop.throttle_new_ips_after: {limit})",
            tenant,
        )
    return _deliver_in(s, tenant, rcpt, "")
