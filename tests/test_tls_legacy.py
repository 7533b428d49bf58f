"""A gateway that speaks only TLS 1.0/1.1 to Exchange Online (issue #9's catalogue entry
`tls-legacy-gateway`): the send connector's `tls_protocols` knob and its validation, both gateways
honouring it (the built-in one and real Postfix), and EOP refusing TLS 1.0/1.1 with a
protocol_version alert after *seeing* the attempt (docs/fidelity.md S12), shown to real
third-party clients (openssl s_client)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import by_id, labgen, labgen_json
from pydantic import ValidationError

from labgen.engines.compose import _postfix_files
from labgen.engines.local import LocalEngine
from labgen.engines.postfix import postfix_tls_level
from labgen.lab.eop import rules
from labgen.model.scenario import SendConnector, load_scenario, scenario_path
from labgen.run import prepare_lab

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")
BROKEN, FIXED = "tls-legacy-gateway", "tls-legacy-gateway:fixed"


def connector(tls_protocols: object) -> SendConnector:
    return SendConnector.model_validate({"name": "Office 365", "address_space": ["*"], "tls_protocols": tls_protocols})


# ---------------------------------------------------------------- the knob


@pytest.mark.parametrize(
    "given, canonical, tls_range, legacy",
    [
        (None, None, ("TLSv1.2", "TLSv1.3"), False),
        ("<=TLSv1.1", "<=TLSv1.1", ("TLSv1", "TLSv1.1"), True),
        (">=TLSv1 <=TLSv1.1", ">=TLSv1:<=TLSv1.1", ("TLSv1", "TLSv1.1"), True),
        ("<=TLSv1.1, >=TLSv1", ">=TLSv1:<=TLSv1.1", ("TLSv1", "TLSv1.1"), True),
        (">=TLSv1:<=TLSv1", ">=TLSv1:<=TLSv1", ("TLSv1", "TLSv1"), True),
        (">=TLSv1.1", ">=TLSv1.1", ("TLSv1.1", "TLSv1.3"), True),
        (">=TLSv1.2", ">=TLSv1.2", ("TLSv1.2", "TLSv1.3"), False),
        ("<=TLSv1.2", "<=TLSv1.2", ("TLSv1", "TLSv1.2"), True),
        (">=TLSv1.3", ">=TLSv1.3", ("TLSv1.3", "TLSv1.3"), False),
        ("  >=TLSv1.2  ", ">=TLSv1.2", ("TLSv1.2", "TLSv1.3"), False),
    ],
)
def test_tls_protocols_accepted_in_one_canonical_form(given, canonical, tls_range, legacy):
    c = connector(given)
    assert (c.tls_protocols, c.tls_range, c.legacy_tls) == (canonical, tls_range, legacy)


@pytest.mark.parametrize(
    "given, why",
    [
        ("", "give '>=V', '<=V' or both"),
        ("   ", "give '>=V', '<=V' or both"),
        ("TLSv1.2", "is not '>=V' or '<=V'"),
        ("!TLSv1", "exclusions such as '!TLSv1' are not supported"),
        (">=SSLv3", "is not '>=V' or '<=V'"),
        (">=TLSv1.4", "is not '>=V' or '<=V'"),
        (">=tlsv1.2", "is not '>=V' or '<=V'"),
        (">TLSv1.2", "is not '>=V' or '<=V'"),
        (">=TLSv1.3 <=TLSv1.2", "leaves no TLS version: TLSv1.3 is newer than TLSv1.2"),
        (">=TLSv1 >=TLSv1.1", "'>=' is given twice"),
        (">=TLSv1 <=TLSv1.1 <=TLSv1.2", "give '>=V', '<=V' or both"),
        # Hostile: each would add Postfix structure if it reached master.cf whole.
        ("<=TLSv1.1\n  -o smtpd_tls_ask_ccert=no", "give '>=V', '<=V' or both"),
        ("<=TLSv1.1 -o smtp_bind_address=x", "give '>=V', '<=V' or both"),
        ("<=TLSv1.1\n-o", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1\n  -o smtp_tls_security_level=none", "at most 40 characters"),
        ("<=TLSv1.1#comment", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1\t", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1\x00", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1{x}", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1\u2028", "is not '>=V' or '<=V'"),
        ("<=TLSv１.1", "is not '>=V' or '<=V'"),  # a fullwidth digit
        ("<=TLSv1.1:@SECLEVEL=0", "is not '>=V' or '<=V'"),
        ("<=TLSv1.1" + " " * 40, "at most 40 characters"),
        (1, "valid string"),
        (["<=TLSv1.1"], "valid string"),
    ],
)
def test_tls_protocols_refused_with_a_reason(given, why):
    with pytest.raises(ValidationError) as e:
        connector(given)
    text = str(e.value)
    assert why in text, text
    assert "\n  -o" not in text and "\x00" not in text  # the hostile value is quoted escaped


def test_a_bad_tls_protocols_in_a_file_names_file_and_path(tmp_path):
    data = yaml.safe_load(Path(scenario_path(BROKEN)).read_text())
    data["gateway"]["connectors"][0]["tls_protocols"] = "!TLSv1.2"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    p = labgen("validate", "s.yaml", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "s.yaml" in p.stderr and "gateway.connectors[0].tls_protocols" in p.stderr, p.stderr


# ---------------------------------------------------------------- the gateways' configuration


def _plan(ref: str, tmp_path: Path):
    return prepare_lab(load_scenario(ref), LocalEngine(), tmp_path / "work")


def _conn0_options(plan) -> list[str]:
    master = _postfix_files(plan)["gateway/postfix/master.cf"]
    assert isinstance(master, str)  # labgen's own rendering (a user's configuration is bytes)
    block = master.split("\nconn0 unix", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.startswith("  -o ")]


def test_postfix_gets_the_range_and_encrypt_for_a_secure_connector_below_tls_1_2(tmp_path):
    # Postfix verifies peers at OpenSSL security level 1, where OpenSSL 3 has no TLS < 1.2: at 'secure'
    # it would fail its own handshake ('no protocols available') and never offer TLS 1.1.
    plan, _ = _plan(BROKEN, tmp_path / "b")
    assert plan.scenario.gateway.connectors[0].tls == "secure"
    opts = _conn0_options(plan)
    for line in (
        "-o smtp_tls_protocols=>=TLSv1:<=TLSv1.1",
        "-o smtp_tls_mandatory_protocols=>=TLSv1:<=TLSv1.1",
        "-o smtp_tls_security_level=encrypt",
    ):
        assert line in opts, opts
    # No cipher-list override: Postfix's client context is at security level 0 already.
    assert not [o for o in opts if "cipher" in o], opts
    fixed, _ = _plan(FIXED, tmp_path / "f")
    opts = _conn0_options(fixed)
    assert "-o smtp_tls_mandatory_protocols=>=TLSv1.2:<=TLSv1.3" in opts, opts
    assert "-o smtp_tls_security_level=secure" in opts, opts


@pytest.mark.parametrize(
    "tls, tls_protocols, level",
    [
        ("secure", "<=TLSv1.1", "encrypt"),
        ("secure", ">=TLSv1:<=TLSv1", "encrypt"),
        ("secure", ">=TLSv1.1", "secure"),  # TLS 1.2 is in range: verified, at level 1
        ("secure", "<=TLSv1.2", "secure"),
        ("secure", None, "secure"),
        ("encrypt", "<=TLSv1.1", "encrypt"),
        ("may", "<=TLSv1.1", "may"),
        ("none", "<=TLSv1.1", "none"),
    ],
)
def test_only_secure_below_tls_1_2_runs_at_encrypt(tls, tls_protocols, level):
    c = SendConnector.model_validate({"name": "c", "address_space": ["*"], "tls": tls, "tls_protocols": tls_protocols})
    assert postfix_tls_level(c) == level


def test_a_connector_without_the_knob_renders_as_before(tmp_path):
    plan, _ = _plan("new-ip-throttled", tmp_path)
    assert not [o for o in _conn0_options(plan) if "protocols" in o or "cipher" in o]


# ---------------------------------------------------------------- EOP's rule


@pytest.mark.parametrize(
    "version, refused",
    [("TLSv1", True), ("TLSv1.1", True), ("TLSv1.2", False), ("TLSv1.3", False), ("SSLv3", False)],
)
def test_eop_refuses_tls_1_0_and_1_1(version, refused):
    # SSLv3 never gets this far: OpenSSL's floor (TLS 1.0) refuses it first.
    why = rules.tls_refusal(version)
    assert (why is not None) == refused
    if why:
        assert f"offered at most {version};" in why and "TLS 1.2 or later" in why


# ---------------------------------------------------------------- the catalogue pair, local engine


def eop_events(labdir: Path, event: str) -> list[dict]:
    lines = (labdir / "run" / "eop.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def test_broken_is_deferred_at_the_gateway_by_eops_refusal_local(tmp_path):
    code, doc = labgen_json("up", BROKEN, "--engine", "local", cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    assert {m["outcome"] for m in doc["messages"]} == {"deferred"}
    for m in doc["messages"]:
        assert "Cannot start TLS: handshake failure" in json.dumps(m), m
    labdir = Path(doc["lab_dir"])
    failed = eop_events(labdir, "tls_failed")
    assert failed, "EOP saw the TLS 1.1 attempts"
    assert all("offered at most TLSv1.1" in f["reason"] for f in failed), failed
    assert not eop_events(labdir, "rcpt") and not eop_events(labdir, "session")  # no SMTP after the refusal


def test_fixed_is_delivered_over_tls_1_2_or_later_local(tmp_path):
    code, doc = labgen_json("up", FIXED, "--engine", "local", cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    assert {m["outcome"] for m in doc["messages"]} == {"delivered"}
    labdir = Path(doc["lab_dir"])
    assert not eop_events(labdir, "tls_failed")
    sessions = eop_events(labdir, "session")
    assert sessions and all(s["tls"] in ("TLSv1.2", "TLSv1.3") for s in sessions), sessions


# ---------------------------------------------------------------- a real third-party client


@pytest.fixture
def lab(tmp_path):
    """The broken entry's services in this process (local engine), no traffic."""
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario(BROKEN), engine, tmp_path / "work")
    engine.start(plan, labdir, time.monotonic() + 30)
    yield plan, labdir
    engine.finish(plan, labdir)


def s_client(plan, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{plan.ip('eop')}:{plan.smtp_port}"]
    cmd += ["-crlf", "-quiet", *extra]
    commands = "EHLO client.example\nMAIL FROM:<erin@northwind.example>\nRCPT TO:<bob@contoso.example>\nQUIT\n"
    return subprocess.run(cmd, input=commands, capture_output=True, text=True, timeout=30)


@needs_openssl
@pytest.mark.parametrize("flag, version", [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_openssl_s_client_with_old_tls_gets_a_protocol_version_alert(lab, flag, version):
    plan, labdir = lab
    # Level 0 on the client's side too, or the client's own OpenSSL refuses before EOP could.
    p = s_client(plan, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert re.search(r"alert protocol version", out), out  # alert 70, as OpenSSL names it
    assert "250 2.1.0 Sender OK" not in out
    (failed,) = eop_events(labdir, "tls_failed")
    assert f"offered at most {version};" in failed["reason"], failed
    # EOP keeps serving: the same client with TLS 1.2 goes on to SMTP.
    ok = s_client(plan, "-tls1_2")
    assert ok.returncode == 0 and "250 2.1.0 Sender OK" in ok.stdout, ok.stdout + ok.stderr


# ---------------------------------------------------------------- real Postfix


@pytest.mark.docker
def test_real_postfix_limited_to_tls_1_1_is_deferred_and_with_1_2_delivered(test_labs, tmp_path):
    expected = {BROKEN: "deferred", FIXED: "delivered"}
    for ref, outcome in expected.items():
        lab = test_labs.new(str(scenario_path(ref)), "tls")
        code, doc = labgen_json("up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path)
        assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
        assert {m["outcome"] for m in by_id(doc).values()} == {outcome}, ref
        labdir = Path(doc["lab_dir"])
        log = (labdir / "run" / "postfix.log").read_text()
        failed = eop_events(labdir, "tls_failed")
        if outcome == "deferred":
            # Postfix's own words: OpenSSL's alert, then the deferral.
            assert "alert protocol version" in log, log[-3000:]
            assert "status=deferred (Cannot start TLS: handshake failure)" in log, log[-3000:]
            assert failed and all("offered at most TLSv1.1" in f["reason"] for f in failed), failed
            assert "no protocols available" not in log, log[-3000:]  # Postfix's own refusal, before EOP
            assert not eop_events(labdir, "session")
        else:
            assert "status=sent" in log and not failed
            sessions = eop_events(labdir, "session")
            assert sessions and all(s["tls"] in ("TLSv1.2", "TLSv1.3") for s in sessions), sessions
