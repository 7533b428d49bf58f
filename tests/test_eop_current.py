"""The fake EOP under eop.profile 'current' (Exchange Online as Microsoft documents it today),
table-tested rule by rule with the documented reply texts. docs/fidelity.md names each row's
source; tests/test_eop_rules.py covers the seed profile and the rules both profiles share.

The base is examples/recommended-topology.yaml: contoso's gateway sends all mail through EOP
with a CA-signed certificate for mail.contoso.example, an accepted domain of contoso, and
contoso routes its outbound mail through the gateway (centralized mail transport)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import set_path

from labgen.lab.eop import rules
from labgen.lab.eop.rules import (
    REPLY_DBEB,
    REPLY_DIRECT_SEND,
    REPLY_HOP_COUNT,
    REPLY_RCPT_OK,
    REPLY_RELAY_DENIED,
    REPLY_RESTRICTED,
    REPLY_THROTTLED,
    Session,
    attribute,
    decide,
)
from labgen.model.scenario import parse_scenario
from labgen.resources import resource_dir

BASE = yaml.safe_load((resource_dir("examples") / "recommended-topology.yaml").read_text())
GW_IP = "192.0.2.10"
INTERNET_IP = "192.0.2.100"


def scenario(*patches):
    data = copy.deepcopy(BASE)
    for patch in patches:
        patch(data)
    return parse_scenario(data, "test.yaml")


def connector(**values):
    return lambda d: d["tenants"]["contoso"]["inbound_connectors"][0].update(values)


def tenant(name, **values):
    return lambda d: d["tenants"][name].update(values)


def trusted(*names, ip=GW_IP):
    return Session(source_ip=ip, tls=True, cert_names=list(names), cert_trusted=True)


def untrusted(*names, ip=GW_IP, problem="self-signed"):
    return Session(source_ip=ip, tls=True, cert_names=list(names), cert_trusted=False, cert_problem=problem)


def plain(ip=INTERNET_IP, seen=0):
    return Session(source_ip=ip, tls=False, messages_from_ip=seen)


CERT = trusted("mail.contoso.example")
IP_CONNECTOR = connector(TlsSenderCertificateName=None, SenderIPAddresses=[f"{GW_IP}/32"])
GW_CONNECTOR_NAME = connector(TlsSenderCertificateName="gw.contoso.example")
WILDCARD = connector(TlsSenderCertificateName="*.contoso.example")
PARTIAL_TO_GATEWAY = tenant(
    "contoso",
    outbound_via_gateway=False,
    outbound_connectors=[
        {"Name": "fabrikam via gateway", "RecipientDomains": ["fabrikam.example"], "SmartHosts": ["gw.contoso.example"]}
    ],
)
INTERNAL_RELAY = set_path(["tenants", "contoso", "domains", 0, "DomainType"], "InternalRelay")
FABRIKAM_INTERNAL_RELAY = set_path(["tenants", "fabrikam", "domains", 0, "DomainType"], "InternalRelay")
REJECT_DIRECT_SEND = tenant("contoso", RejectDirectSend=True)
PARTNER_FROM_INTERNET_IP = tenant(
    "contoso",
    inbound_connectors=[
        *BASE["tenants"]["contoso"]["inbound_connectors"],
        {"Name": "App server", "ConnectorType": "Partner", "SenderIPAddresses": [f"{INTERNET_IP}/32"]},
    ],
)
THROTTLE = set_path(["eop", "throttle_new_ips_after"], 2)
DISABLED = connector(Enabled=False)

# id, patches, session, mail_from, rcpt,
# (action, exact reply, attributed tenant, mailbox, route host, traces)
CASES = [
    # Attribution by a trusted certificate whose name is an accepted domain: relay to anywhere.
    ("own-recipient", [], CERT, "alice@contoso.example", "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
    ("other-tenant-relayed-inside-eop", [], CERT, "alice@contoso.example", "carol@fabrikam.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "carol@fabrikam.example", None,
      (("contoso", "Delivered"), ("fabrikam", "Delivered")))),
    ("internet-relayed-by-mx", [], CERT, "alice@contoso.example", "dave@northwind.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "northwind.example", (("contoso", "Relayed"),))),
    ("null-sender-relayed-by-certificate-domain", [], CERT, "", "dave@northwind.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "northwind.example", (("contoso", "Relayed"),))),
    ("wildcard-name-base-accepted", [WILDCARD], CERT, "alice@contoso.example", "dave@northwind.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "northwind.example", (("contoso", "Relayed"),))),
    # KB 3212877: an untrusted chain does not attribute; relay is then refused.
    ("untrusted-relay-refused", [], untrusted("mail.contoso.example"), "alice@contoso.example",
     "dave@northwind.example", ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    ("incomplete-chain-relay-refused", [],
     untrusted("mail.contoso.example", problem="incomplete chain: the issuer was not presented"),
     "alice@contoso.example", "dave@northwind.example", ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    ("untrusted-own-recipient-is-inbound-mail", [], untrusted("mail.contoso.example"), "alice@contoso.example",
     "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
    ("untrusted-other-tenant-is-inbound-mail", [], untrusted("mail.contoso.example"), "alice@contoso.example",
     "carol@fabrikam.example",
     ("deliver", REPLY_RCPT_OK, "fabrikam", "carol@fabrikam.example", None, (("fabrikam", "Delivered"),))),
    # A plain TlsSenderCertificateName that is no accepted domain (TLS certificates blog, 2025).
    ("name-not-accepted-own-recipient-5.7.51", [GW_CONNECTOR_NAME], trusted("gw.contoso.example"),
     "alice@contoso.example", "bob@contoso.example", ("reject", REPLY_RESTRICTED, "contoso", None, None, ())),
    ("name-not-accepted-other-tenant-inbound", [GW_CONNECTOR_NAME], trusted("gw.contoso.example"),
     "alice@contoso.example", "carol@fabrikam.example",
     ("deliver", REPLY_RCPT_OK, "fabrikam", "carol@fabrikam.example", None, (("fabrikam", "Delivered"),))),
    ("name-not-accepted-internet-relay-refused", [GW_CONNECTOR_NAME], trusted("gw.contoso.example"),
     "alice@contoso.example", "dave@northwind.example", ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    # IP attribution needs the P1 sender in the tenant (relay requirements, Nov 2023).
    ("ip-own-sender-relayed", [IP_CONNECTOR], plain(ip=GW_IP), "alice@contoso.example", "dave@northwind.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "northwind.example", (("contoso", "Relayed"),))),
    ("ip-null-sender-relay-refused", [IP_CONNECTOR], plain(ip=GW_IP), "", "dave@northwind.example",
     ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    ("ip-foreign-sender-relay-refused", [IP_CONNECTOR], plain(ip=GW_IP), "erin@northwind.example",
     "dave@northwind.example", ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    ("disabled-connector-matches-nothing", [DISABLED], CERT, "alice@contoso.example", "dave@northwind.example",
     ("reject", REPLY_RELAY_DENIED, None, None, None, ())),
    # Outbound routing of relayed mail.
    ("partial-connector-back-to-gateway-loops", [PARTIAL_TO_GATEWAY], CERT, "alice@contoso.example",
     "carol@fabrikam.example", ("reject", REPLY_HOP_COUNT, "contoso", None, None, ())),
    ("partial-connector-not-for-this-domain", [PARTIAL_TO_GATEWAY], CERT, "alice@contoso.example",
     "dave@northwind.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "northwind.example", (("contoso", "Relayed"),))),
    # Inbound (anonymous) mail: DBEB, InternalRelay, Reject Direct Send, throttling.
    ("dbeb-authoritative-unknown", [], plain(), "erin@northwind.example", "zed@fabrikam.example",
     ("reject", REPLY_DBEB, "fabrikam", None, None, ())),
    ("internal-relay-unknown-routed-to-gateway", [INTERNAL_RELAY], plain(), "erin@northwind.example",
     "zed@contoso.example",
     ("relay", REPLY_RCPT_OK, "contoso", None, "gw.contoso.example", (("contoso", "Relayed"),))),
    ("internal-relay-without-route-loops", [FABRIKAM_INTERNAL_RELAY], plain(), "erin@northwind.example",
     "zed@fabrikam.example", ("reject", REPLY_HOP_COUNT, "fabrikam", None, None, ())),
    ("reject-direct-send-own-sender", [REJECT_DIRECT_SEND], plain(), "app@contoso.example", "bob@contoso.example",
     ("reject", REPLY_DIRECT_SEND, "contoso", None, None, ())),
    ("reject-direct-send-foreign-sender-passes", [REJECT_DIRECT_SEND], plain(), "erin@northwind.example",
     "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
    ("reject-direct-send-partner-connector-exempts", [REJECT_DIRECT_SEND, PARTNER_FROM_INTERNET_IP], plain(),
     "app@contoso.example", "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
    ("throttle-below-limit", [THROTTLE], plain(seen=1), "erin@northwind.example", "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
    ("throttle-at-limit", [THROTTLE], plain(seen=2), "erin@northwind.example", "bob@contoso.example",
     ("reject", REPLY_THROTTLED.format(ip=INTERNET_IP), "contoso", None, None, ())),
    ("throttle-spares-a-connector-address", [THROTTLE, PARTNER_FROM_INTERNET_IP], plain(seen=5),
     "erin@northwind.example", "bob@contoso.example",
     ("deliver", REPLY_RCPT_OK, "contoso", "bob@contoso.example", None, (("contoso", "Delivered"),))),
]  # fmt: skip


@pytest.mark.parametrize(
    "patches, session, mail_from, rcpt, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_current_profile(patches, session, mail_from, rcpt, expected):
    s = scenario(*patches)
    att = attribute(s, session, mail_from, rcpt)
    dec = decide(s, session, mail_from, rcpt, att)
    action, reply, attributed, mailbox, host, traces = expected
    assert (dec.action, dec.reply) == (action, reply), dec.reason
    assert att.tenant == attributed, att.detail
    assert dec.mailbox == mailbox
    assert (dec.route.host if dec.route else None) == host
    assert dec.traces == traces
    assert dec.reason


def test_most_exact_name_wins_across_tenants():
    """Message Attribution blog: 'the most exact match tenant is chosen'; the seed's EOP took the
    first connector in the file."""

    def two_tenants(d):
        d["tenants"]["contoso"]["inbound_connectors"][0]["TlsSenderCertificateName"] = "*.contoso.example"
        d["tenants"]["fabrikam"]["domains"].append({"name": "sub.contoso.example"})
        d["tenants"]["fabrikam"]["inbound_connectors"] = [
            {"Name": "Fabrikam on-prem", "TlsSenderCertificateName": "sub.contoso.example"}
        ]

    session = trusted("sub.contoso.example")
    s = scenario(two_tenants)
    assert attribute(s, session, "", "dave@northwind.example").tenant == "fabrikam"
    seed = scenario(two_tenants, set_path(["eop", "profile"], "seed"))
    assert attribute(seed, session, "", "dave@northwind.example").tenant == "contoso"


def test_untrusted_detail_says_why():
    s = scenario()
    session = untrusted("mail.contoso.example", problem="incomplete chain: the issuer was not presented")
    att = attribute(s, session, "alice@contoso.example", "dave@northwind.example")
    assert att.by is None and "not trusted (incomplete chain" in att.detail


def test_relay_route_keeps_the_outbound_connector_tls_settings():
    """An InternalRelay recipient routed by an outbound connector carries its TlsSettings to
    the relay leg (New-OutboundConnector), where relay.check_server_certificate applies them."""

    def cmt_with_tls(d):
        d["tenants"]["contoso"]["outbound_via_gateway"] = False
        d["tenants"]["contoso"]["outbound_connectors"] = [
            {
                "Name": "To gateway",
                "RecipientDomains": ["*"],
                "SmartHosts": ["gw.contoso.example"],
                "RouteAllMessagesViaOnPremises": True,
                "TlsSettings": "DomainValidation",
                "TlsDomain": "gw.contoso.example",
            }
        ]

    s = scenario(INTERNAL_RELAY, cmt_with_tls)
    dec = decide(
        s,
        plain(),
        "erin@northwind.example",
        "zed@contoso.example",
        attribute(s, plain(), "erin@northwind.example", "zed@contoso.example"),
    )
    assert dec.route == rules.Route(
        "smtp",
        "gw.contoso.example",
        connector="To gateway",
        tenant="contoso",
        tls_settings="DomainValidation",
        tls_domain="gw.contoso.example",
    )


@pytest.mark.parametrize(
    "constant, text",
    [
        (REPLY_RELAY_DENIED, "550 5.7.64 TenantAttribution; Relay Access Denied"),
        (REPLY_DBEB, "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)"),
        (
            REPLY_RESTRICTED,
            "550 5.7.51 TenantInboundAttribution; There is a partner connector configured that matched the "
            "message's recipient domain. The connector had either the RestrictDomainsToIPAddresses or "
            "RestrictDomainsToCertificate set",
        ),
        (
            REPLY_DIRECT_SEND,
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from "
            "unauthorized sources",
        ),
        (
            REPLY_THROTTLED.format(ip="192.0.2.9"),
            "451 4.7.500 Server busy. Please try again later from [192.0.2.9]. (AS761)",
        ),
        (REPLY_HOP_COUNT, "554 5.4.14 Hop count exceeded - possible mail loop"),
    ],
    ids=["5.7.64", "5.4.1", "5.7.51", "5.7.68", "4.7.500", "5.4.14"],
)
def test_documented_texts(constant, text):
    """The reply texts as Microsoft's pages print them (docs/fidelity.md quotes each source)."""
    assert constant == text


# ---------------------------------------------------------------- more routing rows


def test_mx_back_to_the_gateway_is_a_loop():
    """R5: on-premises mail for a domain whose MX is the gateway it came from."""
    s = scenario(set_path(["tenants", "fabrikam", "domains", 0, "mx"], "gateway"))
    dec = decide(s, CERT, "alice@contoso.example", "carol@fabrikam.example", attribute(s, CERT, "", "x@y.example"))
    assert (dec.action, dec.reply) == ("reject", REPLY_HOP_COUNT)


def test_onprem_mail_is_not_judged_by_the_recipient_tenants_partner_connectors():
    """D6: mail an OnPremises connector attributed is relayed through its tenant; the recipient
    tenant's Partner lock-down applies to inbound mail only."""
    lockdown = tenant(
        "fabrikam",
        inbound_connectors=[
            {
                "Name": "Only the filter",
                "ConnectorType": "Partner",
                "TlsSenderCertificateName": "filter.fabrikam.example",
                "RestrictDomainsToCertificate": True,
            }
        ],
    )
    s = scenario(lockdown)
    att = attribute(s, CERT, "alice@contoso.example", "carol@fabrikam.example")
    assert decide(s, CERT, "alice@contoso.example", "carol@fabrikam.example", att).action == "deliver"
    inbound = plain()
    att = attribute(s, inbound, "erin@northwind.example", "carol@fabrikam.example")
    dec = decide(s, inbound, "erin@northwind.example", "carol@fabrikam.example", att)
    assert dec.reply == REPLY_RESTRICTED and dec.traces == ()  # a protocol-level rejection: no trace line


@pytest.mark.parametrize(
    "connectors, domain, expected",
    [
        ([("all", ["*"]), ("fab", ["fabrikam.example"])], "fabrikam.example", "fab"),
        ([("all", ["*"]), ("sub", ["*.fabrikam.example"])], "eu.fabrikam.example", "sub"),
        ([("sub", ["*.fabrikam.example"]), ("exact", ["eu.fabrikam.example"])], "eu.fabrikam.example", "exact"),
        ([("sub", ["*.fabrikam.example"])], "fabrikam.example", "sub"),
        ([("fab", ["fabrikam.example"])], "northwind.example", None),
        ([("all", ["*"])], "contoso.example", None),  # the tenant's own domain: only CMT takes it
    ],
    ids=["exact-over-star", "wildcard-over-star", "exact-over-wildcard", "wildcard-covers-apex", "no-match", "own"],
)
def test_the_most_specific_recipient_domains_entry_wins(connectors, domain, expected):
    """R3: New-OutboundConnector RecipientDomains; the most specific entry picks the connector."""
    s = scenario(
        tenant(
            "contoso",
            outbound_via_gateway=False,
            outbound_connectors=[
                {"Name": n, "RecipientDomains": d, "SmartHosts": ["gw.contoso.example"]} for n, d in connectors
            ],
        )
    )
    c = s.tenants["contoso"].outbound_for(domain, s.gateway.hostname)
    assert (c.name if c else None) == expected


# ---------------------------------------------------------------- the outbound leg's TLS check


def _cert_der(cn: str, sans: list[str]) -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


CANNOT = "450 4.4.317 Cannot connect to remote server [Message="


@pytest.mark.parametrize(
    "settings, tls_domain, cert, verified, expected",
    [
        (None, None, ("gw.contoso.example", []), False, None),
        ("EncryptionOnly", None, ("anything.example", []), False, None),
        ("CertificateValidation", None, ("anything.example", []), True, None),
        ("CertificateValidation", None, ("gw.contoso.example", []), False,
         CANNOT + "UntrustedRoot Presented Subject: CN=gw.contoso.example]"),
        ("DomainValidation", "gw.contoso.example", ("gw.contoso.example", []), True, None),
        ("DomainValidation", "*.contoso.example", ("x", ["mail.contoso.example"]), True, None),
        ("DomainValidation", "mail.contoso.example", ("gw.contoso.example", ["gw.contoso.example"]), True,
         CANNOT + "SubjectMismatch Expected Subject: mail.contoso.example. Presented Subject: CN=gw.contoso.example]"),
        ("DomainValidation", "gw.contoso.example", None, True, CANNOT + "no certificate was presented]"),
    ],
    ids=["opportunistic", "encryption-only", "cert-validation", "cert-validation-untrusted", "domain-validation",
         "domain-validation-wildcard", "subject-mismatch", "no-certificate"],
)  # fmt: skip
def test_outbound_connector_tls_settings(settings, tls_domain, cert, verified, expected):
    """R6: New-OutboundConnector TlsSettings/TlsDomain; the 450 4.4.317 form of the TLS
    certificates blog."""
    from labgen.lab.eop import relay

    route = rules.Route("smtp", "gw.contoso.example", tls_settings=settings, tls_domain=tls_domain)
    der = _cert_der(*cert) if cert else None
    assert relay.check_server_certificate(route, der, verified) == expected
