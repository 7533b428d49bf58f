"""Plan: turn a validated scenario into concrete hosts, addresses, DNS records and file names.

The plan is the one document every service reads (as `plan.json` in the lab directory), in every
engine. Engines only change *where* addresses live, and the planner asks them (Placement.place):
the Docker engine keeps the scenario's documentation-range subnet (or moves it to `--subnet`), the
local engine maps it onto loopback. The planner never names an engine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from ..errors import InputError, quote
from .scenario import (
    PROTECTION_SUFFIX,
    SPF_INCLUDE,
    Message,
    OutboundConnector,
    Scenario,
    domain_of,
    endpoint_host,
    message_via,
    planned_addresses,
    protection_host,
    routing_domain,
)

HOSTS = ("dns", "eop", "gateway", "sink", "traffic")
# Mnemonic host offsets inside the lab subnet (a /25 or larger); smaller subnets count up from .2.
_OFFSETS = {"gateway": 10, "eop": 25, "exo": 40, "dns": 53, "sink": 80, "traffic": 100}
# The name the shared EOP front end gives itself, like the real pool servers do.
EOP_POOL_HOST = f"dm6nam12ft011.{PROTECTION_SUFFIX}"
# The client certificate Exchange Online presents when it relays to the gateway (real Exchange
# Online's is issued by a public CA to mail.protection.outlook.com).
EXO_CLIENT_CERT = "exo-client"


class Record(BaseModel):
    name: str
    type: str  # "A", "MX" or "TXT"
    value: str
    preference: int = 10


class CertFiles(BaseModel):
    cert: str  # leaf only
    key: str
    chain: str  # leaf + intermediate (what a client or server presents)


class Plan(BaseModel):
    lab: str
    engine: str
    run_id: str
    subnet: str
    smtp_port: int = 25
    dns_port: int = 53
    # host -> addresses; the first is the host's own, the gateway may have more (egress IPs).
    hosts: dict[str, list[str]]
    zones: list[str]
    records: list[Record]
    certs: dict[str, CertFiles]  # scenario certificates and the services' own server certs
    ca_root: str
    ca_intermediate: str
    # (Plans written before the fake EOP accepted any client certificate also name an
    # "eop_accept_bundle"; loading ignores it.)
    scenario: Scenario
    # Extra Docker labels on everything the lab starts (a workshop seat's io.labgen.workshop and
    # io.labgen.seat); names and values are labgen's own, checked where they are made.
    labels: dict[str, str] = {}
    # "network": every service its own host on the lab network (Docker containers, or the local
    # engine's loopback addresses). "pod": the Docker engine's shared network namespace, as a
    # Kubernetes pod has it: one container serving DNS, EOP, the sinks and the traffic, Postfix in
    # a second, every address a loopback one (127.x, as the local engine maps them), no network.
    topology: Literal["network", "pod"] = "network"

    # ----- views
    def ip(self, host: str) -> str:
        return self.hosts[host][0]

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2, by_alias=True))

    @classmethod
    def load(cls, path: Path) -> Plan:
        with planned_addresses():
            return cls.model_validate(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- addresses


class Placement(Protocol):
    """What the planner needs from an engine: its name (saved in the plan) and where it puts the
    scenario's subnet `net`, moved to `subnet` when the user asked (engines.base.Engine.place)."""

    name: str
    topology: Literal["network", "pod"]  # Plan.topology: how its services share a network
    real_postfix: bool  # does its gateway run Postfix (so that a user's Postfix configuration can run)?
    runs_gateway_images: bool  # can it run a scenario whose gateway is the user's image (gateway.image)?

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Callable[[str], str] | None: ...


class AsWritten:
    """The scenario's own addresses, no engine involved (validate, certs)."""

    name = "none"
    topology: Literal["network", "pod"] = "network"
    real_postfix = True  # checks what any engine would: the Postfix configuration too
    runs_gateway_images = True  # nothing runs: the scenario is only read

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Callable[[str], str] | None:
        return None


def loopback_ip(ip: str) -> str:
    """A lab address on loopback (the local engine's, a pod lab's): first octet becomes 127
    (198.51.100.10 -> 127.51.100.10), which keeps CIDR-based connectors meaningful and needs no
    setup on Linux (all of 127.0.0.0/8 is local)."""
    return "127." + ip.split(".", 1)[1]


def subnet_mover(net: ipaddress.IPv4Network, subnet: str | None) -> Callable[[str], str] | None:
    """`--subnet`: every address keeps its offset inside a documentation-range subnet of the same
    size (None when there is nothing to move). Bad input raises InputError naming the option."""
    if not subnet:
        return None
    _check_subnet_option(subnet)
    dst = ipaddress.IPv4Network(subnet, strict=False)  # IPv4: LabNet (just checked) admits nothing else
    if dst.prefixlen != net.prefixlen:
        raise InputError(f"--subnet {subnet}: must be a /{net.prefixlen} like the scenario's {net}")
    return _mover(net, dst) if dst != net else None


def _mover(src: ipaddress.IPv4Network, dst: ipaddress.IPv4Network) -> Callable[[str], str]:
    def move(ip: str) -> str:
        offset = int(ipaddress.ip_address(ip)) - int(src.network_address)
        return str(dst.network_address + offset)

    return move


def _translate_cidr(cidr: str, move: Callable[[str], str]) -> str:
    net = ipaddress.ip_network(cidr)
    return f"{move(str(net.network_address))}/{net.prefixlen}"


def _host_addresses(s: Scenario, net: ipaddress.IPv4Network) -> dict[str, list[str]]:
    usable = list(net.hosts())[1:]  # .1 is the Docker bridge's own address
    if net.num_addresses >= 128:
        defaults = {h: str(net.network_address + off) for h, off in _OFFSETS.items()}
    else:
        defaults = {h: str(usable[i]) for i, h in enumerate(("gateway", "eop", "dns", "sink", "traffic", "exo"))}
    given: dict[str, str] = dict(s.lab.addresses.items())  # what the file sets, by host
    if s.gateway.address:
        given["gateway"] = s.gateway.address
    if s.eop.address:
        given["eop"] = s.eop.address
    chosen = {h: given.get(h, defaults[h]) for h in ("dns", "eop", "sink", "traffic", "exo", "gateway")}
    where = {"gateway": "gateway.address", "eop": "eop.address"}
    owner: dict[str, str] = {}
    # Defaults first, then what the file sets: a clash is reported at a key the file contains.
    for host in sorted(chosen, key=lambda h: h in given):
        ip = chosen[host]
        path = where.get(host, f"lab.addresses.{host}")
        _check_in_subnet(ip, net, path)
        if ip in owner:
            raise InputError(
                f"{path}: duplicate host address {ip} (already used by {owner[ip]}); give each lab host its own address"
            )
        owner[ip] = host
    hosts = {h: [chosen[h]] for h in HOSTS}
    # The traffic host speaks for two parties: internet senders (its own address) and Exchange
    # Online's outbound servers (the second), which the gateway trusts to relay.
    hosts["traffic"].append(chosen["exo"])
    # Internet senders with an address of their own (traffic[i].source_ip) speak from it too.
    for m in s.traffic:
        if m.source_ip is None or m.source_ip in hosts["traffic"]:
            continue
        ip = m.source_ip
        path = f"traffic[{m._origin}].source_ip"
        _check_in_subnet(ip, net, path)
        if ip in owner or ip in [c.source_ip for c in s.gateway.connectors]:
            who = owner.get(ip, "gateway")
            raise InputError(
                f"{path}: {ip} is the {who}'s address; a sender needs one no lab host uses "
                "(a connector may still list it, or a range around it)"
            )
        owner[ip] = "traffic"
        hosts["traffic"].append(ip)
    for i, c in enumerate(s.gateway.connectors):
        if c.source_ip is None:
            continue
        path = f"gateway.connectors[{i}].source_ip"
        _check_in_subnet(c.source_ip, net, path)
        if owner.get(c.source_ip, "gateway") != "gateway":
            raise InputError(
                f"{path}: duplicate host address {c.source_ip} (already used by "
                f"{owner[c.source_ip]}); use an address of the gateway's own"
            )
        owner[c.source_ip] = "gateway"
        if c.source_ip not in hosts["gateway"]:
            hosts["gateway"].append(c.source_ip)
    return hosts


def _check_in_subnet(ip: str, net: ipaddress.IPv4Network, path: str) -> None:
    addr = ipaddress.ip_address(ip)
    if addr not in net or addr in (net.network_address, net.broadcast_address, net.network_address + 1):
        raise InputError(
            f"{path}: {ip} is not a usable host address in the lab subnet {net} "
            "(.1 belongs to the network itself); pick one inside it or change lab.subnet"
        )


# ---------------------------------------------------------------- DNS


def _records(s: Scenario, hosts: dict[str, list[str]]) -> tuple[list[str], list[Record]]:
    eop, sink, gw = hosts["eop"][0], hosts["sink"][0], hosts["gateway"][0]
    rec: list[Record] = [
        Record(name=EOP_POOL_HOST, type="A", value=eop),
        Record(name=s.gateway.hostname, type="A", value=gw),
    ]
    zones = {PROTECTION_SUFFIX}
    for tname, tenant in s.tenants.items():
        rec.append(Record(name=protection_host(tname), type="A", value=eop))
        rec.append(Record(name=routing_domain(tname), type="MX", value=protection_host(tname)))
        zones.add(routing_domain(tname))
        for d in tenant.domains:
            endpoint = endpoint_host(d.name)
            if endpoint:  # Microsoft's per-domain name (contoso-com.mail.protection...)
                rec.append(Record(name=endpoint, type="A", value=eop))
            target = (endpoint or protection_host(tname)) if d.mx == "eop" else s.gateway.hostname
            rec.append(Record(name=d.name, type="MX", value=target))
            rec.append(Record(name=d.name, type="TXT", value=d.spf or f"v=spf1 include:{SPF_INCLUDE} -all"))
            zones.add(d.name)
    for name in s.internet.domains:
        rec.append(Record(name=name, type="MX", value=f"mx.{name}"))
        rec.append(Record(name=f"mx.{name}", type="A", value=sink))
        # An internet domain's senders are the traffic host and the addresses its messages use.
        senders = [hosts["traffic"][0]] + sorted(
            {m.source_ip for m in s.traffic if m.source_ip and domain_of(m.sender) == name}
        )
        rec.append(Record(name=name, type="TXT", value="v=spf1 " + " ".join(f"ip4:{ip}" for ip in senders) + " -all"))
        zones.add(name)
    # Microsoft's SPF include: Exchange Online's outbound addresses (EOP relaying, and the
    # traffic host speaking as Exchange Online).
    rec.append(Record(name=SPF_INCLUDE, type="TXT", value=f"v=spf1 ip4:{eop} ip4:{hosts['traffic'][1]} -all"))
    zones.add(SPF_INCLUDE)
    if not any(s.gateway.hostname == z or s.gateway.hostname.endswith("." + z) for z in zones):
        zones.add(s.gateway.hostname.split(".", 1)[1])
    return sorted(zones), rec


# ---------------------------------------------------------------- certificates

# A certificate's file stem as it appears in certs/ and in Postfix's master.cf: one path
# component of characters that need no quoting anywhere, never '.' or '..' (it starts with a
# letter or digit).
CERT_STEM = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Files the PKI writes (or wrote: eop-accept) into certs/ itself: no certificate may be named like them.
_RESERVED_STEMS = frozenset({"ca-root", "ca-intermediate", "eop-accept", "spec"})


def _cert_stems(keys: list[str]) -> dict[str, str]:
    """A distinct, safe file stem per certificate key. A key that is already a safe stem keeps
    its name (gw-selfsigned -> gw-selfsigned); any other key becomes its safe characters plus a
    hash of the whole key, lengthened until it clashes with no other stem."""
    stems = {k: k for k in keys if CERT_STEM.fullmatch(k) and k not in _RESERVED_STEMS}
    used = set(stems.values())
    for key in keys:
        if key in stems:
            continue
        base = re.sub(r"[^a-z0-9._-]+", "-", key.lower()).strip("._-")[:40] or "cert"
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        stem = next(
            c for n in range(10, len(digest) + 1, 6) if (c := f"{base}-{digest[:n]}") not in used
        )  # 64 hex digits: distinct keys never clash
        stems[key] = stem
        used.add(stem)
    return {k: stems[k] for k in keys}


def _cert_files(s: Scenario) -> dict[str, CertFiles]:
    """File names under certs/ for the scenario's certificates and the services' own ones."""
    names = list(
        dict.fromkeys(
            [
                *s.certificates,
                "eop-server",
                "sink-server",
                EXO_CLIENT_CERT,
                *([] if s.gateway.server_certificate else ["gateway-server"]),
            ]
        )
    )
    stems = _cert_stems(names)
    return {
        n: CertFiles(cert=f"certs/{stems[n]}.crt", key=f"certs/{stems[n]}.key", chain=f"certs/{stems[n]}.chain.pem")
        for n in names
    }


def sink_host(s: Scenario) -> str:
    """The internet sink's own name: the MX of the first internet domain."""
    return f"mx.{s.internet.domains[0]}" if s.internet.domains else "mx.internet.example"


def exo_client_access(plan: Plan) -> str:
    """The Postfix access(5) table the PKI writes next to Exchange Online's client certificate:
    its SHA-256 fingerprint (check_ccert_access), the way a gateway pins a client certificate."""
    return plan.certs[EXO_CLIENT_CERT].cert.removesuffix(".crt") + ".access"


def gateway_server_cert(plan: Plan) -> str:
    return plan.scenario.gateway.server_certificate or "gateway-server"


# ---------------------------------------------------------------- the plan


def make_plan(
    s: Scenario, engine: Placement | str, subnet: str | None = None, labels: dict[str, str] | None = None
) -> Plan:
    """Addresses are checked in the scenario's own subnet, then placed where the engine says
    (engine.place). An engine given by name is looked up in the engines facade."""
    if isinstance(engine, str):
        from ..engines import named

        engine = named(engine)
    if s.gateway.postfix_config:
        _check_postfix_config(s, engine)
    net = ipaddress.IPv4Network(s.lab.subnet)  # IPv4: the scenario validator admits nothing else
    try:
        hosts = _host_addresses(s, net)
    except InputError as e:
        raise InputError(f"{s.source}: {e.message}" if s.source else e.message) from None
    if s.gateway.image is not None:
        if not engine.runs_gateway_images:
            where = f"{s.source}: " if s.source else ""
            raise InputError(
                f"{where}gateway.image: the {engine.name} engine runs labgen's own gateway and cannot run "
                "an image; run this scenario with --engine docker"
            )
        if engine.topology == "pod":
            where = f"{s.source}: " if s.source else ""
            raise InputError(
                f"{where}gateway.image: a pod lab (one network namespace) runs labgen's Postfix, not an image; "
                "run this scenario with the network topology"
            )
        gateway_config_dir(s)  # bad input fails before anything is created
    move = engine.place(net, subnet)
    lab_subnet = _translate_cidr(str(net), move) if move else str(net)
    if move:
        s = _translated_scenario(s, move)
        hosts = {h: [move(ip) for ip in ips] for h, ips in hosts.items()}
    zones, records = _records(s, hosts)
    return Plan(
        lab=s.name,
        engine=engine.name,
        run_id=secrets.token_hex(4),
        subnet=lab_subnet,
        hosts=hosts,
        zones=zones,
        records=records,
        certs=_cert_files(s),
        ca_root="certs/ca-root.crt",
        ca_intermediate="certs/ca-intermediate.crt",
        scenario=s,
        labels=dict(labels or {}),
        topology=engine.topology,
    )


def _check_postfix_config(s: Scenario, engine: Placement) -> None:
    """A user's own Postfix configuration needs real Postfix, and its directory must hold what it
    names: both said before anything is created."""
    from .postfix_dir import read_config_dir

    if engine.topology == "pod":
        # Its mynetworks, listening addresses and source addresses assume a network of its own
        # (a user's main.cf trusting 127.0.0.0/8 would trust every host of a pod lab).
        raise InputError(
            f"{s.source}: gateway.postfix_config: your Postfix configuration runs in the network topology, not in "
            "a pod lab (one loopback namespace for every host); run it without --topology pod"
        )
    if not engine.real_postfix:
        raise InputError(
            f"{s.source}: gateway.postfix_config: your Postfix configuration runs in real Postfix, which the "
            f"{engine.name} engine does not have; run it with --engine docker"
        )
    read_config_dir(s.base_dir, s.gateway.postfix_config or "", s.source)


_MOUNTABLE = re.compile(r"/[A-Za-z0-9._/+@ -]*")  # a host path that a compose short-syntax volume carries as it is


def gateway_config_dir(s: Scenario) -> Path | None:
    """The image gateway's configuration directory on this host (gateway.image.config, relative
    to the scenario file's directory and inside it, symbolic links resolved), or None when it has
    none. Scenario files come from strangers: anything else is an InputError naming the field."""
    image = s.gateway.image
    if image is None or image.config is None:
        return None
    base = s.base_dir.resolve()
    path = (base / image.config).resolve()

    def refuse(why: str) -> InputError:
        where = f"{s.source}: " if s.source else ""
        return InputError(f"{where}gateway.image.config: {quote(image.config)}: {why}")

    if path != base and base not in path.parents:
        raise refuse(f"leads outside the scenario file's directory {quote(str(base))} (through a symbolic link)")
    if not _MOUNTABLE.fullmatch(str(path)):
        raise refuse(f"its path {quote(str(path))} has characters a compose volume cannot carry (':', '$', ',', ...)")
    if not path.exists():
        raise refuse(f"no such directory in {quote(str(base))}")
    if not path.is_dir():
        raise refuse("not a directory (the MTA's configuration directory, mounted read-only)")
    return path


def _check_subnet_option(subnet: str) -> None:
    from pydantic import ValidationError

    from .scenario import LabNet

    try:
        LabNet(subnet=subnet)
    except ValidationError as e:
        raise InputError(f"--subnet {subnet}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _translated_scenario(s: Scenario, move: Callable[[str], str]) -> Scenario:
    s = s.model_copy(deep=True)
    s.lab.subnet = _translate_cidr(s.lab.subnet, move)
    s.lab.addresses = {k: move(v) for k, v in s.lab.addresses.items()}
    if s.gateway.address:
        s.gateway.address = move(s.gateway.address)
    if s.eop.address:
        s.eop.address = move(s.eop.address)
    for sc in s.gateway.connectors:
        if sc.source_ip:
            sc.source_ip = move(sc.source_ip)
    for m in s.traffic:
        if m.source_ip:
            m.source_ip = move(m.source_ip)
    for f in s.faults:
        if f.when.source_ip:
            f.when.source_ip = move(f.when.source_ip)
    for t in s.tenants.values():
        for c in t.inbound_connectors:
            # Connector ranges outside the lab subnet keep their offset relative to it.
            c.sender_ip_addresses = [_translate_cidr(n, move) for n in c.sender_ip_addresses]
            c.ef_skip_ips = [_translate_cidr(n, move) for n in c.ef_skip_ips]
    return s


def message_entry(s: Scenario, m: Message, rcpt: str) -> tuple[str, OutboundConnector | None]:
    """Where a traffic message enters the lab for one recipient: ('gateway', the Exchange Online
    outbound connector that sends it there) or ('mx', None: the recipient domain's MX)."""
    tenant = s.tenant_of_domain(domain_of(m.sender))
    if message_via(s, m) == "exchange-online" and tenant:
        t = s.tenants[tenant]
        resident = rcpt.lower() in {x.lower() for x in t.mailboxes} or domain_of(rcpt) == routing_domain(tenant)
        c = t.outbound_for(domain_of(rcpt), s.gateway.hostname, resident)
        if c is not None and not c.use_mx_record:
            return "gateway", c
    return "mx", None
