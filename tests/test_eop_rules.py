"""The fake EOP's rules as plain functions (DESIGN.md §1): certificate-name matching, tenant
attribution (certificate, then source IP, then recipient domain) and the per-recipient decision."""

from __future__ import annotations

import copy

import pytest
import yaml

from labgen.lab.eop.rules import (
    REPLY_DBEB,
    REPLY_RCPT_OK,
    REPLY_RELAY_DENIED,
    REPLY_TLS_REQUIRED,
    Attribution,
    Session,
    attribute,
    decide,
    name_matches,
)
from labgen.model.scenario import parse_scenario
from labgen.resources import resource_dir

BROKEN = yaml.safe_load((resource_dir("scenarios") / "broken.yaml").read_text())

GW_IP = "198.51.100.10"  # the gateway's default address in the broken scenario's subnet
INTERNET_IP = "198.51.100.100"  # the traffic host speaking as an internet sender


def scenario(*patches):
    """The broken scenario, with each patch(dict) applied in turn."""
    data = copy.deepcopy(BROKEN)
    for patch in patches:
        patch(data)
    return parse_scenario(data, "test.yaml")


def eop(**values):
    return lambda d: d.setdefault("eop", {}).update(values)


def contoso_connector(**values):
    return lambda d: d["tenants"]["contoso"]["inbound_connectors"][0].update(values)


def fabrikam_connectors(*connectors):
    return lambda d: d["tenants"]["fabrikam"].__setitem__("inbound_connectors", list(connectors))


def tls(*names, trusted=False, ip=GW_IP):
    return Session(source_ip=ip, tls=True, cert_names=list(names), cert_trusted=trusted)


def plain(ip=INTERNET_IP):
    return Session(source_ip=ip, tls=False)


# ---------------------------------------------------------------- name_matches


@pytest.mark.parametrize(
    "connector_name, cert_name, expected",
    [
        ("gw.contoso.example", "gw.contoso.example", True),
        ("gw.contoso.example", "mail.contoso.example", False),
        ("gw.contoso.example", "contoso.example", False),
        ("contoso.example", "gw.contoso.example", False),
        ("*.contoso.example", "contoso.example", True),
        ("*.contoso.example", "gw.contoso.example", True),
        ("*.contoso.example", "a.b.contoso.example", True),
        ("*.contoso.example", "evilcontoso.example", False),
        ("*.contoso.example", "mail.evilcontoso.example", False),
        ("*.contoso.example", "contoso.example.evil.test", False),
        ("*.contoso.example", "fabrikam.example", False),
        ("*.contoso.example", "*.contoso.example", True),
        ("*.contoso.example", "*.example", False),
        ("gw.contoso.example", "*.contoso.example", False),
        ("GW.Contoso.Example", "gw.contoso.EXAMPLE", True),
        ("*.CONTOSO.example", "Mail.Contoso.Example", True),
    ],
    ids=[
        "exact",
        "exact-other-host",
        "exact-vs-parent",
        "exact-vs-child",
        "wildcard-covers-domain-itself",
        "wildcard-covers-subdomain",
        "wildcard-covers-deep-subdomain",
        "wildcard-not-suffix-lookalike",
        "wildcard-not-lookalike-subdomain",
        "wildcard-not-prefix",
        "wildcard-other-domain",
        "wildcard-cert-same-wildcard",
        "wildcard-cert-broader",
        "plain-name-vs-wildcard-cert",
        "case-insensitive-exact",
        "case-insensitive-wildcard",
    ],
)
def test_name_matches(connector_name, cert_name, expected):
    assert name_matches(connector_name, cert_name) is expected


# ---------------------------------------------------------------- attribute


def _attribution_scenario():
    """contoso: OnPremises by certificate (*.contoso.example) and by IP; fabrikam: OnPremises by an IP
    range that shares 198.51.100.200 with contoso; tailspin: no connectors, plus a Partner connector
    whose certificate name must never attribute."""

    def patch(d):
        d["tenants"]["contoso"]["inbound_connectors"] = [
            {"Name": "Contoso cert", "ConnectorType": "OnPremises", "TlsSenderCertificateName": "*.contoso.example"},
            {
                "Name": "Contoso IP",
                "ConnectorType": "OnPremises",
                "SenderIPAddresses": [f"{GW_IP}/32", "198.51.100.200"],
            },
        ]
        d["tenants"]["fabrikam"]["inbound_connectors"] = [
            {"Name": "Fabrikam IP", "ConnectorType": "OnPremises", "SenderIPAddresses": ["198.51.100.192/26"]},
        ]
        d["tenants"]["tailspin"] = {
            "domains": [{"name": "tailspin.example"}],
            "mailboxes": ["tom@tailspin.example"],
            "inbound_connectors": [
                {
                    "Name": "Partner northwind",
                    "ConnectorType": "Partner",
                    "TlsSenderCertificateName": "mx.northwind.example",
                }
            ],
        }

    return scenario(patch)


ATTRIBUTION_CASES = [
    # id, session, mail_from, rcpt, (tenant, by, connector)
    (
        "cert-cn",
        tls("gw.contoso.example", ip="198.51.100.77"),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("contoso", "certificate", "Contoso cert"),
    ),
    (
        "cert-san",
        tls("mta.northwind.example", "gw.contoso.example", ip="198.51.100.77"),
        "x@northwind.example",
        "carol@fabrikam.example",
        ("contoso", "certificate", "Contoso cert"),
    ),
    (
        "cert-wildcard-covers-apex",
        tls("contoso.example", ip="198.51.100.77"),
        "",
        "carol@fabrikam.example",
        ("contoso", "certificate", "Contoso cert"),
    ),
    (
        "cert-beats-ip",
        tls("gw.contoso.example", ip="198.51.100.230"),
        "alice@fabrikam.example",
        "carol@fabrikam.example",
        ("contoso", "certificate", "Contoso cert"),
    ),
    (
        "cert-without-tls-does-not-attribute",
        Session(source_ip="198.51.100.77", tls=False, cert_names=["gw.contoso.example"]),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("fabrikam", "recipient", None),
    ),
    (
        "tls-without-cert-falls-to-ip",
        tls(ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("contoso", "ip", "Contoso IP"),
    ),
    (
        "non-matching-cert-falls-to-ip",
        tls("mta.northwind.example", ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("contoso", "ip", "Contoso IP"),
    ),
    (
        "lookalike-cert-falls-to-recipient",
        tls("evilcontoso.example", ip="198.51.100.77"),
        "x@northwind.example",
        "carol@fabrikam.example",
        ("fabrikam", "recipient", None),
    ),
    (
        "ip-exact-/32",
        plain(ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("contoso", "ip", "Contoso IP"),
    ),
    (
        "ip-in-cidr",
        plain(ip="198.51.100.230"),
        "carol@fabrikam.example",
        "bob@contoso.example",
        ("fabrikam", "ip", "Fabrikam IP"),
    ),
    # Microsoft: the sender domain must be an accepted domain of the connector's tenant.
    (
        "ip-match-foreign-sender-falls-to-recipient",
        plain(ip="198.51.100.230"),
        "x@northwind.example",
        "bob@contoso.example",
        ("contoso", "recipient", None),
    ),
    (
        "ip-match-null-sender-falls-to-recipient",
        plain(ip=GW_IP),
        "",
        "bob@contoso.example",
        ("contoso", "recipient", None),
    ),
    (
        "ip-just-outside-cidr",
        plain(ip="198.51.100.191"),
        "x@northwind.example",
        "bob@contoso.example",
        ("contoso", "recipient", None),
    ),
    (
        "shared-ip-mail-from-fabrikam",
        plain(ip="198.51.100.200"),
        "carol@fabrikam.example",
        "bob@contoso.example",
        ("fabrikam", "ip", "Fabrikam IP"),
    ),
    (
        "shared-ip-mail-from-contoso",
        plain(ip="198.51.100.200"),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("contoso", "ip", "Contoso IP"),
    ),
    (
        "shared-ip-mail-from-case-insensitive",
        plain(ip="198.51.100.200"),
        "Carol@FABRIKAM.Example",
        "bob@contoso.example",
        ("fabrikam", "ip", "Fabrikam IP"),
    ),
    (
        "no-connector-recipient-domain",
        plain(),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("fabrikam", "recipient", None),
    ),
    (
        "no-connector-recipient-case-insensitive",
        plain(),
        "erin@northwind.example",
        "Carol@FABRIKAM.example",
        ("fabrikam", "recipient", None),
    ),
    (
        "no-connector-routing-domain",
        plain(),
        "erin@northwind.example",
        "bob@contoso.mail.onmicrosoft.test",
        ("contoso", "recipient", None),
    ),
    (
        "partner-cert-name-does-not-attribute",
        tls("mx.northwind.example", ip="198.51.100.77"),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("fabrikam", "recipient", None),
    ),
    ("nothing-matches", plain(), "erin@northwind.example", "dave@northwind.example", (None, None, None)),
]


@pytest.mark.parametrize(
    "session, mail_from, rcpt, expected", [c[1:] for c in ATTRIBUTION_CASES], ids=[c[0] for c in ATTRIBUTION_CASES]
)
def test_attribute(session, mail_from, rcpt, expected):
    att = attribute(_attribution_scenario(), session, mail_from, rcpt)
    assert (att.tenant, att.by, att.connector) == expected
    assert att.detail  # every attribution says why
    assert att.as_dict() == {"tenant": att.tenant, "by": att.by, "connector": att.connector, "detail": att.detail}


def test_shared_ip_with_foreign_sender_is_attributed_by_recipient():
    """Neither tenant's accepted domains hold the sender: the IP alone attributes to nobody."""
    att = attribute(
        _attribution_scenario(), plain(ip="198.51.100.200"), "erin@northwind.example", "carol@fabrikam.example"
    )
    assert (att.by, att.tenant) == ("recipient", "fabrikam")


def test_certificate_detail_names_the_matching_names():
    att = attribute(
        _attribution_scenario(),
        tls("mta.northwind.example", "gw.contoso.example"),
        "alice@contoso.example",
        "carol@fabrikam.example",
    )
    assert "gw.contoso.example" in att.detail and "*.contoso.example" in att.detail


# ---------------------------------------------------------------- decide

IP_CONNECTOR = contoso_connector(SenderIPAddresses=[f"{GW_IP}/32"])
CONTOSO_CERT = tls("gw.contoso.example")  # the broken scenario's self-signed gateway certificate

# Partner connectors on fabrikam for mail from northwind.example.
PARTNER_TLS = fabrikam_connectors(
    {"Name": "From northwind", "ConnectorType": "Partner", "SenderDomains": ["northwind.example"], "RequireTls": True}
)
PARTNER_CERT = fabrikam_connectors(
    {
        "Name": "From northwind",
        "ConnectorType": "Partner",
        "SenderDomains": ["northwind.example"],
        "TlsSenderCertificateName": "mx.northwind.example",
        "RestrictDomainsToCertificate": True,
    }
)
# Without RestrictDomainsToCertificate a Partner connector's certificate restricts nothing.
PARTNER_CERT_UNRESTRICTED = fabrikam_connectors(
    {
        "Name": "From northwind",
        "ConnectorType": "Partner",
        "SenderDomains": ["northwind.example"],
        "TlsSenderCertificateName": "mx.northwind.example",
    }
)
PARTNER_IP = fabrikam_connectors(
    {
        "Name": "From northwind",
        "ConnectorType": "Partner",
        "SenderDomains": ["northwind.example"],
        "SenderIPAddresses": ["203.0.113.0/24"],
        "RestrictDomainsToIPAddresses": True,
    }
)
PARTNER_IP_UNRESTRICTED = fabrikam_connectors(
    {
        "Name": "From northwind",
        "ConnectorType": "Partner",
        "SenderDomains": ["northwind.example"],
        "SenderIPAddresses": ["203.0.113.0/24"],
    }
)
PARTNER_ANY = fabrikam_connectors(
    {"Name": "From anyone", "ConnectorType": "Partner", "SenderDomains": ["*"], "RequireTls": True}
)
PARTNER_SUBDOMAINS = fabrikam_connectors(
    {
        "Name": "From northwind subdomains",
        "ConnectorType": "Partner",
        "SenderDomains": ["*.northwind.example"],
        "RequireTls": True,
    }
)

DECIDE_CASES = [
    # id, patches, session, mail_from, rcpt, (action, reply prefix, mailbox, tenant)
    (
        "same-tenant-by-cert-delivers",
        [],
        CONTOSO_CERT,
        "alice@contoso.example",
        "bob@contoso.example",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "routing-domain-maps-to-mailbox",
        [],
        CONTOSO_CERT,
        "alice@contoso.example",
        "bob@contoso.mail.onmicrosoft.test",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "routing-domain-case-insensitive",
        [],
        CONTOSO_CERT,
        "alice@contoso.example",
        "BOB@Contoso.Mail.OnMicrosoft.Test",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "mailbox-case-insensitive",
        [],
        plain(),
        "erin@northwind.example",
        "Carol@Fabrikam.Example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "internet-sender-delivers",
        [],
        plain(),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "cross-tenant-cert-discard",
        [eop(misattribution="discard")],
        CONTOSO_CERT,
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("discard", "250 ", None, "fabrikam"),
    ),
    (
        "cross-tenant-cert-reject",
        [eop(misattribution="reject")],
        CONTOSO_CERT,
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.64", None, "fabrikam"),
    ),
    (
        "cross-tenant-ip-discard",
        [IP_CONNECTOR, eop(misattribution="discard")],
        tls(ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("discard", "250 ", None, "fabrikam"),
    ),
    (
        "cross-tenant-ip-reject",
        [IP_CONNECTOR, eop(misattribution="reject")],
        tls(ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.64", None, "fabrikam"),
    ),
    (
        "require-tls-without-tls",
        [IP_CONNECTOR],
        plain(ip=GW_IP),
        "alice@contoso.example",
        "bob@contoso.example",
        ("reject", "451 5.7.3", None, "contoso"),
    ),
    (
        "require-tls-checked-before-misattribution",
        [IP_CONNECTOR],
        plain(ip=GW_IP),
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("reject", "451 5.7.3", None, "fabrikam"),
    ),
    (
        "require-tls-not-set",
        [IP_CONNECTOR, contoso_connector(RequireTls=False)],
        plain(ip=GW_IP),
        "alice@contoso.example",
        "bob@contoso.example",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "untrusted-cert-rejected-when-required",
        [eop(require_trusted_certificate=True)],
        CONTOSO_CERT,
        "alice@contoso.example",
        "bob@contoso.example",
        ("reject", "550 5.7.64", None, "contoso"),
    ),
    (
        "untrusted-cert-rejected-before-discard",
        [eop(require_trusted_certificate=True)],
        CONTOSO_CERT,
        "alice@contoso.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.64", None, "fabrikam"),
    ),
    (
        "trusted-cert-accepted-when-required",
        [eop(require_trusted_certificate=True)],
        tls("gw.contoso.example", trusted=True),
        "alice@contoso.example",
        "bob@contoso.example",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "untrusted-cert-fine-when-not-required",
        [eop(require_trusted_certificate=False)],
        CONTOSO_CERT,
        "alice@contoso.example",
        "bob@contoso.example",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "trust-rule-ignores-ip-attribution",
        [IP_CONNECTOR, contoso_connector(TlsSenderCertificateName=None), eop(require_trusted_certificate=True)],
        tls("mta.northwind.example", ip=GW_IP),
        "alice@contoso.example",
        "bob@contoso.example",
        ("deliver", REPLY_RCPT_OK, "bob@contoso.example", "contoso"),
    ),
    (
        "unknown-mailbox-dbeb",
        [],
        plain(),
        "erin@northwind.example",
        "nobody@fabrikam.example",
        ("reject", "550 5.4.1", None, "fabrikam"),
    ),
    (
        "unknown-mailbox-same-tenant-dbeb",
        [],
        CONTOSO_CERT,
        "alice@contoso.example",
        "zed@contoso.example",
        ("reject", "550 5.4.1", None, "contoso"),
    ),
    (
        "unknown-routing-domain-mailbox-dbeb",
        [],
        CONTOSO_CERT,
        "alice@contoso.example",
        "zed@contoso.mail.onmicrosoft.test",
        ("reject", "550 5.4.1", None, "contoso"),
    ),
    (
        "other-tenants-routing-domain-is-not-yours",
        [],
        plain(),
        "erin@northwind.example",
        "carol@contoso.mail.onmicrosoft.test",
        ("reject", "550 5.4.1", None, "contoso"),
    ),
    (
        "recipient-domain-not-hosted",
        [],
        plain(),
        "erin@northwind.example",
        "dave@northwind.example",
        ("reject", "550 5.7.64", None, None),
    ),
    (
        "recipient-domain-not-hosted-even-when-attributed",
        [eop(misattribution="discard")],
        CONTOSO_CERT,
        "alice@contoso.example",
        "dave@northwind.example",
        ("reject", "550 5.7.64", None, None),
    ),
    # Partner connectors (the recipient's tenant; they apply to mail that no OnPremises connector took)
    (
        "partner-require-tls-without-tls",
        [PARTNER_TLS],
        plain(),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("reject", "451 5.7.3", None, "fabrikam"),
    ),
    (
        "partner-require-tls-with-tls",
        [PARTNER_TLS],
        tls(ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "partner-other-sender-domain-not-applied",
        [PARTNER_TLS],
        plain(),
        "tom@tailspin.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "partner-star-applies-to-anyone",
        [PARTNER_ANY],
        plain(),
        "tom@tailspin.example",
        "carol@fabrikam.example",
        ("reject", "451 5.7.3", None, "fabrikam"),
    ),
    (
        "partner-wildcard-sender-subdomain",
        [PARTNER_SUBDOMAINS],
        plain(),
        "x@eu.northwind.example",
        "carol@fabrikam.example",
        ("reject", "451 5.7.3", None, "fabrikam"),
    ),
    (
        "partner-cert-name-matches",
        [PARTNER_CERT],
        tls("mx.northwind.example", ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "partner-cert-name-wrong",
        [PARTNER_CERT],
        tls("mail.tailspin.example", ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.51", None, "fabrikam"),
    ),
    (
        "partner-cert-name-no-cert",
        [PARTNER_CERT],
        tls(ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.51", None, "fabrikam"),
    ),
    (
        "partner-ip-inside",
        [PARTNER_IP],
        plain(ip="203.0.113.7"),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "partner-ip-outside",
        [PARTNER_IP],
        plain(ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("reject", "550 5.7.51", None, "fabrikam"),
    ),
    (
        "partner-cert-without-restrict-flag-does-not-restrict",
        [PARTNER_CERT_UNRESTRICTED],
        tls("mail.tailspin.example", ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        "partner-ip-without-restrict-flag-does-not-restrict",
        [PARTNER_IP_UNRESTRICTED],
        plain(ip=INTERNET_IP),
        "erin@northwind.example",
        "carol@fabrikam.example",
        ("deliver", REPLY_RCPT_OK, "carol@fabrikam.example", "fabrikam"),
    ),
    (
        # A seed lab with misattribution: relay follows the Nov 2023 relay rule: neither the
        # certificate's name nor the (null) sender is an accepted domain of contoso.
        "seed-relay-needs-an-accepted-domain",
        [eop(misattribution="relay")],
        CONTOSO_CERT,
        "",
        "dave@northwind.example",
        ("reject", REPLY_RELAY_DENIED, None, None),
    ),
    (
        "seed-relay-with-an-own-sender",
        [eop(misattribution="relay")],
        CONTOSO_CERT,
        "alice@contoso.example",
        "dave@northwind.example",
        ("relay", REPLY_RCPT_OK, None, None),
    ),
    (
        "partner-passes-then-dbeb",
        [PARTNER_TLS],
        tls(ip=INTERNET_IP),
        "erin@northwind.example",
        "nobody@fabrikam.example",
        ("reject", "550 5.4.1", None, "fabrikam"),
    ),
]


@pytest.mark.parametrize(
    "patches, session, mail_from, rcpt, expected", [c[1:] for c in DECIDE_CASES], ids=[c[0] for c in DECIDE_CASES]
)
def test_decide(patches, session, mail_from, rcpt, expected):
    s = scenario(*patches)
    att = attribute(s, session, mail_from, rcpt)
    dec = decide(s, session, mail_from, rcpt, att)
    action, reply_prefix, mailbox, tenant = expected
    assert (dec.action, dec.mailbox, dec.tenant) == (action, mailbox, tenant), dec.reason
    assert dec.reply.startswith(reply_prefix), dec.reply
    assert dec.reason


def test_discard_is_the_seed_silent_loss():
    """250 to the gateway, nobody's mailbox, nothing in the recipient tenant's message trace."""
    s = scenario(eop(misattribution="discard"))
    att = attribute(s, CONTOSO_CERT, "alice@contoso.example", "carol@fabrikam.example")
    dec = decide(s, CONTOSO_CERT, "alice@contoso.example", "carol@fabrikam.example", att)
    assert (att.tenant, att.by) == ("contoso", "certificate")
    assert dec.action == "discard" and dec.reply == REPLY_RCPT_OK
    assert dec.mailbox is None and dec.trace_visible is False
    assert "misattribution" in dec.reason and "contoso" in dec.reason and "fabrikam" in dec.reason


@pytest.mark.parametrize(
    "patches, session, rcpt, reply, trace_visible",
    [
        ([eop(misattribution="reject")], CONTOSO_CERT, "carol@fabrikam.example", REPLY_RELAY_DENIED, False),
        ([], plain(), "nobody@fabrikam.example", REPLY_DBEB, False),
        ([IP_CONNECTOR], plain(ip=GW_IP), "bob@contoso.example", REPLY_TLS_REQUIRED, False),
        ([], plain(), "carol@fabrikam.example", REPLY_RCPT_OK, True),
    ],
    ids=["misattribution-reject", "dbeb", "tls-required", "deliver"],
)
def test_exact_replies_and_trace_visibility(patches, session, rcpt, reply, trace_visible):
    s = scenario(*patches)
    mail_from = "alice@contoso.example" if session.source_ip == GW_IP else "erin@northwind.example"
    dec = decide(s, session, mail_from, rcpt, attribute(s, session, mail_from, rcpt))
    assert dec.reply == reply
    assert dec.trace_visible is trace_visible


def test_decide_uses_the_given_attribution():
    """decide() trusts the attribution it is handed (the server computes it once per recipient)."""
    s = scenario(eop(misattribution="reject"))
    session = tls(ip=INTERNET_IP)  # TLS without a certificate: nothing would attribute it to contoso
    att = Attribution("contoso", "certificate", "Inbound from gateway", "given")
    dec = decide(s, session, "erin@northwind.example", "carol@fabrikam.example", att)
    assert dec.action == "reject" and dec.reply == REPLY_RELAY_DENIED
    att = Attribution("fabrikam", "recipient", None, "given")
    dec = decide(s, session, "erin@northwind.example", "carol@fabrikam.example", att)
    assert dec.action == "deliver"
