"""Deterministic faults (scenario `faults:`, labgen/lab/faults.py): what they accept, how they
count, and a gateway retrying through them on both engines with the same verdict every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, by_id, labgen, labgen_json

from labgen.lab.faults import Facts, Faults
from labgen.model.scenario import load_scenario

EXAMPLE = REPO / "examples" / "gateway-retries.yaml"
BASE = yaml.safe_load(EXAMPLE.read_text())


def _with_faults(tmp_path: Path, faults: list) -> Path:
    doc = dict(BASE, faults=faults)
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "fault, error",
    [
        ({"at": "eop", "do": "reply", "reply": "451 4.3.0 Try later"}, None),
        ({"at": "sink", "do": "disconnect", "times": 3}, None),
        ({"at": "eop", "do": "no-starttls", "when": {"source_ip": "198.18.92.10"}}, None),
        ({"at": "eop", "do": "reply"}, "give it for do: reply"),
        ({"at": "eop", "do": "disconnect", "reply": "451 4.3.0 x"}, "give it for do: reply"),
        ({"at": "eop", "do": "reply", "reply": "250 2.0.0 fine"}, "4xx x.y.z text"),
        ({"at": "eop", "do": "reply", "reply": "451 4.3.0 two\r\nlines"}, "4xx x.y.z text"),
        ({"at": "eop", "do": "reply", "reply": "451 4.3.0 \x1b[31mred"}, "4xx x.y.z text"),
        ({"at": "eop", "do": "no-starttls", "when": {"rcpt": "bob@contoso.example"}}, "source_ip only"),
        ({"at": "sink", "do": "down", "when": {"sender": "erin@northwind.example"}}, "source_ip only"),
        ({"at": "sink", "do": "down", "times": 1}, "needs the client it is down for"),
        ({"at": "eop", "do": "tls-fail", "times": 1}, None),
        ({"at": "gateway", "do": "disconnect"}, "faults[0].at"),
        ({"at": "eop", "do": "reply", "reply": "451 4.3.0 x", "times": 0}, "faults[0].times"),
        ({"at": "eop", "do": "disconnect", "when": {"source_ip": "10.0.0.1"}}, "faults[0].when.source_ip"),
    ],
)
def test_fault_validation(tmp_path, fault, error):
    path = _with_faults(tmp_path, [fault])
    p = labgen("validate", str(path), cwd=tmp_path)
    if error is None:
        assert p.returncode == 0, p.stderr
    else:
        assert p.returncode == 2 and error in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def _faults(tmp_path, faults: list, service: str) -> Faults:
    return Faults(load_scenario(str(_with_faults(tmp_path, faults))), service)


@pytest.mark.parametrize(
    "when, facts, hit",
    [
        ({}, Facts("198.18.92.10", (), "a@x.example", ("b@y.example",)), True),
        ({"rcpt": "B@Y.example"}, Facts("198.18.92.10", (), "a@x.example", ("b@y.example",)), True),
        ({"rcpt": "c@y.example"}, Facts("198.18.92.10", (), "a@x.example", ("b@y.example",)), False),
        ({"sender": "a@x.example"}, Facts("198.18.92.10", (), "a@x.example", ()), True),
        ({"sender": "a@x.example"}, Facts("198.18.92.10", (), "", ()), False),
        ({"certificate": "mail.contoso.example"}, Facts("198.18.92.10", ("mail.contoso.example",)), True),
        ({"certificate": "*.contoso.example"}, Facts("198.18.92.10", ("gw.contoso.example",)), True),
        ({"certificate": "mail.contoso.example"}, Facts("198.18.92.10", ()), False),
        ({"source_ip": "198.18.92.11"}, Facts("198.18.92.10"), False),
    ],
)
def test_a_fault_matches_every_field_it_names(tmp_path, when, facts, hit):
    f = _faults(tmp_path, [{"at": "eop", "when": when, "do": "disconnect"}], "eop")
    assert (f.take("disconnect", facts) is not None) is hit


def test_times_counts_uses_per_server_and_other_services_are_untouched(tmp_path):
    spec = [{"at": "eop", "do": "reply", "reply": "451 4.3.0 x", "times": 2}, {"at": "eop", "do": "disconnect"}]
    eop, sink = _faults(tmp_path, spec, "eop"), _faults(tmp_path, spec, "sink")
    facts = Facts("198.18.92.10", (), "a@x.example", ("b@y.example",))
    assert [eop.take("reply", facts) is not None for _ in range(4)] == [True, True, False, False]
    assert all(eop.take("disconnect", facts) for _ in range(5))  # no times: always
    assert not sink and sink.take("reply", facts) is None


def _ledger(labdir: Path, service: str) -> list[dict]:
    return [json.loads(line) for line in (labdir / "run" / f"{service}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_the_gateway_retries_through_injected_faults(request, tmp_path, engine):
    """451 twice then delivered; an MX down once and a dropped connection, then delivered; a 550
    bounced with an NDR; STARTTLS refused, then a failed handshake, each deferred (tls: secure),
    then delivered over TLS. Real Postfix on Docker."""
    args = ["up", str(EXAMPLE), "--engine", engine]
    if engine == "docker":
        lab = request.getfixturevalue("test_labs").new(str(EXAMPLE), "flt")
        args = ["up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet]
    code, doc = labgen_json(*args, cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    msgs = by_id(doc)
    fab = msgs[("to-fabrikam", "carol@fabrikam.example")]
    gw = [h for h in fab["hops"] if h["service"] == "gateway"]
    assert [h["event"] for h in gw][-3:] == ["deferred", "deferred", "sent"], gw
    assert all("451 4.3.0" in h["reply"] for h in gw[-3:-1])
    full = msgs[("mailbox-full", "frank@contoso.example")]
    assert full["outcome"] == "rejected" and full["ndr"], full
    labdir = Path(doc["lab_dir"])
    sink = [(e["do"], e.get("msgid")) for e in _ledger(labdir, "sink") if e["event"] == "fault"]
    assert sink == [("down", None), ("disconnect", "to-internet")], sink
    eop = [e["do"] for e in _ledger(labdir, "eop") if e["event"] == "fault"]
    assert eop == ["no-starttls", "tls-fail"], eop
    o365 = [
        h["reply"] or ""
        for m in msgs.values()
        for h in m["hops"]
        if h["service"] == "gateway" and h.get("connector") == "Office 365" and h["event"] == "deferred"
    ]
    # At tls: secure both STARTTLS faults defer (never a plaintext delivery), in Postfix's words.
    assert sum("refused to start TLS: 454 4.7.0" in r for r in o365) == 1, o365
    assert sum("Cannot start TLS: handshake failure" in r for r in o365) == 1, o365
