"""The Postfix gateway's maillog read back as ledger events (postfix.parse_log): Postfix 3.7 lines
from a real run of the broken lab, plus deferred and bounced lines in Postfix's own format."""

from __future__ import annotations

import copy

import pytest

from labgen.engines import postfix
from labgen.model.plan import make_plan
from labgen.model.scenario import load_scenario


def parse_log(lines, plan):
    """The typed gateway events as plain dicts, every field present (None when unset)."""
    return [e.model_dump() for e in postfix.parse_log(lines, plan)]


RUN = "4992cfd1"
GW = "198.51.100.10"

# From a real `labgen up broken --engine docker` run (Postfix 3.7.11), in file order.
REAL_LOG = """\
Nov 27 02:53:43 gw postfix/postfix-script[172]: starting the Postfix mail system
Nov 27 02:53:44 gw postfix/master[173]: daemon started -- version 3.7.11, configuration /etc/postfix
Nov 27 02:53:44 gw postfix/smtpd[177]: connect from unknown[198.51.100.100]
Nov 27 02:53:44 gw postfix/smtpd[177]: lost connection after CONNECT from unknown[198.51.100.100]
Nov 27 02:53:44 gw postfix/smtpd[177]: disconnect from unknown[198.51.100.100] commands=0/0
Nov 27 02:53:44 gw postfix/smtpd[177]: connect from unknown[198.51.100.40]
Nov 27 02:53:44 gw postfix/smtpd[177]: Anonymous TLS connection established from unknown[198.51.100.40]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (prime256v1) server-digest SHA256
Nov 27 02:53:44 gw postfix/smtpd[180]: connect from unknown[198.51.100.40]
Nov 27 02:53:44 gw postfix/smtpd[177]: 1F123E2CCC: client=unknown[198.51.100.40]
Nov 27 02:53:44 gw postfix/cleanup[183]: 1F123E2CCC: message-id=<to-fabrikam.4992cfd1@traffic.labgen.test>
Nov 27 02:53:44 gw postfix/smtpd[177]: disconnect from unknown[198.51.100.40] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7
Nov 27 02:53:44 gw postfix/smtpd[180]: 20339E2CCD: client=unknown[198.51.100.40]
Nov 27 02:53:44 gw postfix/qmgr[175]: 1F123E2CCC: from=<alice@contoso.example>, size=743, nrcpt=1 (queue active)
Nov 27 02:53:44 gw postfix/cleanup[183]: 20339E2CCD: message-id=<to-internet.4992cfd1@traffic.labgen.test>
Nov 27 02:53:44 gw postfix/qmgr[175]: 20339E2CCD: from=<alice@contoso.example>, size=759, nrcpt=1 (queue active)
Nov 27 02:53:44 gw postfix/smtpd[177]: 22D39E2CCE: client=unknown[198.51.100.40]
Nov 27 02:53:44 gw postfix/cleanup[183]: 22D39E2CCE: message-id=<internal-routing.4992cfd1@traffic.labgen.test>
Nov 27 02:53:44 gw postfix/qmgr[175]: 22D39E2CCE: from=<alice@contoso.example>, size=801, nrcpt=1 (queue active)
Nov 27 02:53:44 gw postfix/smtpd[180]: 242E3E2CCF: client=unknown[198.51.100.100]
Nov 27 02:53:44 gw postfix/cleanup[183]: 242E3E2CCF: message-id=<from-internet.4992cfd1@traffic.labgen.test>
Nov 27 02:53:44 gw postfix/qmgr[175]: 242E3E2CCF: from=<erin@northwind.example>, size=751, nrcpt=1 (queue active)
Nov 27 02:53:44 gw postfix/smtpd[180]: disconnect from unknown[198.51.100.100] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7
Nov 27 02:53:44 gw postfix/conn0/smtp[186]: Untrusted TLS connection established to fabrikam.mail.protection.outlook.test[198.51.100.25]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (prime256v1) server-digest SHA256 client-signature RSA-PSS (2048 bits) client-digest SHA256
Nov 27 02:53:44 gw postfix/conn1/smtp[187]: Untrusted TLS connection established to contoso.mail.protection.outlook.test[198.51.100.25]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (prime256v1) server-digest SHA256 client-signature RSA-PSS (2048 bits) client-digest SHA256
Nov 27 02:53:44 gw postfix/conn0/smtp[186]: 1F123E2CCC: to=<carol@fabrikam.example>, relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=0.07, delays=0.01/0.03/0.02/0, dsn=2.6.0, status=sent (250 2.6.0 <to-fabrikam.4992cfd1@traffic.labgen.test> [InternalId=0000000000001, Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery)
Nov 27 02:53:44 gw postfix/qmgr[175]: 1F123E2CCC: removed
Nov 27 02:53:44 gw postfix/conn1/smtp[187]: 22D39E2CCE: to=<bob@contoso.mail.onmicrosoft.test>, relay=contoso.mail.protection.outlook.test[198.51.100.25]:25, delay=0.05, delays=0/0.03/0.02/0, dsn=2.6.0, status=sent (250 2.6.0 <internal-routing.4992cfd1@traffic.labgen.test> [InternalId=0000000000002, Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery)
Nov 27 02:53:44 gw postfix/qmgr[175]: 22D39E2CCE: removed
Nov 27 02:53:44 gw postfix/conn0/smtp[186]: Untrusted TLS connection established to mx.northwind.example[198.51.100.80]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (prime256v1) server-digest SHA256
Nov 27 02:53:44 gw postfix/conn0/smtp[186]: 20339E2CCD: to=<dave@northwind.example>, relay=mx.northwind.example[198.51.100.80]:25, delay=0.08, delays=0.01/0.05/0.01/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)
Nov 27 02:53:44 gw postfix/qmgr[175]: 20339E2CCD: removed
Nov 27 02:53:44 gw postfix/conn1/smtp[187]: Untrusted TLS connection established to contoso.mail.protection.outlook.test[198.51.100.25]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (prime256v1) server-digest SHA256 client-signature RSA-PSS (2048 bits) client-digest SHA256
Nov 27 02:53:44 gw postfix/conn1/smtp[187]: 242E3E2CCF: to=<bob@contoso.example>, relay=contoso.mail.protection.outlook.test[198.51.100.25]:25, delay=0.06, delays=0/0.04/0.01/0, dsn=2.6.0, status=sent (250 2.6.0 <from-internet.4992cfd1@traffic.labgen.test> [InternalId=0000000000003, Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery)
Nov 27 02:53:44 gw postfix/qmgr[175]: 242E3E2CCF: removed
""".splitlines()

# The same queue file names as Postfix writes them, for lines this test makes up.
QID = "4C98AE2BA7"


def received(qid=QID, msgid="to-fabrikam", run=RUN, client="198.51.100.40", pid=183):
    return [
        f"Nov 27 02:54:01 gw postfix/smtpd[177]: {qid}: client=unknown[{client}]",
        f"Nov 27 02:54:01 gw postfix/cleanup[{pid}]: {qid}: message-id=<{msgid}.{run}@traffic.labgen.test>",
    ]


BOUNCED_EOP = (
    f"Nov 27 02:54:01 gw postfix/conn0/smtp[123]: {QID}: to=<carol@fabrikam.example>, "
    "relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=0.1, delays=0/0/0/0, dsn=5.7.64, "
    "status=bounced (host fabrikam.mail.protection.outlook.test[198.51.100.25] said: 550 5.7.64 "
    "TenantAttribution; Relay Access Denied (in reply to RCPT TO command))"
)
BOUNCED_DBEB = (
    f"Nov 27 02:54:01 gw postfix/conn0/smtp[123]: {QID}: to=<carol@fabrikam.example>, "
    "relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=0.1, delays=0/0/0/0, dsn=5.4.1, "
    "status=bounced (host fabrikam.mail.protection.outlook.test[198.51.100.25] said: 550 5.4.1 Recipient "
    "address rejected: Access denied. AS(201806281) (in reply to RCPT TO command))"
)
BOUNCED_DATA = (
    f"Nov 27 02:54:01 gw postfix/conn0/smtp[123]: {QID}: to=<carol@fabrikam.example>, "
    "relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=0.1, delays=0/0/0/0, dsn=5.6.0, "
    "status=bounced (host fabrikam.mail.protection.outlook.test[198.51.100.25] said: 554 5.6.0 Message "
    "rejected (in reply to end of DATA command))"
)
DEFERRED_TLS_REQUIRED = (
    f"Nov 27 02:54:01 gw postfix/conn1/smtp[124]: {QID}: to=<bob@contoso.example>, "
    "relay=contoso.mail.protection.outlook.test[198.51.100.25]:25, delay=0.2, delays=0/0/0.1/0, dsn=4.7.3, "
    "status=deferred (host contoso.mail.protection.outlook.test[198.51.100.25] said: 451 5.7.3 STARTTLS is "
    "required to send mail (in reply to RCPT TO command))"
)
DEFERRED_REFUSED = (
    f"Nov 27 02:54:01 gw postfix/conn0/smtp[125]: {QID}: to=<carol@fabrikam.example>, relay=none, delay=30, "
    "delays=0.01/0/30/0, dsn=4.4.1, status=deferred (connect to "
    "fabrikam.mail.protection.outlook.test[198.51.100.25]:25: Connection refused)"
)
BOUNCED_DNS = (
    f"Nov 27 02:54:01 gw postfix/conn0/smtp[126]: {QID}: to=<carol@fabrikam.example>, relay=none, delay=0.02, "
    "delays=0.01/0/0.01/0, dsn=5.4.4, status=bounced (Host or domain name not found. Name service error for "
    "name=fabrikam.example type=MX: Host not found)"
)


@pytest.fixture(scope="module")
def plan():
    return make_plan(load_scenario("broken"), "docker").model_copy(update={"run_id": RUN})


def only(events, **match):
    hits = [e for e in events if all(e.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, f"expected one event matching {match}, got {hits}"
    return hits[0]


# ---------------------------------------------------------------- the real log


def test_real_log_event_sequence(plan):
    events = parse_log(REAL_LOG, plan)
    assert [(e["event"], e.get("msgid"), e.get("rcpt")) for e in events] == [
        ("ready", None, None),
        ("received", "to-fabrikam", None),
        ("received", "to-internet", None),
        ("received", "internal-routing", None),
        ("received", "from-internet", None),
        ("sent", "to-fabrikam", "carol@fabrikam.example"),
        ("sent", "internal-routing", "bob@contoso.mail.onmicrosoft.test"),
        ("sent", "to-internet", "dave@northwind.example"),
        ("sent", "from-internet", "bob@contoso.example"),
    ]
    assert all(e["service"] == "gateway" for e in events)
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # file order is kept


@pytest.mark.parametrize(
    "msgid, queue_id, client_ip",
    [
        ("to-fabrikam", "1F123E2CCC", "198.51.100.40"),
        ("to-internet", "20339E2CCD", "198.51.100.40"),
        ("internal-routing", "22D39E2CCE", "198.51.100.40"),
        ("from-internet", "242E3E2CCF", "198.51.100.100"),
    ],
)
def test_real_log_received(plan, msgid, queue_id, client_ip):
    e = only(parse_log(REAL_LOG, plan), event="received", msgid=msgid)
    assert (e["queue_id"], e["client_ip"]) == (queue_id, client_ip)


SENT_CASES = [
    # msgid, rcpt, connector, relay host, relay ip, reply, dsn, TLS details
    (
        "to-fabrikam",
        "carol@fabrikam.example",
        "Internet",
        "fabrikam.mail.protection.outlook.test",
        "198.51.100.25",
        "250 2.6.0 <to-fabrikam.4992cfd1@traffic.labgen.test> [InternalId=0000000000001, "
        "Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery",
        "2.6.0",
        {
            "version": "TLSv1.3",
            "trust": "Untrusted",
            "client_certificate": "gw-selfsigned",
            "client_certificate_cn": "gw.contoso.example",
        },
    ),
    (
        "internal-routing",
        "bob@contoso.mail.onmicrosoft.test",
        "Office 365",
        "contoso.mail.protection.outlook.test",
        "198.51.100.25",
        "250 2.6.0 <internal-routing.4992cfd1@traffic.labgen.test> [InternalId=0000000000002, "
        "Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery",
        "2.6.0",
        {
            "version": "TLSv1.3",
            "trust": "Untrusted",
            "client_certificate": "gw-selfsigned",
            "client_certificate_cn": "gw.contoso.example",
        },
    ),
    (
        "to-internet",
        "dave@northwind.example",
        "Internet",
        "mx.northwind.example",
        "198.51.100.80",
        "250 2.0.0 Ok: queued",
        "2.0.0",
        {
            "version": "TLSv1.3",
            "trust": "Untrusted",
            "client_certificate": "gw-selfsigned",
            "client_certificate_cn": "gw.contoso.example",
        },
    ),
]


@pytest.mark.parametrize(
    "msgid, rcpt, connector, host, ip, reply, dsn, tls", SENT_CASES, ids=[c[0] for c in SENT_CASES]
)
def test_real_log_sent(plan, msgid, rcpt, connector, host, ip, reply, dsn, tls):
    e = only(parse_log(REAL_LOG, plan), event="sent", msgid=msgid)
    assert e["rcpt"] == rcpt
    assert e["connector"] == connector  # conn0 -> connectors[0], conn1 -> connectors[1]
    assert (e["relay"], e["relay_host"], e["relay_ip"]) == (f"{host}[{ip}]:25", host, ip)
    assert e["reply"] == reply
    assert e["dsn"] == dsn
    assert e["source_ip"] == GW
    assert e["tls"] == tls
    assert e["postfix"].startswith("Nov 27 02:53:44 gw postfix/conn")


@pytest.mark.parametrize("other", ["0badc0de", "4992cfd2"])
def test_lines_from_another_run_are_ignored(plan, other):
    stale = [line.replace(f".{RUN}@", f".{other}@") for line in REAL_LOG]
    assert [e["event"] for e in parse_log(stale, plan)] == ["ready"]
    mixed = received(run=other) + [BOUNCED_EOP] + REAL_LOG
    events = parse_log(mixed, plan)
    assert not [e for e in events if e.get("queue_id") == QID]
    assert len([e for e in events if e["event"] == "sent"]) == 4


@pytest.mark.parametrize(
    "line",
    [
        f"Nov 27 02:54:01 gw postfix/cleanup[183]: {QID}: message-id=<20241127025401.ABC@gw.contoso.example>",
        f"Nov 27 02:54:01 gw postfix/cleanup[183]: {QID}: message-id=<to-fabrikam.{RUN}@elsewhere.test>",
        f"Nov 27 02:54:01 gw postfix/cleanup[183]: {QID}: message-id=<to-fabrikam@traffic.labgen.test>",
    ],
    ids=["foreign-message-id", "foreign-domain", "no-run-id"],
)
def test_messages_not_from_the_traffic_generator_are_ignored(plan, line):
    assert parse_log([line, BOUNCED_EOP], plan) == []


def test_unparseable_lines_are_skipped(plan):
    junk = ["", "garbage", "Nov 27 02:54:01 gw kernel: something", "postfix/smtp[1]: no timestamp"]
    assert parse_log(junk + received(), plan)[0]["msgid"] == "to-fabrikam"


def test_trailing_newlines_as_read_from_a_file(plan):
    assert parse_log([line + "\n" for line in REAL_LOG], plan) == parse_log(REAL_LOG, plan)


# ---------------------------------------------------------------- deferred and bounced

STATUS_CASES = [
    # id, line, event, connector, relay host, reply, dsn
    (
        "bounced-eop-5.7.64",
        BOUNCED_EOP,
        "bounced",
        "Internet",
        "fabrikam.mail.protection.outlook.test",
        "550 5.7.64 TenantAttribution; Relay Access Denied",
        "5.7.64",
    ),
    (
        "bounced-dbeb-reply-with-parentheses",
        BOUNCED_DBEB,
        "bounced",
        "Internet",
        "fabrikam.mail.protection.outlook.test",
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        "5.4.1",
    ),
    (
        "bounced-after-data",
        BOUNCED_DATA,
        "bounced",
        "Internet",
        "fabrikam.mail.protection.outlook.test",
        "554 5.6.0 Message rejected",
        "5.6.0",
    ),
    (
        "deferred-by-server",
        DEFERRED_TLS_REQUIRED,
        "deferred",
        "Office 365",
        "contoso.mail.protection.outlook.test",
        "451 5.7.3 STARTTLS is required to send mail",
        "4.7.3",
    ),
    (
        "deferred-connection-refused",
        DEFERRED_REFUSED,
        "deferred",
        "Internet",
        None,
        "4.4.1 connect to fabrikam.mail.protection.outlook.test[198.51.100.25]:25: Connection refused",
        "4.4.1",
    ),
    (
        # The status line quotes the TLS failure: it is a delivery attempt, not the error line.
        "deferred-tls-handshake",
        f"Dec 07 07:05:16 gw postfix/conn0/smtp[48]: {QID}: to=<carol@fabrikam.example>, "
        "relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=2.6, delays=0.89/1.6/0.08/0, "
        "dsn=4.7.5, status=deferred (Cannot start TLS: handshake failure)",
        "deferred",
        "Internet",
        "fabrikam.mail.protection.outlook.test",
        "4.7.5 Cannot start TLS: handshake failure",
        "4.7.5",
    ),
    (
        "bounced-by-postfix-dns",
        BOUNCED_DNS,
        "bounced",
        "Internet",
        None,
        "5.4.4 Host or domain name not found. Name service error for name=fabrikam.example type=MX: Host not found",
        "5.4.4",
    ),
]


@pytest.mark.parametrize(
    "line, event, connector, host, reply, dsn", [c[1:] for c in STATUS_CASES], ids=[c[0] for c in STATUS_CASES]
)
def test_deferred_and_bounced(plan, line, event, connector, host, reply, dsn):
    events = parse_log(received() + [line], plan)
    assert [e["event"] for e in events] == ["received", event]
    e = events[1]
    assert (e["msgid"], e["queue_id"]) == ("to-fabrikam", QID)
    assert e["connector"] == connector
    assert e["relay_host"] == host
    if host is None:
        assert e["relay"] is None and e["relay_ip"] is None
    else:
        assert e["relay"] == f"{host}[198.51.100.25]:25" and e["relay_ip"] == "198.51.100.25"
    assert e["reply"] == reply
    assert e["dsn"] == dsn
    assert e["tls"] is None  # no TLS line from that smtp process


def test_retries_of_one_message_are_separate_events(plan):
    sent = BOUNCED_EOP.replace(
        "dsn=5.7.64, status=bounced (host fabrikam.mail.protection.outlook.test"
        "[198.51.100.25] said: 550 5.7.64 TenantAttribution; Relay Access Denied "
        "(in reply to RCPT TO command))",
        "dsn=2.6.0, status=sent (250 2.6.0 <x> Queued mail for delivery)",
    )
    events = parse_log(received() + [DEFERRED_REFUSED, DEFERRED_REFUSED, sent], plan)
    assert [e["event"] for e in events] == ["received", "deferred", "deferred", "sent"]
    assert events[-1]["reply"] == "250 2.6.0 <x> Queued mail for delivery"


def test_orig_to_is_accepted(plan):
    line = BOUNCED_EOP.replace(
        "to=<carol@fabrikam.example>,", "to=<carol@fabrikam.example>, orig_to=<Carol@Fabrikam.example>,"
    )
    e = parse_log(received() + [line], plan)[1]
    assert (e["event"], e["rcpt"]) == ("bounced", "carol@fabrikam.example")


def test_recipient_is_lower_cased(plan):
    line = BOUNCED_EOP.replace("to=<carol@fabrikam.example>", "to=<Carol@FABRIKAM.example>")
    assert parse_log(received() + [line], plan)[1]["rcpt"] == "carol@fabrikam.example"


def test_status_for_an_unknown_queue_id_is_ignored(plan):
    assert parse_log([BOUNCED_EOP], plan) == []


# ---------------------------------------------------------------- TLS details, by smtp process id


def tls_line(
    pid,
    transport="conn0",
    peer="fabrikam.mail.protection.outlook.test[198.51.100.25]:25",
    trust="Untrusted",
    version="TLSv1.2",
):
    return (
        f"Nov 27 02:54:01 gw postfix/{transport}/smtp[{pid}]: {trust} TLS connection established to "
        f"{peer}: {version} with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"
    )


def test_tls_details_come_from_the_same_process(plan):
    lines = received() + [
        tls_line(123, version="TLSv1.2"),
        tls_line(999, version="TLSv1.3", trust="Trusted"),
        BOUNCED_EOP,
    ]
    e = parse_log(lines, plan)[1]
    assert e["tls"] == {
        "version": "TLSv1.2",
        "trust": "Untrusted",
        "client_certificate": "gw-selfsigned",
        "client_certificate_cn": "gw.contoso.example",
    }


def test_tls_details_from_another_process_are_not_used(plan):
    e = parse_log(received() + [tls_line(999), BOUNCED_EOP], plan)[1]
    assert e["tls"] is None


def test_server_side_tls_lines_are_not_client_tls(plan):
    smtpd_tls = (
        "Nov 27 02:54:01 gw postfix/smtpd[123]: Anonymous TLS connection established from "
        "unknown[198.51.100.40]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
    )
    e = parse_log(received() + [smtpd_tls, BOUNCED_EOP], plan)[1]
    assert e["tls"] is None


def test_tls_details_without_client_certificate(plan):
    s = copy.deepcopy(plan.scenario)
    s.gateway.connectors[0].certificate = None
    bare = plan.model_copy(update={"scenario": s})
    e = parse_log(received() + [tls_line(123), BOUNCED_EOP], bare)[1]
    assert e["tls"] == {
        "version": "TLSv1.2",
        "trust": "Untrusted",
        "client_certificate": None,
        "client_certificate_cn": None,
    }


def test_tls_details_of_an_earlier_connection_are_not_reused(plan):
    plaintext_sent = (
        f"Nov 27 02:54:02 gw postfix/conn0/smtp[186]: {QID}: to=<carol@fabrikam.example>, "
        "relay=fabrikam.mail.protection.outlook.test[198.51.100.25]:25, delay=0.1, delays=0/0/0/0, dsn=2.6.0, "
        "status=sent (250 2.6.0 <to-fabrikam.4992cfd1@traffic.labgen.test> Queued mail for delivery)"
    )
    lines = REAL_LOG + received() + [plaintext_sent]  # pid 186 last used TLS to mx.northwind.example
    e = only(parse_log(lines, plan), event="sent", queue_id=QID)
    assert e["tls"] is None
