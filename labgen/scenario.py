"""Scenario files: the typed model, loading, and one-line errors with file and YAML path.

A scenario is everything a lab needs to know about the customer's setup (tenants, certificates,
the gateway's send connectors), how the fake EOP behaves, the traffic to send and what the user
expects to happen to it. Everything after this module works on a validated `Scenario`.
"""

from __future__ import annotations

import ipaddress
import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from .errors import InputError
from .resources import resource_dir

# Lab names mirror the real ones under reserved TLDs (DESIGN.md §2).
PROTECTION_SUFFIX = "mail.protection.outlook.test"  # real: mail.protection.outlook.com
ROUTING_SUFFIX = "mail.onmicrosoft.test"  # real: mail.onmicrosoft.com

# Documentation and benchmarking ranges only: realistic "public" addresses that route nowhere.
ALLOWED_RANGES = [ipaddress.ip_network(n) for n in
                  ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")]

Outcome = Literal["delivered", "silently_discarded", "rejected", "deferred"]
OUTCOMES = ("delivered", "silently_discarded", "rejected", "deferred")

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


_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")
_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


def check_domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not _DOMAIN_RE.match(value):
        raise ValueError(f"'{value}' is not a valid domain name")
    return value


def check_address(value: str) -> str:
    local, sep, domain = value.strip().rpartition("@")
    if not sep or not _LOCAL_RE.match(local):
        raise ValueError(f"'{value}' is not a valid e-mail address (expected local@domain)")
    return f"{local}@{check_domain(domain)}"


def check_lab_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{value}' is not an IPv4 address") from None
    if ip.version != 4 or not _in_lab_ranges(ipaddress.ip_network(f"{ip}/32")):
        raise ValueError(f"{value} is outside the lab's documentation ranges "
                         "(192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15)")
    return str(ip)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Domain(_Model):
    name: str
    mx: Literal["eop", "gateway"] = Field("eop", description=(
        "Where the domain's public MX points: straight at EOP, or at the customer's gateway "
        "(centralized mail flow, inbound)."))

    _name = field_validator("name")(classmethod(lambda cls, v: check_domain(v)))


class InboundConnector(_Model):
    """An Exchange Online inbound connector (New-InboundConnector)."""

    name: str
    type: Literal["OnPremises", "Partner"] = "OnPremises"
    tls_sender_certificate_name: Optional[str] = Field(None, description=(
        "TlsSenderCertificateName: compared with the client certificate's CN and SANs; "
        "'*.contoso.com' covers the domain and every subdomain."))
    sender_ip_addresses: list[str] = Field([], description="SenderIPAddresses: addresses or CIDR ranges.")
    sender_domains: list[str] = Field(["*"], description="Partner connectors: the sender domains they apply to.")
    require_tls: bool = Field(False, description="RequireTls: mail without STARTTLS gets 451 5.7.3.")

    @field_validator("tls_sender_certificate_name")
    @classmethod
    def _cert_name(cls, v):
        if v is None:
            return v
        v = v.strip().lower()
        # Microsoft: '*.contoso.com' is allowed; embedded wildcards ('mail*.contoso.com') are not.
        rest = v[2:] if v.startswith("*.") else v
        if "*" in rest:
            raise ValueError(f"'{v}': only a leading '*.' wildcard is allowed in a certificate name")
        check_domain(rest)
        return v

    @field_validator("sender_ip_addresses")
    @classmethod
    def _cidrs(cls, v):
        out = []
        for item in v:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not an IPv4 address or CIDR range") from None
            if net.version != 4 or not _in_lab_ranges(net):
                raise ValueError(f"{item} is outside the lab's documentation ranges")
            out.append(str(net))
        return out


class Tenant(_Model):
    """A Microsoft 365 tenant: what its admin configured in Exchange Online."""

    domains: list[Domain] = Field(min_length=1)
    mailboxes: list[str] = []
    inbound_connectors: list[InboundConnector] = []
    outbound_via_gateway: bool = Field(False, description=(
        "Centralized mail flow: Exchange Online hands all outbound mail to the customer's gateway."))

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, v):
        return [check_address(a) for a in v]


def check_cert_name(value: str) -> str:
    """A DNS name as certificates carry it: a domain, optionally with one leading '*.'."""
    value = value.strip().lower()
    check_domain(value[2:] if value.startswith("*.") else value)
    return value


class Certificate(_Model):
    cn: str = Field(min_length=1, max_length=64)  # X.509's upper bound for a CN
    sans: list[str] = Field([], description="DNS names; the CN when empty.")
    issuer: Literal["self", "public"] = Field("public", description=(
        "'self' = self-signed; 'public' = issued by the lab's stand-in for a public CA (root + intermediate)."))
    key: Literal["rsa2048", "rsa3072", "ec256"] = "rsa2048"
    not_before_days: int = Field(-1, description=(
        "Start of validity in days from the day the lab's PKI is made (negative = in the past)."))
    valid_days: int = Field(365, description="Length of validity in days (expired: not_before_days + valid_days < 0).")

    @field_validator("cn")
    @classmethod
    def _cn(cls, v):
        if not v.isascii() or not v.isprintable():
            raise ValueError(f"'{v}': a certificate CN is printable ASCII")
        return v

    _sans = field_validator("sans")(classmethod(lambda cls, v: [check_cert_name(n) for n in v]))

    @field_validator("valid_days")
    @classmethod
    def _days(cls, v):
        if v < 1:
            raise ValueError("valid_days must be at least 1")
        return v


class Smarthost(_Model):
    smarthost: str
    _host = field_validator("smarthost")(classmethod(lambda cls, v: check_domain(v)))


class SendConnector(_Model):
    """One of the gateway's send connectors (one Postfix smtp transport in the Docker lab)."""

    name: str
    address_space: list[str] = Field(min_length=1, description=(
        "Domains this connector takes: 'contoso.com', '*.contoso.com' (and subdomains) or '*'; most specific wins."))
    route: Union[Literal["mx"], Smarthost] = Field("mx", description="'mx' (the recipient domain's MX) or {smarthost: name}.")
    tls: Literal["none", "may", "encrypt"] = Field("may", description="Postfix's smtp_tls_security_level.")
    certificate: Optional[str] = Field(None, description="The client certificate it presents (a key of certificates).")
    source_ip: Optional[str] = Field(None, description="Egress address (smtp_bind_address); default: the gateway's.")

    @field_validator("address_space")
    @classmethod
    def _spaces(cls, v):
        out = []
        for item in v:
            item = item.strip().lower()
            if item != "*":
                check_domain(item[2:] if item.startswith("*.") else item)
            out.append(item)
        return out

    _ip = field_validator("source_ip")(classmethod(lambda cls, v: v if v is None else check_lab_ip(v)))

    @property
    def smarthost(self) -> Optional[str]:
        return self.route.smarthost if isinstance(self.route, Smarthost) else None


class Gateway(_Model):
    hostname: str = "gw.contoso.example"
    address: Optional[str] = None
    # The certificate the gateway presents when it *receives* mail (STARTTLS server side).
    server_certificate: Optional[str] = None
    connectors: list[SendConnector] = Field(min_length=1)

    _host = field_validator("hostname")(classmethod(lambda cls, v: check_domain(v)))
    _ip = field_validator("address")(classmethod(lambda cls, v: v if v is None else check_lab_ip(v)))


class Eop(_Model):
    misattribution: Literal["discard", "reject"] = Field("discard", description=(
        "Mail attributed to tenant A by an OnPremises connector but addressed to tenant B: 'discard' "
        "(accepted with 250, dropped: the field report) or 'reject' (550 5.7.64, a stricter EOP)."))
    require_trusted_certificate: bool = Field(False, description=(
        "KB 3212877: reject certificate-attributed mail whose chain is not publicly trusted (550 5.7.64)."))
    address: Optional[str] = None

    _ip = field_validator("address")(classmethod(lambda cls, v: v if v is None else check_lab_ip(v)))


class Internet(_Model):
    """Non-Microsoft domains; each gets an MX sink that accepts any recipient."""

    domains: list[str] = []
    _d = field_validator("domains")(classmethod(lambda cls, v: [check_domain(d) for d in v]))


class LabNet(_Model):
    subnet: str = "198.51.100.0/24"
    # Fixed addresses for the lab's hosts; the gateway's is gateway.address. 'traffic' sends as
    # the internet's senders, 'exo' as Exchange Online's outbound servers.
    addresses: dict[Literal["dns", "eop", "sink", "traffic", "exo"], str] = {}

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v):
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"'{v}' is not a network in CIDR form ({e})") from None
        if net.version != 4 or not _in_lab_ranges(net):
            raise ValueError(f"{v} is outside the lab's documentation ranges")
        if net.prefixlen > 28:
            raise ValueError(f"{v} is too small for a lab (use /28 or larger)")
        return str(net)

    @field_validator("addresses")
    @classmethod
    def _addrs(cls, v):
        return {k: check_lab_ip(ip) for k, ip in v.items()}


class Message(_Model):
    id: Optional[str] = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject: Optional[str] = None
    via: Optional[Literal["exchange-online", "internet"]] = Field(None, description=(
        "'exchange-online': a tenant user's mail leaving through Exchange Online (to the gateway with "
        "centralized mail flow); 'internet': an outside sender delivering by MX. Default: by the sender."))
    expect: Union[Outcome, dict[str, Outcome], None] = Field(None, description=(
        "The expected outcome for every recipient, or a map recipient -> outcome."))

    _from = field_validator("sender")(classmethod(lambda cls, v: check_address(v)))
    _to = field_validator("to")(classmethod(lambda cls, v: [check_address(a) for a in v]))

    @field_validator("expect")
    @classmethod
    def _expect(cls, v):
        # Keys normalised like recipients, so that an expectation can never be silently skipped.
        return {check_address(k): o for k, o in v.items()} if isinstance(v, dict) else v

    @field_validator("id")
    @classmethod
    def _id(cls, v):
        if v is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,40}$", v):
            raise ValueError(f"'{v}': ids are letters, digits, '.', '_' or '-' (at most 41)")
        return v

    def expected_for(self, rcpt: str) -> Optional[str]:
        if isinstance(self.expect, dict):
            return {k.lower(): o for k, o in self.expect.items()}.get(rcpt.lower())
        return self.expect


class Scenario(_Model):
    name: str
    description: str = ""
    lab: LabNet = LabNet()
    eop: Eop = Eop()
    tenants: dict[str, Tenant] = Field(min_length=1)
    internet: Internet = Internet()
    certificates: dict[str, Certificate] = {}
    gateway: Gateway
    traffic: list[Message] = Field(min_length=1)
    deadline_s: float = Field(default=15.0, gt=0, le=600, description=(
        "Seconds the traffic may take to settle; what is still queued then counts as deferred."))
    # The file it came from, for error messages raised after validation (e.g. by the planner).
    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        return self._source

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,30}$", v):
            raise ValueError(f"'{v}': a lab name is lower-case letters, digits and '-' (at most 31)")
        return v

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, v):
        for name in v:
            if not re.match(r"^[a-z0-9][a-z0-9-]{0,40}$", name):
                raise ValueError(f"tenant name '{name}' must be lower-case letters, digits and '-'")
        return v

    @model_validator(mode="after")
    def _default_ids(self):
        for i, msg in enumerate(self.traffic, 1):
            if msg.id is None:
                msg.id = f"m{i}"
        return self

    # Derived views used by the planner and the services.
    def tenant_of_domain(self, domain: str) -> Optional[str]:
        domain = domain.lower()
        for name, tenant in self.tenants.items():
            if domain == routing_domain(name) or any(d.name == domain for d in tenant.domains):
                return name
        return None


def routing_domain(tenant: str) -> str:
    return f"{tenant}.{ROUTING_SUFFIX}"


def protection_host(tenant: str) -> str:
    return f"{tenant}.{PROTECTION_SUFFIX}"


# ---------------------------------------------------------------- loading and cross-checks

class _Located(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


def _cross_check(s: Scenario) -> None:
    """Checks that span several parts of the file; raise _Located with the YAML path."""
    seen_domains: dict[str, str] = {}
    for tname, tenant in s.tenants.items():
        own = {d.name for d in tenant.domains} | {routing_domain(tname)}
        for i, d in enumerate(tenant.domains):
            where = f"tenants.{tname}.domains[{i}].name"
            if d.name in seen_domains:
                raise _Located(where, f"domain '{d.name}' is already used by {seen_domains[d.name]}")
            seen_domains[d.name] = f"tenant {tname}"
        for i, mbx in enumerate(tenant.mailboxes):
            if domain_of(mbx) not in own:
                raise _Located(f"tenants.{tname}.mailboxes[{i}]",
                               f"'{mbx}' is not in one of tenant {tname}'s domains ({', '.join(sorted(own))})")
        for i, c in enumerate(tenant.inbound_connectors):
            if c.type == "OnPremises" and not (c.tls_sender_certificate_name or c.sender_ip_addresses):
                raise _Located(f"tenants.{tname}.inbound_connectors[{i}]",
                               "an OnPremises connector needs tls_sender_certificate_name or sender_ip_addresses")
    for i, d in enumerate(s.internet.domains):
        if d in seen_domains or s.tenant_of_domain(d):
            raise _Located(f"internet.domains[{i}]", f"domain '{d}' is already a tenant's domain")
        seen_domains[d] = "the internet"
    names = set(s.certificates)
    if s.gateway.server_certificate and s.gateway.server_certificate not in names:
        raise _Located("gateway.server_certificate", _unknown_cert(s.gateway.server_certificate, names))
    conn_names: set[str] = set()
    for i, c in enumerate(s.gateway.connectors):
        if c.name in conn_names:
            raise _Located(f"gateway.connectors[{i}].name", f"connector name '{c.name}' is used twice")
        conn_names.add(c.name)
        if c.certificate and c.certificate not in names:
            raise _Located(f"gateway.connectors[{i}].certificate", _unknown_cert(c.certificate, names))
    spaces: dict[str, int] = {}
    for i, c in enumerate(s.gateway.connectors):
        for j, space in enumerate(c.address_space):
            if space in spaces:
                raise _Located(f"gateway.connectors[{i}].address_space[{j}]",
                               f"'{space}' is already in connector {spaces[space]}'s address space")
            spaces[space] = i
    known = set(seen_domains) | {routing_domain(t) for t in s.tenants}
    ids: set[str] = set()
    for i, m in enumerate(s.traffic):
        if m.id in ids:
            raise _Located(f"traffic[{i}].id", f"message id '{m.id}' is used twice")
        ids.add(m.id)
        for j, rcpt in enumerate(m.to):
            if domain_of(rcpt) not in known:
                raise _Located(f"traffic[{i}].to[{j}]",
                               f"'{rcpt}' is in no lab domain; add its domain to a tenant or to internet.domains")
        sender_domain = domain_of(m.sender)
        if sender_domain not in known:
            raise _Located(f"traffic[{i}].from",
                           f"'{m.sender}' is in no lab domain; add its domain to a tenant or to internet.domains")
        if m.via == "exchange-online" and s.tenant_of_domain(sender_domain) is None:
            raise _Located(f"traffic[{i}].via", f"'{m.sender}' is not a tenant user, so it cannot send via exchange-online")
        if isinstance(m.expect, dict):
            for rcpt in m.expect:
                if rcpt.lower() not in [t.lower() for t in m.to]:
                    raise _Located(f"traffic[{i}].expect.{rcpt}", f"'{rcpt}' is not one of this message's recipients")


def _unknown_cert(name: str, names: set[str]) -> str:
    have = ", ".join(sorted(names)) or "none are defined"
    return f"unknown certificate '{name}' (certificates: {have})"


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("literal[", "function-", "dict[")):
            continue  # pydantic's union-member tags are not YAML keys
        elif str(part) in ("Smarthost",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _first_error(exc: ValidationError) -> tuple[str, str]:
    errs = exc.errors()
    # For a union (e.g. route: mx | {smarthost}), report the member that got furthest.
    err = max(errs, key=lambda e: len(e["loc"]))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `labgen schema` lists the keys)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return _format_loc(tuple(err["loc"])), msg


def parse_scenario(data, source: str) -> Scenario:
    if not isinstance(data, dict):
        raise InputError(f"{source}: (top level): expected a mapping of scenario keys")
    data = dict(data)
    data.setdefault("name", Path(source).stem if source.endswith((".yaml", ".yml")) else source)
    try:
        scenario = Scenario.model_validate(data)
        scenario._source = source
        _cross_check(scenario)
    except ValidationError as exc:
        path, msg = _first_error(exc)
        raise InputError(f"{source}: {path}: {msg}") from None
    except _Located as exc:
        raise InputError(f"{source}: {exc.path}: {exc.message}") from None
    return scenario


def builtin_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("scenarios").glob("*.yaml"))


def scenario_path(ref: str) -> Path:
    """A built-in scenario name or a path to a YAML file."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or "/" in ref:
        if not p.is_file():
            raise InputError(f"{ref}: no such scenario file; check the path")
        return p
    builtin = resource_dir("scenarios") / f"{ref}.yaml"
    if not builtin.is_file():
        raise InputError(f"{ref}: unknown scenario; built-ins are {', '.join(builtin_names())} "
                         "(or give a path to a .yaml file)")
    return builtin


def load_scenario(ref: str) -> Scenario:
    path = scenario_path(ref)
    label = path.name
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{label}: {where}: malformed YAML ({problem}); fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read the file ({exc})") from None
    return parse_scenario(data, label)


def json_schema() -> dict:
    return Scenario.model_json_schema(by_alias=True)
