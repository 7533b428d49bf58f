"""The SMTP server all lab services share (fake EOP, internet sinks, built-in gateway): aiosmtpd's
protocol engine with the few extensions real MTAs use against EOP. Postfix sends BDAT when the
server offers CHUNKING, and DSN parameters when it offers DSN, so those are implemented rather
than just advertised. Policy stays in the handlers (aiosmtpd's handle_* hooks)."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import datetime as dt
from email.utils import format_datetime

from aiosmtpd.smtp import SMTP, TLSSetupException

# aiosmtpd logs every failed session with a traceback; the lab's ledger is the record instead.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)

_DSN_MAIL = re.compile(r"\s+(RET|ENVID)=\S+", re.I)
_ENVID = re.compile(r"\sENVID=(\S+)", re.I)
_DSN_RCPT = re.compile(r"\s+(NOTIFY|ORCPT)=\S+", re.I)
_BODY = re.compile(r"\s+BODY=BINARYMIME", re.I)


def server_tls_context(chain: str, key: str, client_ca_bundle: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context. With a client CA bundle it asks for (but does not require) a
    client certificate and accepts any certificate in the bundle as an anchor, in or out of date,
    so that every certificate a scenario declares reaches EOP's rules; the rules judge it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(chain, key)
    if client_ca_bundle:
        ctx.load_verify_locations(client_ca_bundle)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # X509_V_FLAG_NO_CHECK_TIME (OpenSSL 1.1+): expired or not-yet-valid declared certs pass
        # the handshake; EOP records their validity instead.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | 0x200000
    return ctx


class LabSMTP(SMTP):
    def __init__(self, handler, *, banner_host: str, banner_text: str | None = None, **kw):
        kw.setdefault("enable_SMTPUTF8", True)
        kw.setdefault("decode_data", False)
        kw.setdefault("hostname", banner_host)
        super().__init__(handler, **kw)
        self._banner_text = banner_text
        self._bdat: list[bytes] = []

    def connection_made(self, transport):
        if self._banner_text is not None and self._original_transport is None:
            # EOP's banner carries the date of the connection.
            self.__ident__ = self._banner_text.format(date=format_datetime(dt.datetime.now(dt.timezone.utc)))
        super().connection_made(transport)

    async def smtp_EHLO(self, hostname: str):
        self._bdat = []
        await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str):
        self._bdat = []
        # The traffic puts its message id in the DSN ENVID; Postfix and the built-in gateway
        # carry it to the next hop, so a decision taken at RCPT time already knows the message.
        envid = _ENVID.search(" " + (arg or ""))
        if self.envelope is not None:
            self.envelope.envid = xtext_decode(envid.group(1)) if envid else None
        arg = _DSN_MAIL.sub("", arg or "")
        await super().smtp_MAIL(_BODY.sub(" BODY=8BITMIME", arg))

    async def smtp_RCPT(self, arg: str):
        await super().smtp_RCPT(_DSN_RCPT.sub("", arg or ""))

    async def smtp_QUIT(self, arg: str):
        # With ENHANCEDSTATUSCODES offered, every reply carries one (aiosmtpd says "221 Bye").
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self.push("221 2.0.0 Service closing transmission channel")
        self._handler_coroutine.cancel()
        self.transport.close()

    async def smtp_STARTTLS(self, arg: str):
        try:
            await super().smtp_STARTTLS(arg)
        except TLSSetupException as e:
            # A failed handshake (e.g. a client certificate nobody declared) ends this session
            # only; the handler gets to record why.
            hook = getattr(self.event_handler, "tls_failed", None)
            if hook:
                hook(self.session, str(e.__cause__ or e) or type(e.__cause__).__name__)
            raise

    async def smtp_BDAT(self, arg: str):
        """RFC 3030 CHUNKING: BDAT <size> [LAST]."""
        parts = (arg or "").split()
        if not parts or not parts[0].isdigit() or (len(parts) == 2 and parts[1].upper() != "LAST") or len(parts) > 2:
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            return
        size, last = int(parts[0]), len(parts) == 2
        chunk = await self._reader.readexactly(size) if size else b""
        if self.envelope is None or not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        self._bdat.append(chunk)
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        data, self._bdat = b"".join(self._bdat), []
        self.envelope.original_content = data
        self.envelope.content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if not isinstance(status, str) else status)

    def peer_certificate(self) -> bytes | None:
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return obj.getpeercert(binary_form=True) if obj else None

    def tls_version(self) -> str | None:
        obj = self.transport.get_extra_info("ssl_object") if self.transport else None
        return obj.version() if obj else None

    def local_ip(self) -> str | None:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        return sock[0] if sock else None


def xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


async def serve(factory, host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host=host, port=port, reuse_address=True)


