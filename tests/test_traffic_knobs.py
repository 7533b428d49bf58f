"""Traffic knobs a gateway test needs (traffic[].headers, size, attachments): what they accept,
the message they build (the same content every run), and that such a message crosses the lab
intact, through labgen's gateway locally and real Postfix on Docker."""

from __future__ import annotations

import email
import email.policy
import hashlib
from pathlib import Path

import pytest
import yaml
from conftest import by_id, labgen, labgen_json

from labgen.lab.traffic import build
from labgen.model.plan import make_plan
from labgen.model.scenario import parse_scenario

BASE = {
    "name": "knobs",
    "lab": {"subnet": "198.18.94.0/24"},
    "tenants": {
        "contoso": {"domains": [{"name": "contoso.example", "mx": "gateway"}], "mailboxes": ["bob@contoso.example"]}
    },
    "internet": {"domains": ["northwind.example"]},
    "gateway": {
        "connectors": [
            {"name": "Internet", "address_space": ["*"], "route": "mx"},
            {
                "name": "Office 365",
                "address_space": ["contoso.example"],
                "route": {"smarthost": "contoso.mail.protection.outlook.test"},
            },
        ]
    },
}
BIG = {
    "id": "big",
    "from": "erin@northwind.example",
    "to": ["bob@contoso.example"],
    "headers": {"Auto-Submitted": "auto-generated", "X-Ticket": "CASE-4711"},
    "size": 300_000,
    "attachments": [{"name": "report 2026.pdf", "bytes": 100_000, "type": "application/pdf"}],
    "expect": "delivered",
}


def _scenario(**msg):
    return parse_scenario({**BASE, "traffic": [{**BIG, **msg}]}, "knobs.yaml")


@pytest.mark.parametrize(
    "change, error",
    [
        ({}, None),
        ({"headers": {"Message-ID": "<x@y>"}}, "is set by labgen"),
        ({"headers": {"content-type": "text/html"}}, "is set by labgen"),
        ({"headers": {"X-Labgen-Id": "other"}}, "is set by labgen"),
        ({"headers": {"Bad Name": "x"}}, "is not a header field name"),
        ({"headers": {"X-A": "one\r\nBcc: evil@example"}}, "printable text on one line"),
        ({"headers": {f"X-{i}": "v" for i in range(21)}}, "traffic[0].headers"),
        ({"size": 0}, "traffic[0].size"),
        ({"size": 60 << 20}, "traffic[0].size"),
        ({"attachments": [{"name": "../etc/passwd", "bytes": 1}]}, "a file name here is"),
        ({"attachments": [{"name": "a.bin", "bytes": 1, "type": "text/html; charset=x"}]}, "is not a MIME type"),
        ({"attachments": [{"name": "a.bin", "bytes": 0}]}, "traffic[0].attachments[0].bytes"),
        ({"count": 20, "size": 40 << 20}, "labgen sends at most 512 MiB per scenario"),
    ],
)
def test_knobs_validated(tmp_path, change, error):
    path = tmp_path / "knobs.yaml"
    path.write_text(yaml.safe_dump({**BASE, "traffic": [{**BIG, **change}]}))
    p = labgen("validate", str(path), cwd=tmp_path)
    if error is None:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and error in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("size", [None, 1, 5_000, 300_000, 1_000_003])
def test_size_is_a_floor_and_nearly_exact(size):
    s = _scenario(size=size, attachments=[])
    data = build(make_plan(s, "local"), s.traffic[0])
    if size is None or size < 600:
        assert len(data) < 700  # just labgen's headers and a one-line body
    else:
        assert size <= len(data) < size + 80, len(data)


def _expected_attachment(msgid: str, name: str, size: int) -> bytes:
    return hashlib.shake_256(f"labgen/{msgid}/{name}".encode()).digest(size)


def test_built_message_carries_headers_and_the_same_attachment_every_run():
    s = _scenario()
    plan = make_plan(s, "local")
    one, two = build(plan, s.traffic[0]), build(plan, s.traffic[0])
    m = email.message_from_bytes(one, policy=email.policy.default)
    assert m["Auto-Submitted"] == "auto-generated" and m["X-Ticket"] == "CASE-4711"
    (part,) = list(m.iter_attachments())
    assert part.get_filename() == "report 2026.pdf" and part.get_content_type() == "application/pdf"
    assert part.get_content() == _expected_attachment("big", "report 2026.pdf", 100_000)
    # Only the Date line may differ between two builds.
    strip = [line for line in one.split(b"\r\n") if not line.startswith(b"Date:")]
    assert strip == [line for line in two.split(b"\r\n") if not line.startswith(b"Date:")]


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_big_message_crosses_the_lab_intact(request, tmp_path, engine):
    path = tmp_path / "knobs.yaml"
    path.write_text(yaml.safe_dump({**BASE, "traffic": [BIG]}))
    args = ["up", str(path), "--engine", engine, "--workdir", str(tmp_path)]
    if engine == "docker":
        lab = request.getfixturevalue("test_labs").new(str(path), "knob")
        args = ["up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, "--workdir", str(tmp_path)]
    code, doc = labgen_json(*args, cwd=tmp_path)
    assert code == 0, doc["messages"]
    msg = by_id(doc)[("big", "bob@contoso.example")]
    assert msg["outcome"] == "delivered" and any(h["service"] == "gateway" for h in msg["hops"]), msg
    (eml,) = (Path(doc["lab_dir"]) / "run" / "mailboxes" / "bob@contoso.example").iterdir()
    m = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert m["X-Ticket"] == "CASE-4711"
    (part,) = list(m.iter_attachments())
    assert part.get_content() == _expected_attachment("big", "report 2026.pdf", 100_000)
    assert len(eml.read_bytes()) > 290_000  # the padding arrived too (stored with LF line ends)
