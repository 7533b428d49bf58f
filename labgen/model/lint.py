"""`labgen lint`: static checks of a scenario's configuration against the sourced rules of
docs/fidelity.md and the catalogue (labgen/scenarios/*.yaml, their `about.sources`), before any lab
runs. Each rule has a stable id (LG001 ...), a severity, the sources it rests on and the fix; each
finding names the connector, certificate or domain it concerns and the YAML path (and, where the
file is at hand, the line) of the setting to change.

Rules follow the EOP profile the scenario runs under (`eop.profile`, or `--profile`): under `seed`
a self-signed certificate attributes (fidelity A5/A8), so KB 3212877 and the accepted-domain rule
are today's (`current`) rules only; the consequences of a misattribution (LG001, LG002, LG005)
follow `eop.misattribution` (discarded or rejected: error; relayed through the tenant, as today's
EOP does: note).

Not static, so not checked (tests/test_lint.py lists them with the reason): throttling of a new
address (new-ip-throttled: the threshold is traffic, not configuration) and Reject Direct Send
(reject-direct-send: who sends directly is traffic, not the gateway's configuration).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote as url_quote

import yaml

from ..errors import InputError, escape
from ..lab.eop.rules import cert_name_accepted, name_matches
from .scenario import (
    PROTECTION_SUFFIX,
    SPF_INCLUDE,
    Certificate,
    Scenario,
    SendConnector,
    endpoint_host,
    protection_host,
    read_scenario_text,
    scenario_path,
    with_profile,
)
from .scenario import load_scenario as _load

Severity = Literal["error", "warning", "note"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")
SOON_DAYS = 30  # "soon-expiring": fewer days of validity left than this

# Sources, as the catalogue and docs/fidelity.md cite them.
SEED = "https://granikos.eu/email-delivery-fails-for-other-office-365-tenant/"
MC1226222 = "https://mwpro.co.uk/blog/2026/02/04/updated-prevent-fix-guidance-for-on-premises-connectors-configuration-mc1226222"
TLS_BLOG = "https://techcommunity.microsoft.com/blog/exchange/tls-certificates-in-exchange-hybrid---common-issues--how-to-fix-them/4420592"
ATTRIBUTION = "https://techcommunity.microsoft.com/t5/exchange-team-blog/office-365-message-attribution/ba-p/749143"
RELAY = "https://learn.microsoft.com/exchange/mail-flow-best-practices/updated-requirements-smtp-relay"
RELAY_DENIED = "https://learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/relay-access-denied-smtp"
KB3212877 = "https://support.microsoft.com/help/3212877"
ROUTE_MAIL = (
    "https://learn.microsoft.com/exchange/mail-flow-best-practices/use-connectors-to-configure-mail-flow/"
    "set-up-connectors-to-route-mail"
)
SET_INBOUND = "https://learn.microsoft.com/powershell/module/exchangepowershell/set-inboundconnector"
THIRD_PARTY = "https://learn.microsoft.com/exchange/mail-flow-best-practices/manage-mail-flow-using-third-party-cloud"
SPF_5723 = (
    "https://learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/"
    "fix-error-code-5-7-23-in-exchange-online"
)
SPF_CONFIGURE = "https://learn.microsoft.com/defender-office-365/email-authentication-spf-configure"
DBEB = "https://learn.microsoft.com/exchange/mail-flow-best-practices/use-directory-based-edge-blocking"
RELAY_RECIPIENT_MAPS = "https://www.postfix.org/postconf.5.html#relay_recipient_maps"
TRANSPORT_MAPS = "https://www.postfix.org/postconf.5.html#transport_maps"
SMTP_TLS_CHAIN_FILES = "https://www.postfix.org/postconf.5.html#smtp_tls_chain_files"
SOCKETERROR = "https://learn.microsoft.com/exchange/troubleshoot/email-delivery/send-receive-emails-socketerror"
TLS_VERSIONS = (
    "https://techcommunity.microsoft.com/blog/exchange/"
    "understanding-email-scenarios-if-tls-versions-cannot-be-agreed-on-with-exchange-/2065089"
)
ENHANCED_FILTERING = (
    "https://learn.microsoft.com/exchange/mail-flow-best-practices/use-connectors-to-configure-mail-flow/"
    "enhanced-filtering-for-connectors"
)
NEW_OUTBOUND = "https://learn.microsoft.com/powershell/module/exchange/new-outboundconnector"
LOOP = (
    "https://learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/"
    "fix-error-code-5-4-6-through-5-4-20-in-exchange-online"
)
CMT = (
    "https://techcommunity.microsoft.com/blog/exchange/"
    "demystifying-centralized-mail-transport-and-criteria-based-routing/2927777"
)


@dataclass(frozen=True)
class Rule:
    id: str
    name: str  # the catalogue entry it comes from, where there is one
    title: str
    severity: Severity  # the default; a finding may say otherwise (see the module docstring)
    sources: tuple[str, ...]
    fix: str


RULES: tuple[Rule, ...] = (
    Rule(
        "LG001",
        "shared-certificate",
        "One certificate is presented by send connectors to different destinations",
        "error",
        (SEED, MC1226222, ATTRIBUTION),
        "Give each send connector that leaves for another destination (the Internet connector) its own "
        "certificate with another name, from a public CA; the OnPremises connector keeps naming the Office 365 "
        "connector's certificate only.",
    ),
    Rule(
        "LG002",
        "wildcard-cert-name",
        "An OnPremises connector's TlsSenderCertificateName also matches a certificate sent to other destinations",
        "error",
        (TLS_BLOG, ATTRIBUTION, MC1226222),
        "Set TlsSenderCertificateName to the exact name of a certificate only the Office 365 send connector "
        "presents (not a wildcard that also covers the Internet certificate).",
    ),
    Rule(
        "LG003",
        "cert-name-not-accepted",
        "TlsSenderCertificateName is not an accepted domain of the tenant (550 5.7.51)",
        "error",
        (TLS_BLOG, RELAY, MC1226222),
        "Add the certificate's name as an accepted domain of the tenant, or use a certificate whose name is one.",
    ),
    Rule(
        "LG004",
        "untrusted-certificate",
        "A certificate sent to Exchange Online is self-signed, expired or about to expire (KB 3212877)",
        "error",
        (KB3212877, ROUTE_MAIL),
        "Present a certificate from a public CA, valid for more than 30 days, with its full chain.",
    ),
    Rule(
        "LG005",
        "shared-egress-ip",
        "One egress address for send connectors to different destinations, and a connector secured by it",
        "error",
        (ATTRIBUTION, MC1226222, ROUTE_MAIL),
        "Give the Internet connector its own egress address (source_ip) that no OnPremises connector lists, or "
        "secure the OnPremises connector by certificate.",
    ),
    Rule(
        "LG006",
        "spf-not-listing-gateway",
        "A tenant domain's SPF record does not cover the gateway that sends its Internet mail (550 5.7.23)",
        "error",
        (SPF_5723, SPF_CONFIGURE),
        "Add the gateway to the domain's SPF record (ip4:<egress address> or a:<gateway name>), or route Internet "
        "mail back through Exchange Online.",
    ),
    Rule(
        "LG007",
        "partner-lockdown-new-ip",
        "RestrictDomainsToIPAddresses does not list the gateway's egress address (550 5.7.51)",
        "error",
        (THIRD_PARTY, TLS_BLOG),
        "Add the egress address of the send connector that reaches the tenant to SenderIPAddresses.",
    ),
    Rule(
        "LG008",
        "dbeb-backscatter",
        "The gateway accepts unknown recipients, which DBEB rejects later (backscatter)",
        "warning",
        (DBEB, RELAY_RECIPIENT_MAPS),
        "Validate recipients on the gateway (gateway.recipient_validation: true; Postfix relay_recipient_maps).",
    ),
    Rule(
        "LG009",
        "tls-legacy-gateway",
        "A send connector to Exchange Online is limited below TLS 1.2 (TLS negotiation fails)",
        "error",
        (SOCKETERROR, TLS_VERSIONS),
        "Allow TLS 1.2 or later on the connector (tls_protocols: '>=TLSv1.2').",
    ),
    Rule(
        "LG010",
        "partner-requires-tls",
        "A Partner connector requires TLS for a sender domain the gateway sends to Exchange Online without TLS",
        "error",
        (SET_INBOUND, THIRD_PARTY),
        "Let the send connector that reaches the tenant use TLS (tls: may or stricter).",
    ),
    Rule(
        "LG011",
        "cert-renewed-new-name",
        "An OnPremises connector's TlsSenderCertificateName matches no certificate the gateway sends to the tenant",
        "error",
        (RELAY_DENIED, RELAY),
        "Set TlsSenderCertificateName to the name of the certificate the Office 365 send connector presents "
        "(after a renewal: the new name).",
    ),
    Rule(
        "LG012",
        "egress-ip-changed",
        "An OnPremises connector secured by SenderIPAddresses does not list the gateway's egress address",
        "error",
        (RELAY_DENIED, RELAY, MC1226222),
        "Add the egress address of the Office 365 send connector to SenderIPAddresses.",
    ),
    Rule(
        "LG013",
        "no-enhanced-filtering",
        "MX points at the gateway, its Partner connector has no Enhanced Filtering (spf=fail on inbound mail)",
        "warning",
        (ENHANCED_FILTERING, THIRD_PARTY),
        "Turn on Enhanced Filtering for the connector (EFSkipLastIP: true, or EFSkipIPs with the gateway's address).",
    ),
    Rule(
        "LG014",
        "outbound-subject-mismatch",
        "An outbound connector's TlsDomain does not match the gateway's certificate (450 4.4.317)",
        "error",
        (TLS_BLOG, NEW_OUTBOUND),
        "Set TlsDomain to a name of the certificate the gateway presents when it receives mail.",
    ),
    Rule(
        "LG015",
        "hairpin-loop",
        "An outbound connector sends a domain to the gateway, which sends it back to Exchange Online (5.4.14)",
        "error",
        (LOOP, CMT),
        "Remove the outbound connector (centralized mail transport never sends on-premises mail back), or send "
        "that domain from the gateway somewhere other than Exchange Online.",
    ),
)
RULES += (
    Rule(
        "LG016",
        "postfix-config-differs",
        "The scenario's send connectors describe another gateway than its Postfix configuration",
        "warning",
        (TRANSPORT_MAPS, SMTP_TLS_CHAIN_FILES),
        "Make gateway.connectors say what the Postfix configuration does (which domains each transport takes, "
        "where to, with which certificate): lint and the lab follow the configuration, the report draws both.",
    ),
    Rule(
        "LG017",
        "postfix-config-unread",
        "Part of the Postfix configuration could not be read as send connectors",
        "note",
        (TRANSPORT_MAPS,),
        "Nothing to fix in the gateway: lint judges what it could read; use hash, btree or texthash transport "
        "tables and lab addresses for smtp_bind_address to have the rest judged too.",
    ),
)
RULE_BY_ID = {r.id: r for r in RULES}


@dataclass
class Finding:
    rule: str
    severity: Severity
    message: str
    subject: str  # what it concerns: "send connector 'Internet'", "certificate gw-selfsigned", ...
    path: tuple[Any, ...]  # YAML path of the setting to change: keys (alternatives as tuples) and indexes
    line: int | None = None

    @property
    def path_text(self) -> str:
        out = ""
        for part in self.path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += "." + (part[0] if isinstance(part, tuple) else part)
        return out.removeprefix(".")


@dataclass
class Report:
    scenario: str  # the lab name
    ref: str  # as the user named it
    file: Path
    profile: str
    findings: list[Finding] = field(default_factory=list)

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def exit_code(self) -> int:
        return 1 if self.count("error") else 0


# ---------------------------------------------------------------- helpers over the scenario


def _inbound_keys(name: str) -> tuple[str, ...]:
    """A scenario writes Exchange Online's parameter name or labgen's older snake_case one."""
    snake = {
        "TlsSenderCertificateName": "tls_sender_certificate_name",
        "SenderIPAddresses": "sender_ip_addresses",
        "RequireTls": "require_tls",
        "RestrictDomainsToIPAddresses": "restrict_domains_to_ip_addresses",
        "EFSkipLastIP": "ef_skip_last_ip",
        "TlsDomain": "tls_domain",
        "SmartHosts": "smart_hosts",
        "RecipientDomains": "recipient_domains",
    }
    return (name, snake[name]) if name in snake else (name,)


def _cert_names(cert: Certificate, base: Path) -> tuple[list[str], bool, datetime.datetime | None, int | None]:
    """(CN and SANs, self-signed?, not-after of a user's file, days left of one labgen makes)."""
    if cert.cert_file is None:
        names = list(dict.fromkeys([*(cert.sans or []), *([cert.cn] if cert.cn else [])]))
        return [n.lower() for n in names], cert.issuer == "self", None, cert.not_before_days + cert.valid_days
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    path = base / cert.cert_file
    try:
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{escape(path, 100)}: cannot read the certificate ({escape(exc, 80)})") from None
    names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names += san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        pass
    return [n.lower() for n in dict.fromkeys(names)], leaf.issuer == leaf.subject, leaf.not_valid_after_utc, None


def _tenant_hosts(s: Scenario, tenant: str) -> set[str]:
    """The EOP endpoints of a tenant: <tenant>.mail.protection... and each accepted domain's."""
    hosts = {protection_host(tenant)}
    for d in s.tenants[tenant].domains:
        h = endpoint_host(d.name)
        if h:
            hosts.add(h)
    return hosts


def _destination(c: SendConnector) -> str:
    return c.smarthost or "MX"


def _to_tenant(s: Scenario, c: SendConnector, tenant: str) -> bool:
    """Does this send connector deliver to the tenant's own EOP endpoint (its Office 365 connector)?"""
    return c.smarthost is not None and c.smarthost in _tenant_hosts(s, tenant)


def _reaches_eop(s: Scenario, c: SendConnector) -> bool:
    """Does the connector deliver to Exchange Online: a smart host under the protection suffix, or
    by MX for an address space that covers a tenant domain whose MX is EOP?"""
    if c.smarthost is not None:
        return c.smarthost.endswith("." + PROTECTION_SUFFIX)
    eop_domains = [d.name for t in s.tenants.values() for d in t.domains if d.mx == "eop"]
    return any(p == "*" or name_matches(p, d) for p in c.address_space for d in eop_domains)


def _egress(s: Scenario, c: SendConnector, gateway_ip: str) -> str:
    return c.source_ip or gateway_ip


def _ip_in(ip: str, cidrs: list[str]) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in ipaddress.ip_network(n) for n in cidrs)


def _misattribution_severity(s: Scenario) -> Severity:
    """Mail for another tenant attributed to this one: lost or refused (error), or relayed through
    the tenant as today's EOP does (note)."""
    return "note" if s.eop.misattribution_policy == "relay" else "error"


def _misattribution_effect(s: Scenario) -> str:
    return {
        "discard": "accepted with 250 and silently discarded (no NDR)",
        "reject": "rejected with 550 5.7.64",
        "relay": "relayed through this tenant (today's EOP), so it still arrives",
    }[s.eop.misattribution_policy]


def _connectors_for_domain(s: Scenario, domain: str) -> SendConnector | None:
    """The gateway's send connector for a domain: the most specific address space wins."""
    best: tuple[int, SendConnector] | None = None
    for c in s.gateway.connectors:
        for p in c.address_space:
            score = 3 if p == domain else 2 if p != "*" and name_matches(p, domain) else 1 if p == "*" else 0
            if score and (best is None or score > best[0]):
                best = (score, c)
    return best[1] if best else None


def _spf_covers(s: Scenario, domain: str, record: str, ip: str) -> bool | None:
    """Does the SPF record pass `ip` (the gateway's egress)? None when it cannot be told statically
    (an include or redirect to something other than Exchange Online's)."""
    unknown = False
    for term in record.split()[1:]:
        qual = term[0] if term[0] in "+-~?" else "+"
        mech = term[1:] if term[0] in "+-~?" else term
        name, _, arg = mech.partition(":")
        name = name.lower()
        hit: bool | None = False
        if name == "all":
            hit = True
        elif name == "ip4":
            try:
                hit = ipaddress.ip_address(ip) in ipaddress.ip_network(arg, strict=False)
            except ValueError:
                hit = False
        elif name == "a":
            target = (arg or domain).lower()
            hit = target == s.gateway.hostname
        elif name == "mx":
            target = (arg or domain).lower()
            hit = any(d.name == target and d.mx == "gateway" for t in s.tenants.values() for d in t.domains)
        elif name == "include":
            hit = None if arg.lower() != SPF_INCLUDE else False
        elif name.startswith("redirect="):
            return None
        if hit is None:
            unknown = True
        elif hit:
            return qual in "+?" if not unknown else None
    return None if unknown else False


# ---------------------------------------------------------------- the checks


def check(s: Scenario, gateway_ip: str) -> list[Finding]:
    """Every finding for a scenario (its eop.profile decides the profile-bound rules)."""
    out: list[Finding] = []
    base = s.base_dir
    certs = {k: _cert_names(c, base) for k, c in s.certificates.items()}
    conns = list(enumerate(s.gateway.connectors))
    onprem = [
        (t, i, c)
        for t, ten in s.tenants.items()
        for i, c in enumerate(ten.inbound_connectors)
        if c.type == "OnPremises" and c.enabled
    ]

    def matching_connectors(cert_key: str) -> list[tuple[str, str]]:
        names = certs[cert_key][0]
        return [
            (t, c.name)
            for t, _, c in onprem
            if c.tls_sender_certificate_name
            and any(name_matches(c.tls_sender_certificate_name, n) for n in names)
            and (s.eop.profile == "seed" or cert_name_accepted(s, t, c.tls_sender_certificate_name))
        ]

    # LG001: one certificate, send connectors to different destinations, and it attributes.
    by_cert: dict[str, list[tuple[int, SendConnector]]] = {}
    for i, c in conns:
        if c.certificate:
            by_cert.setdefault(c.certificate, []).append((i, c))
    for key, users in by_cert.items():
        dests = {_destination(c) for _, c in users}
        attributes = matching_connectors(key)
        if len(dests) > 1 and attributes:
            who = ", ".join(f"'{c.name}' (to {_destination(c)})" for _, c in users)
            t, cname = attributes[0]
            out.append(
                Finding(
                    "LG001",
                    _misattribution_severity(s),
                    f"certificate {key} is presented by send connectors {who}; it matches tenant {t}'s OnPremises "
                    f"connector '{cname}', so mail for other tenants that leaves through the other connectors is "
                    f"attributed to {t} and {_misattribution_effect(s)}",
                    f"certificate {key}",
                    ("gateway", "connectors", users[-1][0], "certificate"),
                )
            )

    # LG002: a connector name that also matches a certificate only sent elsewhere (once per certificate).
    seen: set[tuple[str, int, str]] = set()
    for t, j, ic in onprem:
        pattern = ic.tls_sender_certificate_name
        if not pattern or (s.eop.profile == "current" and not cert_name_accepted(s, t, pattern)):
            continue
        own = {c.certificate for _, c in conns if c.certificate and _to_tenant(s, c, t)}
        for _, c in conns:
            if not c.certificate or _to_tenant(s, c, t) or c.certificate in own:
                continue
            hit = next((n for n in certs[c.certificate][0] if name_matches(pattern, n)), None)
            if hit and (t, j, c.certificate) not in seen:
                seen.add((t, j, c.certificate))
                out.append(
                    Finding(
                        "LG002",
                        _misattribution_severity(s),
                        f"TlsSenderCertificateName '{pattern}' of tenant {t}'s OnPremises connector '{ic.name}' also "
                        f"matches '{hit}', the certificate ({c.certificate}) of send connector '{c.name}' (to "
                        f"{_destination(c)}): mail for other tenants through it is attributed to {t} and "
                        f"{_misattribution_effect(s)}",
                        f"inbound connector '{ic.name}' of tenant {t}",
                        ("tenants", t, "inbound_connectors", j, _inbound_keys("TlsSenderCertificateName")),
                    )
                )

    # LG003: the name is not an accepted domain (today's rule).
    if s.eop.profile == "current":
        for t, j, ic in onprem:
            pattern = ic.tls_sender_certificate_name
            if pattern and not cert_name_accepted(s, t, pattern):
                out.append(
                    Finding(
                        "LG003",
                        "error",
                        f"TlsSenderCertificateName '{pattern}' of tenant {t}'s OnPremises connector '{ic.name}' is "
                        f"not an accepted domain of {t}: the connector attributes nothing, and {t}'s own mail from "
                        "the gateway is refused with 550 5.7.51",
                        f"inbound connector '{ic.name}' of tenant {t}",
                        ("tenants", t, "inbound_connectors", j, _inbound_keys("TlsSenderCertificateName")),
                    )
                )

    # LG004: self-signed (when EOP requires a trusted chain), expired or soon expiring, towards EOP.
    now = datetime.datetime.now(datetime.UTC)
    reported: set[tuple[str, str]] = set()
    for _, c in conns:
        if not c.certificate or not _reaches_eop(s, c):
            continue
        names, self_signed, not_after, days_left = certs[c.certificate]
        if not_after is not None:
            days_left = (not_after - now).days if not_after > now else -1
        problems = []
        if self_signed and s.eop.trusted_certificate_required and matching_connectors_any(s, onprem, names):
            problems.append("self-signed: EOP attributes only a certificate from a trusted CA, so relay gets 5.7.64")
        if days_left is not None and days_left < 0:
            problems.append("expired")
        elif days_left is not None and days_left < SOON_DAYS:
            problems.append(f"expires in {days_left} day(s)")
        for p in problems:
            if (c.certificate, p) in reported:
                continue
            reported.add((c.certificate, p))
            out.append(
                Finding(
                    "LG004",
                    "error" if not p.startswith("expires") else "warning",
                    f"certificate {c.certificate}, presented by send connector '{c.name}' to Exchange Online, is {p}",
                    f"certificate {c.certificate}",
                    ("certificates", c.certificate),
                )
            )

    # LG005: shared egress address, an OnPremises connector secured by it.
    by_ip: dict[str, list[tuple[int, SendConnector]]] = {}
    for i, c in conns:
        by_ip.setdefault(_egress(s, c, gateway_ip), []).append((i, c))
    for ip, users in by_ip.items():
        if len({_destination(c) for _, c in users}) < 2:
            continue
        secured = [(t, j, ic) for t, j, ic in onprem if ic.sender_ip_addresses and _ip_in(ip, ic.sender_ip_addresses)]
        for t, _, ic in secured[:1]:
            who = ", ".join(f"'{c.name}'" for _, c in users)
            internet = next((i for i, c in users if not _to_tenant(s, c, t)), users[-1][0])
            out.append(
                Finding(
                    "LG005",
                    _misattribution_severity(s),
                    f"send connectors {who} all leave from {ip}, which tenant {t}'s OnPremises connector '{ic.name}' "
                    f"lists in SenderIPAddresses: {t}'s mail for other tenants is attributed to {t} and "
                    f"{_misattribution_effect(s)}",
                    f"send connector '{s.gateway.connectors[internet].name}'",
                    ("gateway", "connectors", internet, "source_ip")
                    if s.gateway.connectors[internet].source_ip
                    else ("gateway", "connectors", internet),
                )
            )

    # LG006: SPF of a tenant domain whose Internet mail the gateway sends itself (by MX). Which domains
    # send is the traffic's: the scenario's senders stand for the tenant's users.
    probe = s.internet.domains[0] if s.internet.domains else "internet.invalid"
    internet_conn = _connectors_for_domain(s, probe)
    senders = {m.sender.rpartition("@")[2] for m in s.traffic}
    if internet_conn is not None and internet_conn.smarthost is None:
        c = internet_conn
        ip = _egress(s, c, gateway_ip)
        for t, ten in s.tenants.items():
            if not any(oc.enabled and not oc.use_mx_record for oc in ten.outbound(s.gateway.hostname)):
                continue
            for k, d in enumerate(ten.domains):
                if d.name not in senders:
                    continue
                record = d.spf or f"v=spf1 include:{SPF_INCLUDE} -all"
                if _spf_covers(s, d.name, record, ip) is not False:
                    continue
                enforced = s.internet.check_spf
                out.append(
                    Finding(
                        "LG006",
                        "error" if enforced else "note",
                        f"send connector '{c.name}' delivers {t}'s Internet mail itself from {ip}, but the SPF record "
                        f"of {d.name} ('{record}') does not cover it: receivers that check SPF refuse it (550 5.7.23)"
                        + ("" if enforced else "; this lab's internet does not check SPF (internet.check_spf: false)"),
                        f"domain {d.name}",
                        ("tenants", t, "domains", k, "spf") if d.spf else ("tenants", t, "domains", k),
                    )
                )

    # LG007 / LG012: a connector secured by addresses that do not include the gateway's egress.
    for t, ten in s.tenants.items():
        to_t = [(i, c) for i, c in conns if _to_tenant(s, c, t)]
        if not to_t:
            continue
        egress = {_egress(s, c, gateway_ip) for _, c in to_t}
        for j, ic in enumerate(ten.inbound_connectors):
            if not ic.enabled or not ic.sender_ip_addresses:
                continue
            missing = sorted(ip for ip in egress if not _ip_in(ip, ic.sender_ip_addresses))
            if not missing:
                continue
            if ic.type == "Partner" and ic.restrict_domains_to_ip_addresses:
                rule, what = (
                    "LG007",
                    "has RestrictDomainsToIPAddresses: mail from its sender domains is refused (5.7.51)",
                )
            elif ic.type == "OnPremises" and not ic.tls_sender_certificate_name:
                rule, what = "LG012", "attributes nothing from it: relay gets 550 5.7.64"
            else:
                continue
            out.append(
                Finding(
                    rule,
                    "error",
                    f"tenant {t}'s {ic.type} connector '{ic.name}' lists {', '.join(ic.sender_ip_addresses)}, but the "
                    f"gateway reaches {t} from {', '.join(missing)}; it {what}",
                    f"inbound connector '{ic.name}' of tenant {t}",
                    ("tenants", t, "inbound_connectors", j, _inbound_keys("SenderIPAddresses")),
                )
            )

    # LG008: backscatter.
    if not s.gateway.recipient_validation and any(d.mx == "gateway" for t in s.tenants.values() for d in t.domains):
        out.append(
            Finding(
                "LG008",
                "warning",
                "the gateway accepts any recipient of the tenants' domains (gateway.recipient_validation: false); "
                "EOP's Directory Based Edge Blocking rejects unknown ones (550 5.4.1) after the gateway said 250, "
                "so the gateway bounces them to senders who may be forged",
                "gateway",
                ("gateway", "recipient_validation"),
            )
        )

    # LG009: TLS below 1.2 towards EOP.
    for i, c in conns:
        if _reaches_eop(s, c) and c.tls != "none" and c.legacy_tls and c.tls_range[1] in ("TLSv1", "TLSv1.1"):
            out.append(
                Finding(
                    "LG009",
                    "error",
                    f"send connector '{c.name}' (to {_destination(c)}) may use only {c.tls_range[0]} to "
                    f"{c.tls_range[1]}; Exchange Online accepts TLS 1.2 or later, so the handshake fails and mail "
                    "waits in the gateway's queue",
                    f"send connector '{c.name}'",
                    ("gateway", "connectors", i, "tls_protocols"),
                )
            )

    # LG010: Partner RequireTls for a sender domain, the gateway sends to that tenant without TLS.
    for t, ten in s.tenants.items():
        for ic in ten.inbound_connectors:
            if ic.type != "Partner" or not ic.enabled or not ic.require_tls:
                continue
            for d in ten.domains:
                dc = _connectors_for_domain(s, d.name)
                if dc is None or dc.tls != "none" or not _reaches_eop(s, dc):
                    continue
                covered = [
                    sd
                    for tn in s.tenants
                    if tn != t
                    for sd in (x.name for x in s.tenants[tn].domains)
                    if any(p == "*" or name_matches(p, sd) for p in ic.sender_domains)
                    and (s.tenants[tn].outbound_via_gateway or s.tenants[tn].outbound_connectors)
                ]
                if covered:
                    out.append(
                        Finding(
                            "LG010",
                            "error",
                            f"tenant {t}'s Partner connector '{ic.name}' requires TLS for {', '.join(covered)}, but "
                            f"send connector '{dc.name}' delivers {d.name} with tls: none: refused (451 5.7.3), "
                            "retried, deferred",
                            f"send connector '{dc.name}'",
                            ("gateway", "connectors", s.gateway.connectors.index(dc), "tls"),
                        )
                    )
                    break

    # LG011: a certificate-secured OnPremises connector no certificate sent to the tenant matches.
    for t, j, ic in onprem:
        pattern = ic.tls_sender_certificate_name
        to_tenant = [c for _, c in conns if _to_tenant(s, c, t)]
        if not pattern or not to_tenant or ic.sender_ip_addresses:
            continue
        presented = [n for c in to_tenant if c.certificate for n in certs[c.certificate][0]]
        if presented and not any(name_matches(pattern, n) for n in presented):
            out.append(
                Finding(
                    "LG011",
                    "error",
                    f"TlsSenderCertificateName '{pattern}' of tenant {t}'s OnPremises connector '{ic.name}' matches "
                    f"none of the names the gateway presents to {t} ({', '.join(sorted(set(presented)))}): its mail is "
                    "not attributed and relay gets 550 5.7.64",
                    f"inbound connector '{ic.name}' of tenant {t}",
                    ("tenants", t, "inbound_connectors", j, _inbound_keys("TlsSenderCertificateName")),
                )
            )

    # LG013: MX at the gateway, Partner connector without Enhanced Filtering, no OnPremises connector.
    for t, ten in s.tenants.items():
        if not any(d.mx == "gateway" for d in ten.domains) or any(
            ic.type == "OnPremises" and ic.enabled for ic in ten.inbound_connectors
        ):
            continue
        for j, ic in enumerate(ten.inbound_connectors):
            if ic.type == "Partner" and ic.enabled and not ic.ef_skip_last_ip and not ic.ef_skip_ips:
                out.append(
                    Finding(
                        "LG013",
                        "warning",
                        f"tenant {t}'s MX points at the gateway and its Partner connector '{ic.name}' has no Enhanced "
                        "Filtering: EOP judges SPF by the gateway's address, so inbound mail gets spf=fail",
                        f"inbound connector '{ic.name}' of tenant {t}",
                        ("tenants", t, "inbound_connectors", j),
                    )
                )

    # LG014: outbound connector TlsDomain vs the gateway's server certificate.
    if s.gateway.server_certificate:
        server_names = certs[s.gateway.server_certificate][0]
    else:
        server_names = [s.gateway.hostname]
    for t, ten in s.tenants.items():
        for j, oc in enumerate(ten.outbound_connectors):
            if oc.enabled and oc.tls_settings == "DomainValidation" and oc.tls_domain:
                if not any(name_matches(oc.tls_domain, n) or oc.tls_domain == n for n in server_names):
                    out.append(
                        Finding(
                            "LG014",
                            "error",
                            f"tenant {t}'s outbound connector '{oc.name}' validates the gateway as '{oc.tls_domain}', "
                            f"but the gateway presents {', '.join(server_names)}: 450 4.4.317 and the mail waits",
                            f"outbound connector '{oc.name}' of tenant {t}",
                            ("tenants", t, "outbound_connectors", j, _inbound_keys("TlsDomain")),
                        )
                    )

    # LG015: a tenant's outbound connector sends a domain to the gateway, whose connector for it goes
    # back to Exchange Online.
    for t, ten in s.tenants.items():
        for j, oc in enumerate(ten.outbound_connectors):
            if not oc.enabled or oc.use_mx_record or oc.route_all_messages_via_on_premises:
                continue
            for dom in oc.recipient_domains:
                if dom == "*" or dom.startswith("*."):
                    continue
                back = _connectors_for_domain(s, dom)
                if back is not None and back.smarthost and back.smarthost.endswith("." + PROTECTION_SUFFIX):
                    out.append(
                        Finding(
                            "LG015",
                            "error",
                            f"tenant {t}'s outbound connector '{oc.name}' sends {dom} to the gateway, whose send "
                            f"connector '{back.name}' sends it back to Exchange Online: a mail loop (554 5.4.14)",
                            f"outbound connector '{oc.name}' of tenant {t}",
                            ("tenants", t, "outbound_connectors", j),
                        )
                    )
                    break
    return out


def matching_connectors_any(s: Scenario, onprem: list, names: list[str]) -> bool:
    """Does a certificate with these names match some OnPremises connector (so it is used for attribution)?"""
    return any(
        ic.tls_sender_certificate_name and any(name_matches(ic.tls_sender_certificate_name, n) for n in names)
        for _, _, ic in onprem
    )


# ---------------------------------------------------------------- lines in the file


def _node_line(root: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node along `path` that the file has."""
    node, line = root, None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            keys = part if isinstance(part, tuple) else (part,)
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value in keys), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _presented(s: Scenario, connectors: list[SendConnector]) -> set[tuple[str, str, tuple[str, ...]]]:
    """(address space, destination, names of the certificate presented) for each connector's spaces."""
    base = s.base_dir
    names = {k: tuple(_cert_names(c, base)[0]) for k, c in s.certificates.items()}
    return {
        (space, _destination(c), names.get(c.certificate or "", ())) for c in connectors for space in c.address_space
    }


def check_postfix_config(s: Scenario, gateway_ip: str) -> list[Finding]:
    """A scenario whose gateway is the user's Postfix configuration: the rules run on the send
    connectors the configuration amounts to (postfix_transports.derive), each finding pointed at
    gateway.postfix_config; where the scenario's own connectors describe something else, LG016."""
    from .postfix_transports import as_run as configured

    as_run, derived = configured(s)
    config = ("gateway", "postfix_config")
    out = []
    for f in check(as_run, gateway_ip):
        if f.path[:2] == ("gateway", "connectors"):
            f.path = config
            f.message += " (in your Postfix configuration: send connectors are its smtp transports)"
        out.append(f)
    described, running = _presented(s, s.gateway.connectors), _presented(as_run, as_run.gateway.connectors)
    if described != running:
        only = sorted(running - described)
        space, dest, names = only[0] if only else sorted(described - running)[0]
        shown = ", ".join(names) or "no certificate"
        out.append(
            Finding(
                "LG016",
                "warning",
                f"the Postfix configuration sends {space} to {dest} presenting {shown}, which gateway.connectors "
                f"{'do not say' if only else 'say, but the configuration does not do'}; lint and the lab follow "
                "the configuration",
                "gateway.connectors",
                ("gateway", "connectors"),
            )
        )
    for note in derived.notes:
        out.append(Finding("LG017", "note", note, "gateway.postfix_config", config))
    return out


def lint(ref: str, profile: str | None = None) -> Report:
    """Load a scenario (a built-in by name, an example, a file) and check it."""
    from .plan import AsWritten, make_plan

    s = _load(ref)
    if profile:
        s = with_profile(s, profile)
    path = scenario_path(ref)
    plan = make_plan(s, AsWritten())
    findings = check_postfix_config(s, plan.ip("gateway")) if s.gateway.postfix_config else check(s, plan.ip("gateway"))
    report = Report(s.name, ref, path, s.eop.profile, findings)
    label = escape(ref, 100)
    try:  # load_scenario read it already: within the size, depth and alias limits
        root = yaml.compose(read_scenario_text(path, label), Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # load_scenario accepted it; a line is a nicety
        root = None
    for f in report.findings:
        f.line = _node_line(root, f.path)
    order = {sev: i for i, sev in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: (order[f.severity], f.rule, f.line or 0))
    return report


# ---------------------------------------------------------------- outputs


def to_doc(report: Report) -> dict[str, Any]:
    """The labgen.lint/v1 document (results/contracts.py: LintDoc)."""
    return {
        "schema": "labgen.lint/v1",
        "scenario": report.scenario,
        "file": str(report.file),
        "profile": report.profile,
        "findings": [
            {
                "rule": f.rule,
                "name": RULE_BY_ID[f.rule].name,
                "severity": f.severity,
                "message": f.message,
                "subject": f.subject,
                "path": f.path_text,
                "line": f.line,
                "sources": list(RULE_BY_ID[f.rule].sources),
                "fix": RULE_BY_ID[f.rule].fix,
            }
            for f in report.findings
        ],
        "summary": {sev: report.count(sev) for sev in SEVERITIES},
    }


def _artifact_uri(report: Report) -> str:
    """The scenario file as SARIF names it: as the user gave it when relative (code scanning resolves
    it against the repository), else a file: URI."""
    p = report.file
    if not p.is_absolute() and ".." not in p.parts:
        return url_quote(p.as_posix())
    return p.resolve().as_uri()


def to_sarif(report: Report, version: str) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run, every rule in tool.driver.rules, one result per finding."""
    index = {r.id: i for i, r in enumerate(RULES)}
    uri = _artifact_uri(report)
    results = []
    for f in report.findings:
        rule = RULE_BY_ID[f.rule]
        region = {"startLine": f.line} if f.line else None
        physical: dict[str, Any] = {"artifactLocation": {"uri": uri}}
        if region:
            physical["region"] = region
        results.append(
            {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": f.severity,
                "message": {"text": f"{f.message}. Fix: {rule.fix}"},
                "locations": [
                    {
                        "physicalLocation": physical,
                        "logicalLocations": [{"fullyQualifiedName": f.path_text, "kind": "member"}],
                    }
                ],
                "properties": {"subject": f.subject},
            }
        )
    return {
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "labgen",
                        "version": version,
                        "rules": [
                            {
                                "id": r.id,
                                "name": r.name,
                                "shortDescription": {"text": r.title},
                                "fullDescription": {"text": f"{r.title}. Sources: {', '.join(r.sources)}"},
                                "helpUri": r.sources[0],
                                "help": {"text": r.fix},
                                "defaultConfiguration": {"level": r.severity},
                            }
                            for r in RULES
                        ],
                    }
                },
                "artifacts": [{"location": {"uri": uri}}],
                "results": results,
                "properties": {"scenario": report.scenario, "profile": report.profile},
            }
        ],
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"
