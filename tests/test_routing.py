"""The gateway's routing: which send connector takes a domain (most specific address space wins),
what it may relay, and the Postfix transport map that must route the same way."""

from __future__ import annotations

import copy

import pytest
import yaml

from labgen.engines.postfix import transport_map, transports
from labgen.lab.routing import may_relay, pick_connector
from labgen.model.plan import make_plan
from labgen.model.scenario import SendConnector, parse_scenario
from labgen.resources import resource_dir

BROKEN = yaml.safe_load((resource_dir("scenarios") / "broken.yaml").read_text())


def conn(name, *spaces, smarthost=None):
    return SendConnector(name=name, address_space=list(spaces), route={"smarthost": smarthost} if smarthost else "mx")


def picked(domain: str, connectors: list[SendConnector]) -> SendConnector:
    """The connector pick_connector chooses, where the test expects one to take the domain."""
    connector = pick_connector(domain, connectors)
    assert connector is not None, f"no connector takes {domain}"
    return connector


def scenario_with(connectors=None, **gateway):
    data = copy.deepcopy(BROKEN)
    if connectors is not None:
        data["gateway"]["connectors"] = connectors
    data["gateway"].update(gateway)
    return parse_scenario(data, "test.yaml")


# ---------------------------------------------------------------- pick_connector

ANY = conn("Any", "*")
PARENT = conn("Parent", "*.contoso.example")
EXACT = conn("Exact", "gw.contoso.example")
DEEP = conn("Deep", "*.eu.contoso.example")
DEEPEST = conn("Deepest", "*.x.eu.contoso.example")
FAB_WILD = conn("Fabrikam wildcard", "*.fabrikam.example")
MULTI = conn("Multi", "fabrikam.example", "contoso.mail.onmicrosoft.test")


@pytest.mark.parametrize(
    "domain, connectors, expected",
    [
        ("gw.contoso.example", [ANY, PARENT, EXACT], "Exact"),
        ("gw.contoso.example", [EXACT, PARENT, ANY], "Exact"),
        ("mail.contoso.example", [ANY, PARENT, EXACT], "Parent"),
        ("contoso.example", [ANY, PARENT, EXACT], "Parent"),
        ("a.b.contoso.example", [ANY, PARENT, EXACT], "Parent"),
        ("evilcontoso.example", [ANY, PARENT, EXACT], "Any"),
        ("fabrikam.example", [ANY, PARENT, EXACT], "Any"),
        ("a.eu.contoso.example", [PARENT, DEEP], "Deep"),
        ("a.eu.contoso.example", [DEEP, PARENT], "Deep"),
        ("y.x.eu.contoso.example", [PARENT, DEEPEST, DEEP, ANY], "Deepest"),
        ("eu.contoso.example", [DEEP, PARENT], "Deep"),
        ("us.contoso.example", [DEEP, PARENT], "Parent"),
        ("contoso.mail.onmicrosoft.test", [ANY, PARENT, MULTI], "Multi"),
        ("fabrikam.example", [FAB_WILD, MULTI], "Multi"),
        ("a.fabrikam.example", [FAB_WILD, MULTI], "Fabrikam wildcard"),
        ("GW.Contoso.EXAMPLE", [ANY, PARENT, EXACT], "Exact"),
        ("Mail.CONTOSO.example", [ANY, PARENT], "Parent"),
        ("northwind.test", [PARENT, EXACT, DEEP], None),
    ],
    ids=[
        "exact-beats-parent-and-star",
        "exact-beats-regardless-of-order",
        "parent-wildcard-subdomain",
        "parent-wildcard-covers-domain-itself",
        "parent-wildcard-deep-subdomain",
        "lookalike-falls-to-star",
        "other-domain-falls-to-star",
        "longer-wildcard-beats-shorter",
        "longer-wildcard-beats-shorter-reversed",
        "longest-of-three-wildcards",
        "deep-wildcard-covers-its-apex",
        "sibling-of-deep-takes-parent",
        "second-space-of-a-connector",
        "exact-in-multi-beats-wildcard-apex",
        "wildcard-subdomain-beats-nothing",
        "case-insensitive-exact",
        "case-insensitive-wildcard",
        "no-match-without-star",
    ],
)
def test_pick_connector(domain, connectors, expected):
    picked = pick_connector(domain, connectors)
    assert (picked.name if picked else None) == expected


def test_pick_connector_broken_scenario():
    s = scenario_with()
    names = {
        d: picked(d, s.gateway.connectors).name
        for d in ("fabrikam.example", "northwind.example", "contoso.example", "contoso.mail.onmicrosoft.test")
    }
    assert names == {
        "fabrikam.example": "Internet",
        "northwind.example": "Internet",
        "contoso.example": "Office 365",
        "contoso.mail.onmicrosoft.test": "Office 365",
    }


# ---------------------------------------------------------------- may_relay


@pytest.mark.parametrize(
    "trusted, rcpt, expected",
    [
        (True, "carol@fabrikam.example", True),
        (True, "dave@northwind.example", True),
        (False, "bob@contoso.example", True),
        (False, "Bob@CONTOSO.Example", True),
        (False, "carol@fabrikam.example", False),
        (False, "dave@northwind.example", False),
        (False, "bob@contoso.mail.onmicrosoft.test", False),
        (False, "x@sub.contoso.example", False),
    ],
    ids=[
        "trusted-to-other-tenant",
        "trusted-to-internet",
        "untrusted-to-gateway-mx-domain",
        "untrusted-case-insensitive",
        "untrusted-to-eop-mx-domain",
        "untrusted-to-internet",
        "untrusted-to-routing-domain",
        "untrusted-to-subdomain",
    ],
)
def test_may_relay(trusted, rcpt, expected):
    assert may_relay(scenario_with(), trusted, rcpt) is expected


# ---------------------------------------------------------------- transport_map


def parse_map(text: str) -> list[tuple[str, str]]:
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split()
            rows.append((key, value))
    return rows


def postfix_lookup(rows: list[tuple[str, str]], domain: str):
    """transport(5) for a domain: the domain, then '.parent' from the most specific up, then '*'.
    A texthash table keeps the first of duplicate keys."""
    table: dict[str, str] = {}
    for key, value in rows:
        table.setdefault(key, value)
    labels = domain.lower().split(".")
    for key in [domain.lower()] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))] + ["*"]:
        if key in table:
            return table[key]
    return None


def test_transport_map_broken_scenario():
    plan = make_plan(parse_scenario(copy.deepcopy(BROKEN), "broken.yaml"), "docker")
    text = transport_map(plan)
    assert text.endswith("\n") and text.startswith("#")
    assert sorted(parse_map(text)) == sorted(
        [
            ("*", "conn0:"),
            ("contoso.example", "conn1:[contoso.mail.protection.outlook.test]"),
            ("contoso.mail.onmicrosoft.test", "conn1:[contoso.mail.protection.outlook.test]"),
        ]
    )


PARTNERS = {
    "name": "Partners",
    "address_space": ["*.fabrikam.example"],
    "route": {"smarthost": "relay.fabrikam.example"},
    "certificate": "gw-selfsigned",
}
SUBS = {"name": "Subsidiaries", "address_space": ["*.eu.fabrikam.example", "tailspin.example"]}


def _plan(connectors):
    return make_plan(scenario_with(connectors=connectors), "docker")


def test_transport_map_wildcards_exact_star_and_smarthost():
    plan = _plan(BROKEN["gateway"]["connectors"] + [PARTNERS, SUBS])
    assert [t.name for t in transports(plan)] == ["conn0", "conn1", "conn2", "conn3"]
    assert sorted(parse_map(transport_map(plan))) == sorted(
        [
            ("*", "conn0:"),
            ("contoso.example", "conn1:[contoso.mail.protection.outlook.test]"),
            ("contoso.mail.onmicrosoft.test", "conn1:[contoso.mail.protection.outlook.test]"),
            ("fabrikam.example", "conn2:[relay.fabrikam.example]"),
            (".fabrikam.example", "conn2:[relay.fabrikam.example]"),
            ("eu.fabrikam.example", "conn3:"),
            (".eu.fabrikam.example", "conn3:"),
            ("tailspin.example", "conn3:"),
        ]
    )


@pytest.mark.parametrize(
    "domain",
    [
        "fabrikam.example",
        "a.fabrikam.example",
        "eu.fabrikam.example",
        "x.eu.fabrikam.example",
        "evilfabrikam.example",
        "tailspin.example",
        "sub.tailspin.example",
        "contoso.example",
        "contoso.mail.onmicrosoft.test",
        "northwind.example",
    ],
)
def test_transport_map_routes_like_pick_connector(domain):
    plan = _plan(BROKEN["gateway"]["connectors"] + [PARTNERS, SUBS])
    by_name = {t.connector.name: t.name for t in transports(plan)}
    expected = by_name[picked(domain, plan.scenario.gateway.connectors).name]
    assert postfix_lookup(parse_map(transport_map(plan)), domain).split(":")[0] == expected


def test_transport_map_exact_space_beats_wildcard_apex():
    wild = {"name": "Wild", "address_space": ["*.fabrikam.example"], "route": {"smarthost": "relay.fabrikam.example"}}
    exact = {"name": "Exact", "address_space": ["fabrikam.example"]}
    plan = _plan([BROKEN["gateway"]["connectors"][0], wild, exact])
    rows = parse_map(transport_map(plan))
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), f"duplicate keys in the transport map: {keys}"
    assert picked("fabrikam.example", plan.scenario.gateway.connectors).name == "Exact"
    assert postfix_lookup(rows, "fabrikam.example") == "conn2:"
