"""Every shipped scenario under both EOP profiles, on both engines: the built-in gateway (local)
and real Postfix (Docker) give the same verdict for every recipient, each scenario's own
expectations hold under its own profile, and the documented differences between the profiles
show up end to end. Also: a certificate the user made with openssl, which no scenario declares,
reaches EOP's rules on both engines (attributed or refused by them, never a TLS failure)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, by_id, labgen_json

from labgen.model.scenario import example_names

# The field report's pair and the examples; the catalogue's entries run on Docker in a subset
# (tests/test_catalogue.py), so that CI stays well inside its time.
SHIPPED = [(name, REPO / "labgen" / "scenarios" / f"{name}.yaml") for name in ("broken", "fixed")] + [
    (f"example:{name}", REPO / "examples" / f"{name}.yaml") for name in example_names()
]
PROFILES = ("seed", "current")


def _own_profile(path: Path) -> str:
    return (yaml.safe_load(path.read_text()).get("eop") or {}).get("profile", "current")


def _verdicts(doc: dict) -> dict:
    return {key: m["outcome"] for key, m in by_id(doc).items()}


def _run(lab, engine: str, profile: str, cwd: Path) -> dict:
    args = ["up", str(lab.scenario), "--engine", engine, "--profile", profile]
    if engine == "docker":
        args += ["--subnet", lab.subnet]
    code, doc = labgen_json(*args, cwd=cwd)
    assert code in (0, 1), doc
    assert doc["profile"] == profile
    assert doc["summary"]["unaccounted"] == 0, doc
    return doc


@pytest.mark.docker
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("ref, path", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_both_engines_agree_under_both_profiles(test_labs, tmp_path, ref, path, profile):
    lab = test_labs.new(str(path), "prof")
    # A deferral is named at the deadline; a loaded machine must not turn a slow first attempt into
    # one (an example's own deadline is tuned for a quick demo, not for a busy CI host).
    data = yaml.safe_load(lab.scenario.read_text())
    data["deadline_s"] = max(data.get("deadline_s", 0), 20)
    lab.scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    local = _run(lab, "local", profile, tmp_path)
    docker = _run(lab, "docker", profile, tmp_path)
    assert _verdicts(docker) == _verdicts(local)
    if profile == _own_profile(path):  # its expectations were written for its own profile
        for doc in (local, docker):
            failed = [m for m in doc["messages"] if m["ok"] is False]
            assert not failed, failed


def test_broken_under_todays_rules_fails_loudly(tmp_path):
    """The seed's configuration under 'current': its certificate name is no accepted domain of
    contoso, so every message through the Office 365 connector gets Microsoft's 5.7.51 and
    comes back as an NDR, and a self-signed certificate no longer attributes, so mail to
    fabrikam arrives as ordinary inbound mail instead of vanishing."""
    code, doc = labgen_json("up", "broken", "--engine", "local", "--profile", "current", cwd=tmp_path)
    m = by_id(doc)
    assert code == 0 and doc["profile"] == "current"
    for key in (("from-internet", "bob@contoso.example"), ("internal-routing", "bob@contoso.mail.onmicrosoft.test")):
        assert m[key]["outcome"] == "rejected"
        assert "550 5.7.51 TenantInboundAttribution; There is a partner connector configured" in m[key]["why"]
        assert m[key]["recipient_trace_visible"] is False  # a protocol-level rejection: in nobody's trace
    fabrikam = m[("to-fabrikam", "carol@fabrikam.example")]
    assert fabrikam["outcome"] == "delivered" and fabrikam["attribution"]["by"] == "recipient"
    assert m[("from-internet", "bob@contoso.example")]["ndr"]["mailbox"] == "erin@northwind.example"


def test_recommended_topology_relays_through_the_attributed_tenant(tmp_path):
    code, doc = labgen_json("up", "example:recommended-topology", "--engine", "local", cwd=tmp_path)
    m = by_id(doc)
    assert code == 0 and all(x["outcome"] == "delivered" for x in doc["messages"])
    internet = m[("to-internet", "dave@northwind.example")]
    assert [h["event"] for h in internet["hops"] if h["service"] == "eop"] == ["rcpt", "relayed"]
    assert internet["hops"][-1]["service"] == "sink"
    fabrikam = m[("to-fabrikam", "carol@fabrikam.example")]
    assert fabrikam["attribution"] == {"tenant": "contoso", "by": "certificate", "connector": "Inbound from gateway"}
    # Relayed through contoso: both tenants' message traces show it.
    assert {t["tenant"] for t in fabrikam["trace"]} == {"contoso", "fabrikam"}


def _openssl_cert(where: Path, cn: str) -> tuple[Path, Path]:
    crt, key = where / "mine.crt", where / "mine.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={cn}"]
        + ["-addext", f"subjectAltName=DNS:{cn}", "-keyout", str(key), "-out", str(crt)],
        check=True,
        capture_output=True,
    )
    return crt, key


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_certificate_made_with_openssl_is_judged_by_the_rules(test_labs_or_none, tmp_path, engine):
    """The recommended topology, its gateway presenting a self-signed certificate the user made
    with openssl: EOP completes the handshake, sees the certificate (names, self-signed), does
    not attribute it (KB 3212877), and so refuses the relay to the internet with 5.7.64, while
    mail for contoso's own users arrives as inbound mail."""
    crt, key = _openssl_cert(tmp_path, "mail.contoso.example")
    data = yaml.safe_load((REPO / "examples" / "recommended-topology.yaml").read_text())
    data["certificates"]["gw-public"] = {"cert_file": str(crt), "key_file": str(key)}
    src = tmp_path / "mine.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["up", str(src), "--engine", engine]
    if engine == "docker":
        lab = test_labs_or_none.new(str(src), "mine")
        data["name"] = lab.name
        lab.scenario.write_text(yaml.safe_dump(data, sort_keys=False))
        args = ["up", str(lab.scenario), "--engine", engine, "--subnet", lab.subnet]
    code, doc = labgen_json(*args, cwd=tmp_path)
    m = by_id(doc)
    internet = m[("to-internet", "dave@northwind.example")]
    assert internet["outcome"] == "rejected" and "550 5.7.64 TenantAttribution; Relay Access Denied" in internet["why"]
    rcpt = next(h for h in internet["hops"] if h["service"] == "eop" and h["event"] == "rcpt")
    assert rcpt["certificate"]["names"] == ["mail.contoso.example"]
    assert rcpt["certificate"]["trusted"] is False and "self-signed" in rcpt["certificate"]["problem"]
    assert rcpt["tls"] is True
    assert m[("from-internet", "bob@contoso.example")]["outcome"] == "delivered"
    events = [json.loads(line) for line in (Path(doc["lab_dir"]) / "run" / "eop.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["event"] == "tls_failed"]


@pytest.fixture
def test_labs_or_none(request):
    """The Docker test labs for the docker case; nothing for the local one."""
    if "docker" in request.node.name:
        return request.getfixturevalue("test_labs")
    return None


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_an_internet_sender_inside_a_too_broad_connector_range_is_taken_for_the_tenant(request, tmp_path, engine):
    """MC1226222's IP anti-pattern: contoso's OnPremises connector lists a whole /24. An internet
    sender with its own address in it (traffic[].source_ip, its own HELO) spoofing a contoso
    sender is attributed to contoso by IP: its mail to fabrikam is relayed through contoso as
    contoso's own (Internal, in contoso's trace). The same sender with its own domain is plain
    inbound mail for fabrikam."""
    data = yaml.safe_load((REPO / "examples" / "recommended-topology.yaml").read_text())
    data["tenants"]["contoso"]["inbound_connectors"] = [
        {"Name": "Gateway range", "ConnectorType": "OnPremises", "SenderIPAddresses": ["192.0.2.0/24"]}
    ]
    own = {"source_ip": "192.0.2.77", "helo": "mail.attacker.example", "via": "internet"}
    data["traffic"] = [
        {"id": "spoofed", "from": "alice@contoso.example", "to": ["carol@fabrikam.example"], **own},
        {"id": "honest", "from": "erin@northwind.example", "to": ["carol@fabrikam.example"], **own},
    ]
    src = tmp_path / "spoof.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    args = ["up", str(src), "--engine", engine]
    if engine == "docker":
        lab = request.getfixturevalue("test_labs").new(str(src), "spoof")
        args = ["up", str(lab.scenario), "--engine", engine, "--subnet", lab.subnet]
    code, doc = labgen_json(*args, cwd=tmp_path)
    m = by_id(doc)
    spoofed = m[("spoofed", "carol@fabrikam.example")]
    assert spoofed["outcome"] == "delivered"
    assert spoofed["attribution"] == {"tenant": "contoso", "by": "ip", "connector": "Gateway range"}
    assert {t["tenant"] for t in spoofed["trace"]} == {"contoso", "fabrikam"}
    rcpt = next(h for h in spoofed["hops"] if h["service"] == "eop")
    assert rcpt["client_ip"].endswith(".77")  # its own address, moved with the lab's subnet
    delivered = next(h for h in spoofed["hops"] if h["event"] == "delivered")
    eml = (Path(doc["lab_dir"]) / "run" / delivered["file"]).read_text()
    assert "X-MS-Exchange-Organization-AuthAs: Internal" in eml and "X-OriginatorOrg: contoso.example" in eml
    assert "from mail.attacker.example (" in eml  # EOP's Received line names its HELO
    honest = m[("honest", "carol@fabrikam.example")]
    assert honest["outcome"] == "delivered" and honest["attribution"]["by"] == "recipient"
