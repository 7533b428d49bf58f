"""Per-hop SMTP transcripts (`labgen transcript`): what each lab server recorded of a message's
sessions, the gateway→EOP hop with its TLS version and client certificate on both engines, and
hostile clients that neither break nor bloat the record."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import jsonschema
import pytest
from conftest import REPO, labgen
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from labgen.engines.local import LocalEngine
from labgen.lab import transcript
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab

SCHEMA = json.loads((REPO / "docs" / "schemas" / "transcript.json").read_text())


def gw_fingerprint(labdir: Path) -> str:
    cert = x509.load_pem_x509_certificate((labdir / "certs" / "gw-selfsigned.crt").read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def transcript_json(*args: str, cwd: Path) -> dict:
    p = labgen("transcript", *args, "--json", cwd=cwd)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    return doc


def client_lines(hop: dict) -> list[str]:
    return [line for s in hop["steps"] if s["side"] == "client" for line in s["lines"]]


def reply_after(hop: dict, verb: str) -> list[str]:
    """The server's reply to the first client command starting with `verb`."""
    steps = hop["steps"]
    for i, s in enumerate(steps):
        if s["side"] == "client" and s["lines"][0].upper().startswith(verb):
            return next(t["lines"] for t in steps[i + 1 :] if t["side"] == "server")
    raise AssertionError(f"no {verb} in {hop['hop']}")


def assert_gateway_to_eop(doc: dict, labdir: Path, expect_data: bool = True) -> None:
    """The gateway→EOP hop of to-fabrikam, as an admin would check it."""
    hops = [h for h in doc["hops"] if h["service"] == "eop"]
    assert [h["hop"] for h in hops] == ["gateway → eop"], [h["hop"] for h in doc["hops"]]
    hop = hops[0]
    said = [line.upper() for line in client_lines(hop)]
    assert said[0].startswith("EHLO ") and "STARTTLS" in said
    assert said.index("STARTTLS") < next(i for i, c in enumerate(said) if c.startswith("MAIL FROM:"))
    ehlo = reply_after(hop, "EHLO")
    assert len(ehlo) > 3 and ehlo[-1].startswith("250 ") and "250-STARTTLS" in ehlo  # the whole reply
    assert hop["tls"]["version"] in ("TLSv1.2", "TLSv1.3") and hop["tls"]["cipher"]
    leaf = hop["tls"]["client_certificates"][0]
    assert leaf["subject"] == "CN=gw.contoso.example"
    assert leaf["fingerprint_sha256"] == gw_fingerprint(labdir)
    assert reply_after(hop, "MAIL FROM:<ALICE@CONTOSO.EXAMPLE>")[0].startswith("250 2.1.0")
    assert reply_after(hop, "RCPT TO:<CAROL@FABRIKAM.EXAMPLE>")[0].startswith("250 2.1.5")
    if expect_data:
        notes = [line for s in hop["steps"] if s["side"] == "note" for line in s["lines"]]
        assert any(n.startswith("<message data: ") for n in notes) or any(c.startswith("BDAT ") for c in said)
    assert "to-fabrikam" in hop["msgids"]


def assert_text_shows_it(cwd: Path, labdir: Path, *lab: str) -> None:
    p = labgen("transcript", *lab, "to-fabrikam", cwd=cwd)
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert "gateway → eop" in text
    block = text[text.index("gateway → eop") :]
    assert "STARTTLS" in block and ("TLSv1.3" in block or "TLSv1.2" in block)
    assert "subject CN=gw.contoso.example" in block
    assert gw_fingerprint(labdir) in block.replace("\n", "")  # a narrow terminal may wrap it
    assert "250 2.1.5" in block


def test_local_engine_shows_the_gateway_to_eop_hop(tmp_path):
    up = labgen("up", "broken", "--engine", "local", cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    labdir = tmp_path / "labgen-broken"
    doc = transcript_json("to-fabrikam", cwd=tmp_path)
    assert doc["msgid"] == "to-fabrikam" and doc["lab"] == "broken"
    # Every hop the message took on this engine, in order: the traffic to the built-in gateway,
    # the gateway to EOP (the message is discarded there: no EOP→sink hop).
    assert [h["hop"] for h in doc["hops"]] == ["traffic → gateway", "gateway → eop"]
    assert_gateway_to_eop(doc, labdir)
    assert_text_shows_it(tmp_path, labdir)
    # to-internet leaves the gateway for the internet sink.
    hops = transcript_json("--lab", "broken", "to-internet", cwd=tmp_path)["hops"]
    assert [h["hop"] for h in hops] == ["traffic → gateway", "gateway → sink"]


def test_unknown_and_malformed_ids(tmp_path):
    assert labgen("up", "broken", "--engine", "local", cwd=tmp_path).returncode == 0
    p = labgen("transcript", "no-such-message", cwd=tmp_path)
    assert p.returncode == 1 and "no recorded session" in p.stdout
    p = labgen("transcript", "to-fab\x1b[31mrikam", cwd=tmp_path)
    assert p.returncode == 2 and "\x1b" not in p.stderr and "\\x1b" in p.stderr
    p = labgen("transcript", "--lab", "../etc", "to-fabrikam", cwd=tmp_path)
    assert p.returncode == 2 and "not a lab name" in p.stderr


@pytest.mark.docker
def test_docker_engine_shows_the_gateway_to_eop_hop(test_labs, tmp_path):
    lab = test_labs.new("broken", "tr")
    up = labgen("up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path, timeout=600)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    labdir = tmp_path / f"labgen-{lab.name}"
    # The gateway is real Postfix: its hop to EOP is recorded by EOP's server side.
    doc = transcript_json("--lab", lab.name, "to-fabrikam", cwd=tmp_path)
    assert_gateway_to_eop(doc, labdir)
    assert_text_shows_it(tmp_path, labdir, "--lab", lab.name)


# ---------------------------------------------------------------- hostile clients


@pytest.fixture
def lab(tmp_path):
    """The broken lab's services in this process (local engine), no traffic."""
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path)
    engine.start(plan, labdir, time.monotonic() + 120)
    yield plan, labdir
    engine.finish(plan, labdir)


class Raw:
    def __init__(self, ip: str, port: int):
        self.sock = socket.create_connection((ip, port), timeout=60)  # an upper bound, never waited out
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> str:
        while True:
            line = self.file.readline()
            if not line:
                return ""
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def cmd(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


HOSTILE = [
    b"EHLO evil\x1b[2J\x1b]0;owned\x07.test",
    b"NOOP \x00\x08\r\x0bbell\x07",
    b"NOOP \xe2\x80\xae reversed \xe2\x80\xac \xff\xfe",
    b"NOOP " + b"A" * 900,  # longer than a field, shorter than aiosmtpd's line limit (1001)
]


@pytest.mark.parametrize("service", ["eop", "sink", "gateway"])
def test_a_hostile_client_neither_breaks_nor_bloats_the_transcript(lab, tmp_path, service):
    plan, labdir = lab
    c = Raw(plan.ip(service), plan.smtp_port)
    assert c.cmd(b"EHLO client.test").startswith("250 ")
    assert c.cmd(b"MAIL FROM:<erin@northwind.example> ENVID=hostile-1").startswith("250 ")
    for line in HOSTILE:
        assert c.cmd(line)[:1] in ("2", "5")
    assert c.cmd(b"NOOP " + b"B" * 200_000).startswith("500")  # a line past aiosmtpd's stream limit
    flood = 3000
    c.sock.sendall(b"NOOP\r\n" * flood)
    for _ in range(flood):
        assert c.reply().startswith("250")
    assert c.cmd(b"QUIT").startswith("221")  # the session is written before this reply
    c.close()

    path = labdir / "run" / "transcripts" / f"{service}.jsonl"
    assert path.stat().st_size < 2 * transcript.MAX_LINES * (transcript.LINE_MAX + 64) * 2
    for raw in path.read_text(encoding="utf-8").splitlines():
        assert raw.isascii() or raw.isprintable()
    doc = transcript_json("--lab", "broken", "hostile-1", "--workdir", str(tmp_path), cwd=tmp_path)
    (hop,) = doc["hops"]
    lines = [line for s in hop["steps"] for line in s["lines"]]
    assert len(lines) == transcript.MAX_LINES
    assert hop["omitted_lines"] >= 2 * flood - transcript.MAX_LINES
    assert all(line.isprintable() and len(line) <= transcript.LINE_MAX for line in lines)
    said = client_lines(hop)
    assert said[2] == "EHLO evil\\x1b[2J\\x1b]0;owned\\x07.test"
    assert said[3].startswith("NOOP \\x00\\x08") and "\\x07" in said[3]
    assert "\\u202e" in said[4] and "\\udcff" in said[4]
    assert len(said[5]) == transcript.LINE_MAX and said[5].endswith("…")
    assert any("more than" in line and "not recorded" in line for line in lines)  # the 200 kB line
    assert hop["helo"] == "evil\\x1b[2J\\x1b]0;owned\\x07.test"

    p = labgen("transcript", "--lab", "broken", "hostile-1", "--workdir", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not any(ch in p.stdout for ch in "\x1b\x00\x07\x08\x0b\r\u202e")
    assert "more lines not recorded" in p.stdout


def test_a_service_file_stops_growing_at_its_cap(lab, tmp_path, monkeypatch):
    plan, labdir = lab
    monkeypatch.setattr(transcript, "FILE_MAX", 20_000)
    for _ in range(30):
        c = Raw(plan.ip("sink"), plan.smtp_port)
        assert c.cmd(b"EHLO client.test").startswith("250 ")
        assert c.cmd(b"NOOP " + b"C" * 900).startswith("500")  # recorded, clipped
        assert c.cmd(b"QUIT").startswith("221")
        c.close()
    path = labdir / "run" / "transcripts" / "sink.jsonl"
    assert 10_000 < path.stat().st_size <= 20_000
