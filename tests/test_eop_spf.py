"""SPF and Enhanced Filtering for Connectors in the fake EOP: behind a gateway EOP judges the
gateway's address (spf=fail) unless the inbound connector skip-lists it (EFSkipLastIP /
EFSkipIPs); then it judges the address the gateway received the message from, taken from the
gateway's Received: header, and stamps X-MS-Exchange-SkipListedInternetSender and
X-MS-Exchange-ExternalOriginalInternetSender (Enhanced Filtering for Connectors)."""

from __future__ import annotations

import copy
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
import yaml
from conftest import REPO, by_id, labgen_json

from labgen.lab.eop import spf
from labgen.lab.eop.rules import Session
from labgen.model.scenario import parse_scenario

BROKEN = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
GW_IP, INTERNET_IP = "198.51.100.10", "198.51.100.100"


@pytest.mark.parametrize(
    "received, expected",
    [
        ("from sender.internet.test (unknown [198.51.100.100])\n\tby gw (Postfix) with ESMTPS id X",
         ("198.51.100.100", "sender.internet.test")),
        ("from mx.a.example (mx.a.example [192.0.2.7]) by gw with ESMTP id 1; date", ("192.0.2.7", "mx.a.example")),
        ("from helo ([203.0.113.9]) by gw", ("203.0.113.9", "helo")),
        ("by gw with local id 1", None),
        ("from helo (unknown [not-an-ip]) by gw", None),
    ],
    ids=["postfix", "named-client", "bare-brackets", "no-from", "garbage-address"],
)  # fmt: skip
def test_previous_hop_from_the_gateways_received_header(received, expected):
    data = f"Received: {received}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    assert spf.previous_hop(data) == expected


def test_previous_hop_takes_the_topmost_received_header():
    data = (
        b"Received: from last.example (unknown [192.0.2.2]) by gw\r\n"
        b"Received: from first.example (unknown [192.0.2.1]) by last\r\n\r\n"
    )
    assert spf.previous_hop(data) == ("192.0.2.2", "last.example")


def _scenario(**connector):
    data = copy.deepcopy(BROKEN)
    data["eop"] = {"profile": "current"}
    # contoso's SPF as Microsoft's guidance writes it for a cloud domain: Exchange Online only.
    data["tenants"]["contoso"]["domains"][0].pop("spf", None)
    data["tenants"]["contoso"]["inbound_connectors"] = [
        {"Name": "From gateway", "ConnectorType": "Partner", "SenderIPAddresses": [f"{GW_IP}/32"], **connector}
    ]
    return data


@pytest.mark.parametrize(
    "connector, source, skipped",
    [
        ({}, GW_IP, False),
        ({"EFSkipLastIP": True}, GW_IP, True),
        ({"EFSkipLastIP": True}, INTERNET_IP, False),  # the connector does not name this source
        ({"EFSkipIPs": [f"{GW_IP}/32"]}, GW_IP, True),
        ({"EFSkipIPs": ["198.51.100.0/28"]}, GW_IP, True),
        ({"EFSkipIPs": ["198.51.100.128/25"]}, GW_IP, False),
        ({"EFSkipLastIP": True, "Enabled": False}, GW_IP, False),
    ],
    ids=[
        "no-ef",
        "skip-last-ip",
        "skip-last-ip-other-source",
        "skip-ips",
        "skip-ips-range",
        "skip-ips-miss",
        "disabled",
    ],
)
def test_skip_listed(connector, source, skipped):
    s = parse_scenario(_scenario(**connector), "t.yaml")
    assert spf.skip_listed(s, Session(source_ip=source), "contoso") is skipped


def test_headers_say_what_was_judged():
    v = spf.SpfVerdict("pass", "198.51.100.100", "northwind.example", skipped=("198.51.100.10", "gw.contoso.example"))
    assert v.headers("sender.internet.test") == [
        "Authentication-Results: spf=pass (sender IP is 198.51.100.100) smtp.mailfrom=northwind.example;",
        "Received-SPF: Pass (protection.outlook.test: domain of northwind.example designates 198.51.100.100 "
        "as permitted sender)",
        "X-MS-Exchange-SkipListedInternetSender: ip=[198.51.100.100];domain=sender.internet.test",
        "X-MS-Exchange-ExternalOriginalInternetSender: ip=[198.51.100.100];domain=sender.internet.test",
    ]


def _run(tmp_path: Path, engine: str, connector: dict, test_labs=None) -> dict:
    data = _scenario(**connector)
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "ef.yaml"
    data["name"] = "ef"
    args = ["up", str(src), "--engine", engine]
    if test_labs is not None:
        src.write_text(yaml.safe_dump(data, sort_keys=False))
        lab = test_labs.new(str(src), "ef")
        src, args = lab.scenario, ["up", str(lab.scenario), "--engine", engine, "--subnet", lab.subnet]
    else:
        src.write_text(yaml.safe_dump(data, sort_keys=False))
    code, doc = labgen_json(*args, cwd=tmp_path)
    assert doc["summary"]["unaccounted"] == 0, doc
    return doc


def _delivered(doc: dict) -> tuple[dict, Message]:
    m = by_id(doc)[("from-internet", "bob@contoso.example")]
    hop = next(h for h in m["hops"] if h["event"] == "delivered")
    eml = message_from_bytes((Path(doc["lab_dir"]) / "run" / hop["file"]).read_bytes())
    return hop, eml


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_enhanced_filtering_end_to_end(request, tmp_path, engine):
    """Internet mail for contoso through the gateway: without Enhanced Filtering EOP judges the
    gateway's address against northwind's SPF (fail); with EFSkipLastIP it judges the internet
    sender's (pass) and says which hop it skipped. The gateway is real Postfix on Docker."""
    labs = request.getfixturevalue("test_labs") if engine == "docker" else None
    plain = _run(tmp_path / "plain", engine, {}, labs)
    hop, eml = _delivered(plain)
    ip = hop["spf"].split("sender IP is ")[1].rstrip(")")
    assert hop["spf"].startswith("fail")
    assert eml["Authentication-Results"].startswith(f"spf=fail (sender IP is {ip}) smtp.mailfrom=northwind.example")
    assert eml["X-MS-Exchange-SkipListedInternetSender"] is None

    ef = _run(tmp_path / "ef", engine, {"EFSkipLastIP": True}, labs)
    hop, eml = _delivered(ef)
    original = hop["spf"].split("sender IP is ")[1].rstrip(")")
    assert hop["spf"].startswith("pass") and original != ip
    # Both carry the true source (Enhanced Filtering for Connectors; real headers look the same).
    for name in ("X-MS-Exchange-SkipListedInternetSender", "X-MS-Exchange-ExternalOriginalInternetSender"):
        assert eml[name] == f"ip=[{original}];domain=sender.internet.test"

    # Mail from contoso's own users, handed to the gateway by Exchange Online: contoso's SPF
    # (Microsoft's include only) fails for the gateway's address, and passes for Exchange
    # Online's once the gateway is skip-listed.
    def internal(doc):
        m = by_id(doc)[("internal-routing", "bob@contoso.mail.onmicrosoft.test")]
        return next(h for h in m["hops"] if h["event"] == "delivered")["spf"]

    assert internal(plain).startswith(f"fail (sender IP is {ip})")
    assert internal(ef).startswith("pass")
