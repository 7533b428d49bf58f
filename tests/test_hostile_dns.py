"""The lab DNS under hostile clients, on the local engine as `labgen up --engine local` runs it:
malformed packets, responses sent as queries, other opcodes, zone transfers, oversized names,
garbage, floods of idle TCP connections. Asserted with dnspython and raw sockets: exact rcodes,
no answer where none is due, one `bad_query` ledger event per bad packet, never a traceback."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.update
import pytest

from labgen.engines.local import LocalEngine
from labgen.lab import dns_server as labdns
from labgen.lab import smtpd
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab


@pytest.fixture
def lab(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path)
    engine.start(plan, labdir, time.monotonic() + 120)
    yield plan, labdir
    engine.finish(plan, labdir)
    # Nothing a client sent escaped the handler (asyncio logs such exceptions as errors).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def addr(plan) -> tuple[str, int]:
    return plan.ip("dns"), plan.dns_port


def dns_events(labdir, event: str) -> list[dict]:
    lines = (labdir / "run" / "dns.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


def question(name: bytes, qtype: int = 1, qclass: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def wire(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


GOOD = question(wire(b"fabrikam", b"example"), 15)
RD = 0x0100

# (description, raw packet, expected rcode or None for no answer at all)
RAW = [
    ("qdcount-0", header(1, RD, qd=0), "FORMERR"),
    ("qdcount-2", header(2, RD, qd=2) + GOOD + GOOD, "FORMERR"),
    ("label-64", header(3, RD) + question(wire(b"a" * 64, b"example")), "FORMERR"),
    ("name-over-255", header(4, RD) + question(wire(*[b"b" * 63] * 4, b"example")), "FORMERR"),
    ("pointer-loop", header(5, RD) + b"\xc0\x0c" + struct.pack("!HH", 1, 1), "FORMERR"),
    ("pointer-forward", header(6, RD) + b"\xc0\x40" + struct.pack("!HH", 1, 1), "FORMERR"),
    ("truncated-question", header(7, RD) + GOOD[:5], "FORMERR"),
    ("reserved-label-type", header(8, RD) + b"\x80abc\x00" + struct.pack("!HH", 1, 1), "FORMERR"),
    ("opcode-notify", header(9, 4 << 11) + GOOD, "NOTIMP"),
    ("opcode-update", header(10, 5 << 11) + GOOD, "NOTIMP"),
    ("opcode-iquery", header(11, 1 << 11) + GOOD, "NOTIMP"),
    ("opcode-unassigned-15", header(12, 15 << 11) + GOOD, "NOTIMP"),
    ("axfr", header(13, 0) + question(wire(b"fabrikam", b"example"), 252), "REFUSED"),
    ("ixfr", header(14, 0) + question(wire(b"fabrikam", b"example"), 251), "REFUSED"),
    ("class-chaos", header(15, 0) + question(wire(b"version", b"bind"), 16, 3), "REFUSED"),
    ("response-qr1", header(16, 0x8000) + GOOD, None),
    ("response-qr1-garbage", header(17, 0x8000) + b"\xff" * 40, None),
    ("short-garbage", b"\x00\x01\x02", None),
    ("empty", b"", None),
    ("non-utf8-label", header(18, RD) + question(wire(b"\xff\xfe", b"example")), "FORMERR"),
    ("control-label", header(19, RD) + question(wire(b"\x1b[31m\x00", b"example")), "NXDOMAIN"),
]


def udp_exchange(plan, packet: bytes, probe_id: int = 0xBEEF) -> dns.message.Message | None:
    """Send a packet, then a good query from the same socket; the first reply is the packet's,
    or the probe's when the packet got no answer (UDP on loopback, one server: in order)."""
    probe = dns.message.make_query("fabrikam.example", "MX")
    probe.id = probe_id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(60)  # an upper bound only
        s.sendto(packet, addr(plan))
        s.sendto(probe.to_wire(), addr(plan))
        first = s.recv(65535)
        reply_id = struct.unpack("!H", first[:2])[0]
        if reply_id == probe_id and (len(packet) < 2 or struct.unpack("!H", packet[:2])[0] != probe_id):
            return None
        return dns.message.from_wire(first)


def tcp_exchange(plan, packet: bytes) -> dns.message.Message | None:
    with socket.create_connection(addr(plan), timeout=60) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        head = s.recv(2, socket.MSG_WAITALL)
        if not head:
            return None  # closed without an answer
        data = s.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
        return dns.message.from_wire(data)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("name, packet, rcode", RAW, ids=[r[0] for r in RAW])
def test_raw_packets_get_the_careful_answer(lab, transport, name, packet, rcode):
    plan, labdir = lab
    reply = (udp_exchange if transport == "udp" else tcp_exchange)(plan, packet)
    if rcode is None:
        assert reply is None
    else:
        assert reply is not None and dns.rcode.to_text(reply.rcode()) == rcode
        assert reply.id == struct.unpack("!H", packet[:2])[0]
        assert reply.flags & dns.flags.QR and not reply.flags & dns.flags.RA
    if rcode not in ("NXDOMAIN", "REFUSED"):
        bad = dns_events(labdir, "bad_query")
        assert len(bad) == 1 and len(bad[0]["why"]) <= 200
    # The server still answers a good query.
    good = dns.query.udp(
        dns.message.make_query("fabrikam.example", "MX"), plan.ip("dns"), port=plan.dns_port, timeout=60
    )
    assert good.rcode() == dns.rcode.NOERROR and good.answer


def test_binary_label_is_logged_escaped(lab):
    plan, labdir = lab
    reply = udp_exchange(plan, header(1, RD) + question(wire(b"\x1b[31m\x00", b"example")))
    assert reply is not None, "the query got no answer"
    assert reply.rcode() == dns.rcode.NXDOMAIN
    logged = dns_events(labdir, "query")[-1]["qname"]
    assert "\x1b" not in logged and "\x00" not in logged and logged.endswith(".example")


@pytest.mark.parametrize(
    "make, rcode",
    [
        (lambda: dns.message.make_query("fabrikam.example", "AXFR"), dns.rcode.REFUSED),
        (lambda: dns.message.make_query("fabrikam.example", "IXFR"), dns.rcode.REFUSED),
        (lambda: dns.update.UpdateMessage("fabrikam.example"), dns.rcode.NOTIMP),
        (lambda: _notify(), dns.rcode.NOTIMP),
        (lambda: dns.message.make_query("version.bind", "TXT", "CH"), dns.rcode.REFUSED),
    ],
    ids=["axfr", "ixfr", "update", "notify", "chaos"],
)
def test_dnspython_messages(lab, make, rcode):
    plan, labdir = lab
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(make(), plan.ip("dns"), port=plan.dns_port, timeout=60)
        assert reply.rcode() == rcode and not reply.answer


def _notify() -> dns.message.Message:
    m = dns.message.make_query("fabrikam.example", "SOA")
    m.set_opcode(dns.opcode.NOTIFY)
    return m


def test_any_answers_every_rrset_of_the_name(lab):
    plan, labdir = lab
    reply = dns.query.udp(
        dns.message.make_query("fabrikam.example", "ANY"), plan.ip("dns"), port=plan.dns_port, timeout=60
    )
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert {dns.rdatatype.to_text(r.rdtype) for r in reply.answer} == {"MX", "TXT"}  # its MX and its SPF record


def test_no_recursion_for_names_outside_the_lab(lab):
    plan, labdir = lab
    reply = dns.query.udp(dns.message.make_query("example.com", "A"), plan.ip("dns"), port=plan.dns_port, timeout=60)
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA


def test_tcp_connection_cap_closes_the_surplus_and_recovers(lab, monkeypatch, caplog):
    monkeypatch.setattr(labdns, "TCP_IDLE_S", 3600.0)  # the flood must outlast its own opening
    plan, labdir = lab
    cap, extra = smtpd.connection_cap(), 40
    query = dns.message.make_query("fabrikam.example", "MX").to_wire()
    socks, answered = [], []
    try:
        for _ in range(cap + extra):  # one by one: each answered or closed before the next
            s = socket.create_connection(addr(plan), timeout=60)
            socks.append(s)
            try:
                s.sendall(struct.pack("!H", len(query)) + query)
                answered.append(len(s.recv(2, socket.MSG_WAITALL)) == 2)
            except ConnectionError:
                answered.append(False)
        assert answered == [True] * cap + [False] * extra
    finally:
        for s in socks:
            s.close()
    lines = [r for r in caplog.records if "connections open" in r.getMessage()]
    assert len(lines) == 1 and "DNS over TCP" in lines[0].getMessage()
    deadline = time.monotonic() + 60  # an upper bound for the server to see the flood go
    while True:
        reply = None
        try:
            reply = dns.query.tcp(
                dns.message.make_query("fabrikam.example", "MX"), plan.ip("dns"), port=plan.dns_port, timeout=60
            )
        except (ConnectionError, EOFError):
            pass
        if reply is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply is not None and reply.answer


def test_idle_tcp_client_is_dropped(lab, monkeypatch):
    monkeypatch.setattr(labdns, "TCP_IDLE_S", 0.2)
    plan, labdir = lab
    for partial in (b"", b"\x00", b"\x00\x20" + b"\x00" * 5):  # nothing, half a length, half a message
        with socket.create_connection(addr(plan), timeout=60) as s:  # the timeout is an upper bound
            s.sendall(partial)
            assert s.recv(1) == b""


def test_spf_records_are_answered_as_txt(lab):
    """The SPF records EOP's checks read (dnspython, as pyspf asks): Microsoft's include for a tenant
    domain, Exchange Online's addresses behind it."""
    plan, labdir = lab
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [plan.ip("dns")], plan.dns_port

    def txt(name):
        return [b"".join(r.strings).decode() for r in resolver.resolve(name, "TXT")]

    assert txt("fabrikam.example") == ["v=spf1 include:spf.protection.outlook.test -all"]
    assert txt("spf.protection.outlook.test") == [f"v=spf1 ip4:{plan.ip('eop')} ip4:{plan.hosts['traffic'][1]} -all"]
