"""Mail loops: the built-in gateway ends them as Postfix does, and both engines agree.

- A next hop at one of the gateway's own addresses bounces: "5.4.6 mail for X loops back to myself"
  (Postfix smtp_addr.c), with the MX-list truncation rules of smtp_domain_addr().
- Every accepted message gets the gateway's Received: header; a message whose Received: headers
  (the gateway's own included) reach hopcount_limit (50) is refused at end of DATA with
  "554 5.4.0 Error: too many hops" (Postfix cleanup_strerror.c), so a loop the gateway cannot see
  as its own address still ends.
The scenarios are in tests/data/loops/; their `expect:` keys are the verdict each engine must reach.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
import yaml
from conftest import by_id, labgen

from labgen.engines.local import LocalEngine
from labgen.lab import nexthop
from labgen.lab.gateway import HOPCOUNT_LIMIT, TOO_MANY_HOPS, GatewayHandler, hop_count, printable
from labgen.lab.ledger import read_events
from labgen.lab.traffic import run_traffic
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab

LOOPS = Path(__file__).resolve().parent / "data" / "loops"
SCENARIOS = sorted(LOOPS.glob("e-*.yaml"))
# The exact words Postfix logs for each loop (dsn=5.4.6, relay=none), per scenario and recipient.
LOOP_REPLY = {
    ("e-loop-smarthost", "carol@fabrikam.example"): "5.4.6 mail for gw.contoso.example loops back to myself",
    ("e-loop-smarthost", "eve@adatum.example"): "5.4.6 mail for gw.contoso.example loops back to myself",
    ("e-loop-mx", "dan@tailspin.example"): "5.4.6 mail for tailspin.example loops back to myself",
}
# Docker subnets of our own (198.18.0.0/15), so that these labs never collide with another lab's.
DOCKER_SUBNET = {"e-loop-smarthost": "198.19.201.0/24", "e-loop-mx": "198.19.202.0/24"}


def expectations(path: Path) -> dict[tuple[str, str], str]:
    """(message id, recipient) -> the outcome the scenario file expects; every message has one."""
    s = load_scenario(str(path))
    out: dict[tuple[str, str], str] = {}
    for m in s.traffic:
        assert m.id is not None  # load_scenario names every message
        for rcpt in m.to:
            expected = m.expected_for(rcpt)
            assert expected, f"{path.name}: {m.id} to {rcpt} has no expect:"
            out[(m.id, rcpt.lower())] = expected
    return out


def up(path: Path, cwd: Path, *extra: str) -> tuple[int, dict, str]:
    p = labgen("up", path, *extra, "--json", cwd=cwd, timeout=600)
    try:
        return p.returncode, json.loads(p.stdout), p.stderr
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}") from None


def gateway_bounce(m: dict) -> dict:
    bounced = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "bounced"]
    assert bounced, m
    return bounced[-1]


def enhanced_status(reply: str) -> str:
    """The enhanced status code a reply carries: '5.4.6 mail for ...' or 'host x said: 554 5.4.0 ...'."""
    m = re.search(r"(?:^|\b[245]\d\d[ -])([245]\.\d{1,3}\.\d{1,3})\b", reply)
    assert m, reply
    return m.group(1)


def verdicts(doc: dict) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(id, rcpt) -> (outcome, the gateway's enhanced status code when it bounced)."""
    out = {}
    for key, m in by_id(doc).items():
        code = enhanced_status(gateway_bounce(m)["reply"]) if m["outcome"] == "rejected" else None
        out[key] = (m["outcome"], code)
    return out


# ---------------------------------------------------------------- next hop: Postfix's smtp_addr.c


class FakeResolver(dns.resolver.Resolver):
    """dnspython's Resolver answering from dicts instead of a server: name -> MX [(pref, host)]
    and host -> A [ip]. Its answers are dnspython's own Answer objects, as the lab DNS's are."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], a: dict[str, list[str]]) -> None:
        super().__init__(configure=False)
        self.mx, self.a = mx, a

    def resolve(
        self,
        qname: dns.name.Name | str,
        rdtype: dns.rdatatype.RdataType | str = dns.rdatatype.A,
        *args: Any,
        **kwargs: Any,
    ) -> dns.resolver.Answer:
        name = dns.name.from_text(qname) if isinstance(qname, str) else qname
        rtype = dns.rdatatype.RdataType.make(rdtype)
        key = name.to_text(omit_final_dot=True)
        if rtype == dns.rdatatype.MX:
            if key not in self.mx:
                raise dns.resolver.NoAnswer()
            rows = [f"{pref} {host}." for pref, host in self.mx[key]]
        else:
            assert rtype == dns.rdatatype.A, f"next hops are looked up by MX and A only, not {rtype.name}"
            if key not in self.a:
                raise dns.resolver.NXDOMAIN()
            rows = self.a[key]
        response = dns.message.make_response(dns.message.make_query(name, rtype))
        assert isinstance(response, dns.message.QueryMessage)  # a response is of its query's class
        # Through find_rrset: Answer reads the response's rrset index, which append() would bypass.
        answer = response.find_rrset(response.answer, name, dns.rdataclass.IN, rtype, create=True)
        answer.update(dns.rrset.from_text_list(name, 300, dns.rdataclass.IN, rtype, rows))
        return dns.resolver.Answer(name, rtype, dns.rdataclass.IN, response)


SELF, EGRESS, OTHER, OTHER2 = "198.51.100.10", "198.51.100.11", "198.51.100.25", "198.51.100.80"
OWN = {SELF, EGRESS}


@pytest.mark.parametrize(
    "name, mx, records, expected",
    [
        # smarthost ([host], no MX lookup): any of its addresses being ours is a loop
        ("gw.example", False, {"a": {"gw.example": [SELF]}}, "5.4.6 mail for gw.example loops back to myself"),
        ("gw.example", False, {"a": {"gw.example": [OTHER, EGRESS]}}, "5.4.6 mail for gw.example loops back to myself"),
        ("eop.example", False, {"a": {"eop.example": [OTHER]}}, [("eop.example", OTHER)]),
        # the domain's only MX is us
        (
            "t.example",
            True,
            {"mx": {"t.example": [(10, "gw.example")]}, "a": {"gw.example": [SELF]}},
            "5.4.6 mail for t.example loops back to myself",
        ),
        # no MX: the implicit MX is the name's own address, and it is ours
        ("t.example", True, {"a": {"t.example": [EGRESS]}}, "5.4.6 mail for t.example loops back to myself"),
        # we are a backup MX: only the better MX remains
        (
            "t.example",
            True,
            {
                "mx": {"t.example": [(10, "mx1.example"), (20, "gw.example"), (30, "mx3.example")]},
                "a": {"mx1.example": [OTHER], "gw.example": [SELF], "mx3.example": [OTHER2]},
            },
            [("mx1.example", OTHER)],
        ),
        # an equally preferred host goes with us (smtp_truncate_self cuts at our preference)
        (
            "t.example",
            True,
            {
                "mx": {"t.example": [(10, "gw.example"), (10, "mx1.example")]},
                "a": {"gw.example": [SELF], "mx1.example": [OTHER]},
            },
            "5.4.6 mail for t.example loops back to myself",
        ),
        # the better MX has no address: Postfix defers rather than claim a loop
        (
            "t.example",
            True,
            {"mx": {"t.example": [(5, "gone.example"), (10, "gw.example")]}, "a": {"gw.example": [SELF]}},
            "4.4.4 unable to find primary relay for t.example",
        ),
        # an MX host without an address is skipped while another has one
        (
            "t.example",
            True,
            {"mx": {"t.example": [(5, "gone.example"), (10, "mx1.example")]}, "a": {"mx1.example": [OTHER]}},
            [("mx1.example", OTHER)],
        ),
        # not ours at all
        (
            "t.example",
            True,
            {"mx": {"t.example": [(10, "mx1.example")]}, "a": {"mx1.example": [OTHER, OTHER2]}},
            [("mx1.example", OTHER), ("mx1.example", OTHER2)],
        ),
    ],
)
def test_next_hops_refuse_the_gateway_itself(name, mx, records, expected):
    r = FakeResolver(records.get("mx", {}), records.get("a", {}))
    if isinstance(expected, str):
        with pytest.raises(nexthop.DnsFailure) as e:
            nexthop.next_hops(r, name, mx=mx, own=OWN)
        assert e.value.reply == expected
        assert e.value.permanent is expected.startswith("5.")
    else:
        assert [(h.host, h.ip) for h in nexthop.next_hops(r, name, mx=mx, own=OWN)] == expected


def test_without_own_addresses_nothing_is_a_loop():
    """The traffic generators look up next hops too; they are not an MTA and pass no addresses."""
    r = FakeResolver({"t.example": [(10, "gw.example")]}, {"gw.example": [SELF]})
    assert [h.ip for h in nexthop.next_hops(r, "t.example", mx=True)] == [SELF]


# ---------------------------------------------------------------- hop count: Postfix's cleanup


def received(n: int) -> bytes:
    return b"".join(
        b"Received: from r%d.example ([192.0.2.%d])\r\n\tby h%d.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        % (i, i % 250 + 1, i)
        for i in range(n)
    )


BODY = b"From: erin@northwind.example\r\nSubject: hops\r\n\r\nbody\r\nReceived: in the body\r\n"


@pytest.mark.parametrize(
    "message, count",
    [
        (BODY, 0),
        (received(3) + BODY, 3),
        (b"received: lower\r\nRECEIVED: upper\r\n" + BODY, 2),
        (b"Received : blank before the colon (RFC 822)\r\n" + BODY, 1),
        (b"X-Received: not a trace header\r\nReceived-SPF: pass\r\n" + BODY, 0),
        (b"Received: folded\r\n\tover\r\n two lines\r\n" + BODY, 1),
        (b"Received: a\nReceived: bare LF\n\nReceived: body\n", 2),
        # the header block ends at the first line that is not a header
        (b"Received: a\r\nnot a header line\r\nReceived: b\r\n\r\n", 1),
        (b"\r\n" + received(5), 0),
        # a message/rfc822 attachment's headers are not the message's
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            + received(60)
            + b"\r\n--b--\r\n",
            0,
        ),
    ],
)
def test_hop_count_counts_the_primary_received_headers(message, count):
    assert hop_count(message) == count


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail.example", "mail.example"),
        ("evil\rX-Injected: yes", "evil?X-Injected: yes"),
        ("a\nb\x00c\x7fd", "a?b?c?d"),
        ("höst.example", "h?st.example"),
        ("x" * 300, "x" * 255),
    ],
)
def test_client_text_in_a_header_is_one_printable_line(text, expected):
    assert printable(text) == expected


# ---------------------------------------------------------------- the loop scenarios, local engine


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_local_engine_bounces_each_loop_as_postfix(path, tmp_path):
    code, doc, stderr = up(path, tmp_path, "--engine", "local")
    assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr
    assert code == 0, doc["summary"]
    assert doc["summary"]["unaccounted"] == 0 and doc["summary"]["expectations_failed"] == 0
    msgs = by_id(doc)
    assert {k: m["outcome"] for k, m in msgs.items()} == expectations(path)
    looped = 0
    for (_mid, rcpt), m in msgs.items():
        if m["outcome"] != "rejected":
            continue
        looped += 1
        bounce = gateway_bounce(m)
        assert bounce["reply"] == LOOP_REPLY[(doc["scenario"], rcpt)]
        assert "relay" not in bounce  # relay=none: no connection was made
        # the sender is told: the NDR is in her mailbox, and it names the reason
        assert m["ndr"] and m["ndr"]["mailbox"] == m["from"], m
        ndr = (Path(doc["lab_dir"]) / "run" / m["ndr"]["file"]).read_bytes()
        assert b"Status: 5.4.6" in ndr and LOOP_REPLY[(doc["scenario"], rcpt)].encode()[6:] in ndr
    assert looped == sum(o == "rejected" for o in expectations(path).values()) > 0
    # Each message went round at most once: the gateway received it once.
    received_events = [
        e for e in read_events(Path(doc["lab_dir"]) / "run") if e["service"] == "gateway" and e["event"] == "received"
    ]
    assert len(received_events) == len(load_scenario(str(path)).traffic)


def test_exit_code_follows_the_expectations(tmp_path):
    """A loop scenario that expected delivery fails its expectation (exit 1), never the lab (3)."""
    data = yaml.safe_load((LOOPS / "e-loop-mx.yaml").read_text())
    data["traffic"][0]["expect"] = "delivered"
    path = tmp_path / "e-loop-mx-wrong.yaml"
    path.write_text(yaml.safe_dump(data))
    code, doc, stderr = up(path, tmp_path, "--engine", "local")
    assert code == 1 and "Traceback" not in stderr
    assert doc["summary"]["expectations_failed"] == 1 and doc["summary"]["unaccounted"] == 0
    assert by_id(doc)[("alice-to-tailspin", "dan@tailspin.example")]["outcome"] == "rejected"


# ---------------------------------------------------------------- hop count on a running lab


@pytest.fixture
def local_lab(tmp_path):
    """The e-loop-mx lab's services in this process (local engine), no traffic yet."""
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario(str(LOOPS / "e-loop-mx.yaml")), engine, tmp_path)
    engine.start(plan, labdir, time.monotonic() + 60)
    yield plan, labdir, engine
    engine.finish(plan, labdir)


def smtp_session(ip: str, port: int, source_ip: str, commands: list[bytes], data: bytes) -> list[str]:
    """A plain SMTP client on a socket (no library that would refuse odd input): each command's
    reply line, then the reply to the message data."""
    replies = []
    with socket.create_connection((ip, port), timeout=30, source_address=(source_ip, 0)) as s:
        f = s.makefile("rb")

        def reply() -> str:
            while True:
                line = f.readline().decode()
                if line[3:4] != "-":
                    return line.strip()

        reply()  # banner
        for cmd in commands:
            s.sendall(cmd + b"\r\n")
            replies.append(reply())
        s.sendall(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        replies.append(reply())
        s.sendall(b"QUIT\r\n")
    return replies


def submit(plan, headers: bytes, *, helo: bytes = b"sender.internet.test", msgid: str) -> list[str]:
    data = headers + f"X-Labgen-Id: {msgid}\r\n".encode() + BODY
    return smtp_session(
        plan.ip("gateway"),
        plan.smtp_port,
        plan.hosts["traffic"][0],
        [b"EHLO " + helo, b"MAIL FROM:<erin@northwind.example>", b"RCPT TO:<alice@contoso.example>", b"DATA"],
        data,
    )


@pytest.mark.parametrize(
    "n, accepted",
    [
        (0, True),
        (HOPCOUNT_LIMIT - 2, True),  # 48 + the gateway's own = 49
        (HOPCOUNT_LIMIT - 1, False),
        (HOPCOUNT_LIMIT, False),
        (200, False),
    ],
)
def test_gateway_refuses_a_message_at_the_hop_limit(local_lab, n, accepted):
    plan, labdir, _ = local_lab
    replies = submit(plan, received(n), msgid=f"hops-{n}")
    assert [r[:3] for r in replies[:4]] == ["250", "250", "250", "354"]
    if accepted:
        assert replies[-1].startswith("250 2.0.0 Ok: queued as ")
    else:
        assert replies[-1] == TOO_MANY_HOPS
        events = [e for e in read_events(labdir / "run") if e.get("msgid") == f"hops-{n}"]
        assert [(e["event"], e["action"], e["reply"]) for e in events] == [("rcpt", "reject", TOO_MANY_HOPS)]


def wait_for(labdir: Path, pred, what: str, limit_s: float = 30.0) -> list[dict]:
    """Poll the ledger until pred(events) holds; the limit is only an upper bound for the wait."""
    end = time.monotonic() + limit_s
    while True:
        events = list(read_events(labdir / "run"))
        if pred(events):
            return events
        assert time.monotonic() < end, f"no {what} in the ledger"
        time.sleep(0.05)


def test_the_gateway_adds_a_postfix_like_received_header(local_lab):
    plan, labdir, _ = local_lab
    replies = submit(plan, b"", helo=b"mail.northwind.example", msgid="trace-1")
    qid = replies[-1].rsplit(" ", 1)[1]
    events = wait_for(
        labdir,
        lambda ev: any(e["event"] == "delivered" and e.get("msgid") == "trace-1" for e in ev),
        "delivery of trace-1",
    )
    delivered = next(e for e in events if e["event"] == "delivered" and e.get("msgid") == "trace-1")
    eml = (labdir / "run" / delivered["file"]).read_bytes()
    head = eml.split(b"\r\n\r\n", 1)[0].decode()
    ours = head[head.index("Received: from mail.northwind.example") :].split("\r\nX-Labgen-Id", 1)[0]
    assert ours.startswith(f"Received: from mail.northwind.example (unknown [{plan.hosts['traffic'][0]}])\r\n")
    assert f"\tby {plan.scenario.gateway.hostname} (labgen) with ESMTP id {qid}\r\n" in ours
    assert "\tfor <alice@contoso.example>; " in ours and ours.endswith("+0000 (UTC)")
    assert hop_count(eml) == 2  # the gateway's and EOP's


@pytest.mark.parametrize(
    "helo, rcpts, first_line, for_line",
    [
        (
            "mail.example",
            ["a@contoso.example"],
            "Received: from mail.example (unknown [192.0.2.7])",
            "\tfor <a@contoso.example>; ",
        ),
        # whatever the SMTP layer lets through, nothing but printable ASCII reaches the header
        (
            "evil\r\nX-Injected: yes",
            ["a@contoso.example"],
            "Received: from evil??X-Injected: yes (unknown [192.0.2.7])",
            "\tfor <a@contoso.example>; ",
        ),
        (
            "t\u00e9st\x1b[2J\u2028",
            ["x\ny@contoso.example"],
            "Received: from t?st?[2J? (unknown [192.0.2.7])",
            "\tfor <x?y@contoso.example>; ",
        ),
        (None, ["a@contoso.example", "b@contoso.example"], "Received: from unknown (unknown [192.0.2.7])", None),
    ],
)
def test_received_header_from_client_text_is_safe(tmp_path, helo, rcpts, first_line, for_line):
    from types import SimpleNamespace

    plan, labdir = prepare_lab(load_scenario(str(LOOPS / "e-loop-mx.yaml")), LocalEngine(), tmp_path)
    handler = GatewayHandler(plan, labdir, labdir / "run", time.monotonic() + 10)
    session = SimpleNamespace(peer=("192.0.2.7", 1025), host_name=helo, extended_smtp=True)
    plaintext = SimpleNamespace(tls_cipher_bits=lambda: None)  # the server of a session without TLS
    header = handler._received_header(plaintext, session, SimpleNamespace(rcpt_tos=rcpts), "ABCDE12345").decode("ascii")
    handler.ledger.close()
    lines = header.split("\r\n")
    assert header.endswith("\r\n") and lines[-1] == ""
    assert all(line.lstrip("\t").isprintable() and line.isascii() for line in lines)
    assert lines[0] == first_line and all(line.startswith("\t") for line in lines[1:-1])
    assert lines[1] == "\tby gw.contoso.example (labgen) with ESMTP id ABCDE12345" + ("" if for_line else ";")
    assert lines[2].startswith(for_line or "\t") and lines[2].endswith("+0000 (UTC)") and len(lines) == 4
    assert hop_count(header.encode() + BODY) == 1


def test_a_loop_the_gateway_cannot_see_ends_by_hop_count(local_lab):
    """As if the mail came back through another relay: with its own-address check blinded, the
    gateway relays to itself, each pass adding a Received: header, until the hop limit refuses it;
    the hop before bounces it and the sender gets the NDR. Bounded work, no traceback."""
    plan, labdir, engine = local_lab
    engine.gateway.own_ips = frozenset()
    plan.scenario.traffic = [m for m in plan.scenario.traffic if m.id == "erin-to-tailspin"]
    run_traffic(plan, labdir / "run")
    events = wait_for(
        labdir,
        lambda ev: any(e["event"] == "ndr" and e.get("msgid") == "erin-to-tailspin" for e in ev),
        "NDR for erin-to-tailspin",
    )
    mine = [e for e in events if e["service"] == "gateway" and e.get("msgid") == "erin-to-tailspin"]
    # accepted by the gateway HOPCOUNT_LIMIT - 1 times, the last pass refused
    assert sum(e["event"] == "received" for e in mine) == HOPCOUNT_LIMIT - 1
    assert [e["reply"] for e in mine if e["event"] == "rcpt"] == [TOO_MANY_HOPS]
    bounced = [e for e in mine if e["event"] == "bounced"]
    assert len(bounced) == 1 and bounced[0]["reply"] == TOO_MANY_HOPS
    assert not any(e["event"] == "delivery_error" for e in events)


def test_a_failed_delivery_task_is_one_ledger_event_not_a_traceback(tmp_path, monkeypatch):
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario(str(LOOPS / "e-loop-mx.yaml")), engine, tmp_path)
    handler = GatewayHandler(plan, labdir, labdir / "run", time.monotonic() + 10)
    reported: list[dict] = []

    async def boom(*_):
        raise RuntimeError("Executor shutdown has been called")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        monkeypatch.setattr(handler, "_deliver", boom)
        handler._enqueue("Q1", "m1", "erin@northwind.example", ["dan@tailspin.example"], b"x", None)
        while handler.tasks:
            await asyncio.sleep(0)
        gc.collect()  # an unretrieved task exception is reported when the task is collected

    asyncio.run(main())
    handler.ledger.close()
    assert reported == []
    errors = [e for e in read_events(labdir / "run") if e["event"] == "delivery_error"]
    assert [(e["queue_id"], e["msgid"], e["error"]) for e in errors] == [
        ("Q1", "m1", "RuntimeError: Executor shutdown has been called")
    ]


# ---------------------------------------------------------------- parity with Postfix (Docker)


@pytest.fixture(scope="module")
def docker_runs(docker_ready, tmp_path_factory):
    """Each loop scenario on both engines; the Docker labs stay up for the hop-count probe and are
    removed by name at the end (only these labs)."""
    runs = {}
    try:
        for path in SCENARIOS:
            name = load_scenario(str(path)).name
            wd = tmp_path_factory.mktemp(f"docker-{name}")
            runs[name] = {
                "path": path,
                "docker": up(path, wd, "--engine", "docker", "--subnet", DOCKER_SUBNET[name]),
                "local": up(path, tmp_path_factory.mktemp(f"local-{name}"), "--engine", "local"),
            }
        yield runs
    finally:
        cwd = tmp_path_factory.mktemp("down")
        for path in SCENARIOS:
            labgen("down", load_scenario(str(path)).name, cwd=cwd)


@pytest.mark.docker
@pytest.mark.parametrize("name", [p.stem for p in SCENARIOS])
def test_docker_postfix_gives_the_same_verdict(docker_runs, name):
    code, doc, stderr = docker_runs[name]["docker"]
    lcode, ldoc, _ = docker_runs[name]["local"]
    assert "Traceback" not in stderr
    assert doc["engine"] == "docker" and doc["summary"]["unaccounted"] == 0
    assert code == lcode == 0
    # the SAME outcome and enhanced status code per message and recipient
    assert verdicts(doc) == verdicts(ldoc)
    assert {k: v[0] for k, v in verdicts(doc).items()} == expectations(docker_runs[name]["path"])
    for (_mid, rcpt), m in by_id(doc).items():
        if m["outcome"] == "rejected":
            # Postfix's own words, as its log has them, equal the built-in gateway's
            assert gateway_bounce(m)["reply"] == LOOP_REPLY[(name, rcpt)]
            assert m["ndr"] and m["ndr"]["mailbox"] == m["from"]


@pytest.mark.docker
@pytest.mark.skipif(shutil.which("docker") is None, reason="needs the docker CLI")
@pytest.mark.parametrize("n", [HOPCOUNT_LIMIT - 2, HOPCOUNT_LIMIT - 1])
def test_docker_postfix_hop_limit_matches_the_builtin_gateway(docker_runs, local_lab, n):
    """swaks from the lab's traffic container into real Postfix, and the same message into the
    built-in gateway: the same reply at end of DATA."""
    plan = json.loads((Path(docker_runs["e-loop-mx"]["docker"][1]["lab_dir"]) / "plan.json").read_text())
    data = received(n) + f"X-Labgen-Id: swaks-hops-{n}\r\n".encode() + BODY
    p = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            "labgen-e-loop-mx-traffic",
            "swaks",
            "--server",
            plan["hosts"]["gateway"][0],
            "--from",
            "erin@northwind.example",
            "--to",
            "alice@contoso.example",
            "--data",
            "-",
            "--timeout",
            "20",
        ],
        input=data,
        capture_output=True,
        timeout=60,
    )
    postfix_reply = [line[4:].strip() for line in p.stdout.decode().splitlines() if line.startswith(("<- ", "<**"))][-2]
    builtin_reply = submit(local_lab[0], received(n), msgid=f"hops-{n}")[-1]
    if n + 1 >= HOPCOUNT_LIMIT:
        assert postfix_reply == builtin_reply == TOO_MANY_HOPS
    else:
        assert postfix_reply.startswith("250 2.0.0 Ok: queued as ") and builtin_reply.startswith(
            "250 2.0.0 Ok: queued as "
        )


def test_a_full_queue_defers_new_mail_as_postfix_does(local_lab, monkeypatch):
    """The built-in gateway holds its queue in memory: past QUEUE_MAX_BYTES a hostile client's
    flood gets Postfix's 452 4.3.1 instead of the machine's memory, and the queue takes mail
    again once it has room."""
    from labgen.lab import gateway as gw

    plan, labdir, engine = local_lab
    # Room for exactly nothing more than what is already held: any message is over the limit.
    monkeypatch.setattr(gw, "QUEUE_MAX_BYTES", engine.gateway.queued_bytes)
    replies = submit(plan, b"", msgid="queue-full")
    assert replies[-1] == gw.INSUFFICIENT_STORAGE
    events = [e for e in read_events(labdir / "run") if e.get("msgid") == "queue-full"]
    assert [(e["event"], e["action"], e["reply"]) for e in events] == [("rcpt", "defer", gw.INSUFFICIENT_STORAGE)]
    monkeypatch.setattr(gw, "QUEUE_MAX_BYTES", 1 << 20)
    assert submit(plan, b"", msgid="queue-room")[-1].startswith("250 2.0.0 Ok: queued as ")
