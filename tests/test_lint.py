"""`labgen lint`: static checks of a scenario (labgen/model/lint.py). Table-driven over the
catalogue: every entry's broken scenario has its finding, its fixed variant does not. Outputs:
text (escaped), the labgen.lint/v1 document (docs/schemas/lint.json), and SARIF 2.1.0 validated
with jsonschema against OASIS' own schema (tests/data/sarif/, source in SOURCE.md)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, labgen

from labgen.model import lint as lg
from labgen.model.scenario import catalogue_entries, load_scenario

SARIF_SCHEMA = json.loads((REPO / "tests" / "data" / "sarif" / "sarif-schema-2.1.0.json").read_text())
LINT_SCHEMA = json.loads((REPO / "docs" / "schemas" / "lint.json").read_text())

# Each catalogue entry: the rule its broken scenario must trigger (and its fixed variant must not).
EXPECTED = {
    "broken": "LG001",
    "wildcard-cert-name": "LG002",
    "msp-gateway": "LG001",
    "cert-name-not-accepted": "LG003",
    "untrusted-certificate": "LG004",
    "shared-egress-ip": "LG005",
    "spf-not-listing-gateway": "LG006",
    "partner-lockdown-new-ip": "LG007",
    "dbeb-backscatter": "LG008",
    "tls-legacy-gateway": "LG009",
    "cert-renewed-new-name": "LG011",
    "egress-ip-changed": "LG012",
    "no-enhanced-filtering": "LG013",
    "outbound-subject-mismatch": "LG014",
    "hairpin-loop": "LG015",
}
# Entries no static check can find, and why.
NOT_STATIC = {
    "new-ip-throttled": "throttling depends on how many messages an unknown address sends (traffic), and EOP's "
    "threshold is not published; nothing in the configuration is wrong by itself",
    "reject-direct-send": "the failure is an application sending straight to EOP (the traffic's source address), "
    "not a setting of the gateway or the tenant",
}


def sarif_valid(doc: dict) -> None:
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(doc)


def rules_of(report: lg.Report) -> set[str]:
    return {f.rule for f in report.findings}


def test_every_catalogue_entry_is_checked_or_says_why_not():
    names = {b for b, _ in catalogue_entries()}
    assert names == set(EXPECTED) | set(NOT_STATIC), "a catalogue entry needs an EXPECTED rule or a NOT_STATIC reason"
    assert not set(EXPECTED) & set(NOT_STATIC)


@pytest.mark.parametrize("broken,fixed", [e for e in catalogue_entries() if e[0] in EXPECTED])
def test_broken_has_its_finding_and_fixed_does_not(broken, fixed):
    rule = EXPECTED[broken]
    found = lg.lint(broken)
    assert rule in rules_of(found), [(f.rule, f.message) for f in found.findings]
    assert fixed is not None
    clean = lg.lint(fixed)
    assert rule not in rules_of(clean), [(f.rule, f.message) for f in clean.findings]
    # The finding's location is a setting the file has.
    mine = [f for f in found.findings if f.rule == rule]
    assert all(f.line for f in mine)


@pytest.mark.parametrize("broken,fixed", [e for e in catalogue_entries() if e[0] in NOT_STATIC])
def test_entries_out_of_static_reach_have_no_finding_of_their_own(broken, fixed):
    # Documented in NOT_STATIC; the fixed variant has no error either.
    assert lg.lint(fixed).exit_code == 0


def test_fixed_is_clean_of_errors_and_warnings():
    r = lg.lint("fixed")
    assert [f for f in r.findings if f.severity != "note"] == []
    assert r.exit_code == 0
    # The one note: contoso.example's SPF does not list the gateway, which sends Internet mail itself;
    # the lab's internet does not check SPF, real receivers do.
    assert {f.rule for f in r.findings} <= {"LG006"}


def test_broken_finding_points_at_the_certificate_line():
    r = lg.lint("broken")
    (f,) = [f for f in r.findings if f.rule == "LG001"]
    assert f.severity == "error" and f.subject == "certificate gw-selfsigned"
    assert "silently discarded" in f.message and "'Internet'" in f.message
    assert f.line is not None
    line = (REPO / "labgen" / "scenarios" / "broken.yaml").read_text().splitlines()[f.line - 1]
    assert line.strip() == "certificate: gw-selfsigned"


def test_profile_current_reports_todays_rules_for_the_seed():
    rules = {f.rule: f.severity for f in lg.lint("fixed", "current").findings}
    assert rules.get("LG003") == "error"  # gw.contoso.example is no accepted domain: 5.7.51
    assert rules.get("LG004") == "error"  # self-signed on the Office 365 connector: KB 3212877


def test_misattribution_relayed_today_is_a_note():
    # Under today's rules the shared certificate (mail.contoso.example, CA-signed, accepted) attributes
    # mail for other tenants to contoso, which relays it: it arrives, so a note, not an error.
    r = lg.lint("spf-not-listing-gateway:fixed")
    assert [(f.rule, f.severity) for f in r.findings] == [("LG001", "note")]


def test_every_rule_source_is_cited_by_the_catalogue_or_fidelity():
    cited = set((REPO / "docs" / "fidelity.md").read_text().split())
    text = (REPO / "docs" / "fidelity.md").read_text()
    for b, _ in catalogue_entries():
        s = load_scenario(b)
        assert s.about is not None
        cited |= set(s.about.sources)
    for rule in lg.RULES:
        assert rule.sources
        for url in rule.sources:
            assert url in cited or url in text, f"{rule.id}: {url} is cited nowhere"
    assert len({r.id for r in lg.RULES}) == len(lg.RULES)


# ---------------------------------------------------------------- outputs, through the CLI


@pytest.mark.parametrize("ref", [r for e in catalogue_entries() for r in e if r])
def test_sarif_of_every_catalogue_scenario_is_valid(ref):
    r = lg.lint(ref)
    doc = lg.to_sarif(r, "0")
    sarif_valid(doc)
    results = doc["runs"][0]["results"]
    assert [x["ruleId"] for x in results] == [f.rule for f in r.findings]
    rules = doc["runs"][0]["tool"]["driver"]["rules"]
    for x in results:
        assert rules[x["ruleIndex"]]["id"] == x["ruleId"]


def test_cli_sarif_broken_finds_the_shared_certificate(tmp_path):
    p = labgen("lint", "broken", "--format", "sarif", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    sarif_valid(doc)
    assert doc["version"] == "2.1.0"
    (res,) = [x for x in doc["runs"][0]["results"] if x["ruleId"] == "LG001"]
    assert res["level"] == "error"
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"].endswith("broken.yaml") and loc["region"]["startLine"] > 1
    rule = next(r for r in doc["runs"][0]["tool"]["driver"]["rules"] if r["id"] == "LG001")
    assert rule["helpUri"].startswith("https://") and rule["shortDescription"]["text"]


def test_cli_sarif_fixed_gives_no_shared_certificate_and_exits_0(tmp_path):
    out = tmp_path / "fixed.sarif"
    p = labgen("lint", "fixed", "--format", "sarif", "-o", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    sarif_valid(doc)
    assert [x for x in doc["runs"][0]["results"] if x["level"] != "note"] == []


def test_a_relative_file_is_named_as_given(tmp_path):
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "mine.yaml").write_text((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    p = labgen("lint", "sc/mine.yaml", "--format", "sarif", cwd=tmp_path)
    doc = json.loads(p.stdout)
    sarif_valid(doc)
    assert doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "sc/mine.yaml"


def test_invalid_sarif_is_refused_by_the_schema():
    doc = lg.to_sarif(lg.lint("broken"), "0")
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        sarif_valid(doc)
    doc = lg.to_sarif(lg.lint("broken"), "0")
    del doc["runs"][0]["tool"]["driver"]["name"]
    with pytest.raises(jsonschema.ValidationError):
        sarif_valid(doc)


def test_the_committed_lint_schema_is_what_the_command_prints(tmp_path):
    p = labgen("schema", "lint", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == LINT_SCHEMA, "docs/schemas/lint.json is stale: labgen schema lint > it"
    jsonschema.Draft202012Validator.check_schema(LINT_SCHEMA)


def test_cli_json_is_a_lint_v1_document(tmp_path):
    p = labgen("lint", "broken", "--json", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator(LINT_SCHEMA).validate(doc)
    assert doc["schema"] == "labgen.lint/v1" and doc["profile"] == "seed"
    assert doc["summary"]["error"] == 1
    f = next(f for f in doc["findings"] if f["rule"] == "LG001")
    assert f["path"] == "gateway.connectors[1].certificate" and f["sources"] and f["fix"]


def test_text_output_and_exit_codes(tmp_path):
    p = labgen("lint", "broken", cwd=tmp_path)
    assert p.returncode == 1
    assert "LG001 shared-certificate" in p.stdout and "1 error(s)" in p.stdout
    assert labgen("lint", "fixed", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["no-such-scenario"], "unknown scenario"),
        (["missing.yaml"], "no such scenario file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    p = labgen("lint", *args, cwd=tmp_path)
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_malformed_scenario_is_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\ntenants: [\n")
    p = labgen("lint", "bad.yaml", cwd=tmp_path)
    assert p.returncode == 2 and "bad.yaml" in p.stderr


def test_untrusted_names_are_printed_as_text_not_markup(tmp_path):
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    data["gateway"]["connectors"][0]["name"] = "[bold red]Internet[/]"  # control characters: refused at load
    (tmp_path / "hostile.yaml").write_text(yaml.safe_dump(data))
    p = labgen("lint", "hostile.yaml", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "[bold red]Internet[/]" in p.stdout and "\x1b" not in p.stdout


def _write_cert(path: Path, days_left: int, self_signed: bool) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.contoso.example")])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    "days_left,self_signed,expect",
    [
        (-3, False, [("LG004", "error", "expired")]),
        (10, False, [("LG004", "warning", "expires in")]),
        (200, True, [("LG004", "error", "self-signed")]),
        (200, False, []),
    ],
    ids=["expired", "soon", "self-signed", "fine"],
)
def test_users_own_certificate_file_is_judged(tmp_path, days_left, self_signed, expect):
    _write_cert(tmp_path / "gw.crt", days_left, self_signed)
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "untrusted-certificate.fixed.yaml").read_text())
    data["certificates"] = {"gw-public": {"cert_file": "gw.crt", "key_file": "gw.key"}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(data))
    r = lg.lint(str(tmp_path / "own.yaml"))
    got = [(f.rule, f.severity) for f in r.findings]
    assert got == [(rule, sev) for rule, sev, _ in expect]
    for f, (_, _, text) in zip(r.findings, expect, strict=True):
        assert text in f.message


def test_made_certificate_expiry_in_days_from_the_lab():
    data_days = [(-30, 20, "error"), (-1, 20, "warning")]  # ends 10 days ago; ends in 19 days
    for not_before, valid, sev in data_days:
        s = load_scenario("untrusted-certificate:fixed")
        cert = s.certificates["gw-public"]
        cert.not_before_days, cert.valid_days = not_before, valid
        findings = [f for f in lg.check(s, "198.18.16.10") if f.rule == "LG004"]
        assert [f.severity for f in findings] == [sev]
