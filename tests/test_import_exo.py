"""`labgen import exo` (issue 10): Exchange Online PowerShell exports made into a scenario that
validates and runs; PowerShell's ConvertTo-Json quirks; values the lab cannot model reported in
the file and on stderr; hostile exports refused with one line naming the file and JSON path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import EXAMPLES, labgen, labgen_json

from labgen.errors import InputError
from labgen.model.exo_import import decode_export, import_exo, read_export
from labgen.model.scenario import load_scenario

EXO = EXAMPLES / "exo"
SAMPLES = [
    "--inbound-connectors",
    EXO / "inbound-connectors.json",
    "--outbound-connectors",
    EXO / "outbound-connectors.json",
    "--accepted-domains",
    EXO / "accepted-domains.json",
]

GATEWAY_IN = {
    "Name": "Inbound from gateway",
    "ConnectorType": "OnPremises",
    "TlsSenderCertificateName": "mail.contoso.example",
    "SenderDomains": ["smtp:*;1"],
    "SenderIPAddresses": [],
    "Enabled": True,
}


def one_line_error(p, code: int, *words: str) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def write(path: Path, data, encoding: str = "utf-8", bom: bool = False) -> Path:
    text = data if isinstance(data, str) else json.dumps(data, indent=4)
    raw = text.encode(encoding)
    if bom and encoding == "utf-8":
        raw = b"\xef\xbb\xbf" + raw
    path.write_bytes(raw)
    return path


def run_import(tmp_path: Path, inbound, **files) -> tuple[dict, str]:
    """Import through the library; returns (scenario data, YAML text)."""
    src = write(tmp_path / "in.json", inbound)
    opt = {}
    for kind in ("outbound", "domains"):
        if kind in files:
            opt[kind] = (write(tmp_path / f"{kind}.json", files[kind]), f"{kind}.json")
    r = import_exo(
        src, "in.json", opt.get("outbound"), opt.get("domains"), None, files.get("tenant"), tmp_path / "s.yaml"
    )
    return yaml.safe_load(r.text), r.text


# ---------------------------------------------------------------- the samples, end to end


def test_samples_import_validate_and_run_on_the_local_engine(tmp_path):
    p = labgen("import", "exo", *SAMPLES, "-o", "contoso.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "wrote contoso.yaml" in p.stdout
    s = load_scenario(str(tmp_path / "contoso.yaml"))
    tenant = s.tenants["contoso"]
    assert [c.name for c in tenant.inbound_connectors] == [
        "Inbound from gateway",
        "Partner: Fabrikam",
        "Legacy filtering service",
    ]
    fab = tenant.inbound_connectors[1]
    assert fab.type == "Partner" and fab.restrict_domains_to_ip_addresses  # ConnectorType 1
    assert fab.sender_domains == ["fabrikam.example", "*.fabrikam.example"]  # 'smtp:...;1' read
    assert "192.0.2.40/32" in fab.sender_ip_addresses  # a lab address kept, {"value": [...]} unwrapped
    assert tenant.inbound_connectors[2].enabled is False
    assert [d.name for d in tenant.domains] == ["contoso.example", "mail.contoso.example"]
    assert tenant.domains[1].domain_type == "InternalRelay"  # DomainType 2
    (oc,) = tenant.outbound_connectors  # a single object, not an array
    assert oc.route_all_messages_via_on_premises and oc.smart_hosts == [s.gateway.hostname] == ["gw.contoso.example"]
    assert oc.tls_settings == "DomainValidation" and oc.tls_domain == "gw.contoso.example"
    assert s.certificates["gw-cert"].cn == "mail.contoso.example"  # what the OnPremises connector names

    assert labgen("validate", "contoso.yaml", cwd=tmp_path).returncode == 0
    code, doc = labgen_json("up", "contoso.yaml", "--engine", "local", cwd=tmp_path)
    assert code == 0
    outcomes = {(r["id"], r["to"]): r["outcome"] for r in doc["messages"]}
    assert outcomes == {
        ("from-internet-1", "labgen-test@contoso.example"): "delivered",
        ("from-internet-2", "labgen-test@mail.contoso.example"): "delivered",
    }


def test_unmodellable_values_are_reported_in_the_file_and_on_stderr(tmp_path):
    p = labgen("import", "exo", *SAMPLES, "-o", "s.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "s.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    for prop, value in [
        ("CloudServicesMailEnabled", "true"),
        ("TrustedOrganizations", '["fabrikam.example"]'),
        ("AssociatedAcceptedDomains", '["contoso.example"]'),
        ("ScanAndDropRecipients", '["quarantine-test@contoso.example"]'),
        ("EFTestMode", "true"),
        ("EFUsers", '["alice@contoso.example"]'),
        ("SenderIPAddresses", '"40.92.0.0/28"'),
    ]:
        assert any(f"| {prop} | {value} |" in line for line in header), (prop, header)
        assert any(f"import exo: {prop}:" in line for line in p.stderr.splitlines()), (prop, p.stderr)
    assert any("ConnectorType 1 read as Partner" in line for line in header)
    assert any("DomainType 2 read as InternalRelay" in line for line in header)
    # One stderr line per property kind, not per value.
    kinds = [line.split(":")[2] for line in p.stderr.splitlines()]
    assert len(kinds) == len(set(kinds))


def test_certs_directory_puts_the_matching_certificate_on_the_connector(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs = tmp_path / "certs"
    certs.mkdir()
    for stem, cn in [("other", "gw.elsewhere.example"), ("Public Cert", "mail.contoso.example")]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        (certs / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (certs / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    p = labgen("import", "exo", *SAMPLES, "--certs", certs, "-o", "s.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = load_scenario(str(tmp_path / "s.yaml"))
    assert s.gateway.connectors[0].certificate == "public-cert"
    assert s.certificates["public-cert"].cert_file == "certs/Public Cert.crt"
    assert set(s.certificates) == {"other", "public-cert"}


# ---------------------------------------------------------------- PowerShell's quirks, table-driven


@pytest.mark.parametrize(
    "name, content, encoding, bom",
    [
        ("array, UTF-8", [GATEWAY_IN], "utf-8", False),
        ("single object, not an array", GATEWAY_IN, "utf-8", False),
        ("UTF-8 with a BOM", [GATEWAY_IN], "utf-8", True),
        ("UTF-16 LE with a BOM (Windows PowerShell's Out-File)", [GATEWAY_IN], "utf-16", False),
        ("UTF-16 BE with a BOM", [GATEWAY_IN], "utf-16-be-bom", False),
        ("PowerShell 5.1's {value, Count} array", {"value": [GATEWAY_IN], "Count": 1}, "utf-8", False),
        ("numeric ConnectorType", [{**GATEWAY_IN, "ConnectorType": 2}], "utf-8", False),
        ("booleans as strings", [{**GATEWAY_IN, "Enabled": "True"}], "utf-8", False),
        ("property names in another case", [{k.lower(): v for k, v in GATEWAY_IN.items()}], "utf-8", False),
    ],
)
def test_export_quirks(tmp_path, name, content, encoding, bom):
    text = json.dumps(content, indent=4)
    if encoding == "utf-16-be-bom":
        raw = b"\xfe\xff" + text.encode("utf-16-be")
    else:
        raw = (b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding)  # Python's utf-16 writes a BOM
    (tmp_path / "in.json").write_bytes(raw)
    r = import_exo(tmp_path / "in.json", "in.json", None, None, None, None, tmp_path / "s.yaml")
    data = yaml.safe_load(r.text)
    (tenant,) = data["tenants"].values()
    (conn,) = tenant["inbound_connectors"]
    assert conn["Name"] == "Inbound from gateway" and conn["ConnectorType"] == "OnPremises"
    assert conn["SenderDomains"] == ["*"] and conn["Enabled"] is True


@pytest.mark.parametrize(
    "files, tenant, domains",
    [
        ({}, "contoso", ["contoso.example", "mail.contoso.example"]),  # from the cert name and the smart host
        ({"tenant": "acme"}, "acme", ["contoso.example", "mail.contoso.example"]),
        (
            {"domains": [{"DomainName": "fourthcoffee.example", "DomainType": 0, "Default": True}]},
            "fourthcoffee",
            ["fourthcoffee.example"],
        ),
    ],
)
def test_optional_files_missing(tmp_path, files, tenant, domains):
    outbound = {
        "Name": "Out",
        "ConnectorType": "OnPremises",
        "RecipientDomains": ["*"],
        "SmartHosts": ["gw.contoso.example"],
    }
    data, _ = run_import(tmp_path, [GATEWAY_IN], outbound=outbound, **files)
    assert list(data["tenants"]) == [tenant]
    assert sorted(d["name"] for d in data["tenants"][tenant]["domains"]) == sorted(domains)


def test_only_inbound_connectors(tmp_path):
    p = labgen("import", "exo", "--inbound-connectors", EXO / "inbound-connectors.json", "-o", "s.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert labgen("validate", "s.yaml", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("content", ["", "null", "[]"])
def test_empty_export_is_no_objects(tmp_path, content):
    assert read_export(write(tmp_path / "e.json", content), "e.json") == []


def test_decode_refuses_other_encodings():
    with pytest.raises(InputError, match="not UTF-8 or UTF-16"):
        decode_export("é".encode("latin-1"), "x.json")


# ---------------------------------------------------------------- hostile exports: one line, exit 2


HUGE = 4 << 20


@pytest.mark.parametrize(
    "content, words",
    [
        ([{**GATEWAY_IN, "Name": "Inbound\nfrom gateway"}], ["in.json", "$[0].Name", "printable", "\\x0a"]),
        (GATEWAY_IN | {"Name": "x\x1b[31m"}, ["in.json: $.Name", "\\x1b"]),
        ([GATEWAY_IN, {**GATEWAY_IN, "Name": "y" * 65}], ["$[1].Name", "at most 64"]),
        ([{**GATEWAY_IN, "SenderIPAddresses": ["192.0.2.1", "nope"]}], ["$[0].SenderIPAddresses[1]", "'nope'"]),
        ([{**GATEWAY_IN, "TlsSenderCertificateName": "mail*.contoso.example"}], ["$[0].TlsSenderCertificateName"]),
        ([{**GATEWAY_IN, "ConnectorType": 7}], ["$[0].ConnectorType", "EnumsAsStrings"]),
        ([{**GATEWAY_IN, "ConnectorType": "Hybrid"}], ["$[0].ConnectorType", "OnPremises, Partner"]),
        ([{**GATEWAY_IN, "RequireTls": "yes"}], ["$[0].RequireTls", "true or false"]),
        ([{**GATEWAY_IN, "SenderDomains": [{"a": 1}]}], ["$[0].SenderDomains[0]", "expected a string"]),
        ([1], ["$[0]", "expected an object"]),
        ('{"Name": "a", "Name": "b"}', ["duplicate key 'Name'"]),
        ("[" * 100 + "]" * 100, ["nested deeper"]),
        ('{"Name": NaN}', ["NaN is not JSON"]),
        ("{not json", ["line 1", "not JSON"]),
        (" " * (HUGE + 1), ["larger than", "LABGEN_MAX_EXPORT_BYTES"]),
    ],
)
def test_hostile_exports_are_one_line_and_exit_2(tmp_path, content, words):
    write(tmp_path / "in.json", content)
    p = labgen("import", "exo", "--inbound-connectors", "in.json", "-o", "s.yaml", cwd=tmp_path)
    line = one_line_error(p, 2, *words)
    assert len(line) <= 300
    assert not (tmp_path / "s.yaml").exists()


def test_hostile_values_never_reach_the_comment_block_raw(tmp_path):
    weird = {**GATEWAY_IN, "TrustedOrganizations": ["a\nname: injected", "\x1b]0;t\x07"], "We\nird: x": 1}
    write(tmp_path / "in.json", [weird])
    p = labgen("import", "exo", "--inbound-connectors", "in.json", "-o", "s.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = (tmp_path / "s.yaml").read_text()
    assert "injected" not in json.dumps(yaml.safe_load(text))
    lines = text.splitlines()
    body = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    assert lines[body].startswith("name: exo-") and all(line.startswith("#") for line in lines[:body])
    for out in (text, p.stderr):
        assert "\x1b" not in out and "\x07" not in out
    assert "import exo: We\\x0aird: x: not modelled" in p.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tenant", "Bad Name"], ["--tenant", "tenant name"]),
        (["--certs", "nowhere"], ["nowhere", "not a directory"]),
        (["--outbound-connectors", "missing.json"], ["missing.json", "cannot read"]),
    ],
)
def test_bad_options(tmp_path, args, words):
    write(tmp_path / "in.json", [GATEWAY_IN])
    p = labgen("import", "exo", "--inbound-connectors", "in.json", *args, "-o", "s.yaml", cwd=tmp_path)
    one_line_error(p, 2, *words)


def test_existing_output_needs_force(tmp_path):
    write(tmp_path / "in.json", [GATEWAY_IN])
    (tmp_path / "s.yaml").write_text("mine")
    p = labgen("import", "exo", "--inbound-connectors", "in.json", "-o", "s.yaml", cwd=tmp_path)
    one_line_error(p, 2, "s.yaml", "--force")
    assert (tmp_path / "s.yaml").read_text() == "mine"
    p = labgen("import", "exo", "--inbound-connectors", "in.json", "-o", "s.yaml", "--force", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
