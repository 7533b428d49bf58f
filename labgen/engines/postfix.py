"""The Postfix gateway of the Docker lab: its configuration from the plan (one smtp transport per
send connector, transport_maps from the address spaces) and its log read back as ledger events.

Postfix's log is the interface (DESIGN.md §4): status=sent/deferred/bounced lines become the same
gateway events the built-in gateway writes, so one verdict serves both engines.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from ..errors import InfraError, InputError
from ..lab.gateway import (
    postmaster_address,
    postmaster_alias,
    postmaster_domain,
    relay_recipients,
    relay_sender_domains,
)
from ..lab.routing import inbound_domains
from ..model.plan import CertFiles, Plan, exo_client_access, gateway_server_cert
from ..model.scenario import SendConnector
from ..results.contracts import GatewayStatus, GatewayTls, NdrQueued, Ready, Received
from ..textsafe import Checked, checked, one_line, shown

LOG_FILE = "run/postfix.log"
GatewayEvent = Ready | Received | NdrQueued | GatewayStatus


@dataclass
class Transport:
    name: str
    connector: SendConnector
    source_ip: str
    cert: CertFiles | None


def transports(plan: Plan) -> list[Transport]:
    s = plan.scenario
    return [
        Transport(
            name=f"conn{i}",
            connector=c,
            source_ip=c.source_ip or plan.ip("gateway"),
            cert=plan.certs[c.certificate] if c.certificate else None,
        )
        for i, c in enumerate(s.gateway.connectors)
    ]


def transport_map(plan: Plan) -> str:
    """Postfix transport(5) lines. Postfix tries the exact domain, then parent '.domain' entries
    from the most specific up, then '*': the connectors' "most specific wins"."""
    entries: dict[str, tuple[int, str]] = {}  # key -> (weight, value); one line per key
    for t in transports(plan):
        name = _ok("transport", t.name, "transport name")
        smarthost = t.connector.smarthost
        nexthop = f"[{_ok('hostname', smarthost, 'smarthost')}]" if smarthost else ""
        for space in t.connector.address_space:
            if space == "*":
                keys = [("*", 0)]
            elif space.startswith("*."):  # the domain itself and its subdomains
                base = _ok("hostname", space[2:], "address space")
                keys = [(base, 1), ("." + base, 1)]
            else:
                keys = [(_ok("hostname", space, "address space"), 2)]  # an exact space beats a wildcard's bare key
            for key, weight in keys:
                if key not in entries or weight > entries[key][0]:
                    entries[key] = (weight, f"{name}:{nexthop}")
    lines = ["# domain  transport:nexthop   ([host] = smarthost without MX lookup; empty = MX)"]
    lines += [f"{key:<40} {value}" for key, (_, value) in entries.items()]
    return check_transport_map("\n".join(lines) + "\n")


def render_context(plan: Plan) -> dict:
    """What the Postfix templates print: only `Checked` values, each matched against the grammar
    of its place in main.cf/master.cf, or made a one-line comment. The templates' environment
    refuses anything else (see `only_checked`), so an unchecked scenario string cannot get in."""
    s = plan.scenario
    relay = inbound_domains(s)
    server_cert = plan.certs[gateway_server_cert(plan)]
    hostname = _ok("hostname", s.gateway.hostname, "gateway.hostname")
    by_ip = s.gateway.exchange_online_relay == "ip"
    exo_ip = _ok("ipv4", plan.hosts["traffic"][1], "Exchange Online's address")
    alias_domain = postmaster_domain(s)
    senders = {_ok("hostname", d, "a relay sender domain"): Checked("exo_client") for d in relay_sender_domains(s)}
    # The access table the PKI wrote next to Exchange Online's client certificate (its fingerprint).
    exo_cert = _ok("cert path", plan.certs["exo-client"].cert, "Exchange Online's client certificate")
    exo_access = Checked(exo_cert.removesuffix(".crt") + ".access")
    if exo_access != exo_client_access(plan):
        raise InfraError("the exo-client access table is not where the PKI writes it (a labgen bug)")
    return {
        "lab": comment(plan.lab, 64),
        "gateway_hostname": hostname,
        # A pod lab's hosts are all on loopback: only 127.0.0.1 (which no lab host uses) is local there.
        "mynetworks": Checked(
            ("127.0.0.1/32" if plan.topology == "pod" else "127.0.0.0/8") + (f" {exo_ip}/32" if by_ip else "")
        ),
        # A pod lab's Postfix shares its namespace with EOP and the sinks, each on port 25 of its
        # own loopback address: Postfix's smtpd listens on its own only (master.cf), and
        # inet_interfaces names 127.0.0.1 alone, since Postfix refuses an address that no
        # interface lists, and all of 127.0.0.0/8 is local without being listed.
        "inet_interfaces": Checked("loopback-only" if plan.topology == "pod" else "all"),
        "smtpd_address": Checked(
            f"{_ok('ipv4', plan.ip('gateway'), 'the gateway address')}:" if plan.topology == "pod" else ""
        ),
        "relay_restrictions": Checked(
            "permit_mynetworks, reject_unauth_destination"
            if by_ip or not senders
            else f"permit_mynetworks, check_sender_access {_inline(senders)}, reject_unauth_destination"
        ),
        "exo_access": exo_access,
        "ca_root": _ok("cert path", plan.ca_root, "the lab's root CA"),
        "relay_domains": Checked(
            ", ".join(_ok("hostname", d, "relay domain") for d in relay) if relay else "$mydestination"
        ),
        # Each with its own leading space (main.cf.j2): an empty value leaves no trailing blank.
        "relay_recipient_maps": Checked(
            f" texthash:/etc/postfix/{RECIPIENT_MAP}" if relay and relay_recipients(s) is not None else ""
        ),
        "virtual_alias_domains": Checked(f" {hostname}" if alias_domain else ""),
        "virtual_alias_maps": Checked(f" texthash:/etc/postfix/{ALIAS_MAP}" if postmaster_alias(s) else ""),
        "server_key": _ok("cert path", server_cert.key, "the gateway's server key"),
        "server_chain": _ok("cert path", server_cert.chain, "the gateway's server chain"),
        "transports": [
            {
                "name": _ok("transport", t.name, "transport name"),
                "about": comment(
                    f'Send connector "{t.connector.name}": address space {", ".join(t.connector.address_space)}', 160
                ),
                "source_ip": _ok("ipv4", t.source_ip, f"connector {t.name}'s source_ip"),
                "helo": _ok("hostname", t.connector.helo or s.gateway.hostname, f"connector {t.name}'s helo"),
                "tls": _ok("tls level", postfix_tls_level(t.connector), f"connector {t.name}'s tls"),
                "tls_unverified": postfix_tls_level(t.connector) != t.connector.tls,
                "ca_file": _ok("cert path", plan.ca_root, "the lab's root CA") if t.connector.tls == "secure" else None,
                "cert_file": _ok("cert path", t.cert.chain, f"connector {t.name}'s certificate") if t.cert else None,
                "key_file": _ok("cert path", t.cert.key, f"connector {t.name}'s key") if t.cert else None,
                # Both bounds, always: a lone '<=V' would leave the oldest version to main.cf's '>=TLSv1.2'.
                "tls_protocols": _ok(
                    "tls protocols", ">={}:<={}".format(*t.connector.tls_range), f"connector {t.name}'s tls_protocols"
                )
                if t.connector.tls_protocols
                else None,
            }
            for t in transports(plan)
        ],
    }


def postfix_tls_level(c: SendConnector) -> str:
    """The smtp_tls_security_level Postfix can run the connector at: its own `tls`, except that a
    connector limited to TLS 1.0/1.1 at `secure` gets `encrypt`. Postfix sets OpenSSL security level 1
    on every session that authenticates its peer (tls_client.c: `if (TLS_MUST_MATCH(level))
    SSL_set_security_level(con, 1)`), and OpenSSL 3 allows TLS 1.0/1.1 only at level 0, so at `secure`
    such a connector fails its own handshake ("no protocols available") and never offers TLS 1.1.
    At `encrypt` TLS stays mandatory (no plaintext fallback) on the level-0 context Postfix sets up
    for its client, so the old version is offered; only the peer certificate goes unverified (which
    EOP's refusal of the ClientHello never reaches)."""
    if c.tls == "secure" and c.TLS_VERSIONS.index(c.tls_range[1]) < c.TLS_VERSIONS.index("TLSv1.2"):
        return "encrypt"
    return c.tls


# ---------------------------------------------------------------- grammar of config values


def _ok(kind: str, value: object, what: str) -> Checked:
    return checked(kind, value, what, "the gateway's Postfix configuration")


# Lookup tables written next to main.cf (texthash: read at start, no postmap). A key ends at
# white space and a line starting with '#' is a comment, so those are what an address must not
# have there; everything else RFC 5321 allows in a local part is a plain key ($ is not expanded).
RECIPIENT_MAP = "relay_recipients"
ALIAS_MAP = "virtual"
MAP_FILES = (RECIPIENT_MAP, ALIAS_MAP)
_TABLE_KEY = re.compile(r"[!-~]{1,254}")


def _table_address(value: str, what: str) -> str:
    value = value.lower()  # Postfix's tables fold case
    if not _TABLE_KEY.fullmatch(value) or value.startswith("#"):
        raise InputError(
            f"{what} {shown(value)}: Postfix cannot list an address with white space or a leading '#' "
            "in a lookup table; use another address or gateway.recipient_validation: false"
        )
    return value


def _table(rows: dict[str, str], about: str) -> str:
    return f"# {about} (texthash: key value)\n" + "".join(f"{k} {v}\n" for k, v in rows.items())


def map_files(plan: Plan) -> dict[str, str]:
    """relay_recipient_maps (the tenants' mailboxes, when the gateway validates recipients) and
    virtual_alias_maps (its postmaster), as lookup-table files."""
    s = plan.scenario
    recipients = relay_recipients(s) or []
    rows = {_table_address(r, "a relay recipient"): "OK" for r in recipients}
    alias = postmaster_alias(s)
    aliases = (
        {_table_address(postmaster_address(s), "the postmaster"): _table_address(alias, "the postmaster's mailbox")}
        if alias
        else {}
    )
    return {
        RECIPIENT_MAP: _table(rows, "the recipients the gateway relays for"),
        ALIAS_MAP: _table(aliases, "postmaster@ the gateway's name: a mailbox that reads it"),
    }


def _inline(table: dict[Checked, Checked]) -> Checked:
    """A Postfix inline: table (Postfix >= 3.0) of checked keys and values (domain names here)."""
    return Checked("inline:{ " + ", ".join(f"{k}={v}" for k, v in table.items()) + " }")


def comment(value: object, limit: int) -> Checked:
    """Human text for a '#' comment: one printable line."""
    return Checked(one_line(value, limit))


def only_checked(value: object) -> object:
    """The Postfix templates' `finalize`: every {{ }} must print a Checked value."""
    if isinstance(value, Checked):
        return value
    raise InfraError(f"a Postfix template printed the unchecked value {shown(value)} (a labgen bug)")


# ---------------------------------------------------------------- final guard on rendered files
# Whatever the templates and the checks above missed: each rendered line must have the shape
# labgen writes. A violation is a labgen bug; the file is never written.

_MAIN_LINE = re.compile(r"([a-z][A-Za-z0-9_]*) =(?: ([!-~][ -~]*))?\Z")  # printable ASCII value
_TEMPLATE_PARAM = re.compile(r"^([a-z][A-Za-z0-9_]*) =", re.M)
_MASTER_OPTION = re.compile(r"  -o ([a-z][A-Za-z0-9_]*)=([^\s#{}\\,]+)\Z")
_TEMPLATE_OPTION = re.compile(r"^\s+-o ([a-z][A-Za-z0-9_]*)=", re.M)
_CONN_SERVICE = re.compile(r"conn[0-9]{1,4} unix +- +- +n +- +- +smtp\Z")
# The smtpd service's listening address, a pod lab's only (render_context's smtpd_address).
_SMTPD_ADDRESS = "{{ smtpd_address }}"
_LISTEN_PREFIX = re.compile(r"127(?:\.(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}:(?=smtp )")
_MAP_LINE = re.compile(r"(\*|\.?(?:[a-z0-9-]+\.)+[a-z0-9-]+) +(conn[0-9]{1,4}):(?:\[(?:[a-z0-9-]+\.)+[a-z0-9-]+\])?\Z")


def _bad_line(name: str, n: int, line: str, why: str) -> InfraError:
    return InfraError(f"refusing to write {name}: line {n} {shown(line)} {why} (a labgen bug)")


def _is_comment_line(line: str) -> bool:
    return line.startswith("#") and line.isprintable()


def check_main_cf(text: str, template: str) -> str:
    """Every line blank, a one-line comment or `name = value` for a parameter the template sets,
    each once: no value can add or override a parameter."""
    allowed = set(_TEMPLATE_PARAM.findall(template))
    seen: set[str] = set()
    for n, line in enumerate(text.split("\n"), 1):
        if not line or _is_comment_line(line):
            continue
        m = _MAIN_LINE.match(line)
        if not m:
            raise _bad_line("main.cf", n, line, "is not `name = value` in printable ASCII")
        if m.group(1) not in allowed or m.group(1) in seen:
            raise _bad_line("main.cf", n, line, "sets a parameter the template does not set once")
        seen.add(m.group(1))
    return text


def check_master_cf(text: str, template: str) -> str:
    """The template's own service lines, then one `connN unix ... smtp` per connector, whose
    `-o name=value` options are the template's, with values that carry no space, '#' or '{}'."""
    lines = [ln.removeprefix(_SMTPD_ADDRESS) for ln in template.split("\n")]
    builtin = {ln for ln in lines if ln and not ln[0].isspace() and ln[0] not in "#{"}
    options = set(_TEMPLATE_OPTION.findall(template))
    seen: set[str] = set()
    in_conn = False
    for n, line in enumerate(text.split("\n"), 1):
        if not line or _is_comment_line(line):
            continue
        if line[0].isspace():
            m = _MASTER_OPTION.match(line)
            if not (in_conn and m and m.group(1) in options):
                raise _bad_line("master.cf", n, line, "is not an `-o name=value` option of a connector's transport")
            continue
        line = _LISTEN_PREFIX.sub("", line, count=1)  # a loopback address before `smtp inet` only
        if line not in builtin and not _CONN_SERVICE.match(line):
            raise _bad_line("master.cf", n, line, "is not a service line labgen writes")
        service = " ".join(line.split()[:2])
        if service in seen:
            raise _bad_line("master.cf", n, line, "defines a service twice")
        seen.add(service)
        in_conn = line not in builtin
    return text


def check_transport_map(text: str) -> str:
    for n, line in enumerate(text.split("\n"), 1):
        if line and not _is_comment_line(line) and not _MAP_LINE.match(line):
            raise _bad_line("transport", n, line, "is not `domain connN:[nexthop]`")
    return text


# ---------------------------------------------------------------- log -> events

_LINE = re.compile(
    r"^(?P<ts>\w{3}\s+\d+\s+[\d:.]+|\S+)\s+\S+\s+postfix[\w.-]*/(?P<proc>[\w/.-]+)\[(?P<pid>\d+)\]:\s+(?P<msg>.*)$"
)
_QID = re.compile(r"^(?P<qid>[0-9A-F]{6,}|[0-9B-Zb-z]{10,}):\s+(?P<rest>.*)$")
_MSGID = re.compile(r"^message-id=<(?P<id>.+)\.(?P<run>[0-9a-f]{8})@traffic\.labgen\.test>")
_STATUS = re.compile(
    r"^to=<(?P<rcpt>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]+), .*?"
    r"dsn=(?P<dsn>[\d.]+), status=(?P<status>sent|deferred|bounced|expired) \((?P<text>.*)\)$"
)
_SAID = re.compile(r"^host \S+ said: (?P<reply>.*?)(?: \(in reply to [^)]*\))?$")
_TLS = re.compile(r"^(?P<trust>\w+) TLS connection established to (?P<peer>\S+): (?P<version>TLSv[\d.]+)")
_CLIENT = re.compile(r"^client=(?P<name>[^\[]*)\[(?P<ip>[\d.]+)\]")
_FROM = re.compile(r"^from=<(?P<sender>[^>]*)>")
_NDR = re.compile(r"^sender non-delivery notification: (?P<ndr>[0-9A-F]{6,}|[0-9B-Zb-z]{10,})$")
_RELAY = re.compile(r"^(?P<host>[^\[]+)\[(?P<ip>[\d.]+)\]:(?P<port>\d+)$")


def _is_smtp(proc: str) -> bool:
    """An smtp client process: postfix/smtp (a user's default transport) or postfix/<transport>/smtp."""
    return proc == "smtp" or proc.endswith("/smtp")


def _epoch(stamp: str) -> float:
    """maillog_file stamps: 'Nov 27 02:55:01' (syslog style, no year, the container's UTC) or ISO 8601."""
    now = dt.datetime.now(dt.UTC)
    for fmt in ("%Y %b %d %H:%M:%S", "%Y %b %d %H:%M:%S.%f"):
        try:
            t = dt.datetime.strptime(f"{now.year} {' '.join(stamp.split())}", fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        # A stamp "in the future" is from last year (a run across New Year's Eve).
        return (t.replace(year=now.year - 1) if t > now + dt.timedelta(days=1) else t).timestamp()
    try:
        return dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def _reply(status: str, dsn: str, text: str) -> str:
    said = _SAID.match(text)
    if said:
        return said.group("reply")
    if status == "sent":
        return text  # Postfix logs the server's final reply: "250 2.6.0 ... Queued mail for delivery"
    return f"{dsn} {text}"  # Postfix's own words (connect failure, TLS required, DNS)


class LogReader:
    """Postfix's log turned into gateway events, line by line: `feed` the lines as they are
    written (whole lines only) and get the new events; what it learnt from earlier lines (queue
    id -> message, TLS per smtp process) is kept between calls, so reading in pieces gives the
    same events as reading the whole log at once."""

    def __init__(self, plan: Plan):
        self.plan = plan
        # labgen's own transports (conn0, ...); a user's own configuration names its own, which
        # are reported by their syslog names (the connectors are not what that Postfix runs).
        self.names = {} if plan.scenario.gateway.postfix_config else {t.name: t for t in transports(plan)}
        self.qid_msgid: dict[str, str] = {}
        self.qid_client: dict[str, str] = {}
        self.qid_from: dict[str, str] = {}
        self.ndr_qids: set[str] = set()  # bounces Postfix wrote for the traffic's messages: followed by queue id
        self.tls_by_pid: dict[str, dict[str, str]] = {}
        self.n = 0  # lines read so far

    def feed(self, lines: Iterable[str]) -> list[GatewayEvent]:
        events: list[GatewayEvent] = []
        for raw in lines:
            n = self.n
            self.n += 1
            event = self._line(raw, n)
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: str, n: int) -> GatewayEvent | None:
        plan = self.plan
        m = _LINE.match(raw.rstrip("\n"))
        if not m:
            return None
        proc, pid, msg = m.group("proc"), m.group("pid"), m.group("msg")
        ts = _epoch(m.group("ts")) + n * 1e-6  # keep file order within a second
        if msg.startswith("daemon started"):
            return Ready(ts=ts, service="gateway", event="ready", time=m.group("ts"))
        tls = _TLS.match(msg)
        if tls and _is_smtp(proc):
            # Valid for this process's deliveries to that peer until it connects anew.
            self.tls_by_pid[pid] = {
                "peer": tls.group("peer").rstrip(":"),
                "version": tls.group("version"),
                "trust": tls.group("trust"),
            }
            return None
        q = _QID.match(msg)
        # A TLS failure forgets the process's last TLS peer. Only the error line itself: a
        # queue file's status line that quotes it ("status=deferred (Cannot start TLS: ...)") is a
        # delivery attempt like any other.
        if not q and _is_smtp(proc) and ("Cannot start TLS" in msg or "SSL_connect error" in msg):
            self.tls_by_pid.pop(pid, None)
            return None
        if not q:
            return None
        qid, rest = q.group("qid"), q.group("rest")
        if proc.endswith("smtpd") and (c := _CLIENT.match(rest)):
            self.qid_client[qid] = c.group("ip")
        elif proc.endswith("cleanup") and (mid := _MSGID.match(rest)):
            if mid.group("run") != plan.run_id:
                return None  # an earlier run's message still in the queue
            self.qid_msgid[qid] = mid.group("id")
            return Received(
                ts=ts,
                service="gateway",
                event="received",
                msgid=mid.group("id"),
                queue_id=qid,
                client_ip=self.qid_client.get(qid),
                time=m.group("ts"),
            )
        elif proc.endswith("qmgr") and (fr := _FROM.match(rest)):
            self.qid_from[qid] = fr.group("sender")
        elif proc.endswith("bounce") and (ndr := _NDR.match(rest)) and qid in self.qid_msgid:
            # The same event the built-in gateway writes; the NDR's own status lines follow.
            self.ndr_qids.add(ndr.group("ndr"))
            return NdrQueued(
                ts=ts,
                service="gateway",
                event="ndr_queued",
                queue_id=ndr.group("ndr"),
                original_queue_id=qid,
                to=self.qid_from.get(qid),
                original_msgid=self.qid_msgid[qid],
                time=m.group("ts"),
            )
        elif (st := _STATUS.match(rest)) and (qid in self.qid_msgid or qid in self.ndr_qids):
            transport = proc.split("/")[0]
            t = self.names.get(transport)
            relay = st.group("relay")
            r = _RELAY.match(relay)
            status = "deferred" if st.group("status") == "expired" else st.group("status")
            t_info = self.tls_by_pid.get(pid)
            gw_tls = None
            if t_info and t_info["peer"] == relay:
                cert = t.connector.certificate if t else None  # a user's own transport: EOP says which
                gw_tls = GatewayTls(
                    version=t_info["version"],
                    trust=t_info["trust"],
                    client_certificate=cert,
                    client_certificate_cn=plan.scenario.certificates[cert].cn if cert else None,
                )
            return GatewayStatus(
                ts=ts,
                service="gateway",
                event=cast(Literal["sent", "deferred", "bounced"], status),
                msgid=self.qid_msgid.get(qid),
                queue_id=qid,
                rcpt=st.group("rcpt").lower(),
                connector=t.connector.name if t else transport,
                relay=relay if relay != "none" else None,
                relay_host=r.group("host") if r else None,
                relay_ip=r.group("ip") if r else None,
                reply=_reply(status, st.group("dsn"), st.group("text")),
                dsn=st.group("dsn"),
                source_ip=t.source_ip if t else None,
                tls=gw_tls,
                time=m.group("ts"),
                postfix=raw.strip()[:400],
            )
        return None


def parse_log(lines: Iterable[str], plan: Plan) -> list[GatewayEvent]:
    """A whole log (or its first lines) as gateway events."""
    return LogReader(plan).feed(lines)
