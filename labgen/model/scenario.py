"""Scenario files: the typed model, loading, and one-line errors with file and YAML path.

A scenario is everything a lab needs to know about the customer's setup (tenants, certificates,
the gateway's send connectors), how the fake EOP behaves, the traffic to send and what the user
expects to happen to it. Everything after this module works on a validated `Scenario`.

Scenario files come from strangers: whatever this module accepts must run (`validate` passes ⇒
`up` does not crash), so every string is held to a grammar or to printable single-line text with
a length bound, every list has a size bound, and every error quotes input only through
`errors.quote` (escaped, shortened).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InputError, escape, one_line, quote
from ..files import read_limited
from ..resources import resource_dir
from ..textsafe import MESSAGE_ID, docker_reference

# Lab names mirror the real ones under reserved TLDs (DESIGN.md §2).
PROTECTION_SUFFIX = "mail.protection.outlook.test"  # real: mail.protection.outlook.com
ROUTING_SUFFIX = "mail.onmicrosoft.test"  # real: mail.onmicrosoft.com
SPF_INCLUDE = "spf.protection.outlook.test"  # real: spf.protection.outlook.com

# Documentation and benchmarking ranges only: realistic "public" addresses that route nowhere.
ALLOWED_RANGES = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")
]

Outcome = Literal["delivered", "silently_discarded", "rejected", "deferred"]
OUTCOMES = ("delivered", "silently_discarded", "rejected", "deferred")

# ---------------------------------------------------------------- limits
# Generous for any lab a person writes; they keep a hostile file from costing minutes or GBs.
MAX_SCENARIO_BYTES = 1 << 20  # raise with LABGEN_MAX_SCENARIO_BYTES
MAX_RECIPIENTS = 50_000  # message × recipient pairs per scenario, copies counted; raise with LABGEN_MAX_RECIPIENTS
MAX_COUNT = 1_000_000  # copies of one message (the pairs limit above is what binds)
MAX_RCPTS_PER_MESSAGE = 100  # RFC 5321 §4.5.3.1.8: servers must accept at least 100
MAX_DEPTH = 50  # YAML nesting; a scenario needs about 8
MAX_TENANTS = 50
MAX_DOMAINS = 100  # per tenant, and internet.domains
MAX_MAILBOXES = 1000  # per tenant
MAX_CONNECTORS = 50  # send connectors, and inbound connectors per tenant
MAX_CERTIFICATES = 100
MAX_ITEMS = 100  # sans, address spaces, sender IPs and domains
MAX_NAME = 64  # connector names (Exchange allows 64)
MAX_TEXT = 200  # description, subject: one printable line

# Keys of `certificates` name files (certs/<key>.crt): a strict grammar, and the names the lab
# uses for its own certificates and CAs are taken.
_CERT_KEY_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
RESERVED_CERT_KEYS = (
    "ca-root",
    "ca-intermediate",
    "eop-accept",
    "eop-server",
    "sink-server",
    "gateway-server",
    "exo-client",
)

# X.509 (via cryptography) takes dates from 1950 to 9999; these bounds keep every certificate
# between about 1976 and 2176 for the next decades.
MAX_NOT_BEFORE_DAYS = 18_250
MAX_VALID_DAYS = 36_500


def env_limit(var: str, default: int) -> int:
    """A limit the user may raise through the environment."""
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{var}={quote(raw)}: expected a positive whole number")
    return value


# A saved plan holds the scenario with its addresses already moved (the local engine's are on
# loopback); reloading it must not re-apply the documentation-range rule to them.
_PLANNED = ContextVar("labgen_planned", default=False)


@contextmanager
def planned_addresses():
    token = _PLANNED.set(True)
    try:
        yield
    finally:
        _PLANNED.reset(token)


def _in_lab_ranges(net) -> bool:
    return _PLANNED.get() or any(net.subnet_of(r) if net.version == 4 else False for r in ALLOWED_RANGES)


# ---------------------------------------------------------------- value checks
# fullmatch throughout: re.match with '$' also accepts a trailing newline.

_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")
_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_LAB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
# A tenant name is a DNS label of <tenant>.mail.protection.outlook.test.
_TENANT_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,39}[a-z0-9])?")


def check_domain(value: str) -> str:
    norm = value.strip().lower().rstrip(".")
    if not norm.isascii() or not _DOMAIN_RE.fullmatch(norm):
        raise ValueError(f"{quote(value)} is not a valid domain name")
    return norm


def check_address(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    if not sep or not _LOCAL_RE.fullmatch(local):
        raise ValueError(f"{quote(value)} is not a valid e-mail address (expected local@domain)")
    return f"{local}@{check_domain(domain)}"


def check_lab_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{quote(value)} is not an IPv4 address") from None
    if ip.version != 4 or not _in_lab_ranges(ipaddress.ip_network(f"{ip}/32")):
        raise ValueError(
            f"{quote(value)} is outside the lab's documentation ranges "
            "(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15)"
        )
    return str(ip)


def check_lab_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{quote(value)} is not an IPv4 address or CIDR range") from None
    if net.version != 4 or not _in_lab_ranges(net):
        raise ValueError(f"{quote(value)} is outside the lab's documentation ranges")
    return str(net)


def check_cert_name(value: str) -> str:
    """A DNS name as certificates carry it: a domain, optionally with one leading '*.'."""
    norm = value.strip().lower()
    rest = norm[2:] if norm.startswith("*.") else norm
    if "*" in rest:
        raise ValueError(f"{quote(value)}: only a leading '*.' wildcard is allowed in a certificate name")
    check_domain(rest)
    return norm


def check_domain_pattern(value: str) -> str:
    """'*' (everything), '*.domain' (the domain and its subdomains) or a domain."""
    norm = value.strip().lower()
    return "*" if norm == "*" else check_cert_name(norm)


def check_cert_key(value: str) -> str:
    if not _CERT_KEY_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"certificate name {quote(value)} must be lower-case letters, digits, '.', '_' or '-' "
            "(at most 63, no '..'); it names the certificate's files"
        )
    if value in RESERVED_CERT_KEYS:
        raise ValueError(
            f"certificate name {quote(value)} is taken by the lab's own certificates "
            f"({', '.join(RESERVED_CERT_KEYS)}); pick another"
        )
    return value


def check_tenant_name(value: str) -> str:
    if not _TENANT_RE.fullmatch(value):
        raise ValueError(f"tenant name {quote(value)} must be lower-case letters, digits and inner '-' (at most 41)")
    return value


def text_line(what: str, max_len: int, min_len: int = 0) -> Callable[[str], str]:
    """Free text shown in terminals and written to files: printable, one line, bounded."""

    def check(value: str) -> str:
        value = value.strip()
        if len(value) < min_len:
            raise ValueError(f"{what} must not be empty")
        if len(value) > max_len:
            raise ValueError(f"{what} is at most {max_len} characters (this one has {len(value)})")
        if not value.isprintable():
            raise ValueError(f"{what} {quote(value)} must be printable text on one line (no control characters)")
        return value

    return check


_SPF_RE = re.compile(r"v=spf1( [!-~]{1,200}){0,30}")


def check_spf(value: str) -> str:
    """An SPF record as one TXT string: 'v=spf1' and printable ASCII terms, at most 255 octets."""
    value = " ".join(value.split())
    if len(value) > 255 or not _SPF_RE.fullmatch(value):
        raise ValueError(f"{quote(value)} is not an SPF record (v=spf1 and terms, printable ASCII, at most 255)")
    return value


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


# Per-item types: pydantic then names the exact item in the error's path (mailboxes[1], not mailboxes).
DomainName = Annotated[str, AfterValidator(check_domain)]
Address = Annotated[str, AfterValidator(check_address)]
LabIp = Annotated[str, AfterValidator(check_lab_ip)]
LabCidr = Annotated[str, AfterValidator(check_lab_cidr)]
CertName = Annotated[str, AfterValidator(check_cert_name)]
DomainPattern = Annotated[str, AfterValidator(check_domain_pattern)]
CertKey = Annotated[str, AfterValidator(check_cert_key)]
TenantName = Annotated[str, AfterValidator(check_tenant_name)]
ConnectorName = Annotated[str, AfterValidator(text_line("a connector name", MAX_NAME, min_len=1))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        """A setting written both as Exchange Online's name and as labgen's older one."""
        if isinstance(data, dict):
            for f in cls.model_fields.values():
                choices = f.validation_alias.choices if isinstance(f.validation_alias, AliasChoices) else []
                given = [str(c) for c in choices if isinstance(c, str) and c in data]
                if len(given) > 1:
                    raise ValueError(
                        f"{' and '.join(given)} are the same setting ({given[0]} is Exchange Online's name); keep one"
                    )
        return data


def exo(param: str, description: str = "", **kw) -> Any:
    """A field named after Exchange Online's own parameter (what `Get-InboundConnector` shows),
    which is how it is written and saved; labgen's older snake_case name is still read."""
    return Field(
        validation_alias=AliasChoices(param, kw.pop("snake")),
        serialization_alias=param,
        description=f"{param}: {description}" if description else param,
        **kw,
    )


class Domain(_Model):
    """One of the tenant's accepted domains (New-AcceptedDomain)."""

    name: DomainName
    mx: Literal["eop", "gateway"] = Field(
        "eop",
        description=(
            "Where the domain's public MX points: straight at EOP, or at the customer's gateway "
            "(centralized mail flow, inbound)."
        ),
    )
    spf: Annotated[str, AfterValidator(check_spf)] | None = Field(
        None,
        description=(
            "The SPF TXT record the lab DNS publishes for the domain. Default: Microsoft's guidance for a "
            "Microsoft 365 domain, 'v=spf1 include:spf.protection.outlook.test -all' (a gateway that sends "
            "mail out directly must be added)."
        ),
    )
    domain_type: Literal["Authoritative", "InternalRelay"] = exo(
        "DomainType",
        "Authoritative: every recipient is in the tenant (Directory Based Edge Blocking rejects others); "
        "InternalRelay: unknown recipients are routed on, by the tenant's outbound connectors or the MX.",
        snake="domain_type",
        default="Authoritative",
    )


class InboundConnector(_Model):
    """An Exchange Online inbound connector (New-InboundConnector), with Microsoft's parameter names."""

    name: ConnectorName = exo("Name", f"printable, one line, at most {MAX_NAME} characters.", snake="name")
    type: Literal["OnPremises", "Partner"] = exo(
        "ConnectorType",
        "OnPremises (your own servers: attributes mail to the tenant and allows relay) or Partner.",
        snake="type",
        default="OnPremises",
    )
    # Microsoft: '*.contoso.com' is allowed; embedded wildcards ('mail*.contoso.com') are not.
    tls_sender_certificate_name: CertName | None = exo(
        "TlsSenderCertificateName",
        "compared with the client certificate's CN and SANs; '*.contoso.com' covers the domain and every subdomain.",
        snake="tls_sender_certificate_name",
        default=None,
    )
    sender_ip_addresses: list[LabCidr] = exo(
        "SenderIPAddresses", "addresses or CIDR ranges.", snake="sender_ip_addresses", default=[], max_length=MAX_ITEMS
    )
    sender_domains: list[DomainPattern] = exo(
        "SenderDomains",
        "Partner connectors: the sender domains they apply to ('*', '*.contoso.com' or a domain).",
        snake="sender_domains",
        default=["*"],
        max_length=MAX_ITEMS,
    )
    require_tls: bool = exo(
        "RequireTls",
        "mail without STARTTLS is refused (Microsoft documents it for Partner connectors).",
        snake="require_tls",
        default=False,
    )
    restrict_domains_to_certificate: bool = exo(
        "RestrictDomainsToCertificate",
        "Partner connectors: mail from SenderDomains must present TlsSenderCertificateName, else 550 5.7.51.",
        snake="restrict_domains_to_certificate",
        default=False,
    )
    restrict_domains_to_ip_addresses: bool = exo(
        "RestrictDomainsToIPAddresses",
        "Partner connectors: mail from SenderDomains must come from SenderIPAddresses, else 550 5.7.51.",
        snake="restrict_domains_to_ip_addresses",
        default=False,
    )
    ef_skip_last_ip: bool = exo(
        "EFSkipLastIP",
        "Enhanced Filtering: judge SPF by the address before the last hop (the gateway), not by the gateway's.",
        snake="ef_skip_last_ip",
        default=False,
    )
    ef_skip_ips: list[LabCidr] = exo(
        "EFSkipIPs",
        "Enhanced Filtering: addresses skipped when finding the original sender's address.",
        snake="ef_skip_ips",
        default=[],
        max_length=MAX_ITEMS,
    )
    enabled: bool = exo("Enabled", "a disabled connector matches nothing.", snake="enabled", default=True)


class OutboundConnector(_Model):
    """An Exchange Online outbound connector (New-OutboundConnector), with Microsoft's parameter names."""

    name: ConnectorName = exo("Name", f"printable, one line, at most {MAX_NAME} characters.", snake="name")
    type: Literal["OnPremises", "Partner"] = exo("ConnectorType", snake="type", default="OnPremises")
    recipient_domains: list[DomainPattern] = exo(
        "RecipientDomains",
        "the recipient domains it takes ('*' for all: centralized mail flow); most specific wins.",
        snake="recipient_domains",
        min_length=1,
        max_length=MAX_ITEMS,
    )
    smart_hosts: list[DomainName] = exo(
        "SmartHosts",
        "the hosts it delivers to (in the lab: the gateway's hostname).",
        snake="smart_hosts",
        default=[],
        max_length=MAX_ITEMS,
    )
    use_mx_record: bool = exo(
        "UseMXRecord",
        "deliver by the recipient domain's MX instead of SmartHosts.",
        snake="use_mx_record",
        default=False,
    )
    tls_settings: Literal["EncryptionOnly", "CertificateValidation", "DomainValidation"] | None = exo(
        "TlsSettings",
        "None: opportunistic TLS; EncryptionOnly: TLS required; CertificateValidation: and a trusted chain; "
        "DomainValidation: and a certificate for TlsDomain.",
        snake="tls_settings",
        default=None,
    )
    tls_domain: CertName | None = exo(
        "TlsDomain",
        "DomainValidation: the name the smart host's certificate must carry.",
        snake="tls_domain",
        default=None,
    )
    route_all_messages_via_on_premises: bool = exo(
        "RouteAllMessagesViaOnPremises",
        "centralized mail transport: every message of the tenant, internal or not, goes through on-premises.",
        snake="route_all_messages_via_on_premises",
        default=False,
    )
    enabled: bool = exo("Enabled", snake="enabled", default=True)


class Tenant(_Model):
    """A Microsoft 365 tenant: what its admin configured in Exchange Online."""

    domains: list[Domain] = Field(min_length=1, max_length=MAX_DOMAINS)
    mailboxes: list[Address] = Field([], max_length=MAX_MAILBOXES)
    inbound_connectors: list[InboundConnector] = Field([], max_length=MAX_CONNECTORS)
    outbound_connectors: list[OutboundConnector] = Field([], max_length=MAX_CONNECTORS)
    outbound_via_gateway: bool = Field(
        False,
        description=(
            "Shorthand for centralized mail flow: an OnPremises outbound connector for '*' to the gateway "
            "with RouteAllMessagesViaOnPremises."
        ),
    )
    reject_direct_send: bool = exo(
        "RejectDirectSend",
        "Set-OrganizationConfig: anonymous mail whose P1 sender is one of the tenant's accepted domains and "
        "that matches no connector gets 550 5.7.68.",
        snake="reject_direct_send",
        default=False,
    )

    def outbound(self, gateway_host: str) -> list[OutboundConnector]:
        """The outbound connectors, the outbound_via_gateway shorthand made into one."""
        if not self.outbound_via_gateway or any(
            "*" in c.recipient_domains and c.route_all_messages_via_on_premises for c in self.outbound_connectors
        ):
            return self.outbound_connectors
        cmt = OutboundConnector.model_validate(
            {
                "Name": "Outbound to gateway",
                "RecipientDomains": ["*"],
                "SmartHosts": [gateway_host],
                "RouteAllMessagesViaOnPremises": True,
            }
        )
        return [*self.outbound_connectors, cmt]

    def outbound_for(self, domain: str, gateway_host: str, resident: bool = False) -> OutboundConnector | None:
        """The enabled outbound connector Exchange Online picks for a recipient domain: the most
        specific RecipientDomains entry wins ('contoso.com' over '*.contoso.com' over '*').
        Mail for the tenant's own domains leaves by centralized mail transport, or for a
        recipient who is not in the tenant (`resident` False: an InternalRelay domain) by a
        connector naming the domain; '*' alone never takes them."""
        own = any(d.name == domain for d in self.domains)
        best: tuple[int, OutboundConnector] | None = None
        for c in self.outbound(gateway_host):
            if not c.enabled:
                continue
            score = max((_specificity(p, domain) for p in c.recipient_domains), default=0)
            if own and not c.route_all_messages_via_on_premises and (resident or score < 2):
                continue
            if score and (best is None or score > best[0]):
                best = (score, c)
        return best[1] if best else None


def _specificity(pattern: str, domain: str) -> int:
    """How closely a RecipientDomains entry covers `domain`: exact 3, '*.x' 2, '*' 1, no 0."""
    if pattern == "*":
        return 1
    if pattern == domain:
        return 3
    if pattern.startswith("*.") and (domain == pattern[2:] or domain.endswith(pattern[1:])):
        return 2
    return 0


MAX_PATH = 1024  # a certificate or key file's name as written in the scenario


class Certificate(_Model):
    """A certificate labgen makes (cn, sans, issuer, ...) or the user's own (cert_file, key_file)."""

    cn: str | None = Field(
        None,
        min_length=1,
        max_length=64,  # X.509's upper bound for a CN
        description="Subject CN of a certificate labgen makes (required unless cert_file is given).",
    )
    sans: list[CertName] = Field([], max_length=MAX_ITEMS, description="DNS names; the CN when empty.")
    issuer: Literal["self", "public"] = Field(
        "public",
        description=(
            "'self' = self-signed; 'public' = issued by the lab's stand-in for a public CA (root + intermediate)."
        ),
    )
    key: Literal["rsa2048", "rsa3072", "ec256"] = "rsa2048"
    not_before_days: int = Field(
        -1,
        ge=-MAX_NOT_BEFORE_DAYS,
        le=MAX_NOT_BEFORE_DAYS,
        description=("Start of validity in days from the day the lab's PKI is made (negative = in the past)."),
    )
    valid_days: int = Field(
        365,
        ge=1,
        le=MAX_VALID_DAYS,
        description=("Length of validity in days (expired: not_before_days + valid_days < 0)."),
    )
    cert_file: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH,
        description=(
            "Your own certificate instead of one labgen makes: a PEM file (the leaf first, then any "
            "intermediates it presents), relative to the scenario file's directory. Needs key_file."
        ),
    )
    key_file: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH,
        description="The PEM private key of cert_file (unencrypted), relative to the scenario file's directory.",
    )

    @field_validator("cn")
    @classmethod
    def _cn(cls, v):
        if v is not None and (not v.isascii() or not v.isprintable()):
            raise ValueError(f"{quote(v)}: a certificate CN is printable ASCII")
        return v

    @field_validator("cert_file", "key_file")
    @classmethod
    def _file(cls, v):
        if v is not None and (not v.isprintable()):
            raise ValueError(f"{quote(v)}: a file name is one printable line")
        return v

    @model_validator(mode="after")
    def _made_or_given(self) -> Certificate:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.cert_file is None and self.cn is None:
            raise ValueError("cn: required for a certificate labgen makes (or give cert_file and key_file)")
        # A saved plan writes every field, defaults too; only a scenario file's own keys count.
        if self.cert_file is not None and set(self.model_fields_set) & _MADE_ONLY and not _PLANNED.get():
            given = ", ".join(sorted(set(self.model_fields_set) & _MADE_ONLY))
            raise ValueError(f"{given}: only for a certificate labgen makes, not with cert_file")
        return self

    @property
    def user_supplied(self) -> bool:
        return self.cert_file is not None


# What describes a certificate labgen makes: meaningless next to the user's own files.
_MADE_ONLY = frozenset({"cn", "sans", "issuer", "key", "not_before_days", "valid_days"})


class Smarthost(_Model):
    smarthost: DomainName


class SendConnector(_Model):
    """One of the gateway's send connectors (one Postfix smtp transport in the Docker lab)."""

    name: ConnectorName = Field(description=f"Printable, one line, at most {MAX_NAME} characters.")
    address_space: list[DomainPattern] = Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description=(
            "Domains this connector takes: 'contoso.com', '*.contoso.com' (and subdomains) or '*'; most specific wins."
        ),
    )
    route: Literal["mx"] | Smarthost = Field("mx", description="'mx' (the recipient domain's MX) or {smarthost: name}.")
    tls: Literal["none", "may", "encrypt", "secure"] = Field(
        "may",
        description=(
            "Postfix's smtp_tls_security_level; 'secure' also verifies the server's certificate chain and name "
            "(what Microsoft's own send-connector guidance asks for the Office 365 connector)."
        ),
    )
    helo: DomainName | None = Field(
        None, description="The HELO name this connector says (default: the gateway's hostname)."
    )
    certificate: CertKey | None = Field(None, description="The client certificate it presents (a key of certificates).")
    source_ip: LabIp | None = Field(None, description="Egress address (smtp_bind_address); default: the gateway's.")
    tls_protocols: str | None = Field(
        None,
        max_length=40,
        description=(
            "The TLS versions this connector may use, in Postfix's smtp_tls_protocols range syntax (both "
            "smtp_tls_protocols and smtp_tls_mandatory_protocols get it): '>=V', '<=V' or both, separated by a "
            "space, comma or colon, V one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3; e.g. '<=TLSv1.1' for a gateway that "
            "speaks only TLS 1.0/1.1 (its OpenSSL security level is then lowered to 0 for this connector, as such "
            "a gateway's is). Unset: TLS 1.2 or later."
        ),
    )

    # Postfix's names, oldest first; the index orders them.
    TLS_VERSIONS: ClassVar[tuple[str, ...]] = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
    _TLS_BOUND: ClassVar[re.Pattern[str]] = re.compile(r"(>=|<=)(TLSv1(?:\.[123])?)")

    @field_validator("tls_protocols")
    @classmethod
    def _tls_protocols(cls, v: str | None) -> str | None:
        """A strict subset of Postfix's syntax, written back in one canonical form ('>=A:<=B')."""
        if v is None:
            return None
        tokens = [t for t in re.split(r"[ ,:]+", v) if t]
        if not tokens or len(tokens) > 2:
            raise ValueError(f"{quote(v)}: give '>=V', '<=V' or both (V one of {', '.join(cls.TLS_VERSIONS)})")
        bounds: dict[str, str] = {}
        for token in tokens:
            m = cls._TLS_BOUND.fullmatch(token)
            if m is None:
                raise ValueError(
                    f"{quote(token)} is not '>=V' or '<=V' with V one of {', '.join(cls.TLS_VERSIONS)} "
                    "(SSLv2/SSLv3 and exclusions such as '!TLSv1' are not supported)"
                )
            if m.group(1) in bounds:
                raise ValueError(f"{quote(v)}: '{m.group(1)}' is given twice")
            bounds[m.group(1)] = m.group(2)
        low, high = bounds.get(">=", cls.TLS_VERSIONS[0]), bounds.get("<=", cls.TLS_VERSIONS[-1])
        if cls.TLS_VERSIONS.index(low) > cls.TLS_VERSIONS.index(high):
            raise ValueError(f"{quote(v)} leaves no TLS version: {low} is newer than {high}")
        return ":".join(f"{op}{bounds[op]}" for op in (">=", "<=") if op in bounds)

    @property
    def tls_range(self) -> tuple[str, str]:
        """(oldest, newest) TLS version the connector may use; unset: TLS 1.2 to 1.3."""
        if self.tls_protocols is None:
            return ("TLSv1.2", "TLSv1.3")
        bounds = {t[:2]: t[2:] for t in self.tls_protocols.split(":")}  # canonical: see _tls_protocols
        return (bounds.get(">=", self.TLS_VERSIONS[0]), bounds.get("<=", self.TLS_VERSIONS[-1]))

    @property
    def legacy_tls(self) -> bool:
        """Does it allow TLS 1.0 or 1.1 (which OpenSSL 3 refuses above security level 0)?"""
        return self.TLS_VERSIONS.index(self.tls_range[0]) < self.TLS_VERSIONS.index("TLSv1.2")

    @property
    def smarthost(self) -> str | None:
        return self.route.smarthost if isinstance(self.route, Smarthost) else None


def _gateway_hostname(value: str) -> str:
    value = check_domain(value)
    if len(value) > 64:  # the CN of the gateway's own server certificate
        raise ValueError(f"{quote(value)} is longer than 64 characters, the most a certificate CN holds")
    return value


def _internet_domain(value: str) -> str:
    value = check_domain(value)
    if len(value) > 61:  # its sink is mx.<domain>, the CN of the sink's certificate
        raise ValueError(
            f"{quote(value)} is longer than 61 characters; its MX host mx.<domain> names a "
            "certificate, whose CN holds at most 64"
        )
    return value


# Where an image gateway's configuration directory may be mounted: an absolute path of plain
# components, never one of the paths labgen itself mounts (docs/gateway-image.md).
_MOUNT_PATH = re.compile(r"(?:/[A-Za-z0-9_][A-Za-z0-9._-]{0,63}){1,16}")
_RESERVED_MOUNTS = ("/lab/certs", "/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/proc", "/sys", "/dev")


class GatewayImage(_Model):
    """The gateway as the user's own MTA image (Docker engine only; docs/gateway-image.md)."""

    ref: str = Field(
        max_length=MAX_PATH,
        description="The image, as Docker names it (name[:tag][@digest], e.g. myorg/exim-gw:1); it must be present "
        "on the engine or pullable from a registry it reaches.",
    )
    config: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH,
        description="A directory, relative to the scenario file's and inside it, mounted read-only at config_mount "
        "(the MTA's configuration).",
    )
    config_mount: str = Field(
        "/lab/config",
        max_length=MAX_PATH,
        description="Where config is mounted in the container: an absolute path, not /lab/certs or a system path.",
    )

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str) -> str:
        if docker_reference(v) is None:
            raise ValueError(f"{quote(v)} is not a Docker image reference (name[:tag][@digest], e.g. myorg/exim-gw:1)")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not v.isprintable() or v.startswith(("/", "~")) or "\\" in v:
            raise ValueError(f"{quote(v)}: a directory relative to the scenario file's, one printable line")
        if ".." in Path(v).parts:
            raise ValueError(f"{quote(v)}: must stay inside the scenario file's directory (no '..')")
        return v

    @field_validator("config_mount")
    @classmethod
    def _config_mount(cls, v: str) -> str:
        if not _MOUNT_PATH.fullmatch(v) or any(p in (".", "..") for p in v.split("/")):
            raise ValueError(f"{quote(v)}: an absolute path of plain components (letters, digits, '.', '_', '-')")
        if v in ("/lab", "/etc", "/usr", "/bin", "/sbin", "/lib") or any(
            v == r or v.startswith(r + "/") or r.startswith(v + "/") for r in _RESERVED_MOUNTS
        ):
            raise ValueError(f"{quote(v)}: labgen or the system needs that path; mount the configuration elsewhere")
        return v


class Gateway(_Model):
    hostname: Annotated[str, AfterValidator(_gateway_hostname)] = "gw.contoso.example"
    image: GatewayImage | None = Field(
        None,
        description="Your own gateway MTA image instead of labgen's Postfix (Docker engine only): the connectors "
        "below then describe what it is configured to do (certificates issued, egress addresses added), and the "
        "verdict rests on what EOP and the sinks recorded. docs/gateway-image.md is the contract.",
    )
    address: LabIp | None = None
    # The certificate the gateway presents when it *receives* mail (STARTTLS server side).
    server_certificate: CertKey | None = None
    connectors: list[SendConnector] = Field(min_length=1, max_length=MAX_CONNECTORS)
    exchange_online_relay: Literal["certificate", "ip"] = Field(
        "certificate",
        description=(
            "How the gateway lets Exchange Online relay through it: 'certificate' = only a client presenting "
            "Exchange Online's certificate, for senders in the tenants' own domains (as real gateways restrict it); "
            "'ip' = anything from Exchange Online's address (Postfix mynetworks: every tenant's mail, since "
            "Microsoft's addresses are shared)."
        ),
    )
    recipient_validation: bool = Field(
        True,
        description=(
            "Refuse unknown recipients of the tenants' domains at RCPT (Postfix relay_recipient_maps), so they are "
            "not accepted and bounced later (backscatter). false: accept any, as many gateways do."
        ),
    )
    postfix_config: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PATH,
        description=(
            "Your own Postfix configuration instead of one labgen writes: a directory (relative to the scenario "
            "file's) holding main.cf, master.cf, the maps and certificates they name, installed as /etc/postfix in "
            "the lab's Postfix container with only the lab's overrides (docs/own-postfix.md). The connectors above "
            "still say which addresses the gateway gets and what lint and graph read. Docker engine only."
        ),
    )

    @field_validator("postfix_config")
    @classmethod
    def _config_dir(cls, v):
        if v is not None and not v.isprintable():
            raise ValueError(f"{quote(v)}: a directory name is one printable line")
        return v

    @model_validator(mode="after")
    def _one_gateway(self) -> Gateway:
        if self.image is not None and self.postfix_config is not None:
            raise ValueError(
                "postfix_config: the gateway is either your image (image:) or your Postfix configuration "
                "(postfix_config:), not both"
            )
        return self


Profile = Literal["seed", "current"]
PROFILES: tuple[Profile, ...] = ("seed", "current")


class Eop(_Model):
    profile: Profile = Field(
        "current",
        description=(
            "The behaviour set: 'current' = Exchange Online as Microsoft documents it today (accepted-domain and "
            "CA-signed certificate rules, relay through the attributed tenant); 'seed' = as the field report saw it "
            "(a self-signed certificate attributes, cross-tenant misattribution is accepted and discarded). "
            "docs/fidelity.md lists which rule belongs to which."
        ),
    )
    misattribution: Literal["discard", "reject", "relay"] | None = Field(
        None,
        description=(
            "Mail attributed to tenant A by an OnPremises connector but addressed elsewhere: 'relay' (through A's "
            "outbound routing, as documented; default of 'current'), 'discard' (accepted with 250 and dropped: the "
            "field report; default of 'seed') or 'reject' (550 5.7.64, a hypothetical stricter EOP)."
        ),
    )
    require_trusted_certificate: bool | None = Field(
        None,
        description=(
            "KB 3212877: a certificate that does not chain to a trusted root does not attribute (relay then gets "
            "550 5.7.64). Default: true for 'current', false for 'seed'."
        ),
    )
    throttle_new_ips_after: int | None = Field(
        None,
        ge=0,
        le=MAX_COUNT,
        description=(
            "After this many messages from an address that matches no connector of any tenant, EOP answers "
            "451 4.7.500 Server busy (a new IP without a connector). Unset: never."
        ),
    )
    address: LabIp | None = None

    @property
    def misattribution_policy(self) -> Literal["discard", "reject", "relay"]:
        return self.misattribution or ("discard" if self.profile == "seed" else "relay")

    @property
    def trusted_certificate_required(self) -> bool:
        return (
            self.require_trusted_certificate
            if self.require_trusted_certificate is not None
            else self.profile == "current"
        )


class Internet(_Model):
    """Non-Microsoft domains; each gets an MX sink that accepts any recipient."""

    domains: list[Annotated[str, AfterValidator(_internet_domain)]] = Field([], max_length=MAX_DOMAINS)
    check_spf: bool = Field(
        False,
        description=(
            "The MX sinks check the sender's SPF (RFC 7208, against the lab DNS) and refuse a hard fail at RCPT "
            "with 550 5.7.23, as receiving systems that enforce SPF do (Microsoft's NDR 5.7.23 names this case: "
            "on-premises addresses missing from the sender domain's SPF record)."
        ),
    )


class LabNet(_Model):
    subnet: str = "198.51.100.0/24"
    # Fixed addresses for the lab's hosts; the gateway's is gateway.address. 'traffic' sends as
    # the internet's senders, 'exo' as Exchange Online's outbound servers.
    addresses: dict[Literal["dns", "eop", "sink", "traffic", "exo"], LabIp] = {}

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v):
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError:
            raise ValueError(f"{quote(v)} is not a network in CIDR form (address/prefix, host bits zero)") from None
        if net.version != 4 or not _in_lab_ranges(net):
            raise ValueError(f"{quote(v)} is outside the lab's documentation ranges")
        if net.prefixlen > 28:
            raise ValueError(f"{quote(v)} is too small for a lab (use /28 or larger)")
        return str(net)


# The header fields a message's `headers:` may not set: labgen's own (the ids that join every
# hop's log, the addresses, the MIME structure the body and attachments make).
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "x-labgen-id",
        "mime-version",
    }  # lab.ledger.MSGID_HEADER
)
_HEADER_NAME_RE = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 field-name: printable ASCII but ':'
MAX_HEADERS = 20
MAX_MESSAGE_BYTES = 50 << 20  # a message's size: Exchange Online accepts up to 150 MB, a lab needs less
MAX_TRAFFIC_BYTES = 512 << 20  # all messages' sizes × copies: what the traffic generator builds in a run
_MIME_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}")


def _header_name(value: str) -> str:
    if not _HEADER_NAME_RE.fullmatch(value):
        raise ValueError(f"{quote(value)} is not a header field name (printable ASCII without ':' or spaces)")
    if value.lower() in RESERVED_HEADERS or value.lower().startswith("content-"):
        raise ValueError(f"{quote(value)} is set by labgen (ids, addresses, MIME structure); use subject:, size, ...")
    return value


class Attachment(_Model):
    """A file attached to a message: `bytes` of deterministic content (the same every run)."""

    name: str = Field(description="The file name the attachment carries (letters, digits, ' ._()+-').")
    bytes: int = Field(ge=1, le=MAX_MESSAGE_BYTES, description="Its size before MIME encoding (base64 adds 37%).")
    type: str = Field("application/octet-stream", description="Its MIME type, e.g. application/pdf.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _FILE_NAME_RE.fullmatch(v):
            raise ValueError(f"{quote(v)}: a file name here is letters, digits, ' ._()+-' (at most 100)")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if not _MIME_TYPE_RE.fullmatch(v):
            raise ValueError(f"{quote(v)} is not a MIME type (type/subtype, lower case)")
        return v


class Message(_Model):
    id: str | None = None
    sender: Address = Field(alias="from")
    to: list[Address] = Field(
        min_length=1,
        max_length=MAX_RCPTS_PER_MESSAGE,
        description=(f"At most {MAX_RCPTS_PER_MESSAGE} recipients (RFC 5321's minimum a server must take)."),
    )
    subject: Annotated[str, AfterValidator(text_line("a subject", MAX_TEXT))] | None = Field(
        None, description=(f"Printable, one line, at most {MAX_TEXT} characters.")
    )
    source_ip: LabIp | None = Field(
        None,
        description=(
            "Internet senders: the address the message is sent from (default: the traffic host's). Any lab address "
            "no other host uses, e.g. one a connector lists, to model a spoofed or a new sender."
        ),
    )
    helo: DomainName | None = Field(
        None, description="Internet senders: the HELO name (default: sender.internet.test)."
    )
    via: Literal["exchange-online", "internet"] | None = Field(
        None,
        description=(
            "'exchange-online': a tenant user's mail leaving through Exchange Online (to the gateway with "
            "centralized mail flow); 'internet': an outside sender delivering by MX. Default: by the sender."
        ),
    )
    # Keys normalised like recipients, so that an expectation can never be silently skipped.
    expect: Outcome | dict[Address, Outcome] | None = Field(
        None, description=("The expected outcome for every recipient, or a map recipient -> outcome.")
    )
    expect_reply: Annotated[str, AfterValidator(text_line("an expected reply", 120, min_len=1))] | None = Field(
        None,
        description=(
            "A text that one of the replies along each recipient's path contains, case-insensitively "
            "(e.g. '550 5.7.64' or '5.4.1'): pins the documented reply, not just the outcome."
        ),
    )
    expect_spf: Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"] | None = Field(
        None,
        description=(
            "The SPF result Exchange Online records for each recipient it delivers this message to (its "
            "Authentication-Results: spf=...): e.g. 'fail' behind a gateway without Enhanced Filtering."
        ),
    )
    headers: dict[
        Annotated[str, AfterValidator(_header_name)], Annotated[str, AfterValidator(text_line("a header value", 900))]
    ] = Field(
        {},
        max_length=MAX_HEADERS,
        description=(
            "Header fields to add, name -> value (one printable line each), e.g. Auto-Submitted or "
            "X-MS-Exchange-Organization-*; not those labgen sets (From, To, Subject, Date, Message-ID, Content-*)."
        ),
    )
    size: int | None = Field(
        None,
        ge=1,
        le=MAX_MESSAGE_BYTES,
        description=(
            "The message's size in bytes as sent (headers, body, attachments): the text body is padded with "
            "plain lines until the message has at least this many."
        ),
    )
    attachments: list[Attachment] = Field([], max_length=10, description="Files attached, each of a given size.")
    count: int = Field(
        1,
        ge=1,
        le=MAX_COUNT,
        description=(
            "Send this many copies, each a separate message to the same recipients with the id <id>-<n> "
            "(n = 1..count); every copy counts against the scenario's message × recipient limit."
        ),
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v):
        if v is not None and not MESSAGE_ID.fullmatch(v):
            raise ValueError(f"{quote(v)}: ids are letters, digits, '.', '_' or '-' (at most 41)")
        return v

    # Where the message is in the scenario's traffic list, for error paths (set by Scenario).
    _origin: int = PrivateAttr(default=0)

    def expected_for(self, rcpt: str) -> str | None:
        if isinstance(self.expect, dict):
            return {k.lower(): o for k, o in self.expect.items()}.get(rcpt.lower())
        return self.expect


# An SMTP reply a fault answers with: a 4xx/5xx code, its enhanced status code, printable text.
_FAULT_REPLY_RE = re.compile(r"[45][0-9][0-9] [45]\.[0-9]{1,3}\.[0-9]{1,3}( [ -~]{1,200})?")


def _fault_reply(value: str) -> str:
    if not _FAULT_REPLY_RE.fullmatch(value):
        raise ValueError(
            f"{quote(value)}: a fault's reply is '4xx x.y.z text' or '5xx x.y.z text' (printable ASCII, "
            "e.g. '451 4.3.0 Temporary failure')"
        )
    return value


class FaultMatch(_Model):
    """Which transactions a fault applies to: every given field must match (none given: all)."""

    rcpt: Address | None = Field(None, description="The recipient (RCPT TO).")
    sender: Address | None = Field(None, description="The P1 sender (MAIL FROM); '' matches nothing.")
    certificate: CertName | None = Field(
        None, description="A name (CN or SAN) of the client certificate presented over TLS."
    )
    source_ip: LabIp | None = Field(None, description="The client's address.")


class Fault(_Model):
    """A deterministic failure a lab server injects at one hop, to test the gateway's retry,
    fallback and bounce configuration: the same faults give the same verdict on every run."""

    at: Literal["eop", "sink"] = Field(description="The hop: Exchange Online Protection, or the internet MX sinks.")
    when: FaultMatch = Field(FaultMatch(), description="Which transactions (default: all).")
    do: Literal["reply", "disconnect", "no-starttls", "tls-fail", "down", "delay"] = Field(
        description=(
            "'reply': answer RCPT with `reply` instead; 'disconnect': close the connection when the message "
            "data has arrived, with no reply (the client cannot know whether it was taken); 'no-starttls': "
            "answer STARTTLS with 454 4.7.0 TLS not available (a client at tls 'may' goes on in plaintext); "
            "'tls-fail': say 220 to STARTTLS, then drop the connection (the handshake fails); 'down': greet a "
            "connection with 421 4.3.2 Service not available and close it (the service is down for it); "
            "'delay': wait `seconds` before the reply at `step`, then answer as usual (a client whose timeout "
            "is shorter gives up: at 'data', after the server has taken the message)."
        )
    )
    step: Literal["greeting", "rcpt", "data"] | None = Field(
        None, description="For do: delay: the reply it holds back (the 220 greeting, RCPT's, or the end of DATA's)."
    )
    seconds: float | None = Field(
        None,
        gt=0,
        le=300,
        description=(
            "do: delay: how long; do: down: the service is down for this long from the first connection it "
            "refuses (a time window, instead of `times` connections)."
        ),
    )
    reply: Annotated[str, AfterValidator(_fault_reply)] | None = Field(
        None, description="For do: reply, e.g. '451 4.3.0 Temporary failure' (4xx: the gateway retries) or a 5xx."
    )
    times: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description=(
            "Apply to the first N matches (reply: recipients; disconnect: messages; the others: connections), "
            "counted per lab server, then let them through. Unset: always."
        ),
    )

    @model_validator(mode="after")
    def _reply_for_reply(self) -> Fault:
        if (self.do == "reply") != (self.reply is not None):
            raise ValueError("reply: give it for do: reply, and only then")
        if (self.do == "delay") != (self.step is not None):
            raise ValueError("step: give it for do: delay (greeting, rcpt or data), and only then")
        if self.do == "delay" and self.seconds is None:
            raise ValueError("seconds: do: delay needs how long")
        if self.seconds is not None and self.do not in ("delay", "down"):
            raise ValueError(f"seconds: only for do: delay or down, not do: {self.do}")
        if self.do == "down" and self.seconds is not None and self.times is not None:
            raise ValueError("times: do: down lasts `times` connections or `seconds`, not both")
        connection_level = ("no-starttls", "tls-fail", "down") + (("delay",) if self.step == "greeting" else ())
        if self.do in connection_level and (self.when.rcpt or self.when.sender or self.when.certificate):
            raise ValueError(
                f"when: do: {self.do}{' at step greeting' if self.do == 'delay' else ''} acts before MAIL, RCPT "
                "and the certificate; match it by source_ip only"
            )
        if self.do == "down" and self.when.source_ip is None:
            # The lab's own readiness checks connect too: which connection comes first is no contract.
            raise ValueError("when.source_ip: do: down needs the client it is down for (e.g. the gateway's address)")
        return self


_TAG_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,30}")
_URL_RE = re.compile(r"https://[!-~]{1,300}")


def _tag(value: str) -> str:
    if not _TAG_RE.fullmatch(value):
        raise ValueError(f"tag {quote(value)} must be lower-case letters, digits, '.' and '-' (at most 31)")
    return value


def _url(value: str) -> str:
    if not _URL_RE.fullmatch(value):
        raise ValueError(f"{quote(value)} is not an https:// URL (printable ASCII, at most 308 characters)")
    return value


class About(_Model):
    """What a catalogue scenario shows: the documented failure, as an admin meets it."""

    title: Annotated[str, AfterValidator(text_line("a title", 120, min_len=1))]
    symptom: Annotated[str, AfterValidator(text_line("a symptom", 400, min_len=1))] = Field(
        description="What the admin sees: the exact reply or NDR text, what the logs say."
    )
    cause: Annotated[str, AfterValidator(text_line("a cause", 600, min_len=1))]
    fix: Annotated[str, AfterValidator(text_line("a fix", 400, min_len=1))]
    sources: list[Annotated[str, AfterValidator(_url)]] = Field(min_length=1, max_length=10)
    tags: list[Annotated[str, AfterValidator(_tag)]] = Field([], max_length=10)


# What a workshop's overlay may set (exercise.may_change): the gateway's parts and the
# certificates, as dotted paths; `[*]` is every item of a list of named items (connectors).
MAY_CHANGE_RE = re.compile(r"(gateway|certificates)(\.[a-z_]{1,40}(\[\*\])?){0,3}")


def _may_change(value: str) -> str:
    if not MAY_CHANGE_RE.fullmatch(value):
        raise ValueError(
            f"{quote(value)}: a path under gateway or certificates, such as "
            "gateway.connectors[*].certificate or certificates"
        )
    return value


def _goal_message(value: str) -> str:
    if not MESSAGE_ID.fullmatch(value):
        raise ValueError(f"{quote(value)}: a traffic id (letters, digits, '.', '_', '-')")
    return value


class Goal(_Model):
    """One thing that must hold once the trainee's change runs: a message's outcome."""

    message: Annotated[str, AfterValidator(_goal_message)] = Field(description="A traffic id.")
    to: str | None = Field(None, description="One of its recipients (default: every recipient).")
    expect: Outcome
    says: Annotated[str, AfterValidator(text_line("a goal's text", MAX_TEXT))] = Field(
        "", description="What the goal means, in the trainee's words."
    )


class Exercise(_Model):
    """A workshop exercise on this scenario: what to do, hints, the goals that define success
    and what the trainee's overlay file may change (labgen workshop, labgen check)."""

    task: Annotated[str, AfterValidator(text_line("a task", 600, min_len=1))]
    hints: list[Annotated[str, AfterValidator(text_line("a hint", 400, min_len=1))]] = Field([], max_length=10)
    goals: list[Goal] = Field(min_length=1, max_length=MAX_ITEMS)
    may_change: list[Annotated[str, AfterValidator(_may_change)]] = Field(min_length=1, max_length=20)


class Scenario(_Model):
    name: str
    description: Annotated[str, AfterValidator(text_line("a description", MAX_TEXT))] = Field(
        "", description=(f"One line of printable text, at most {MAX_TEXT} characters (shown in terminals and reports).")
    )
    about: About | None = Field(
        None, description="Catalogue scenarios: the failure it shows, its cause, fix and sources."
    )
    exercise: Exercise | None = Field(
        None, description="Workshops: the task, hints, goals and what the trainee may change."
    )
    lab: LabNet = LabNet()
    eop: Eop = Eop()
    tenants: dict[TenantName, Tenant] = Field(min_length=1, max_length=MAX_TENANTS)
    internet: Internet = Internet()
    certificates: dict[CertKey, Certificate] = Field(
        {},
        max_length=MAX_CERTIFICATES,
        description=("Keys: lower-case letters, digits, '.', '_', '-' (they name files)."),
    )
    gateway: Gateway
    traffic: list[Message] = Field(
        min_length=1,
        description=(f"At most {MAX_RECIPIENTS} message × recipient pairs in all (LABGEN_MAX_RECIPIENTS raises it)."),
    )
    faults: list[Fault] = Field(
        [],
        max_length=MAX_ITEMS,
        description="Failures the lab's EOP or internet sinks inject, the same on every run (see Fault).",
    )
    deadline_s: float = Field(
        default=15.0,
        gt=0,
        le=600,
        description=("Seconds the traffic may take to settle; what is still queued then counts as deferred."),
    )
    # The file it came from, for error messages raised after validation (e.g. by the planner).
    _source: str = PrivateAttr(default="")
    # The directory of the file it came from: certificates' cert_file/key_file are relative to it.
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path:
        """Where a certificate's cert_file and key_file are looked for: the scenario file's
        directory (the working directory for a scenario that came from no file)."""
        return self._base_dir or Path.cwd()

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not _LAB_NAME_RE.fullmatch(v):
            raise ValueError(f"{quote(v)}: a lab name is lower-case letters, digits and '-' (at most 31)")
        return v

    @field_validator("traffic")
    @classmethod
    def _messages(cls, v: list[Message]) -> list[Message]:
        """Default ids (m<position>), then each `count:` made into its copies, every id once."""
        limit = env_limit("LABGEN_MAX_RECIPIENTS", MAX_RECIPIENTS)
        pairs = sum(len(m.to) * m.count for m in v)  # before copying: a huge count costs nothing
        volume = sum(max(m.size or 0, sum(a.bytes for a in m.attachments)) * m.count for m in v)
        if volume > MAX_TRAFFIC_BYTES:
            raise ValueError(
                f"{volume >> 20} MiB of messages (size and attachments × count); labgen sends at most "
                f"{MAX_TRAFFIC_BYTES >> 20} MiB per scenario"
            )
        if pairs > limit:
            raise ValueError(
                f"{pairs} message × recipient pairs (copies counted); labgen sends at most {limit} "
                "per scenario (raise it with LABGEN_MAX_RECIPIENTS=N)"
            )
        out: list[Message] = []
        for i, msg in enumerate(v, 1):
            if msg.id is None:
                msg.id = f"m{i}"
            msg._origin = i - 1
            if msg.count == 1:
                out.append(msg)
                continue
            if not MESSAGE_ID.fullmatch(f"{msg.id}-{msg.count}"):
                raise ValueError(
                    f"traffic[{i - 1}]: the id {quote(msg.id)} is too long for count {msg.count} "
                    "(copies are named <id>-<n>, at most 41 characters); shorten the id"
                )
            for n in range(1, msg.count + 1):
                copy = msg.model_copy(update={"id": f"{msg.id}-{n}", "count": 1})
                copy._origin = i - 1
                out.append(copy)
        return out

    # Derived views used by the planner and the services.
    def tenant_of_domain(self, domain: str) -> str | None:
        domain = domain.lower()
        for name, tenant in self.tenants.items():
            if domain == routing_domain(name) or any(d.name == domain for d in tenant.domains):
                return name
        return None


def with_profile(s: Scenario, profile: str) -> Scenario:
    """The scenario under another EOP profile. Its expectations were written for its own
    profile, so under another they are dropped rather than checked."""
    if profile == s.eop.profile:
        return s
    out = s.model_copy(deep=True)
    out._source = s._source
    out.eop.profile = profile  # type: ignore[assignment]  # the CLI offers only the profiles
    for m in out.traffic:
        m.expect = None
        m.expect_reply = None
        m.expect_spf = None
    return out


def message_via(s: Scenario, m: Message) -> str:
    """How a message leaves its sender: 'exchange-online' for a tenant's user, else 'internet'."""
    if m.via is not None:
        return m.via
    return "exchange-online" if s.tenant_of_domain(domain_of(m.sender)) else "internet"


def routing_domain(tenant: str) -> str:
    return f"{tenant}.{ROUTING_SUFFIX}"


def protection_host(tenant: str) -> str:
    return f"{tenant}.{PROTECTION_SUFFIX}"


def endpoint_host(domain: str) -> str | None:
    """The EOP endpoint Microsoft publishes for an accepted domain, the domain's dots made
    dashes (contoso.com -> contoso-com.mail.protection.outlook.com); None when that label would
    be longer than DNS allows."""
    label = domain.replace(".", "-")
    return f"{label}.{PROTECTION_SUFFIX}" if len(label) <= 63 else None


# ---------------------------------------------------------------- cross-checks


class _Located(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


def _cross_check(s: Scenario) -> None:
    """Checks that span several parts of the file; raise _Located with the YAML path."""
    _check_exercise(s)
    seen_domains: dict[str, str] = {}
    for tname, tenant in s.tenants.items():
        own = {d.name for d in tenant.domains} | {routing_domain(tname)}
        for i, d in enumerate(tenant.domains):
            where = f"tenants.{tname}.domains[{i}].name"
            if d.name in seen_domains:
                raise _Located(where, f"domain {quote(d.name)} is already used by {seen_domains[d.name]}")
            seen_domains[d.name] = f"tenant {tname}"
        for i, mbx in enumerate(tenant.mailboxes):
            if domain_of(mbx) not in own:
                raise _Located(
                    f"tenants.{tname}.mailboxes[{i}]",
                    f"{quote(mbx)} is not in one of tenant {tname}'s domains ({escape(', '.join(sorted(own)), 120)})",
                )
        for i, c in enumerate(tenant.inbound_connectors):
            where = f"tenants.{tname}.inbound_connectors[{i}]"
            if c.type == "OnPremises" and not (c.tls_sender_certificate_name or c.sender_ip_addresses):
                raise _Located(where, "an OnPremises connector needs TlsSenderCertificateName or SenderIPAddresses")
            if c.restrict_domains_to_certificate and not c.tls_sender_certificate_name:
                raise _Located(
                    f"{where}.RestrictDomainsToCertificate",
                    "needs TlsSenderCertificateName: the certificate it requires",
                )
            if c.restrict_domains_to_ip_addresses and not c.sender_ip_addresses:
                raise _Located(
                    f"{where}.RestrictDomainsToIPAddresses", "needs SenderIPAddresses: the addresses it requires"
                )
        for i, oc in enumerate(tenant.outbound_connectors):
            where = f"tenants.{tname}.outbound_connectors[{i}]"
            if not oc.use_mx_record and not oc.smart_hosts:
                raise _Located(where, "an outbound connector needs SmartHosts or UseMXRecord: true")
            for j, host in enumerate(oc.smart_hosts):
                if host != s.gateway.hostname:
                    raise _Located(
                        f"{where}.SmartHosts[{j}]",
                        f"{quote(host)}: the lab's only smart host is the gateway ({s.gateway.hostname})",
                    )
            if oc.tls_settings == "DomainValidation" and not oc.tls_domain:
                raise _Located(f"{where}.TlsDomain", "TlsSettings DomainValidation needs TlsDomain")
    for i, name in enumerate(s.internet.domains):
        if name in seen_domains or s.tenant_of_domain(name):
            raise _Located(f"internet.domains[{i}]", f"domain {quote(name)} is already a tenant's domain")
        seen_domains[name] = "the internet"
    names = set(s.certificates)
    if s.gateway.server_certificate is not None and s.gateway.server_certificate not in names:
        raise _Located("gateway.server_certificate", _unknown_cert(s.gateway.server_certificate, names))
    conn_names: set[str] = set()
    for i, sc in enumerate(s.gateway.connectors):
        if sc.name in conn_names:
            raise _Located(f"gateway.connectors[{i}].name", f"connector name {quote(sc.name)} is used twice")
        conn_names.add(sc.name)
        if sc.certificate is not None and sc.certificate not in names:
            raise _Located(f"gateway.connectors[{i}].certificate", _unknown_cert(sc.certificate, names))
    spaces: dict[str, int] = {}
    for i, sc in enumerate(s.gateway.connectors):
        for j, space in enumerate(sc.address_space):
            if space in spaces:
                raise _Located(
                    f"gateway.connectors[{i}].address_space[{j}]",
                    f"{quote(space)} is already in connector {spaces[space]}'s address space",
                )
            spaces[space] = i
    known = set(seen_domains) | {routing_domain(t) for t in s.tenants}
    ids: set[str] = set()
    for m in s.traffic:
        i = m._origin  # the message's place in the file (copies of a `count:` message share it)
        if m.id is None:  # Scenario._messages names every message before this runs
            raise RuntimeError(f"traffic[{i}] has no id after validation")
        if m.id in ids:
            raise _Located(f"traffic[{i}].id", f"message id {quote(m.id)} is used twice")
        ids.add(m.id)
        for j, rcpt in enumerate(m.to):
            if domain_of(rcpt) not in known:
                raise _Located(
                    f"traffic[{i}].to[{j}]",
                    f"{quote(rcpt)} is in no lab domain; add its domain to a tenant or to internet.domains",
                )
        sender_domain = domain_of(m.sender)
        if sender_domain not in known:
            raise _Located(
                f"traffic[{i}].from",
                f"{quote(m.sender)} is in no lab domain; add its domain to a tenant or to internet.domains",
            )
        if m.via == "exchange-online" and s.tenant_of_domain(sender_domain) is None:
            raise _Located(
                f"traffic[{i}].via", f"{quote(m.sender)} is not a tenant user, so it cannot send via exchange-online"
            )
        if (m.source_ip or m.helo) and message_via(s, m) != "internet":
            key = "source_ip" if m.source_ip else "helo"
            raise _Located(
                f"traffic[{i}].{key}",
                "only an internet sender has its own address and HELO; add via: internet to send as one",
            )
        if isinstance(m.expect, dict):
            for rcpt in m.expect:
                if rcpt.lower() not in [t.lower() for t in m.to]:
                    raise _Located(
                        f"traffic[{i}].expect{_key_part(rcpt)}",
                        f"{quote(rcpt)} is not one of this message's recipients",
                    )


def _check_exercise(s: Scenario) -> None:
    """Each goal names a message of the traffic and, when it names one, one of its recipients."""
    if s.exercise is None:
        return
    recipients: dict[str, set[str]] = {}
    for m in s.traffic:
        recipients.setdefault(m.id or "", set()).update(r.lower() for r in m.to)
    for i, g in enumerate(s.exercise.goals):
        if g.message not in recipients:
            raise _Located(f"exercise.goals[{i}].message", f"{quote(g.message)} is no traffic id of this scenario")
        if g.to is not None and g.to.lower() not in recipients[g.message]:
            raise _Located(f"exercise.goals[{i}].to", f"{quote(g.to)} is not one of {g.message}'s recipients")


def _unknown_cert(name: str, names: set[str]) -> str:
    have = escape(", ".join(sorted(names)), 120) or "none are defined"
    return f"unknown certificate {quote(name)} (certificates: {have})"


# ---------------------------------------------------------------- error paths

# A key printed as is in a YAML path; anything else is printed quoted: ["odd key"].
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9_@.+-]{0,59}")
# pydantic's names for union members and dict keys are not YAML keys.
_PYDANTIC_TAG_RE = re.compile(r"(literal\[|dict\[|function-|list\[).*\]|Smarthost|\[key\]")


def _key_part(key) -> str:
    if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key):
        return f".{key}"
    return f"[{quote(key)}]"


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PYDANTIC_TAG_RE.fullmatch(str(part)):
            continue
        else:
            out += _key_part(part)
    return out.removeprefix(".") or "(top level)"


def _first_error(exc: ValidationError) -> tuple[str, str]:
    errs = exc.errors()
    # For a union (e.g. route: mx | {smarthost}), report the member that got furthest.
    err = max(errs, key=lambda e: len(e["loc"]))
    msg = err["msg"].removeprefix("Value error, ")
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `labgen schema` lists the keys)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "too_long" and "max_length" in ctx and ctx.get("field_type") != "String":
        got = f" ({ctx['actual_length']})" if ctx.get("actual_length") is not None else ""
        msg = f"too many items{got}; labgen allows at most {ctx['max_length']} here"
    return _format_loc(tuple(err["loc"])), msg


def parse_scenario(data, source: str, default_name: str | None = None, base_dir: Path | None = None) -> Scenario:
    """Validate loaded YAML. `source` is the file as the user named it (shown in errors);
    `default_name` the lab name when the file has none (by default: the file's stem); `base_dir`
    the directory that certificates' cert_file/key_file are relative to (the file's)."""
    label = escape(source, 100)
    if not isinstance(data, dict):
        raise InputError(f"{label}: (top level): expected a mapping of scenario keys")
    env_limit("LABGEN_MAX_RECIPIENTS", MAX_RECIPIENTS)  # a bad setting is reported before the file
    data = dict(data)
    if "name" not in data:
        if default_name is None:
            default_name = Path(source).stem if source.endswith((".yaml", ".yml")) else source
        if not _LAB_NAME_RE.fullmatch(default_name):
            raise InputError(
                f"{label}: name: required key is missing, and the file name {quote(default_name)} "
                "is no lab name (lower-case letters, digits and '-', at most 31); add name:"
            )
        data["name"] = default_name
    try:
        scenario = Scenario.model_validate(data)
        scenario._source = label  # escaped: the planner quotes it in its errors
        scenario._base_dir = base_dir
        _cross_check(scenario)
    except ValidationError as exc:
        path, msg = _first_error(exc)
        raise InputError(one_line(f"{label}: {path}: {msg}")) from None
    except _Located as exc:
        raise InputError(one_line(f"{label}: {exc.path}: {exc.message}")) from None
    return scenario


# ---------------------------------------------------------------- reading files


class _Refused(yaml.MarkedYAMLError):
    """Well-formed YAML that labgen refuses to read (duplicate keys, too deep, too big, a value
    Python cannot hold)."""

    def __init__(self, problem: str, mark):
        super().__init__(None, None, problem, mark)


class _ScenarioLoader(yaml.SafeLoader):
    """Safe loading, plus what a file from a stranger needs: duplicate keys are an error (the
    last would silently win), nesting is capped (deep nesting overflows Python's stack), and the
    document's size with every alias expanded is capped (aliases multiply what validation walks)."""

    def __init__(self, stream, max_nodes: int):
        super().__init__(stream)
        self._depth = 0
        self._max_nodes = max_nodes
        self._sizes: dict[int, int] = {}  # id(node) -> nodes under it, aliases expanded

    def compose_node(self, parent, index):
        is_alias = self.check_event(yaml.AliasEvent)
        start = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels; a scenario needs about 8", start)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._sizes.get(id(node))
        if size is None:
            if is_alias:  # an alias of a node still being composed: a cycle
                raise _Refused("an alias refers to a node that contains it", start)
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            size = 1 + sum(self._sizes[id(c)] for c in children)
            self._sizes[id(node)] = size
        if size > self._max_nodes:
            raise _Refused(
                f"more than {self._max_nodes} values with every alias expanded; a scenario needs far fewer", start
            )
        return node

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are meant to be overridden
            line = key.start_mark.line + 1
            ident = (key.tag, key.value)
            if ident in first:
                raise _Refused(
                    f"duplicate key {quote(key.value)} (lines {first[ident]} and {line}); keep one", key.start_mark
                )
            first[ident] = line
        return node

    def construct_object(self, node, deep=False):
        # Scalars Python cannot hold (a 5000-digit int, the 31st of February) are bad input too.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise _Refused(f"cannot read this value ({escape(exc, 80)})", node.start_mark) from None


def load_yaml(text: str, label: str) -> object:
    """Parse a scenario's YAML; any problem is one InputError line naming file and line."""
    max_nodes = max(300_000, 15 * env_limit("LABGEN_MAX_RECIPIENTS", MAX_RECIPIENTS))
    loader = None
    try:
        loader = _ScenarioLoader(text, max_nodes)  # its reader already refuses control characters
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
        if isinstance(exc, _Refused):
            raise InputError(one_line(f"{label}: {where}: {problem}")) from None
        raise InputError(
            one_line(f"{label}: {where}: malformed YAML ({escape(problem, 120)}); fix the syntax")
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


EXAMPLE_PREFIX = "example:"  # `example:NAME` runs the shipped examples/NAME.yaml


FIXED_SUFFIX = ":fixed"  # `labgen up NAME:fixed` runs a catalogue entry's fixed variant


def builtin_names() -> list[str]:
    """Every built-in scenario a user can name: catalogue entries, and each fixed variant as NAME:fixed."""
    stems = sorted(p.stem for p in resource_dir("scenarios").glob("*.yaml"))
    return [stem.removesuffix(".fixed") + FIXED_SUFFIX if stem.endswith(".fixed") else stem for stem in stems]


def catalogue_entries() -> list[tuple[str, str | None]]:
    """(broken ref, fixed ref or None) per catalogue entry; the field report's pair is broken/fixed."""
    names = set(builtin_names())
    out = []
    for name in sorted(n for n in names if not n.endswith(FIXED_SUFFIX) and n != "fixed"):
        fixed = "fixed" if name == "broken" else name + FIXED_SUFFIX
        out.append((name, fixed if fixed in names else None))
    return out


def _builtin_file(ref: str) -> Path:
    stem = ref[: -len(FIXED_SUFFIX)] + ".fixed" if ref.endswith(FIXED_SUFFIX) else ref
    return resource_dir("scenarios") / f"{stem}.yaml"


def example_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("examples").glob("*.yaml"))


def scenario_path(ref: str) -> Path:
    """`example:NAME` (a shipped example), a built-in scenario's name, or a path to a YAML file
    (a file whose name starts with `example:` is given as ./example:...). Names are looked up in
    the listing of what ships, never joined onto a directory as typed."""
    p = Path(ref)
    label = escape(ref, 100)
    if ref.startswith(EXAMPLE_PREFIX):
        name, examples = ref[len(EXAMPLE_PREFIX) :], example_names()
        if name not in examples:
            raise InputError(
                f"{label}: unknown example; the examples are {', '.join(examples)} "
                "(`labgen examples` says what each shows)"
            )
        return resource_dir("examples") / f"{name}.yaml"
    if p.suffix in (".yaml", ".yml") or "/" in ref:
        if not p.is_file():
            raise InputError(f"{label}: no such scenario file; check the path")
        return p
    if ref in builtin_names():  # looked up in the listing, never joined as typed
        return _builtin_file(ref)
    hint = f"did you mean {EXAMPLE_PREFIX}{ref}? " if ref in example_names() else ""
    raise InputError(
        f"{label}: unknown scenario; {hint}built-ins are broken, fixed and the catalogue (`labgen scenarios`), "
        f"shipped examples run as {EXAMPLE_PREFIX}NAME (`labgen examples`), or give a path to a .yaml file"
    )


def read_scenario_text(path: Path, label: str) -> str:
    """The file's text, refusing files over the size limit before reading more than it."""
    limit = env_limit("LABGEN_MAX_SCENARIO_BYTES", MAX_SCENARIO_BYTES)
    raw = read_limited(path, label, limit, "a scenario file", "LABGEN_MAX_SCENARIO_BYTES")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None


def load_scenario(ref: str) -> Scenario:
    """Load a built-in by name or a file by path; errors name it as the user typed it."""
    path = scenario_path(ref)
    label = escape(ref, 100)
    data = load_yaml(read_scenario_text(path, label), label)
    return parse_scenario(data, ref, default_name=path.stem, base_dir=path.resolve().parent)


def json_schema() -> dict:
    return Scenario.model_json_schema(by_alias=True)
