"""One SMTP delivery attempt, as a sending MTA makes it: EHLO, STARTTLS per the TLS level with an
optional client certificate, MAIL/RCPT/DATA, each recipient's reply kept. Used by the built-in
gateway and by the traffic generators (smtplib, blocking: callers run it in a thread)."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Result:
    host: str
    ip: str
    port: int
    tls_version: Optional[str] = None
    # rcpt -> (code, reply); code 0 = no answer (connection failed)
    replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"


def _reply(code: int, msg: bytes | str) -> str:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return f"{code} {' '.join(text.split())}"


def client_tls_context(chain: Optional[str], key: Optional[str]) -> ssl.SSLContext:
    # Like an MTA's opportunistic TLS: encrypt, but do not authenticate the server.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if chain and key:
        ctx.load_cert_chain(chain, key)
    return ctx


def send(data: bytes, mail_from: str, rcpts: list[str], *, host: str, ip: str, port: int,
         helo: str, source_ip: Optional[str] = None, tls: str = "may",
         tls_context: Optional[ssl.SSLContext] = None, envid: Optional[str] = None,
         timeout: float = 10.0) -> Result:
    res = Result(host=host, ip=ip, port=port)

    def fail_all(code: int, text: str):
        for r in rcpts:
            res.replies.setdefault(r, (code, text))

    try:
        smtp = smtplib.SMTP(timeout=timeout, local_hostname=helo,
                            source_address=(source_ip, 0) if source_ip else None)
        code, msg = smtp.connect(ip, port)
        smtp._host = host  # the name STARTTLS sends as SNI (connect() by IP leaves it empty)
        if code != 220:
            fail_all(code, _reply(code, msg))
            smtp.close()
            return res
    except (OSError, smtplib.SMTPException) as e:
        res.error = f"connect to {res.relay}: {e}"
        fail_all(0, res.error)
        return res
    data_done = False
    try:
        smtp.ehlo()
        if tls != "none":
            if smtp.has_extn("starttls"):
                smtp.starttls(context=tls_context or client_tls_context(None, None))
                smtp.ehlo()
                res.tls_version = smtp.sock.version()
            elif tls == "encrypt":
                fail_all(0, f"TLS is required, but was not offered by host {res.relay}")
                smtp.quit()
                return res
        options = [f"ENVID={envid}"] if envid and smtp.has_extn("dsn") else []
        code, msg = smtp.mail(mail_from, options)
        if code >= 400:
            fail_all(code, _reply(code, msg))
            smtp.rset()
            smtp.quit()
            return res
        accepted = []
        for r in rcpts:
            code, msg = smtp.rcpt(r)
            res.replies[r] = (code, _reply(code, msg))
            if code < 300:
                accepted.append(r)
        if accepted:
            code, msg = smtp.data(data)
            for r in accepted:
                res.replies[r] = (code, _reply(code, msg))
        data_done = True
        smtp.quit()
    except (OSError, ValueError, smtplib.SMTPException) as e:
        res.error = f"conversation with {res.relay} failed: {e}"
        try:
            smtp.close()
        except OSError:
            pass
    if res.error and not data_done:
        # Nothing was taken unless DATA was answered: a recipient accepted at RCPT is not sent.
        for r in rcpts:
            if res.replies.get(r, (0, ""))[0] < 400:
                res.replies[r] = (0, res.error)
    return res
