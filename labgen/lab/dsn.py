"""Non-delivery reports (RFC 3464 delivery status notifications): the built-in gateway writes
them as Postfix does, and the mailbox services recognise them. The traffic's message id travels
as the DSN envelope id (ENVID), which every DSN quotes back as Original-Envelope-Id, so an NDR
joins the message it reports on."""

from __future__ import annotations

import datetime as dt
import re
from email.utils import format_datetime
from pathlib import Path

from ..results.contracts import Ndr
from .ledger import Ledger, header, safe_id

_ORIG_ENVID = re.compile(rb"^Original-Envelope-Id:\s*(\S+)", re.I | re.M)


def original_envid(message: bytes) -> str | None:
    """The Original-Envelope-Id of a delivery-status report, or None for any other message and
    for an id outside the traffic's grammar (whoever sent the report wrote it)."""
    ctype = (header(message, "Content-Type") or "").lower()
    if "multipart/report" not in ctype or "delivery-status" not in ctype:
        return None
    m = _ORIG_ENVID.search(message)
    return safe_id(m.group(1).decode("ascii", "replace")) if m else None


def note_ndr(ledger: Ledger, message: bytes, mailbox: str, path: Path, mailroot: Path) -> None:
    """A mailbox service that just delivered an NDR says which message it reports on."""
    original = original_envid(message)
    if original:
        ledger.emit(
            Ndr(event="ndr", msgid=original, to=mailbox, mailbox=mailbox, file=str(path.relative_to(mailroot.parent)))
        )


def build_ndr(
    reporting_mta: str, queue_id: str, sender: str, envid: str | None, failures: list[tuple[str, str]], original: bytes
) -> bytes:
    """A bounce like Postfix's: text part, message/delivery-status, the original's headers."""
    boundary = f"{queue_id}.ndr/{reporting_mta}"
    head = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    reasons = "\r\n".join(f"<{rcpt}>: {reply}" for rcpt, reply in failures)
    per_rcpt = "\r\n\r\n".join(
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {_status(reply)}\r\n"
        f"Diagnostic-Code: smtp; {reply}"
        for rcpt, reply in failures
    )
    envid_line = f"Original-Envelope-Id: {envid}\r\n" if envid else ""
    text = (
        f"From: MAILER-DAEMON@{reporting_mta} (Mail Delivery System)\r\n"
        f"To: {sender}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(dt.datetime.now(dt.UTC))}\r\n"
        f"Message-ID: <{queue_id}.ndr@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"This is the mail system at host {reporting_mta}.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n\r\n"
        f"{reasons}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {reporting_mta}\r\nX-Postfix-Queue-ID: {queue_id}\r\n{envid_line}\r\n"
        f"{per_rcpt}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{head}\r\n\r\n"
        f"--{boundary}--\r\n"
    )
    return text.encode("utf-8")


def _status(reply: str) -> str:
    """The enhanced status code right after the SMTP code ('... said: 550 5.7.64 ...'), or one
    the reply starts with ('5.4.4 Host not found'); never a piece of an IP address."""
    m = re.search(r"(?:^|\b[245]\d\d[ -])([245]\.\d{1,3}\.\d{1,3})\b", reply)
    return m.group(1) if m else "5.0.0"
