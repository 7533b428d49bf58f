"""One SMTP delivery attempt, as a sending MTA makes it: EHLO, STARTTLS per the TLS level with an
optional client certificate, MAIL/RCPT/DATA, each recipient's reply kept. Used by the built-in
gateway and by the traffic generators (smtplib, blocking: callers run it in a thread)."""

from __future__ import annotations

import smtplib
import ssl
import warnings
from dataclasses import dataclass, field


@dataclass
class Result:
    host: str
    ip: str
    port: int
    tls_version: str | None = None
    # rcpt -> (code, reply); code 0 = no answer (connection failed)
    replies: dict[str, tuple[int, str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

    @classmethod
    def unopened(cls, host: str, ip: str, port: int, rcpts: list[str], failed: tuple[int, str]) -> Result:
        """Every recipient's answer when the session could not be opened (code 0: no answer)."""
        code, text = failed
        return cls(
            host=host, ip=ip, port=port, replies={r: (code, text) for r in rcpts}, error=text if code == 0 else None
        )


def _reply(code: int, msg: bytes | str) -> str:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return f"{code} {' '.join(text.split())}"


# Postfix's smtp client, word for word (smtp_proto.c): the status text of a delivery it defers.
TLS_HANDSHAKE_FAILED = "4.7.5 Cannot start TLS: handshake failure"
SERVER_NOT_VERIFIED = "4.7.5 Server certificate not verified"


# Postfix's protocol names (SendConnector.TLS_VERSIONS) as Python's.
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# OpenSSL's default cipher list at security level 0: OpenSSL 3 allows TLS 1.0/1.1 only there.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"


def _versions(ctx: ssl.SSLContext, versions: tuple[str, str] | None) -> None:
    """smtp_tls_protocols: the connector's (oldest, newest) TLS version; None = TLS 1.2 or later.
    A range that reaches below TLS 1.2 lowers OpenSSL's security level to 0, the only one that
    allows TLS 1.0/1.1 (Postfix's client context is at level 0 already; master.cf.j2)."""
    low, high = versions or ("TLSv1.2", "TLSv1.3")
    with warnings.catch_warnings():  # Python deprecates TLS 1.0/1.1; a legacy connector is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = _TLS_VERSIONS[low], _TLS_VERSIONS[high]
    if ctx.minimum_version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers(LEGACY_CIPHERS)


def secure_tls_context(
    ca_file: str, chain: str | None, key: str | None, versions: tuple[str, str] | None = None
) -> ssl.SSLContext:
    """smtp_tls_security_level = secure with smtp_tls_CAfile: the server's chain must verify
    against the CA file; its name is checked after the handshake (`cert_matches`), as Postfix's
    smtp_tls_secure_cert_match does, not by Python's hostname check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _versions(ctx, versions)
    ctx.load_verify_locations(ca_file)
    if chain and key:
        ctx.load_cert_chain(chain, key)
    return ctx


def cert_names(peer: dict) -> list[str]:
    """The DNS names of a certificate as ssl.getpeercert() gives it: its DNS subjectAltNames, or
    its CN when it has none (OpenSSL's X509_check_host)."""
    sans = [v.lower() for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
    if sans:
        return sans
    return [v.lower() for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]


def cert_matches(names: list[str], nexthop: str) -> bool:
    """Postfix's default smtp_tls_secure_cert_match = nexthop, dot-nexthop: a name equal to the
    next-hop domain or in a subdomain of it; a wildcard '*.' stands for one whole left-most label."""
    nexthop = nexthop.lower().rstrip(".")
    for name in names:
        if name == nexthop or name.endswith("." + nexthop):  # nexthop; dot-nexthop
            return True
        if name.startswith("*.") and "." in nexthop and nexthop.split(".", 1)[1] == name[2:]:
            return True
    return False


def client_tls_context(chain: str | None, key: str | None, versions: tuple[str, str] | None = None) -> ssl.SSLContext:
    # Like an MTA's opportunistic TLS: encrypt, but do not authenticate the server.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _versions(ctx, versions)
    if chain and key:
        ctx.load_cert_chain(chain, key)
    return ctx


class Session:
    """One SMTP connection that carries several transactions in turn, as an MTA's connection
    cache does (Postfix's smtp_connection_cache_*): connect, EHLO, STARTTLS per the TLS level
    once, then MAIL/RCPT/DATA per message. Blocking: callers run it in a thread."""

    def __init__(
        self,
        *,
        host: str,
        ip: str,
        port: int,
        helo: str,
        source_ip: str | None = None,
        tls: str = "may",
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        tls_nexthop: str | None = None,
    ):
        self.host, self.ip, self.port = host, ip, port
        self.helo, self.source_ip, self.tls, self.tls_context, self.timeout = helo, source_ip, tls, tls_context, timeout
        self.tls_nexthop = tls_nexthop or host  # what a 'secure' server certificate must name
        self.smtp: smtplib.SMTP | None = None
        self.tls_version: str | None = None
        self.dsn = False
        self.used = 0  # transactions sent

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

    def open(self) -> tuple[int, str] | None:
        """Connect and greet; None when ready for MAIL, else what every recipient is told
        (code 0: no SMTP answer). A failed session is closed."""
        try:
            smtp = smtplib.SMTP(
                timeout=self.timeout,
                local_hostname=self.helo,
                source_address=(self.source_ip, 0) if self.source_ip else None,
            )
            code, msg = smtp.connect(self.ip, self.port)
            smtp._host = self.host  # type: ignore[attr-defined]  # the SNI name (connect() by IP leaves it empty)
        except smtplib.SMTPServerDisconnected as e:
            if "timed out" in str(e):  # connected, but no greeting in time: Postfix's words (smtp_chat.c)
                return (
                    0,
                    f"conversation with {self.host}[{self.ip}] timed out while receiving the initial server greeting",
                )
            return 0, f"connect to {self.relay}: {e}"
        except (OSError, smtplib.SMTPException) as e:
            return 0, f"connect to {self.relay}: {e}"
        self.smtp = smtp
        if code != 220:
            self.close()
            return code, _reply(code, msg)
        try:
            smtp.ehlo()
            if self.tls != "none":
                if smtp.has_extn("starttls"):
                    failed = self._starttls(smtp)
                    if failed is not None:
                        return failed
                elif self.tls in ("encrypt", "secure"):
                    smtp.quit()
                    self.smtp = None
                    return 0, f"TLS is required, but was not offered by host {self.relay}"
            self.dsn = smtp.has_extn("dsn")
        except (OSError, ValueError, smtplib.SMTPException) as e:
            self.close()
            return 0, f"conversation with {self.relay} failed: {e}"
        return None

    def _starttls(self, smtp: smtplib.SMTP) -> tuple[int, str] | None:
        """STARTTLS, then (at 'secure') the server's name. A failure is Postfix's deferral text;
        whether to retry in plaintext is the caller's decision (Postfix: only at 'may', after
        minimal_backoff_time)."""
        try:
            smtp.starttls(context=self.tls_context or client_tls_context(None, None))
        except smtplib.SMTPResponseException as e:
            # The server refused STARTTLS (e.g. 454). Postfix (smtp_proto.c) goes on in plaintext
            # at 'may' and defers when TLS is mandatory, in these words.
            if self.tls == "may":
                return None
            self.quit()
            return (
                0,
                f"TLS is required, but host {self.relay} refused to start TLS: {_reply(e.smtp_code, e.smtp_error)}",
            )
        except ssl.SSLCertVerificationError:
            self.close()  # the chain does not verify against smtp_tls_CAfile
            return 0, SERVER_NOT_VERIFIED
        except (ssl.SSLError, ConnectionError):
            self.close()
            return 0, TLS_HANDSHAKE_FAILED
        sock = smtp.sock
        if not isinstance(sock, ssl.SSLSocket):  # wrap_socket() gives one or raises
            raise RuntimeError(f"STARTTLS with {self.relay} left no TLS socket")
        if self.tls == "secure" and not cert_matches(cert_names(sock.getpeercert() or {}), self.tls_nexthop):
            self.quit()  # Postfix ends the session politely over TLS
            return 0, SERVER_NOT_VERIFIED
        self.tls_version = sock.version()
        smtp.ehlo()
        return None

    def transact(self, data: bytes, mail_from: str, rcpts: list[str], envid: str | None = None) -> Result:
        """One message on the open session; afterwards the session is ready for the next one,
        or closed (self.smtp is None) when the conversation failed."""
        res = Result(host=self.host, ip=self.ip, port=self.port, tls_version=self.tls_version)
        smtp = self.smtp
        if smtp is None:
            res.error = f"no connection to {self.relay}"
            res.replies = {r: (0, res.error) for r in rcpts}
            return res
        self.used += 1
        data_done = False
        try:
            code, msg = smtp.mail(mail_from, [f"ENVID={envid}"] if envid and self.dsn else [])
            if code >= 400:
                for r in rcpts:
                    res.replies[r] = (code, _reply(code, msg))
                smtp.rset()
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
            else:
                smtp.rset()
            data_done = True
        except (OSError, ValueError, smtplib.SMTPException) as e:
            res.error = f"conversation with {self.relay} failed: {e}"
            self.close()
        if res.error and not data_done:
            # Nothing was taken unless DATA was answered: a recipient accepted at RCPT is not sent.
            for r in rcpts:
                if res.replies.get(r, (0, ""))[0] < 400:
                    res.replies[r] = (0, res.error)
        return res

    def quit(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (OSError, smtplib.SMTPException):
                self.close()
            self.smtp = None

    def close(self) -> None:
        """Drop the connection without QUIT (after a failure)."""
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
            self.smtp = None


def send(
    data: bytes,
    mail_from: str,
    rcpts: list[str],
    *,
    host: str,
    ip: str,
    port: int,
    helo: str,
    source_ip: str | None = None,
    tls: str = "may",
    tls_context: ssl.SSLContext | None = None,
    envid: str | None = None,
    timeout: float = 10.0,
) -> Result:
    """One message on a connection of its own."""
    session = Session(
        host=host, ip=ip, port=port, helo=helo, source_ip=source_ip, tls=tls, tls_context=tls_context, timeout=timeout
    )
    failed = session.open()
    if failed is not None:
        code, text = failed
        res = Result(host=host, ip=ip, port=port, replies={r: (code, text) for r in rcpts})
        res.error = text if code == 0 else None
        return res
    res = session.transact(data, mail_from, rcpts, envid)
    session.quit()
    return res
