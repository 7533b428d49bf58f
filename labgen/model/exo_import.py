"""`labgen import exo`: a scenario from Exchange Online PowerShell exports.

Reads what `Get-InboundConnector | ConvertTo-Json -Depth 5` (and Get-OutboundConnector,
Get-AcceptedDomain) write, with Microsoft's documented property names (New-InboundConnector,
New-OutboundConnector, New-AcceptedDomain on learn.microsoft.com), and writes a scenario that
uses labgen's Exchange Online field names, with a skeleton gateway and traffic that run as they
are.

PowerShell's quirks handled: a single object is written without the surrounding array; Windows
PowerShell 5.1 writes some arrays as {"value": [...], "Count": N}; enums come as names or as
numbers; `Out-File` in Windows PowerShell writes UTF-16 LE with a BOM (UTF-8, UTF-8 with a BOM
and UTF-16 with a BOM are read); SenderDomains come as address spaces ("smtp:*;1").

Everything an export says is untrusted: each value the scenario takes is held to the scenario
model's own grammar, and a value it refuses is one line naming the file and the JSON path
($[0].SenderIPAddresses[1]). What the lab cannot model is listed, never dropped silently: in a
comment block at the top of the scenario, and one line per property on stderr.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError, escape, one_line, quote
from ..files import read_limited
from .scenario import (
    MAX_NAME,
    RESERVED_CERT_KEYS,
    check_cert_name,
    check_domain,
    check_domain_pattern,
    check_lab_cidr,
    check_tenant_name,
    endpoint_host,
    env_limit,
    parse_scenario,
    text_line,
)

MAX_EXPORT_BYTES = 4 << 20  # one export file; raise with LABGEN_MAX_EXPORT_BYTES
MAX_EXPORT_DEPTH = 20  # ConvertTo-Json -Depth 5 writes at most about 6 levels

DOCS = {
    "inbound": "https://learn.microsoft.com/powershell/module/exchange/new-inboundconnector",
    "outbound": "https://learn.microsoft.com/powershell/module/exchange/new-outboundconnector",
    "domains": "https://learn.microsoft.com/powershell/module/exchange/new-accepteddomain",
}

# Properties every Exchange object carries that describe the object, not mail flow: named once
# in the output's comment block, not per value.
METADATA = frozenset(
    s.lower()
    for s in (
        "Identity Id Guid DistinguishedName ExchangeObjectId ExchangeVersion ObjectCategory ObjectClass "
        "ObjectState IsValid OrganizationId OrganizationalUnitRoot OriginatingServer PSComputerName "
        "PSShowComputerName RunspaceId WhenChanged WhenCreated WhenChangedUTC WhenCreatedUTC AdminDisplayName "
        "Comment ConnectorSource LastValidationTimestamp IsValidated ValidationRecipients"
    ).split()
)

# Numbers PowerShell writes for enums (Windows PowerShell's ConvertTo-Json has no -EnumsAsStrings).
# The numbering is Exchange's object model's as published nowhere by Microsoft; an import that
# reads a number says which name it took, so the user can check it (or re-export with PowerShell 7's
# `ConvertTo-Json -EnumsAsStrings`).
ENUM_NUMBERS: dict[str, dict[int, str]] = {
    "ConnectorType": {1: "Partner", 2: "OnPremises"},
    "TlsSettings": {1: "EncryptionOnly", 2: "CertificateValidation", 3: "DomainValidation"},
    "DomainType": {0: "Authoritative", 1: "ExternalRelay", 2: "InternalRelay"},
}

# Values a property has unless someone changed it (New-AcceptedDomain, New-OutboundConnector):
# not reported, like false, null and empty.
DEFAULT_VALUES: dict[str, Any] = {
    "authenticationtype": "Managed",
    "liveidinstancetype": "Business",
    "addressbookenabled": True,
    "linkformodifiedconnector": "00000000-0000-0000-0000-000000000000",
}

INBOUND_MODELLED = (
    "Name ConnectorType TlsSenderCertificateName SenderIPAddresses SenderDomains RequireTls "
    "RestrictDomainsToCertificate RestrictDomainsToIPAddresses EFSkipLastIP EFSkipIPs Enabled"
).split()
OUTBOUND_MODELLED = (
    "Name ConnectorType RecipientDomains SmartHosts UseMXRecord TlsSettings TlsDomain RouteAllMessagesViaOnPremises "
    "Enabled"
).split()
DOMAIN_MODELLED = "DomainName DomainType Default InitialDomain Name".split()

INTERNET_DOMAIN = "northwind.example"  # the skeleton's internet sender's domain
ONMICROSOFT = (".mail.onmicrosoft.com", ".onmicrosoft.com")


@dataclass
class Note:
    """One value the lab does not take as it is: not modelled, or mapped onto the lab."""

    file: str  # the file as the user named it, escaped
    where: str  # connector or domain
    prop: str
    value: str  # JSON text, escaped and shortened
    what: str  # "not modelled" or what was done


@dataclass
class Imported:
    text: str  # the scenario's YAML, comments included
    notes: list[Note] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class _Where:
    """A JSON path in one export file, for one-line errors: file: $[0].SenderIPAddresses[1]: why."""

    def __init__(self, label: str, path: str = "$"):
        self.label, self.path = label, path

    def key(self, name: str) -> _Where:
        part = f".{name}" if re.fullmatch(r"[A-Za-z0-9_]{1,60}", name) else f"[{quote(name)}]"
        return _Where(self.label, self.path + part)

    def index(self, i: int) -> _Where:
        return _Where(self.label, f"{self.path}[{i}]")

    def fail(self, why: str) -> InputError:
        return InputError(one_line(f"{self.label}: {self.path}: {why}"))


# ---------------------------------------------------------------- reading an export


def decode_export(raw: bytes, label: str) -> str:
    """UTF-8 (with or without a BOM) or UTF-16 with a BOM, as PowerShell writes them."""
    try:
        if raw.startswith(b"\xef\xbb\xbf"):
            return raw[3:].decode("utf-8")
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            return raw.decode("utf-16")  # the BOM says which byte order
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{label}: not UTF-8 or UTF-16 text with a BOM (byte {exc.start}); export again with "
            "`ConvertTo-Json -Depth 5 | Out-File -Encoding utf8 FILE`"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {quote(k)}")
        out[k] = v
    return out


def _depth(value: Any, limit: int) -> bool:
    """Is `value` nested at most `limit` levels deep (iteratively: no recursion on hostile input)?"""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def read_export(path: Path, label: str) -> list[tuple[dict[str, Any], _Where]]:
    """The objects of one export, each with its JSON path: a JSON array of objects, or one object
    (PowerShell writes a single result without the array, at $), or nothing (null, empty)."""
    limit = env_limit("LABGEN_MAX_EXPORT_BYTES", MAX_EXPORT_BYTES)
    raw = read_limited(path, label, limit, "an export file", "LABGEN_MAX_EXPORT_BYTES")
    text = decode_export(raw, label)
    if not text.strip():
        return []

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{label}: line {exc.lineno}, column {exc.colno}: not JSON ({escape(exc.msg, 80)}); "
            "export with `ConvertTo-Json -Depth 5`"
        ) from None
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else escape(exc, 120)
        raise InputError(f"{label}: not JSON that labgen reads ({why})") from None
    if not _depth(data, MAX_EXPORT_DEPTH):
        raise InputError(
            f"{label}: nested deeper than {MAX_EXPORT_DEPTH} levels; export with `ConvertTo-Json -Depth 5`"
        )
    data = _unwrap(data)
    if data is None:
        return []
    items = (
        [(x, _Where(label).index(i)) for i, x in enumerate(data)] if isinstance(data, list) else [(data, _Where(label))]
    )
    for item, where in items:
        if not isinstance(item, dict):
            raise where.fail(f"expected an object (a connector or domain), got {_json(item, 40)}")
    return items


def _unwrap(value: Any) -> Any:
    """Windows PowerShell 5.1 writes an array that carries extra type data as {"value": [...], "Count": N}."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"value", "Count"}:
        return value["value"]
    return value


# ---------------------------------------------------------------- values


def _string(value: Any, where: _Where, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise where.fail(f"expected {what}, got {_json(value)}")
    return value


def _strings(value: Any, where: _Where) -> list[tuple[str, _Where]]:
    """A multi-valued property: a JSON array of strings (or a lone string, or null)."""
    value = _unwrap(value)
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, where)]
    if not isinstance(value, list):
        raise where.fail(f"expected a list of strings, got {_json(value)}")
    return [(_string(_unwrap(v), where.index(i)), where.index(i)) for i, v in enumerate(value)]


def _bool(value: Any, where: _Where) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise where.fail(f"expected true or false, got {_json(value)}")


def _enum(prop: str, value: Any, where: _Where, choices: tuple[str, ...], numbered: list[str]) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        name = ENUM_NUMBERS[prop].get(value)
        if name is None:
            raise where.fail(
                f"{value} is no {prop} labgen knows as a number; re-export with `ConvertTo-Json -EnumsAsStrings`"
            )
        numbered.append(f"{prop} {value} read as {name}")
        value = name
    if isinstance(value, str):
        for c in choices:
            if value.strip().lower() == c.lower():
                return c
    raise where.fail(f"{_json(value)} is not one of {', '.join(choices)}")


def _checked(check: Callable[[str], str], value: str, where: _Where) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise where.fail(str(exc)) from None


def _json(value: Any, limit: int = 80) -> str:
    return escape(json.dumps(value, ensure_ascii=True, default=str), limit)


def _address_space(value: str) -> str:
    """SenderDomains come as Exchange address spaces, 'smtp:*;1' (type, domain, cost)."""
    v = value.strip()
    if v.lower().startswith("smtp:"):
        v = v[5:]
    return v.rsplit(";", 1)[0] if re.search(r";\d+$", v) else v


def _networks(value: str, where: _Where) -> list[ipaddress.IPv4Network]:
    """An address, a CIDR range or a 'first-last' range, as SenderIPAddresses takes them."""
    try:
        if "-" in value:
            first, last = (ipaddress.IPv4Address(p.strip()) for p in value.split("-", 1))
            if first > last:
                raise ValueError
            return list(ipaddress.summarize_address_range(first, last))
        return [ipaddress.IPv4Network(value.strip(), strict=False)]
    except ValueError:
        raise where.fail(f"{quote(value)} is not an IPv4 address, CIDR range or first-last range") from None


class _AddressMap:
    """Addresses outside the lab's documentation ranges, each given a block of the same size in
    198.18.0.0/15 (the same real block, the same lab block), so a lab can hold them."""

    POOL = ipaddress.IPv4Network("198.18.0.0/15")

    def __init__(self) -> None:
        self.mapped: dict[str, str] = {}
        self._next = int(self.POOL.network_address)

    def lab(self, net: ipaddress.IPv4Network, where: _Where) -> str:
        try:
            return check_lab_cidr(str(net))
        except ValueError:
            pass
        if str(net) in self.mapped:
            return self.mapped[str(net)]
        size = net.num_addresses
        start = -(-self._next // size) * size  # aligned
        if net.prefixlen < self.POOL.prefixlen or start + size > int(self.POOL.broadcast_address) + 1:
            raise where.fail(f"{net}: more addresses outside the lab's ranges than 198.18.0.0/15 can stand in for")
        self._next = start + size
        lab = ipaddress.IPv4Network((start, net.prefixlen))
        self.mapped[str(net)] = str(lab)
        return str(lab)


# ---------------------------------------------------------------- the import


class _Importer:
    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.numbered: list[str] = []
        self.metadata: set[str] = set()
        self.defaults: set[str] = set()
        self.addresses = _AddressMap()

    def note(self, label: str, where: str, prop: str, value: Any, what: str = "not modelled") -> None:
        self.notes.append(Note(label, escape(where, 64), escape(prop, 60), _json(value), what))

    def leftovers(self, obj: dict[str, Any], modelled: list[str], label: str, where: str) -> None:
        """Every property the lab does not model: metadata named once, a non-default value listed."""
        known = {m.lower() for m in modelled}
        for k, v in obj.items():
            if k.lower() in known:
                continue
            if k.lower() in METADATA:
                self.metadata.add(escape(k, 40))
                continue
            v = _unwrap(v)
            if v in (None, False, "", [], {}) or DEFAULT_VALUES.get(k.lower(), ...) == v:
                self.defaults.add(escape(k, 40))
                continue
            self.note(label, where, k, v)

    @staticmethod
    def props(obj: dict[str, Any]) -> dict[str, str]:
        """Property names as the file spells them, by lower case (PowerShell's are case-insensitive)."""
        return {k.lower(): k for k in obj}

    @classmethod
    def getter(cls, obj: dict[str, Any], at: _Where) -> Callable[[str], tuple[Any, _Where]]:
        """A property's value by any spelling of its name, with its JSON path."""
        p = cls.props(obj)

        def get(name: str) -> tuple[Any, _Where]:
            key = p.get(name.lower(), name)
            return obj.get(key), at.key(key)

        return get

    def inbound(self, obj: dict[str, Any], at: _Where) -> dict[str, Any]:
        get = self.getter(obj, at)

        value, w = get("Name")
        name = _checked(text_line("a connector name", MAX_NAME, min_len=1), _string(value, w), w)
        out: dict[str, Any] = {"Name": name}
        value, w = get("ConnectorType")
        out["ConnectorType"] = (
            "OnPremises"
            if value is None
            else _enum("ConnectorType", value, w, ("OnPremises", "Partner"), self.numbered)
        )
        value, w = get("TlsSenderCertificateName")
        if value not in (None, ""):
            out["TlsSenderCertificateName"] = _checked(check_cert_name, _string(value, w), w)
        for prop in ("SenderIPAddresses", "EFSkipIPs"):
            value, w = get(prop)
            nets: list[str] = []
            for v, iw in _strings(value, w):
                labs = [self.addresses.lab(net, iw) for net in _networks(v, iw)]
                if labs != [str(net) for net in _networks(v, iw)]:
                    self.note(at.label, name, prop, v, f"outside the lab's ranges: {', '.join(labs)} here")
                nets += [lab for lab in labs if lab not in nets]
            if nets:
                out[prop] = nets
        value, w = get("SenderDomains")
        domains = [_checked(check_domain_pattern, _address_space(v), iw) for v, iw in _strings(value, w)]
        if domains:
            out["SenderDomains"] = list(dict.fromkeys(domains))
        for prop in (
            "RequireTls",
            "RestrictDomainsToCertificate",
            "RestrictDomainsToIPAddresses",
            "EFSkipLastIP",
            "Enabled",
        ):
            value, w = get(prop)
            if value is not None:
                out[prop] = _bool(value, w)
        self.leftovers(obj, INBOUND_MODELLED, at.label, name)
        return out

    def outbound(self, obj: dict[str, Any], at: _Where, gateway_host: str) -> dict[str, Any]:
        get = self.getter(obj, at)

        value, w = get("Name")
        name = _checked(text_line("a connector name", MAX_NAME, min_len=1), _string(value, w), w)
        out: dict[str, Any] = {"Name": name}
        value, w = get("ConnectorType")
        ctype = (
            "Partner" if value is None else _enum("ConnectorType", value, w, ("OnPremises", "Partner"), self.numbered)
        )
        out["ConnectorType"] = ctype
        value, w = get("RecipientDomains")
        domains = [_checked(check_domain_pattern, _address_space(v), iw) for v, iw in _strings(value, w)]
        if not domains:
            domains = ["*"]
            self.note(
                at.label, name, "RecipientDomains", value, "empty (a connector scoped by transport rules); '*' here"
            )
        out["RecipientDomains"] = list(dict.fromkeys(domains))
        value, w = get("UseMXRecord")
        use_mx = _bool(value, w) if value is not None else False
        value, w = get("SmartHosts")
        hosts = [v for v, _ in _strings(value, w)]
        if hosts and not use_mx:
            if ctype == "OnPremises":
                out["SmartHosts"] = [gateway_host]
                if hosts != [gateway_host]:
                    self.note(at.label, name, "SmartHosts", hosts, f"the lab's gateway ({gateway_host}) here")
            else:
                use_mx = True
                self.note(at.label, name, "SmartHosts", hosts, "a partner's hosts are not in the lab; UseMXRecord here")
        elif not use_mx:
            use_mx = True
            self.note(at.label, name, "SmartHosts", value, "none given; UseMXRecord here")
        out["UseMXRecord"] = use_mx
        value, w = get("TlsSettings")
        if value not in (None, ""):
            out["TlsSettings"] = _enum(
                "TlsSettings",
                value,
                w,
                ("EncryptionOnly", "CertificateValidation", "DomainValidation"),
                self.numbered,
            )
        value, w = get("TlsDomain")
        if value not in (None, ""):
            out["TlsDomain"] = _checked(check_cert_name, _string(value, w), w)
        for prop in ("RouteAllMessagesViaOnPremises", "Enabled"):
            value, w = get(prop)
            if value is not None:
                out[prop] = _bool(value, w)
        self.leftovers(obj, OUTBOUND_MODELLED, at.label, name)
        return out


def _first_smarthost(outbound: list[tuple[dict[str, Any], _Where]]) -> str | None:
    """The smart host of the first enabled OnPremises outbound connector: the customer's gateway."""
    for obj, at in outbound:
        p = {k.lower(): k for k in obj}
        ctype = obj.get(p.get("connectortype", ""), None)
        enabled = obj.get(p.get("enabled", ""), True)
        if str(ctype).lower() not in ("onpremises", "2") or enabled in (False, "False", "false"):
            continue
        key = p.get("smarthosts", "SmartHosts")
        for v, _ in _strings(obj.get(key), at.key(key)):
            try:
                host = check_domain(v)
            except ValueError:
                continue  # an IP address: not a hostname
            if len(host) <= 64:
                return host
    return None


def _cert_names(path: Path, label: str) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: not a PEM certificate ({escape(exc, 80)})") from None
    names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names += [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    return names


def _covers(cert_name: str, wanted: str) -> bool:
    """Does a certificate carrying `cert_name` answer TlsSenderCertificateName `wanted`?"""
    if cert_name == wanted:
        return True
    if wanted.startswith("*."):
        base = wanted[2:]
        return cert_name == base or cert_name.endswith("." + base) or cert_name == wanted
    return False


def _certs_dir(certs: Path, label: str, out_dir: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """--certs DIR: each NAME.crt / NAME.pem / NAME.cer with a NAME.key beside it."""
    if not certs.is_dir():
        raise InputError(f"{label}: not a directory of certificates (NAME.crt with NAME.key)")
    found: dict[str, tuple[dict[str, str], list[str]]] = {}
    for cert in sorted(certs.iterdir()):
        if cert.suffix.lower() not in (".crt", ".pem", ".cer") or not cert.is_file():
            continue
        key = cert.with_suffix(".key")
        if not key.is_file():
            continue
        stem = re.sub(r"[^a-z0-9._-]+", "-", cert.stem.lower()).strip("-._")[:50] or "cert"
        name = f"{stem}-own" if stem in RESERVED_CERT_KEYS else stem
        while name in found:
            name += "-2"
        files = {
            "cert_file": os.path.relpath(cert.resolve(), out_dir.resolve()),
            "key_file": os.path.relpath(key.resolve(), out_dir.resolve()),
        }
        if not all(v.isprintable() for v in files.values()):
            raise InputError(f"{escape(cert, 100)}: a certificate's path must be printable; rename the file")
        found[name] = (files, _cert_names(cert, escape(cert, 100)))
    if not found:
        raise InputError(f"{label}: no certificate with its key (NAME.crt or NAME.pem beside NAME.key)")
    return found


def _tenant_name(wanted: str | None, domains: list[str], initial: str | None) -> str:
    if wanted is not None:
        try:
            return check_tenant_name(wanted)
        except ValueError as exc:
            raise InputError(f"--tenant: {exc}") from None
    # The initial domain (<tenant>.onmicrosoft.com) names the tenant; else the shortest domain's first label.
    shortest = sorted(domains, key=lambda d: (d.count("."), domains.index(d)))
    for candidate in ([initial.split(".")[0]] if initial else []) + [d.split(".")[0] for d in shortest]:
        name = re.sub(r"[^a-z0-9-]+", "-", candidate.lower()).strip("-")[:41].strip("-")
        if name:
            return name
    return "tenant"


def import_exo(
    inbound: Path,
    inbound_label: str,
    outbound: tuple[Path, str] | None,
    domains: tuple[Path, str] | None,
    certs: tuple[Path, str] | None,
    tenant: str | None,
    output: Path,
) -> Imported:
    """The scenario's YAML text, validated by the scenario model, and what was not modelled."""
    imp = _Importer()
    files = [f"{inbound_label} (Get-InboundConnector)"]
    in_objs = read_export(inbound, inbound_label)
    out_objs: list[tuple[dict[str, Any], _Where]] = []
    if outbound is not None:
        files.append(f"{outbound[1]} (Get-OutboundConnector)")
        out_objs = read_export(*outbound)

    # Accepted domains.
    tenant_domains: list[dict[str, Any]] = []
    initial: str | None = None
    default: str | None = None
    if domains is not None:
        files.append(f"{domains[1]} (Get-AcceptedDomain)")
        for obj, at in read_export(*domains):
            p = _Importer.props(obj)
            key = p.get("domainname", "DomainName")
            raw = _string(obj.get(key), at.key(key), "a domain name")
            dname = raw.strip().lower()
            is_initial = _bool(obj.get(p.get("initialdomain", ""), False), at.key(p.get("initialdomain", "x")))
            is_default = _bool(obj.get(p.get("default", ""), False), at.key(p.get("default", "x")))
            if dname.startswith("*."):
                _checked(check_cert_name, dname, at.key(key))
                imp.note(domains[1], dname, "DomainName", raw, "a wildcard accepted domain: not modelled")
                imp.leftovers(obj, DOMAIN_MODELLED, domains[1], dname)
                continue
            dname = _checked(check_domain, dname, at.key(key))
            if dname.endswith(ONMICROSOFT):
                if is_initial or initial is None:
                    initial = dname
                imp.note(
                    domains[1], dname, "DomainName", raw, "the lab's routing domain <tenant>.mail.onmicrosoft.test"
                )
                imp.leftovers(obj, DOMAIN_MODELLED, domains[1], dname)
                continue
            tkey = p.get("domaintype", "DomainType")
            dtype = obj.get(tkey)
            kind = (
                "Authoritative"
                if dtype is None
                else _enum(
                    "DomainType", dtype, at.key(tkey), ("Authoritative", "InternalRelay", "ExternalRelay"), imp.numbered
                )
            )
            if kind == "ExternalRelay":
                imp.note(domains[1], dname, "DomainType", "ExternalRelay", "InternalRelay here (Exchange Online)")
                kind = "InternalRelay"
            if is_default:
                default = dname
            entry: dict[str, Any] = {"name": dname}
            if kind != "Authoritative":
                entry["DomainType"] = kind
            if all(d["name"] != dname for d in tenant_domains):
                tenant_domains.append(entry)
            imp.leftovers(obj, DOMAIN_MODELLED, domains[1], dname)
    if default is not None:  # the default domain first: the test messages go to it
        tenant_domains.sort(key=lambda d: d["name"] != default)

    # The gateway: the customer's smart host when an outbound connector names one.
    gateway_host = _first_smarthost(out_objs)
    inbound_conns = [imp.inbound(o, w) for o, w in in_objs]
    if not tenant_domains:  # no accepted domains given: what the connectors say
        guessed: list[str] = []
        for c in inbound_conns:
            name = c.get("TlsSenderCertificateName", "").removeprefix("*.")
            if name and c["ConnectorType"] == "OnPremises" and name not in guessed:
                guessed.append(name)
        if gateway_host:
            parent = gateway_host.split(".", 1)[1] if "." in gateway_host[:-1] else ""
            if parent.count(".") >= 1 and parent not in guessed:
                guessed.append(parent)
        if not guessed:
            guessed = [f"{tenant or 'contoso'}.example"]
        for g in guessed:
            tenant_domains.append({"name": g})
            imp.note(
                "(none)", g, "DomainName", g, "no --accepted-domains: an accepted domain assumed from the connectors"
            )
    tname = _tenant_name(tenant, [d["name"] for d in tenant_domains], initial)
    first = tenant_domains[0]["name"]
    if gateway_host is None:
        gateway_host = f"gw.{first}" if len(first) <= 61 else "gw.lab.example"
    outbound_conns = [imp.outbound(o, w, gateway_host) for o, w in out_objs]

    # Certificates: the user's (--certs), or one labgen makes for the OnPremises connector's name.
    cert_name = next(
        (
            c["TlsSenderCertificateName"]
            for c in inbound_conns
            if c["ConnectorType"] == "OnPremises" and c.get("Enabled", True) and c.get("TlsSenderCertificateName")
        ),
        None,
    )
    certificates: dict[str, Any] = {}
    gateway_cert: str | None = None
    if certs is not None:
        for key, (cfiles, names) in _certs_dir(certs[0], certs[1], output.parent).items():
            certificates[key] = cfiles
            if gateway_cert is None and cert_name and any(_covers(n, cert_name) for n in names):
                gateway_cert = key
    if gateway_cert is None and cert_name:
        cn = cert_name if not cert_name.startswith("*.") else "mail." + cert_name[2:]
        if len(cn) <= 64:
            gateway_cert = "gw-cert"
            while gateway_cert in certificates:
                gateway_cert += "-2"
            certificates[gateway_cert] = {"cn": cn, "sans": [cn], "issuer": "public"}

    mailboxes = [f"labgen-test@{d['name']}" for d in tenant_domains[:2]]
    internet = INTERNET_DOMAIN
    while any(d["name"] == internet for d in tenant_domains):
        internet = "x" + internet
    tenant_doc: dict[str, Any] = {"domains": tenant_domains, "mailboxes": mailboxes}
    if inbound_conns:
        tenant_doc["inbound_connectors"] = inbound_conns
    if outbound_conns:
        tenant_doc["outbound_connectors"] = outbound_conns
    connector: dict[str, Any] = {
        "name": "Office 365",
        "address_space": [d["name"] for d in tenant_domains],
        "route": {"smarthost": endpoint_host(first) or f"{tname}.mail.protection.outlook.test"},
        "tls": "may",
    }
    if gateway_cert:
        connector["certificate"] = gateway_cert
    doc: dict[str, Any] = {
        "name": _lab_name(tname),
        "description": f"Imported from Exchange Online exports of tenant {tname}",
        "tenants": {tname: tenant_doc},
        "internet": {"domains": [internet]},
    }
    if certificates:
        doc["certificates"] = certificates
    doc["gateway"] = {"hostname": gateway_host, "connectors": [connector]}
    doc["traffic"] = [
        {"id": f"from-internet-{i + 1}", "from": f"erin@{internet}", "to": [mbx]} for i, mbx in enumerate(mailboxes)
    ]
    text = _header(imp, files, tname) + yaml.safe_dump(doc, sort_keys=False, allow_unicode=False, width=1000)
    label = escape(output, 100)
    try:
        parse_scenario(yaml.safe_load(text), label, base_dir=output.parent)
    except InputError as exc:  # every value was checked on the way in: name the exports all the same
        raise InputError(f"the exports ({', '.join(files)}) make no valid scenario: {exc.message}") from None
    counts = {"inbound": len(inbound_conns), "outbound": len(outbound_conns), "domains": len(tenant_domains)}
    return Imported(text=text, notes=imp.notes, counts=counts)


def _lab_name(tenant: str) -> str:
    name = f"exo-{tenant}"[:31].rstrip("-")
    return name


def _header(imp: _Importer, files: list[str], tenant: str) -> str:
    """The comment block: where it came from, what to fill in, and every value not taken as it is."""

    def c(line: str) -> str:
        return "# " + escape(line, 400) + "\n"

    def listing(title: str, names: set[str]) -> list[str]:
        wrapped = textwrap.wrap(", ".join(sorted(names)), 110, break_on_hyphens=False)
        return [c(title)] + [c("  " + w) for w in wrapped]

    out = [
        c(f"labgen import exo: tenant {tenant}, from {', '.join(files)}."),
        c("Connectors, accepted domains and certificate names are the tenant's; the gateway and traffic are a"),
        c("skeleton that runs as it is. Fill in: gateway.hostname/address and its send connectors (your gateway's"),
        c("real ones: address_space, route, tls, certificate, source_ip), each domain's mx (gateway when its MX"),
        c("points at your gateway), the mailboxes, and traffic with expect: for what must happen to each message."),
        c("Property names: " + ", ".join(DOCS.values())),
    ]
    if imp.numbered:
        out.append(c("Enums exported as numbers, read as: " + "; ".join(sorted(set(imp.numbered)))))
    if imp.notes:
        out.append(c(f"Not taken as they are ({len(imp.notes)}): file | connector or domain | property | value | what"))
        for n in imp.notes:
            out.append(c(f"  {n.file} | {n.where} | {n.prop} | {n.value} | {n.what}"))
    if imp.defaults:
        out += listing("Not modelled, at their default (no effect):", imp.defaults)
    if imp.metadata:
        out += listing("Object metadata, not mail flow:", imp.metadata)
    return "".join(out)


def stderr_lines(notes: list[Note], output: str) -> list[str]:
    """One line per property kind, for stderr."""
    by_prop: dict[tuple[str, str], list[Note]] = {}
    for n in notes:
        by_prop.setdefault((n.prop, n.what if n.what == "not modelled" else "mapped"), []).append(n)
    lines = []
    for (prop, kind), group in by_prop.items():
        wheres = ", ".join(dict.fromkeys(n.where for n in group))
        verb = "not modelled by the lab" if kind == "not modelled" else "mapped onto the lab"
        lines.append(
            one_line(f"labgen: import exo: {prop}: {verb} ({len(group)}: {wheres}); listed at the top of {output}")
        )
    return lines
