"""The Postfix gateway of the Docker lab: its configuration from the plan (one smtp transport per
send connector, transport_maps from the address spaces) and its log read back as ledger events.

Postfix's log is the interface (DESIGN.md §4): status=sent/deferred/bounced lines become the same
gateway events the built-in gateway writes, so one verdict serves both engines.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from .plan import CertFiles, Plan, gateway_server_cert
from .routing import inbound_domains
from .scenario import SendConnector

LOG_FILE = "run/postfix.log"


@dataclass
class Transport:
    name: str
    connector: SendConnector
    source_ip: str
    cert: Optional[CertFiles]


def transports(plan: Plan) -> list[Transport]:
    s = plan.scenario
    return [Transport(name=f"conn{i}", connector=c, source_ip=c.source_ip or plan.ip("gateway"),
                      cert=plan.certs[c.certificate] if c.certificate else None)
            for i, c in enumerate(s.gateway.connectors)]


def transport_map(plan: Plan) -> str:
    """Postfix transport(5) lines. Postfix tries the exact domain, then parent '.domain' entries
    from the most specific up, then '*': the connectors' "most specific wins"."""
    entries: dict[str, tuple[int, str]] = {}  # key -> (weight, value); one line per key
    for t in transports(plan):
        nexthop = f"[{t.connector.smarthost}]" if t.connector.smarthost else ""
        for space in t.connector.address_space:
            if space == "*":
                keys = [("*", 0)]
            elif space.startswith("*."):  # the domain itself and its subdomains
                keys = [(space[2:], 1), ("." + space[2:], 1)]
            else:
                keys = [(space, 2)]  # an exact space beats a wildcard's bare key
            for key, weight in keys:
                if key not in entries or weight > entries[key][0]:
                    entries[key] = (weight, f"{t.name}:{nexthop}")
    lines = ["# domain  transport:nexthop   ([host] = smarthost without MX lookup; empty = MX)"]
    lines += [f"{key:<40} {value}" for key, (_, value) in entries.items()]
    return "\n".join(lines) + "\n"


def render_context(plan: Plan) -> dict:
    return {"plan": plan, "s": plan.scenario, "transports": transports(plan),
            "exo_ip": plan.hosts["traffic"][1], "relay_domains": inbound_domains(plan.scenario) or ["$mydestination"],
            "server_cert": plan.certs[gateway_server_cert(plan)]}


# ---------------------------------------------------------------- log -> events

_LINE = re.compile(r"^(?P<ts>\w{3}\s+\d+\s+[\d:.]+|\S+)\s+\S+\s+postfix/(?P<proc>[\w/.-]+)\[(?P<pid>\d+)\]:\s+(?P<msg>.*)$")
_QID = re.compile(r"^(?P<qid>[0-9A-F]{6,}|[0-9B-Zb-z]{10,}):\s+(?P<rest>.*)$")
_MSGID = re.compile(r"^message-id=<(?P<id>.+)\.(?P<run>[0-9a-f]{8})@traffic\.labgen\.test>")
_STATUS = re.compile(r"^to=<(?P<rcpt>[^>]*)>,(?: orig_to=<[^>]*>,)? relay=(?P<relay>[^,]+), .*?"
                     r"dsn=(?P<dsn>[\d.]+), status=(?P<status>sent|deferred|bounced|expired) \((?P<text>.*)\)$")
_SAID = re.compile(r"^host \S+ said: (?P<reply>.*?)(?: \(in reply to [^)]*\))?$")
_TLS = re.compile(r"^(?P<trust>\w+) TLS connection established to (?P<peer>\S+): (?P<version>TLSv[\d.]+)")
_CLIENT = re.compile(r"^client=(?P<name>[^\[]*)\[(?P<ip>[\d.]+)\]")
_FROM = re.compile(r"^from=<(?P<sender>[^>]*)>")
_NDR = re.compile(r"^sender non-delivery notification: (?P<ndr>[0-9A-F]{6,}|[0-9B-Zb-z]{10,})$")
_RELAY = re.compile(r"^(?P<host>[^\[]+)\[(?P<ip>[\d.]+)\]:(?P<port>\d+)$")


def _epoch(stamp: str) -> float:
    """maillog_file stamps: 'Nov 27 02:55:01' (syslog style, no year, the container's UTC) or ISO 8601."""
    now = dt.datetime.now(dt.timezone.utc)
    for fmt in ("%Y %b %d %H:%M:%S", "%Y %b %d %H:%M:%S.%f"):
        try:
            t = dt.datetime.strptime(f"{now.year} {' '.join(stamp.split())}", fmt).replace(tzinfo=dt.timezone.utc)
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


def parse_log(lines: Iterable[str], plan: Plan) -> list[dict]:
    names = {t.name: t for t in transports(plan)}
    qid_msgid: dict[str, str] = {}
    qid_client: dict[str, str] = {}
    qid_from: dict[str, str] = {}
    ndr_qids: set[str] = set()  # bounces Postfix wrote for the traffic's messages: followed by queue id
    tls_by_pid: dict[str, dict] = {}
    events: list[dict] = []
    for n, raw in enumerate(lines):
        m = _LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        proc, pid, msg = m.group("proc"), m.group("pid"), m.group("msg")
        ts = _epoch(m.group("ts")) + n * 1e-6  # keep file order within a second
        if msg.startswith("daemon started"):
            events.append({"ts": ts, "service": "gateway", "event": "ready", "time": m.group("ts")})
            continue
        tls = _TLS.match(msg)
        if tls and proc.endswith("/smtp"):
            # Valid for this process's deliveries to that peer until it connects anew.
            tls_by_pid[pid] = {"peer": tls.group("peer").rstrip(":"), "version": tls.group("version"),
                               "trust": tls.group("trust")}
            continue
        if proc.endswith("/smtp") and ("Cannot start TLS" in msg or "SSL_connect error" in msg):
            tls_by_pid.pop(pid, None)
            continue
        q = _QID.match(msg)
        if not q:
            continue
        qid, rest = q.group("qid"), q.group("rest")
        if proc.endswith("smtpd") and (c := _CLIENT.match(rest)):
            qid_client[qid] = c.group("ip")
        elif proc.endswith("cleanup") and (mid := _MSGID.match(rest)):
            if mid.group("run") != plan.run_id:
                continue  # an earlier run's message still in the queue
            qid_msgid[qid] = mid.group("id")
            events.append({"ts": ts, "service": "gateway", "event": "received", "msgid": mid.group("id"),
                           "queue_id": qid, "client_ip": qid_client.get(qid), "time": m.group("ts")})
        elif proc.endswith("qmgr") and (fr := _FROM.match(rest)):
            qid_from[qid] = fr.group("sender")
        elif proc.endswith("bounce") and (ndr := _NDR.match(rest)) and qid in qid_msgid:
            # The same event the built-in gateway writes; the NDR's own status lines follow.
            ndr_qids.add(ndr.group("ndr"))
            events.append({"ts": ts, "service": "gateway", "event": "ndr_queued", "queue_id": ndr.group("ndr"),
                           "original_queue_id": qid, "to": qid_from.get(qid), "original_msgid": qid_msgid[qid],
                           "time": m.group("ts")})
        elif (st := _STATUS.match(rest)) and (qid in qid_msgid or qid in ndr_qids):
            transport = proc.split("/")[0]
            t = names.get(transport)
            relay = st.group("relay")
            r = _RELAY.match(relay)
            status = "deferred" if st.group("status") == "expired" else st.group("status")
            t_info = tls_by_pid.get(pid)
            t_info = {k: v for k, v in t_info.items() if k != "peer"} if t_info and t_info["peer"] == relay else None
            events.append({
                "ts": ts, "service": "gateway", "event": status, "msgid": qid_msgid.get(qid), "queue_id": qid,
                "rcpt": st.group("rcpt").lower(), "connector": t.connector.name if t else transport,
                "relay": relay if relay != "none" else None,
                "relay_host": r.group("host") if r else None, "relay_ip": r.group("ip") if r else None,
                "reply": _reply(status, st.group("dsn"), st.group("text")), "dsn": st.group("dsn"),
                "source_ip": t.source_ip if t else None,
                "tls": ({**t_info, "client_certificate": t.connector.certificate,
                         "client_certificate_cn": plan.scenario.certificates[t.connector.certificate].cn
                         if t and t.connector.certificate else None} if t_info and t else None),
                "time": m.group("ts"), "postfix": raw.strip()[:400],
            })
    return events
