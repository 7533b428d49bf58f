"""Exchange Online's outbound connectors end to end, on both engines: partial centralized mail
flow by RecipientDomains, the TlsSettings check on the leg to the gateway (450 4.4.317
SubjectMismatch, message deferred), an InternalRelay domain's unknown recipient relayed by EOP
to the gateway and refused there (EOP's relay bounces: rejected), the headers EOP stamps and
the bracketed diagnostic on its rejections. The scenario carries its own expectations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, by_id, labgen_json

SCENARIO = {
    "name": "relay",
    "lab": {"subnet": "192.0.2.0/24"},
    "eop": {"profile": "current"},
    "tenants": {
        "contoso": {
            "domains": [
                {"name": "contoso.example", "mx": "eop", "DomainType": "InternalRelay"},
                {"name": "mail.contoso.example", "mx": "gateway"},
            ],
            "mailboxes": ["alice@contoso.example", "bob@contoso.example"],
            "inbound_connectors": [
                {
                    "Name": "From gateway",
                    "ConnectorType": "OnPremises",
                    "TlsSenderCertificateName": "mail.contoso.example",
                }
            ],
            "outbound_connectors": [
                {
                    "Name": "Hybrid",
                    "RecipientDomains": ["contoso.example"],
                    "SmartHosts": ["gw.contoso.example"],
                    "TlsSettings": "DomainValidation",
                    "TlsDomain": "gw.contoso.example",
                },
                {
                    "Name": "Fabrikam via gateway",
                    "RecipientDomains": ["fabrikam.example"],
                    "SmartHosts": ["gw.contoso.example"],
                    "TlsSettings": "DomainValidation",
                    "TlsDomain": "wrong.contoso.example",
                },
            ],
        },
        "fabrikam": {"domains": [{"name": "fabrikam.example"}], "mailboxes": ["carol@fabrikam.example"]},
    },
    "internet": {"domains": ["northwind.example"]},
    "certificates": {"gw-public": {"cn": "mail.contoso.example", "issuer": "public"}},
    "gateway": {
        "hostname": "gw.contoso.example",
        "connectors": [
            {
                "name": "Office 365",
                "address_space": ["*"],
                "route": {"smarthost": "contoso-example.mail.protection.outlook.test"},
                "tls": "secure",
                "certificate": "gw-public",
                "helo": "mail.contoso.example",
            }
        ],
    },
    "traffic": [
        # The connector for fabrikam.example wants the gateway to be wrong.contoso.example.
        {"id": "to-fabrikam", "from": "alice@contoso.example", "to": ["carol@fabrikam.example"], "expect": "deferred"},
        # No connector takes northwind.example: Exchange Online delivers by MX.
        {"id": "to-internet", "from": "alice@contoso.example", "to": ["dave@northwind.example"], "expect": "delivered"},
        # Not a contoso mailbox: InternalRelay sends it on by the Hybrid connector; the gateway
        # validates recipients and refuses it.
        {"id": "unknown", "from": "erin@northwind.example", "to": ["zed@contoso.example"], "expect": "rejected"},
        {"id": "inbound", "from": "erin@northwind.example", "to": ["bob@contoso.example"], "expect": "delivered"},
    ],
    "deadline_s": 20,
}


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_outbound_connectors_end_to_end(request, tmp_path, engine):
    src = tmp_path / "relay.yaml"
    src.write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    args = ["up", str(src), "--engine", engine]
    if engine == "docker":
        lab = request.getfixturevalue("test_labs").new(str(src), "relay")
        args = ["up", str(lab.scenario), "--engine", engine, "--subnet", lab.subnet]
    code, doc = labgen_json(*args, cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    m = by_id(doc)

    fab = m[("to-fabrikam", "carol@fabrikam.example")]
    sub = next(h for h in fab["hops"] if h["service"] == "traffic")
    assert sub["entry"] == "gateway"
    assert sub["reply"].startswith(
        "450 4.4.317 Cannot connect to remote server [Message=SubjectMismatch Expected Subject: "
        "wrong.contoso.example. Presented Subject: CN=gw.contoso.example]"
    )
    internet = m[("to-internet", "dave@northwind.example")]
    assert next(h for h in internet["hops"] if h["service"] == "traffic")["entry"] == "mx"

    unknown = m[("unknown", "zed@contoso.example")]
    eop = [h for h in unknown["hops"] if h["service"] == "eop"]
    assert [h["event"] for h in eop] == ["rcpt", "relay_bounced"]
    assert eop[1]["connector"] == "Hybrid" and eop[1]["tls"]
    assert (
        "550 5.1.1 <zed@contoso.example>: Recipient address rejected: User unknown in relay recipient table"
        in (eop[1]["reply"])
    )
    assert [(t["tenant"], t["status"]) for t in unknown["trace"]] == [("contoso", "Relayed")]

    inbound = m[("inbound", "bob@contoso.example")]
    delivered = next(h for h in inbound["hops"] if h["event"] == "delivered")
    assert delivered["spf"].startswith("pass")
    eml = (Path(doc["lab_dir"]) / "run" / delivered["file"]).read_text()
    for header in (
        "X-MS-Exchange-Organization-AuthAs: Anonymous",
        "X-MS-Exchange-CrossTenant-AuthAs: Anonymous",
        "X-OriginatorOrg: contoso.example",
        "Authentication-Results: spf=pass",
    ):
        assert header in eml, header
    found = re.search(r"X-MS-Exchange-CrossTenant-Id: ([0-9a-f-]{36})", eml)
    assert found, eml
    guid = found.group(1)
    assert f"X-EOPTenantAttributedMessage: {guid}:0" in eml


def test_eop_rejections_end_with_the_bracketed_diagnostic(tmp_path):
    """EOP's 4xx/5xx replies end like real ones: [<server>.<region>.prod.outlook... <ISO time> <id>]."""
    code, doc = labgen_json("up", "broken", "--engine", "local", "--profile", "current", cwd=tmp_path)
    m = by_id(doc)[("from-internet", "bob@contoso.example")]
    rcpt = next(h for h in m["hops"] if h["service"] == "eop" and h["event"] == "rcpt")
    assert re.fullmatch(
        r"550 5\.7\.51 TenantInboundAttribution; .* RestrictDomainsToCertificate set "
        r"\[DM6PR12MB4011\.namprd12\.prod\.outlook\.test \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [0-9A-F]{16}\]",
        rcpt["reply"],
    )


def test_gateway_helo_per_connector_reaches_eop(tmp_path):
    """A send connector's own HELO is what EOP records for the session (Postfix smtp_helo_name)."""
    data = yaml.safe_load((REPO / "examples" / "recommended-topology.yaml").read_text())
    data["gateway"]["connectors"][0]["helo"] = "mail.contoso.example"
    src = tmp_path / "helo.yaml"
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    code, doc = labgen_json("up", str(src), "--engine", "local", cwd=tmp_path)
    eml_hop = next(h for h in by_id(doc)[("from-internet", "bob@contoso.example")]["hops"] if h["event"] == "delivered")
    eml = (Path(doc["lab_dir"]) / "run" / eml_hop["file"]).read_text()
    assert eml.startswith("Received: from mail.contoso.example (")
