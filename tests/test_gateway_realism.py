"""Postfix realism of the lab gateway (issue #8): both gateways answer alike.

swaks (a real client) against the built-in gateway (local engine) and against real Postfix in
the Docker lab: recipient validation ("User unknown in relay recipient table"), relay refused
without Exchange Online's client certificate ("Relay access denied"), relay with it for a
tenant sender, and the postmaster of the gateway's own name. `secure` connectors: Postfix's
name match (nexthop, dot-nexthop) and its deferral text when the name does not match."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import by_id, labgen_json

from labgen.engines import postfix
from labgen.engines.local import LocalEngine
from labgen.lab.gateway import (
    RELAY_DENIED,
    UNKNOWN_RELAY_RECIPIENT,
    postmaster_alias,
    relay_recipients,
    relay_sender_domains,
)
from labgen.lab.pki import exo_client_files
from labgen.lab.smtp_client import SERVER_NOT_VERIFIED, cert_matches
from labgen.model.plan import make_plan
from labgen.model.scenario import Domain, load_scenario
from labgen.run import prepare_lab

REPO = Path(__file__).resolve().parent.parent
needs_swaks = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")

UNKNOWN = "nobody@contoso.example"
# (case, swaks options, expected final line prefix of the RCPT answer or "250")
CASES: dict[str, tuple[dict, str]] = {
    "unknown-recipient": ({"from": "erin@northwind.example", "to": UNKNOWN}, UNKNOWN_RELAY_RECIPIENT.format(UNKNOWN)),
    "known-recipient": ({"from": "erin@northwind.example", "to": "bob@contoso.example"}, "250"),
    "relay-without-cert": (
        {"from": "alice@contoso.example", "to": "dave@northwind.example", "exo": False},
        RELAY_DENIED.format("dave@northwind.example"),
    ),
    "relay-with-cert": ({"from": "alice@contoso.example", "to": "dave@northwind.example", "exo": True}, "250"),
    "relay-with-cert-foreign-sender": (
        {"from": "carol@fabrikam.example", "to": "dave@northwind.example", "exo": True},
        RELAY_DENIED.format("dave@northwind.example"),
    ),
    "postmaster": ({"from": "erin@northwind.example", "to": "postmaster@gw.contoso.example"}, "250"),
}


# ---------------------------------------------------------------- policy and rendering


def test_secure_name_match_is_postfix_nexthop_and_dot_nexthop():
    eop = ["mail.mail.protection.outlook.test", "*.mail.protection.outlook.test"]
    assert cert_matches(eop, "contoso.mail.protection.outlook.test")  # the wildcard, one label
    assert not cert_matches(eop, "a.b.mail.protection.outlook.test")  # a wildcard is one label only
    assert not cert_matches(eop, "fabrikam.example")  # MX routing: the nexthop is the recipient domain
    assert cert_matches(["mx.northwind.example"], "northwind.example")  # dot-nexthop
    assert not cert_matches(["northwind.example.evil.test"], "northwind.example")


def test_policy_of_the_broken_scenario():
    s = load_scenario("broken")
    assert relay_recipients(s) == ["alice@contoso.example", "bob@contoso.example"]
    assert relay_sender_domains(s) == ["contoso.example", "contoso.mail.onmicrosoft.test"]  # not fabrikam's
    assert postmaster_alias(s) == "alice@contoso.example"


def _context(**gateway):
    s = load_scenario("broken")
    s = s.model_copy(update={"gateway": s.gateway.model_copy(update=gateway)})
    return postfix.render_context(make_plan(s, "docker"))


def test_render_certificate_mode_pins_the_exo_certificate_and_validates_recipients():
    ctx = _context()
    assert ctx["mynetworks"] == "127.0.0.0/8"
    assert ctx["relay_restrictions"] == (
        "permit_mynetworks, check_sender_access inline:{ contoso.example=exo_client, "
        "contoso.mail.onmicrosoft.test=exo_client }, reject_unauth_destination"
    )
    assert ctx["exo_access"] == "certs/exo-client.access"
    assert ctx["relay_recipient_maps"] == " texthash:/etc/postfix/relay_recipients"
    assert ctx["virtual_alias_maps"] == " texthash:/etc/postfix/virtual"
    files = postfix.map_files(make_plan(load_scenario("broken"), "docker"))
    assert [line for line in files["relay_recipients"].splitlines() if not line.startswith("#")] == [
        "alice@contoso.example OK",
        "bob@contoso.example OK",
    ]
    assert "postmaster@gw.contoso.example alice@contoso.example" in files["virtual"].splitlines()


def test_render_ip_mode_and_no_validation_keep_the_old_behaviour():
    ctx = _context(exchange_online_relay="ip", recipient_validation=False)
    assert ctx["mynetworks"].endswith("/32") and ctx["mynetworks"].startswith("127.0.0.0/8 ")
    assert ctx["relay_restrictions"] == "permit_mynetworks, reject_unauth_destination"
    assert ctx["relay_recipient_maps"] == ""


def test_any_mailbox_the_scenario_accepts_is_a_plain_table_key():
    """The tables are files, not main.cf values: '=', braces and '$' are plain key characters."""
    s = load_scenario("broken")
    s.tenants["contoso"].mailboxes.append("a=b{$x}@contoso.example")
    files = postfix.map_files(make_plan(s, "docker"))
    assert "a=b{$x}@contoso.example OK" in files["relay_recipients"].splitlines()


def test_a_mailbox_a_table_cannot_carry_is_refused_with_a_clear_error():
    from labgen.errors import InputError

    s = load_scenario("broken")
    s.tenants["contoso"].mailboxes.append("#x@contoso.example")  # a comment line in a table file
    with pytest.raises(InputError, match="cannot list an address"):
        postfix.map_files(make_plan(s, "docker"))


# ---------------------------------------------------------------- swaks against both gateways


def swaks_cmd(server: str, port: int, source_ip: str, case: dict, certs: Path | None) -> list[str]:
    cmd = ["swaks", "--server", server, "--port", str(port), "--local-interface", source_ip]
    cmd += ["--from", case["from"], "--to", case["to"], "--ehlo", "outbound.protection.outlook.test"]
    cmd += ["--tls", "--quit-after", "RCPT", "--timeout", "10"]
    if case.get("exo") and certs is not None:
        cmd += ["--tls-cert", str(certs / "exo-client.chain.pem"), "--tls-key", str(certs / "exo-client.key")]
    return cmd


def rcpt_answer(out: str, rcpt: str) -> str:
    """The server's answer to RCPT in swaks' transcript (' -> ' plain, ' ~> ' over TLS; '<** ' or
    '<~* ' mark an error reply)."""
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if re.match(r" [-~]> RCPT TO:<" + re.escape(rcpt) + ">", ln))
    return next(m.group(1) for ln in lines[i + 1 :] if (m := re.match(r"<[-~*]{1,2}\s+(\d{3}[ -].*)$", ln)))


def check_answer(answer: str, expected: str) -> None:
    if expected == "250":
        assert answer.startswith("250 "), answer
    else:
        assert answer == expected


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path_factory.mktemp("realism"))
    engine.start(plan, labdir, time.monotonic() + 60)
    yield plan, labdir
    engine.finish(plan, labdir)


@needs_swaks
@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_gateway_answers_like_postfix(local_gateway, name):
    plan, labdir = local_gateway
    case, expected = CASES[name]
    source = plan.hosts["traffic"][1] if case.get("exo") is not None else plan.ip("traffic")
    p = subprocess.run(
        swaks_cmd(plan.ip("gateway"), plan.smtp_port, source, case, labdir / "certs"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    check_answer(rcpt_answer(p.stdout, case["to"]), expected)


@pytest.mark.docker
def test_postfix_gateway_answers_the_same(test_labs, tmp_path):
    lab = test_labs.new("broken", "realism")
    code, doc = labgen_json(
        "up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, "--keep", cwd=tmp_path, timeout=600
    )
    try:
        assert code == 0, doc
        plan = json.loads((Path(doc["lab_dir"]) / "plan.json").read_text())
        failures = []
        for name, (case, expected) in sorted(CASES.items()):
            source = plan["hosts"]["traffic"][1] if case.get("exo") is not None else plan["hosts"]["traffic"][0]
            cmd = swaks_cmd(plan["hosts"]["gateway"][0], 25, source, case, Path("/lab/certs"))
            p = subprocess.run(
                ["docker", "exec", f"labgen-{lab.name}-traffic", *cmd], capture_output=True, text=True, timeout=60
            )
            try:
                check_answer(rcpt_answer(p.stdout, case["to"]), expected)
            except (AssertionError, StopIteration):
                failures.append((name, p.stdout[-1500:]))
        assert not failures, failures
    finally:
        labgen_json("down", lab.name, cwd=tmp_path)


# ---------------------------------------------------------------- secure connectors, both engines


def _secure_scenario(tmp_path: Path, wrong_name: bool) -> Path:
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "fixed.yaml").read_text())
    for c in data["gateway"]["connectors"]:
        if c["name"] == "Office 365":
            c["tls"] = "secure"
    if wrong_name:  # fabrikam by MX: the nexthop is fabrikam.example, which EOP's certificate does not name
        data["gateway"]["connectors"].append(
            {"name": "Fabrikam secure", "address_space": ["fabrikam.example"], "route": "mx", "tls": "secure"}
        )
    path = tmp_path / f"secure-{int(wrong_name)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _secure_outcomes(doc: dict) -> dict:
    return {k: m["outcome"] for k, m in by_id(doc).items()}


def test_secure_connector_local(tmp_path):
    code, doc = labgen_json("up", _secure_scenario(tmp_path, False), "--engine", "local", cwd=tmp_path)
    assert code == 0, doc
    assert _secure_outcomes(doc)[("internal-routing", "bob@contoso.mail.onmicrosoft.test")] == "delivered"
    code, doc = labgen_json("up", _secure_scenario(tmp_path, True), "--engine", "local", cwd=tmp_path)
    m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert m["outcome"] == "deferred"
    hop = [h for h in m["hops"] if h["service"] == "gateway"][-1]
    assert hop["reply"] == SERVER_NOT_VERIFIED


@pytest.mark.docker
def test_secure_connector_docker_agrees(test_labs, tmp_path):
    for wrong in (False, True):
        lab = test_labs.new(str(_secure_scenario(tmp_path, wrong)), f"secure{int(wrong)}")
        code, doc = labgen_json(
            "up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path, timeout=600
        )
        local_code, local = labgen_json("up", _secure_scenario(tmp_path, wrong), "--engine", "local", cwd=tmp_path)
        labgen_json("down", lab.name, cwd=tmp_path)
        assert _secure_outcomes(doc) == _secure_outcomes(local), (doc, local)
        if wrong:
            m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
            hop = [h for h in m["hops"] if h["service"] == "gateway"][-1]
            assert hop["reply"] == SERVER_NOT_VERIFIED


def test_exo_client_files_are_the_plans(tmp_path):
    plan = make_plan(load_scenario("broken"), "local")
    assert exo_client_files(plan).chain == "certs/exo-client.chain.pem"


@pytest.mark.parametrize(
    "patch",
    [
        lambda s: setattr(s.gateway, "recipient_validation", False),
        lambda s: s.tenants["contoso"].domains.append(Domain(name="gw.contoso.example", mx="gateway")),
    ],
    ids=["no-recipient-validation", "gateway-name-is-an-accepted-domain"],
)
def test_empty_table_settings_render_a_valid_main_cf(patch):
    """relay_recipient_maps / virtual_alias_* left empty still give `name =` lines the final
    guard accepts (no trailing blank)."""
    from labgen.engines.compose import _postfix_files

    s = load_scenario("broken")
    patch(s)
    main_cf = _postfix_files(make_plan(s, "docker"))["gateway/postfix/main.cf"]
    assert any(line in ("relay_recipient_maps =", "virtual_alias_domains =") for line in main_cf.splitlines())
