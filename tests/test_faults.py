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
        ({"at": "eop", "do": "delay", "step": "rcpt", "seconds": 2}, None),
        ({"at": "sink", "do": "delay", "step": "greeting", "seconds": 30, "times": 1}, None),
        ({"at": "eop", "do": "delay", "seconds": 2}, "step: give it for do: delay"),
        ({"at": "eop", "do": "delay", "step": "rcpt"}, "seconds: do: delay needs how long"),
        ({"at": "eop", "do": "delay", "step": "rcpt", "seconds": 301}, "faults[0].seconds"),
        ({"at": "eop", "do": "reply", "reply": "451 4.3.0 x", "seconds": 2}, "only for do: delay or down"),
        ({"at": "eop", "do": "disconnect", "step": "rcpt"}, "step: give it for do: delay"),
        (
            {"at": "eop", "do": "delay", "step": "greeting", "seconds": 1, "when": {"rcpt": "bob@contoso.example"}},
            "at step greeting acts before MAIL",
        ),
        ({"at": "eop", "do": "down", "seconds": 3, "when": {"source_ip": "198.18.92.10"}}, None),
        (
            {"at": "eop", "do": "down", "seconds": 3, "times": 2, "when": {"source_ip": "198.18.92.10"}},
            "lasts `times` connections or `seconds`",
        ),
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


def test_delay_is_taken_at_its_step_only_and_down_lasts_its_window(tmp_path, monkeypatch):
    import labgen.lab.faults as faults_mod

    spec = [
        {"at": "eop", "do": "delay", "step": "rcpt", "seconds": 1, "times": 1},
        {"at": "eop", "do": "down", "seconds": 5, "when": {"source_ip": "198.18.92.10"}},
    ]
    f = _faults(tmp_path, spec, "eop")
    facts = Facts("198.18.92.10", (), "a@x.example", ("b@y.example",))
    assert f.take("delay", facts, "greeting") is None and f.take("delay", facts, "data") is None
    assert f.take("delay", facts, "rcpt") is not None and f.take("delay", facts, "rcpt") is None
    now = [100.0]
    monkeypatch.setattr(faults_mod.time, "monotonic", lambda: now[0])
    hits = []
    for t in (100.0, 101.0, 104.9, 105.0, 200.0):  # from the first refusal, for 5 s
        now[0] = t
        hits.append(f.take("down", Facts("198.18.92.10")) is not None)
    assert hits == [True, True, True, False, False]


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


TIMING = {
    **{k: v for k, v in BASE.items() if k not in ("faults", "traffic")},
    "name": "timing-faults",
    "faults": [
        # The MX holds its greeting back for longer than the gateway waits for one (Postfix's
        # smtp_helo_timeout, 10 s here; the built-in gateway's 10 s): the gateway gives up, retries.
        {
            "at": "sink",
            "when": {"source_ip": "198.18.92.10"},
            "do": "delay",
            "step": "greeting",
            "seconds": 30,
            "times": 1,
        },
        # A slow RCPT answer, well inside every timeout: only slower.
        {"at": "eop", "when": {"rcpt": "carol@fabrikam.example"}, "do": "delay", "step": "rcpt", "seconds": 1},
        # EOP down for the Office 365 connector's address for 3 s: 421 until then, then delivered.
        {"at": "eop", "when": {"source_ip": "198.18.92.11"}, "do": "down", "seconds": 3},
    ],
    "traffic": [
        {"id": "to-internet", "from": "alice@contoso.example", "to": ["dave@northwind.example"], "expect": "delivered"},
        {"id": "to-fabrikam", "from": "alice@contoso.example", "to": ["carol@fabrikam.example"], "expect": "delivered"},
        {
            "id": "from-internet",
            "from": "erin@northwind.example",
            "to": ["bob@contoso.example"],
            "expect": "delivered",
            "expect_reply": "421 4.3.2",
        },
    ],
    "deadline_s": 40,
}


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_timing_faults_a_greeting_past_the_timeout_a_slow_rcpt_and_a_down_window(request, tmp_path, engine):
    path = tmp_path / "timing.yaml"
    path.write_text(yaml.safe_dump(TIMING, sort_keys=False))
    args = ["up", str(path), "--engine", engine, "--workdir", str(tmp_path)]
    if engine == "docker":
        lab = request.getfixturevalue("test_labs").new(str(path), "tmg")
        args = ["up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, "--workdir", str(tmp_path)]
    code, doc = labgen_json(*args, cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    msgs = by_id(doc)
    net = [h for h in msgs[("to-internet", "dave@northwind.example")]["hops"] if h["service"] == "gateway"]
    assert [h["event"] for h in net] == ["deferred", "sent"], net
    assert "greeting" in net[0]["reply"] and "timed out" in net[0]["reply"], net[0]
    labdir = Path(doc["lab_dir"])
    sink = [(e["do"], e["step"]) for e in _ledger(labdir, "sink") if e["event"] == "fault"]
    assert sink == [("delay", "greeting")], sink
    eop = [(e["do"], e.get("step")) for e in _ledger(labdir, "eop") if e["event"] == "fault"]
    assert ("delay", "rcpt") in eop and eop.count(("delay", "rcpt")) == 1, eop
    assert ("down", None) in eop, eop
