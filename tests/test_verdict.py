"""The verdict (verdict.classify): every service's events joined per message and recipient, and one
outcome each (DESIGN.md §2). Events are built in the shapes the services write them: traffic
`submitted`, gateway `received`/`sent`/`deferred`/`bounced` (built-in gateway and Postfix log),
eop `rcpt`/`accepted`/`delivered`/`discarded`, sink `delivered`, trace `trace`."""

from __future__ import annotations

import copy
import itertools

import pytest

from labgen.model.plan import make_plan
from labgen.model.scenario import load_scenario
from labgen.results import verdict
from labgen.results.contracts import dump, parse_event
from labgen.results.verdict import settled


def classify(plan, events):
    """The verdict over these dicts, each read as the typed event a ledger line becomes."""
    return verdict.classify(plan, [parse_event(e) for e in events])


def summary(results):
    return verdict.summary(results).model_dump()


GW = "gw.contoso.example[198.51.100.10]:25"
EOP = "fabrikam.mail.protection.outlook.test[198.51.100.25]:25"
SINK = "mx.northwind.example[198.51.100.80]:25"
QUEUED_GW = "250 2.0.0 Ok: queued as 4C98AE2BA7"
QUEUED_EOP = (
    "250 2.6.0 <to-fabrikam.0badc0de@traffic.labgen.test> [InternalId=0000000000001, "
    "Hostname=dm6nam12ft011.mail.protection.outlook.test] Queued mail for delivery"
)
CONTOSO_CERT_ATT = {
    "tenant": "contoso",
    "by": "certificate",
    "connector": "Inbound from gateway",
    "detail": "certificate name 'gw.contoso.example' matches",
}
FABRIKAM_RCPT_ATT = {"tenant": "fabrikam", "by": "recipient", "connector": None, "detail": "recipient domain"}

_clock = itertools.count(1)


def ev(service, event, msgid="to-fabrikam", rcpt="carol@fabrikam.example", **fields):
    """One ledger event; the clock ticks so that list order is time order."""
    e = {"ts": 1_700_000_000 + next(_clock) / 1000, "service": service, "event": event, "msgid": msgid, **fields}
    if rcpt is not None:
        e["rcpt"] = rcpt
    return e


def submitted(reply=QUEUED_GW, code=None, entry="gateway", relay=GW, **kw):
    return ev(
        "traffic",
        "submitted",
        entry=entry,
        relay=relay,
        code=code if code is not None else int(reply[:3]),
        reply=reply,
        **kw,
    )


def gw_received(msgid="to-fabrikam", rcpts=("carol@fabrikam.example",), client_ip="198.51.100.40"):
    return ev(
        "gateway",
        "received",
        msgid=msgid,
        rcpt=None,
        queue_id="4C98AE2BA7",
        mail_from="alice@contoso.example",
        rcpts=list(rcpts),
        client_ip=client_ip,
        tls="TLSv1.3",
    )


def gw(event, reply, relay=EOP, connector="Internet", **kw):
    return ev(
        "gateway",
        event,
        queue_id="4C98AE2BA7",
        connector=connector,
        relay=relay,
        reply=reply,
        source_ip="198.51.100.10",
        **kw,
    )


def eop_rcpt(action, reply, attribution=CONTOSO_CERT_ATT, reason="because", **kw):
    return ev(
        "eop",
        "rcpt",
        mail_from="alice@contoso.example",
        client_ip="198.51.100.10",
        tls=True,
        certificate=None,
        attribution=attribution,
        action=action,
        reply=reply,
        reason=reason,
        tenant="fabrikam",
        **kw,
    )


def eop_accepted(msgid="to-fabrikam"):
    return ev(
        "eop",
        "accepted",
        msgid=msgid,
        rcpt=None,
        mail_from="alice@contoso.example",
        rcpts=["carol@fabrikam.example"],
        reply=QUEUED_EOP,
        size=743,
    )


def eop_delivered(**kw):
    fields = {
        "mailbox": "carol@fabrikam.example",
        "tenant": "fabrikam",
        "file": "mailboxes/carol@fabrikam.example/0001-to-fabrikam.eml",
        **kw,
    }
    return ev("eop", "delivered", **fields)


def eop_discarded(reason="cross-tenant misattribution; accepted and discarded"):
    return ev(
        "eop",
        "discarded",
        reason=reason,
        attribution=CONTOSO_CERT_ATT,
        certificate={"names": ["gw.contoso.example"], "trusted": False},
        client_ip="198.51.100.10",
    )


def trace(status="Delivered", msgid="to-fabrikam", rcpt="carol@fabrikam.example", tenant=None):
    tenant = tenant or ("contoso" if "contoso" in rcpt else "fabrikam")  # the recipient's, unless given
    return ev("trace", "trace", msgid=msgid, rcpt=rcpt, tenant=tenant, sender="alice@contoso.example", status=status)


def hop_through_gateway(*after):
    """Traffic hands the message to the gateway, which relays it to EOP with 250."""
    return [submitted(), gw_received(), gw("sent", QUEUED_EOP), *after]


@pytest.fixture(scope="module")
def plan():
    return make_plan(load_scenario("broken"), "docker")


def result_for(plan, events, msgid="to-fabrikam", rcpt="carol@fabrikam.example"):
    results = classify(plan, events)
    return next(r for r in results if (r.msgid, r.rcpt) == (msgid, rcpt))


# ---------------------------------------------------------------- outcomes

CASES = [
    # id, events, outcome
    (
        "eop-delivered",
        hop_through_gateway(
            eop_rcpt("deliver", "250 2.1.5 Recipient OK", FABRIKAM_RCPT_ATT), eop_accepted(), eop_delivered()
        ),
        "delivered",
    ),
    (
        "eop-delivered-after-a-deferral",
        [
            submitted(),
            gw_received(),
            gw("deferred", "451 5.7.3 STARTTLS is required to send mail"),
            gw("sent", QUEUED_EOP),
            eop_rcpt("deliver", "250 2.1.5 Recipient OK", FABRIKAM_RCPT_ATT),
            eop_delivered(),
        ],
        "delivered",
    ),
    (
        "silently-discarded",
        hop_through_gateway(eop_rcpt("discard", "250 2.1.5 Recipient OK"), eop_accepted(), eop_discarded()),
        "silently_discarded",
    ),
    (
        "gateway-bounced-5xx",
        [submitted(), gw_received(), gw("bounced", "550 5.7.64 TenantAttribution; Relay Access Denied")],
        "rejected",
    ),
    (
        "eop-rcpt-reject-5xx",
        [
            submitted(),
            gw_received(),
            eop_rcpt("reject", "550 5.7.64 TenantAttribution; Relay Access Denied"),
            gw("bounced", "550 5.7.64 TenantAttribution; Relay Access Denied"),
        ],
        "rejected",
    ),
    (
        "eop-rcpt-reject-logged-before-the-gateway-knew",
        [submitted(), gw_received(), eop_rcpt("reject", "550 5.4.1 Recipient address rejected: Access denied")],
        "rejected",
    ),
    ("traffic-submitted-5xx", [submitted(reply="554 5.7.1 <carol@fabrikam.example>: Relay access denied")], "rejected"),
    (
        "gateway-deferred-last",
        [submitted(), gw_received(), gw("deferred", "451 5.7.3 STARTTLS is required to send mail")],
        "deferred",
    ),
    (
        "gateway-deferred-connection-refused",
        [
            submitted(),
            gw_received(),
            gw(
                "deferred",
                "4.4.1 connect to fabrikam.mail.protection.outlook.test[198.51.100.25]:25: Connection refused",
                relay=None,
            ),
        ],
        "deferred",
    ),
    (
        "eop-4xx-is-not-a-reject",
        [
            submitted(),
            gw_received(),
            eop_rcpt("reject", "451 5.7.3 STARTTLS is required to send mail"),
            gw("deferred", "451 5.7.3 STARTTLS is required to send mail"),
        ],
        "deferred",
    ),
    ("traffic-submit-4xx", [submitted(reply="451 4.3.0 Try again later")], "deferred"),
    ("traffic-submit-no-answer", [submitted(reply="[Errno 111] Connection refused", code=0, relay=None)], "deferred"),
    ("received-but-no-attempt-yet", [submitted(), gw_received()], "deferred"),
    ("unaccounted-gateway-has-no-record", [submitted()], "unaccounted"),
    ("unaccounted-received-is-another-message", [submitted(), gw_received(msgid="to-internet")], "unaccounted"),
    ("unaccounted-sent-250-no-downstream-record", hop_through_gateway(), "unaccounted"),
    ("unaccounted-nothing-at-all", [], "unaccounted"),
    (
        "unaccounted-other-recipient-delivered",
        hop_through_gateway(eop_delivered(rcpt="bob@contoso.example", mailbox="bob@contoso.example", tenant="contoso")),
        "unaccounted",
    ),
]


@pytest.mark.parametrize("events, outcome", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_outcome(plan, events, outcome):
    r = result_for(plan, events)
    assert r.outcome == outcome, r.why
    assert r.why


def test_sink_delivered(plan):
    events = [
        submitted(rcpt="dave@northwind.example", msgid="to-internet"),
        gw_received(msgid="to-internet", rcpts=["dave@northwind.example"]),
        gw("sent", "250 2.0.0 Ok: queued", relay=SINK, msgid="to-internet", rcpt="dave@northwind.example"),
        ev(
            "sink",
            "delivered",
            msgid="to-internet",
            rcpt="dave@northwind.example",
            mailbox="dave@northwind.example",
            client_ip="198.51.100.10",
            tls="TLSv1.3",
            file="mailboxes/dave@northwind.example/0001-to-internet.eml",
        ),
    ]
    r = result_for(plan, events, "to-internet", "dave@northwind.example")
    assert r.outcome == "delivered"
    assert r.recipient_trace_visible is True  # the internet recipient has the message itself
    assert "dave@northwind.example" in r.why and "internet sink" in r.why


def test_discard_names_the_dropping_hop(plan):
    r = result_for(plan, hop_through_gateway(eop_rcpt("discard", "250 2.1.5 Recipient OK"), eop_discarded()))
    assert r.outcome == "silently_discarded"
    assert r.dropped_by.service == "eop"
    assert r.dropped_by.reason == "cross-tenant misattribution; accepted and discarded"
    assert r.dropped_by.attribution.model_dump() == CONTOSO_CERT_ATT
    assert r.dropped_by.client_ip == "198.51.100.10"
    assert "answered the gateway 250" in r.why
    assert r.attribution.model_dump() == {"tenant": "contoso", "by": "certificate", "connector": "Inbound from gateway"}
    assert r.recipient_trace_visible is False
    assert r.as_dict()["dropped_by"] == dump(r.dropped_by)


def test_eop_reject_is_named_over_the_gateway_bounce(plan):
    r = result_for(
        plan,
        [
            submitted(),
            gw_received(),
            eop_rcpt("reject", "550 5.7.64 TenantAttribution; Relay Access Denied", reason="KB 3212877"),
            gw("bounced", "550 5.7.64 TenantAttribution; Relay Access Denied"),
        ],
    )
    assert r.why.startswith("eop rejected it: 550 5.7.64") and "KB 3212877" in r.why


def test_hops_are_in_travel_order_whatever_the_clocks(plan):
    """A service logs its own reply after the next hop's; hops still read traffic -> gateway -> eop."""
    delivered = eop_delivered()
    rcpt = eop_rcpt("deliver", "250 2.1.5 Recipient OK", FABRIKAM_RCPT_ATT)
    sent = gw("sent", QUEUED_EOP)
    sub = submitted()
    events = [rcpt, delivered, sent, gw_received(), sub]  # eop's clock runs ahead
    rcpt["ts"], delivered["ts"], sent["ts"], sub["ts"] = 1.0, 2.0, 3.0, 4.0
    r = result_for(plan, events)
    assert [(h.service, h.event) for h in r.hops] == [
        ("traffic", "submitted"),
        ("gateway", "sent"),
        ("eop", "rcpt"),
        ("eop", "delivered"),
    ]
    assert r.outcome == "delivered"


def test_trace_visibility_comes_from_the_trace(plan):
    base = hop_through_gateway(eop_rcpt("deliver", "250 2.1.5 Recipient OK", FABRIKAM_RCPT_ATT), eop_delivered())
    assert result_for(plan, base).recipient_trace_visible is False
    assert result_for(plan, base + [trace()]).recipient_trace_visible is True


def test_only_the_recipient_tenants_trace_makes_it_visible_to_its_admin(plan):
    """The attributed (sender) tenant's trace line is shown as such, not as the recipient's."""
    base = hop_through_gateway(eop_rcpt("discard", "250 2.1.5 Recipient OK"), eop_discarded())
    r = result_for(plan, base + [trace("Failed", tenant="contoso")])
    assert r.recipient_trace_visible is False
    assert [(t.tenant, t.status) for t in r.trace] == [("contoso", "Failed")]


def test_recipient_case_is_ignored(plan):
    events = hop_through_gateway(
        eop_rcpt("deliver", "250 2.1.5 Recipient OK", FABRIKAM_RCPT_ATT), eop_delivered(rcpt="Carol@Fabrikam.EXAMPLE")
    )
    assert result_for(plan, events).outcome == "delivered"


BOUNCES_WITHOUT_SMTP_CODE = [
    # Postfix's own words (postfix._reply prefixes the DSN): relay=none, no server reply.
    (
        "postfix-dns-bounce",
        "5.4.4 Host or domain name not found. Name service error for name=fabrikam.example type=MX: Host not found",
    ),
    # The built-in gateway's permanent DNS failure (gateway._attempt logs nexthop.DnsFailure as is).
    (
        "builtin-gateway-dns-bounce",
        "Host or domain name not found. Name service error for name=fabrikam.example type=MX: Host not found",
    ),
]


@pytest.mark.parametrize(
    "reply", [c[1] for c in BOUNCES_WITHOUT_SMTP_CODE], ids=[c[0] for c in BOUNCES_WITHOUT_SMTP_CODE]
)
def test_gateway_bounce_without_smtp_code_is_rejected(plan, reply):
    r = result_for(plan, [submitted(), gw_received(), gw("bounced", reply, relay=None)])
    assert r.outcome == "rejected", r.why


@pytest.mark.parametrize(
    "gateway_events",
    [
        [
            gw(
                "deferred",
                "451 5.7.3 STARTTLS is required to send mail",
                msgid="from-internet",
                rcpt="bob@contoso.example",
                connector="Office 365",
            )
        ],
        [],
    ],
    ids=["deferred-at-gateway", "queued-at-gateway"],
)
def test_inbound_mail_deferred_at_the_gateway_mx(plan, gateway_events):
    events = [
        submitted(msgid="from-internet", rcpt="bob@contoso.example", entry="mx"),
        gw_received(msgid="from-internet", rcpts=["bob@contoso.example"], client_ip="198.51.100.100"),
        *gateway_events,
    ]
    r = result_for(plan, events, "from-internet", "bob@contoso.example")
    assert r.outcome == "deferred", r.why


def test_inbound_mail_via_gateway_mx_delivered(plan):
    """Same path as above, settled: this one the verdict gets right."""
    events = [
        submitted(msgid="from-internet", rcpt="bob@contoso.example", entry="mx"),
        gw_received(msgid="from-internet", rcpts=["bob@contoso.example"], client_ip="198.51.100.100"),
        gw("sent", QUEUED_EOP, msgid="from-internet", rcpt="bob@contoso.example", connector="Office 365"),
        eop_delivered(
            msgid="from-internet", rcpt="bob@contoso.example", mailbox="bob@contoso.example", tenant="contoso"
        ),
    ]
    assert result_for(plan, events, "from-internet", "bob@contoso.example").outcome == "delivered"


# ---------------------------------------------------------------- summary and expectations


def test_classify_covers_every_message_and_recipient(plan):
    results = classify(plan, [])
    assert [(r.msgid, r.rcpt, r.expected) for r in results] == [
        ("to-fabrikam", "carol@fabrikam.example", "silently_discarded"),
        ("to-internet", "dave@northwind.example", "delivered"),
        ("from-internet", "bob@contoso.example", "delivered"),
        ("internal-routing", "bob@contoso.mail.onmicrosoft.test", "delivered"),
    ]
    assert all(r.outcome == "unaccounted" for r in results)
    assert not settled(results)


def test_summary_counts_and_failed_expectations(plan):
    events = [
        # to-fabrikam: discarded, as the broken scenario expects
        *hop_through_gateway(eop_rcpt("discard", "250 2.1.5 Recipient OK"), eop_discarded()),
        # to-internet: delivered by the sink, as expected
        submitted(msgid="to-internet", rcpt="dave@northwind.example"),
        ev(
            "sink",
            "delivered",
            msgid="to-internet",
            rcpt="dave@northwind.example",
            mailbox="dave@northwind.example",
            file="mailboxes/dave@northwind.example/0001-to-internet.eml",
        ),
        # from-internet: rejected, but expected delivered
        submitted(
            msgid="from-internet",
            rcpt="bob@contoso.example",
            entry="mx",
            reply="550 5.4.1 Recipient address rejected: Access denied",
        ),
        # internal-routing: deferred at the gateway, but expected delivered
        submitted(msgid="internal-routing", rcpt="bob@contoso.mail.onmicrosoft.test"),
        gw_received(msgid="internal-routing", rcpts=["bob@contoso.mail.onmicrosoft.test"]),
        gw("deferred", "451 4.4.0 try later", msgid="internal-routing", rcpt="bob@contoso.mail.onmicrosoft.test"),
    ]
    results = classify(plan, events)
    assert [r.outcome for r in results] == ["silently_discarded", "delivered", "rejected", "deferred"]
    assert [r.ok for r in results] == [True, True, False, False]
    assert summary(results) == {
        "total": 4,
        "delivered": 1,
        "silently_discarded": 1,
        "rejected": 1,
        "deferred": 1,
        "unaccounted": 0,
        "expectations_failed": 2,
    }
    assert not settled(results)


def test_summary_with_unaccounted_and_no_expectation(plan):
    s = copy.deepcopy(plan.scenario)
    for m in s.traffic:
        m.expect = None
    bare = plan.model_copy(update={"scenario": s})
    results = classify(bare, hop_through_gateway(eop_delivered()))
    assert [r.ok for r in results] == [None] * 4
    assert summary(results) == {
        "total": 4,
        "delivered": 1,
        "silently_discarded": 0,
        "rejected": 0,
        "deferred": 0,
        "unaccounted": 3,
        "expectations_failed": 0,
    }


def _settled_run():
    """Every recipient of 'broken' with each hop's own disposition logged."""
    sink_ok = dict(msgid="to-internet", rcpt="dave@northwind.example")
    inbound = dict(msgid="from-internet", rcpt="bob@contoso.example")
    return [
        *hop_through_gateway(eop_rcpt("discard", "250 2.1.5 Recipient OK"), eop_discarded()),
        submitted(**sink_ok),
        gw("sent", "250 2.0.0 Ok: queued", relay=SINK, **sink_ok),
        ev(
            "sink",
            "delivered",
            mailbox="dave@northwind.example",
            file="mailboxes/dave@northwind.example/0001-to-internet.eml",
            **sink_ok,
        ),
        submitted(entry="mx", **inbound),
        gw("sent", QUEUED_EOP, **inbound),
        eop_delivered(mailbox="bob@contoso.example", tenant="contoso", **inbound),
        trace(**inbound),
        submitted(msgid="internal-routing", rcpt="bob@contoso.mail.onmicrosoft.test", reply="550 5.1.1 no"),
    ]


def test_settled_when_every_hop_logged_its_disposition(plan):
    results = classify(plan, _settled_run())
    assert [r.outcome for r in results] == ["silently_discarded", "delivered", "delivered", "rejected"]
    assert settled(results)
    assert summary(results)["expectations_failed"] == 1


def _without(events, service, event, msgid=None):
    return [
        e
        for e in events
        if not (e["service"] == service and e["event"] == event and (msgid is None or e.get("msgid") == msgid))
    ]


# A disposition that another hop reports is not final until the hop itself has logged it.
NOT_YET_SETTLED = [
    ("sink-delivery-reported-by-the-gateway-only", lambda ev_: _without(ev_, "sink", "delivered")),
    ("eop-delivery-without-its-message-trace-line", lambda ev_: _without(ev_, "trace", "trace")),
    (
        "discard-before-the-traffic-logged-its-submission",
        lambda ev_: _without(ev_, "traffic", "submitted", "to-fabrikam"),
    ),
    ("eop-delivery-before-the-gateway-logged-sent", lambda ev_: _without(ev_, "gateway", "sent", "from-internet")),
]


@pytest.mark.parametrize("cut", [c[1] for c in NOT_YET_SETTLED], ids=[c[0] for c in NOT_YET_SETTLED])
def test_not_settled_until_every_hop_logged_its_own_disposition(plan, cut):
    assert not settled(classify(plan, cut(_settled_run())))
