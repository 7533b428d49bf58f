"""A user's own Postfix configuration (gateway.postfix_config) read as the send connectors it
amounts to, so that `labgen lint` and `labgen graph` judge what the lab will run, not the
scenario's description of it: which domains each smtp transport takes (transport_maps,
relay_domains, default_transport), where it sends them (its nexthop or MX), at which TLS level,
from which address, and which client certificate it presents (smtp_tls_chain_files or
smtp_tls_cert_file, main.cf overlaid by the transport's own -o options).

Read statically, on the host, from the checked directory (postfix_dir.read_config_dir): what
cannot be read that way (regexp tables, $parameters this module does not expand) is reported as a
note, never guessed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .postfix_dir import CONFIG_DIR, ConfigDir, main_cf_parameters, master_cf_options
from .scenario import Certificate, Scenario, SendConnector, Smarthost

# Postfix's defaults where the configuration names none (postconf -d, Postfix 3.x).
DEFAULTS = {
    "default_transport": "smtp",
    "relay_transport": "relay",
    "smtp_tls_security_level": "",
    "relayhost": "",
    "relay_domains": "",
    "transport_maps": "",
}
# smtp_tls_security_level -> a send connector's tls (labgen's four levels).
_TLS = {
    "": "none",
    "none": "none",
    "may": "may",
    "dane": "may",
    "encrypt": "encrypt",
    "dane-only": "secure",
    "fingerprint": "secure",
    "verify": "secure",
    "secure": "secure",
}
_PARAM_REF = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_DOMAIN = re.compile(r"\.?(?:[a-z0-9-]+\.)+[a-z0-9-]+|[a-z0-9-]+")


@dataclass
class Derived:
    """What the configuration amounts to: the connectors (in master.cf's order of transports), the
    certificates they present (keyed by their file), and what could not be read."""

    connectors: list[SendConnector] = field(default_factory=list)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # transport name -> where in the configuration its settings come from, for messages
    where: dict[str, str] = field(default_factory=dict)


def _expand(value: str, params: dict[str, str], depth: int = 0) -> str:
    """$name and ${name} from main.cf (and $config_directory), a few levels deep; others stay."""
    if depth > 5 or "$" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name == "config_directory":
            return CONFIG_DIR
        return _expand(params[name], params, depth + 1) if name in params else m.group(0)

    return _PARAM_REF.sub(sub, value)


def _words(value: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", value) if w]


def _table_rows(config: ConfigDir, spec: str, notes: list[str]) -> list[tuple[str, str]]:
    """The key/value rows of a file-based lookup table the directory holds (hash, btree, texthash)."""
    kind, _, path = spec.partition(":")
    if kind not in ("hash", "btree", "texthash") or not path.startswith(CONFIG_DIR + "/"):
        notes.append(f"transport_maps {spec}: not read (only hash, btree and texthash tables in the directory are)")
        return []
    text = config.files.get(path[len(CONFIG_DIR) + 1 :], b"").decode("utf-8", "replace")
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line[0].isspace():
            continue
        parts = line.split(None, 1)
        if len(parts) == 2:
            rows.append((parts[0].lower(), parts[1].strip()))
    return rows


def _space(key: str) -> str | None:
    """A transport table key as an address space: 'a.example' exact, '.a.example' its subdomains
    (which Postfix also lets the parent match unless parent_domain_matches_subdomains says not)."""
    if key == "*":
        return "*"
    if not _DOMAIN.fullmatch(key) or "@" in key:
        return None
    return f"*.{key[1:]}" if key.startswith(".") else key


def _route(nexthop: str) -> Smarthost | str:
    """'[host]' or '[host]:port' (no MX lookup) and 'host' (its MX) both name where it goes."""
    host = nexthop.strip().removeprefix("[").split("]")[0].split(":")[0].lower()
    return Smarthost(smarthost=host) if host and _DOMAIN.fullmatch(host) else "mx"


def _certificate(options: dict[str, str], config_name: str, config: ConfigDir) -> tuple[str, Certificate] | None:
    """The client certificate a transport presents: (its key, the model's Certificate for the file)."""
    files = _words(options.get("smtp_tls_chain_files", ""))
    if files:
        pem = {f: config.files.get(f[len(CONFIG_DIR) + 1 :], b"") for f in files if f.startswith(CONFIG_DIR + "/")}
        cert = next((f for f, data in pem.items() if b"CERTIFICATE-----" in data), None)
        key = next((f for f, data in pem.items() if b"PRIVATE KEY-----" in data), cert)
    else:
        cert = options.get("smtp_tls_cert_file") or None
        key = options.get("smtp_tls_key_file") or cert
    if not cert or not cert.startswith(CONFIG_DIR + "/") or not key:
        return None
    rel = cert[len(CONFIG_DIR) + 1 :]
    name = "postfix-" + re.sub(r"[^a-z0-9._-]", "-", rel.lower())[:55]  # a certificate key: [a-z0-9._-]
    return name, Certificate(
        cert_file=f"{config_name}/{rel}",
        key_file=f"{config_name}/{key[len(CONFIG_DIR) + 1 :]}",
    )


def derive(s: Scenario, config: ConfigDir) -> Derived:
    """The send connectors the user's Postfix configuration amounts to."""
    out = Derived()
    main = {**DEFAULTS, **main_cf_parameters(config.files["main.cf"].decode("utf-8", "replace"))}
    params = {k: _expand(v, main) for k, v in main.items()}
    overrides: dict[str, dict[str, str]] = {}
    for service, name, value in master_cf_options(config.files["master.cf"].decode("utf-8", "replace")):
        if service.endswith("/unix"):
            overrides.setdefault(service[: -len("/unix")], {})[name] = _expand(value, params)

    lab_ips = {c.source_ip for c in s.gateway.connectors if c.source_ip} | (
        {s.gateway.address} if s.gateway.address else set()
    )
    # transport -> {address space: route}
    spaces: dict[str, dict[str, Smarthost | str]] = {}
    relayhost = params.get("relayhost", "")
    default_route: Smarthost | str = _route(relayhost) if relayhost else "mx"
    for spec in _words(params.get("transport_maps", "")):
        for key, value in _table_rows(config, spec, out.notes):
            space = _space(key)
            transport, _, nexthop = value.partition(":")
            if space is None or not transport:
                out.notes.append(f"transport_maps {spec}: entry {key!r} not read as a domain and a transport")
                continue
            spaces.setdefault(transport, {})[space] = _route(nexthop) if nexthop else default_route
    covered = {sp for t in spaces.values() for sp in t}
    relay = params.get("relay_transport", "relay").partition(":")[0]
    for d in _words(params.get("relay_domains", "")):
        if ":" not in d and d.lower() not in covered and _DOMAIN.fullmatch(d.lower()):
            spaces.setdefault(relay, {})[d.lower()] = default_route
    default = params.get("default_transport", "smtp")
    transport, _, nexthop = default.partition(":")
    if "*" not in covered:
        spaces.setdefault(transport, {})["*"] = _route(nexthop) if nexthop else default_route

    for transport, by_space in spaces.items():
        options = {**params, **overrides.get(transport, {})}
        by_route: dict[str, list[str]] = {}
        routes: dict[str, Smarthost | str] = {}
        for space, route in by_space.items():
            rkey = route.smarthost if isinstance(route, Smarthost) else "mx"
            by_route.setdefault(rkey, []).append(space)
            routes[rkey] = route
        bind = options.get("smtp_bind_address") or None
        if bind and bind not in lab_ips:
            out.notes.append(f"transport {transport}: smtp_bind_address {bind} is no lab address of the gateway's")
        cert = _certificate(options, s.gateway.postfix_config or "", config)
        if cert:
            out.certificates.setdefault(*cert)
        level = options.get("smtp_tls_security_level", "")
        if level not in _TLS:
            out.notes.append(f"transport {transport}: smtp_tls_security_level {level!r} read as 'may'")
        for rkey, space_list in by_route.items():
            suffix = "" if len(by_route) == 1 else f" to {rkey}"
            out.where[f"{transport}{suffix}"] = "master.cf " + (f"{transport}/unix" if transport in overrides else "")
            out.connectors.append(
                SendConnector(
                    name=f"{transport}{suffix}",
                    address_space=sorted(space_list, key=lambda sp: (sp == "*", sp)),
                    route=routes[rkey],
                    tls=_TLS.get(level, "may"),
                    certificate=cert[0] if cert else None,
                    source_ip=bind if bind in lab_ips else None,
                )
            )
    return out


def as_run(s: Scenario) -> tuple[Scenario, Derived]:
    """The scenario with the send connectors (and their certificates) its gateway's Postfix
    configuration amounts to: what lint judges and graph draws. A scenario without one is itself."""
    from .postfix_dir import read_config_dir

    if not s.gateway.postfix_config:
        return s, Derived()
    derived = derive(s, read_config_dir(s.base_dir, s.gateway.postfix_config, s.source))
    out = s.model_copy(deep=True)
    out.certificates = {**s.certificates, **derived.certificates}
    out.gateway.connectors = derived.connectors or s.gateway.connectors
    out._base_dir, out._source = s._base_dir, s._source
    return out, derived
