"""Non-delivery reports: the built-in gateway's NDR, and recognising Postfix's, joined to the
original message through the DSN envelope id."""

from __future__ import annotations

import pytest

from labgen.lab.dsn import build_ndr, original_envid
from labgen.lab.ledger import header

ORIGINAL = (
    b"From: alice@contoso.example\r\nTo: carol@fabrikam.example\r\nSubject: Q3\r\n"
    b"X-Labgen-Id: to-fabrikam\r\n\r\nbody\r\n"
)

# The shape of Postfix 3.7's bounce (folded Content-Type, X-Postfix-Queue-ID), trimmed.
POSTFIX_NDR = (
    b"From: MAILER-DAEMON@gw.contoso.example (Mail Delivery System)\r\n"
    b"To: alice@contoso.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n"
    b'\tboundary="15EC6122879.1795749800/gw.contoso.example"\r\n\r\n'
    b"--15EC6122879.1795749800/gw.contoso.example\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; gw.contoso.example\r\nX-Postfix-Queue-ID: 15EC6122879\r\n"
    b"Original-Envelope-Id: to-fabrikam\r\n\r\nFinal-Recipient: rfc822; carol@fabrikam.example\r\n"
    b"Action: failed\r\nStatus: 5.7.64\r\n\r\n--15EC6122879.1795749800/gw.contoso.example--\r\n"
)


def present(message: bytes, name: str) -> str:
    """A header the test expects the message to have."""
    value = header(message, name)
    assert value is not None, f"no {name} header"
    return value


@pytest.mark.parametrize(
    "message, envid",
    [
        (POSTFIX_NDR, "to-fabrikam"),
        (
            build_ndr(
                "gw.contoso.example",
                "ABC123",
                "alice@contoso.example",
                "to-fabrikam",
                [("carol@fabrikam.example", "550 5.7.64 TenantAttribution; Relay Access Denied")],
                ORIGINAL,
            ),
            "to-fabrikam",
        ),
        (
            build_ndr(
                "gw.contoso.example",
                "ABC124",
                "alice@contoso.example",
                None,
                [("carol@fabrikam.example", "550 5.4.1 Recipient address rejected")],
                ORIGINAL,
            ),
            None,
        ),
        (ORIGINAL, None),  # not a report
        (ORIGINAL.replace(b"body", b"Original-Envelope-Id: fake"), None),  # a quote in an ordinary message
    ],
    ids=["postfix", "built-in", "built-in-no-envid", "plain-message", "plain-message-quoting"],
)
def test_original_envid(message, envid):
    assert original_envid(message) == envid


def test_built_in_ndr_reads_like_postfix():
    ndr = build_ndr(
        "gw.contoso.example",
        "ABC123",
        "alice@contoso.example",
        "to-fabrikam",
        [("carol@fabrikam.example", "host x[1.2.3.4]:25 said: 550 5.7.64 TenantAttribution")],
        ORIGINAL,
    )
    assert present(ndr, "From").startswith("MAILER-DAEMON@gw.contoso.example")
    assert header(ndr, "To") == "alice@contoso.example"
    assert b"Status: 5.7.64\r\n" in ndr and b"Action: failed" in ndr
    assert b"Subject: Q3" in ndr  # the original's headers come back
    assert header(ndr, "X-Labgen-Id") is None  # the NDR is not the original message


def test_header_unfolds_continuation_lines():
    assert "boundary=" in present(POSTFIX_NDR, "Content-Type")
