"""The SMTP server all lab services share (fake EOP, internet sinks, built-in gateway): aiosmtpd's
protocol engine with the few extensions real MTAs use against EOP. Postfix sends BDAT when the
server offers CHUNKING, and DSN parameters when it offers DSN, so those are implemented rather
than just advertised. Policy stays in the handlers (aiosmtpd's handle_* hooks)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import resource
import ssl
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

from .faults import REPLY_DOWN, REPLY_NO_STARTTLS
from .ledger import MSGID_HEADER, Ledger, clip, header, safe_id
from .tls import ServerTls, TlsProtocol
from .transcript import Recorder

# aiosmtpd logs every failed session with a traceback; the lab's ledger is the record instead.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
log = logging.getLogger("labgen.server")

_DSN_MAIL = re.compile(r"\s+(RET|ENVID)=\S+", re.I)
_ENVID = re.compile(r"\sENVID=(\S+)", re.I)
_SIZE = re.compile(r"\sSIZE=(\S*)", re.I)
_DSN_RCPT = re.compile(r"\s+(NOTIFY|ORCPT)=\S+", re.I)
_BODY = re.compile(r"\s+BODY=BINARYMIME", re.I)
# RFC 3030: "BDAT" SP chunk-size [SP "LAST"]; ASCII digits only (str.isdigit() takes '١٢'), and
# no more of them than a size any lab message could have.
_BDAT = re.compile(r"([0-9]{1,15})(?: +(LAST))?", re.I)

# An idle client is dropped after this long without a command (aiosmtpd's `timeout`; it also
# bounds one command with its data, e.g. a BDAT chunk: lab traffic on loopback or a lab network
# needs well under a second for the largest message EOP accepts).
IDLE_TIMEOUT_S = 60.0
MAX_RCPTS = 1000  # per transaction, as Postfix's smtpd_recipient_limit
BDAT_PIECE = 1 << 16  # BDAT chunks are read in pieces this large, never whole
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_CONNECTIONS = "421 4.3.2 Too many connections, try again later"
# aiosmtpd's own replies that lack the enhanced status code ENHANCEDSTATUSCODES promises.
_STOCK_REPLIES = {
    "552 Error: Too much mail data": SIZE_EXCEEDED,
    "552 Error: message size exceeds fixed maximum message size": SIZE_EXCEEDED,
}


def connection_cap() -> int:
    """How many connections one lab service holds at once. The local engine runs every service
    (EOP, sink and gateway SMTP, DNS over TCP) in one process, whose descriptors also serve the
    gateway's outgoing connections, ledgers and mail files: each service gets at most 1/8 of
    RLIMIT_NOFILE (four services: half), and never more than 256, far above what a lab's own
    traffic opens (a few at a time). With the common soft limit of 1024 that is 128."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(8, min(256, soft // 8))


class _AcceptErrors:
    """The loop's exception handler. When accept() fails for want of descriptors (EMFILE and
    kin) asyncio reports it and retries each second, for as long as it lasts; this says it once
    per listening address and episode, which ends when that address accepts a connection again.
    Everything else goes to the previous handler."""

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, previous):
        self.previous = previous
        self.failing: dict[tuple, int] = {}  # listening address -> failed accepts this episode

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != self.MESSAGE:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        sock = context.get("socket")
        key = tuple(sock.getsockname()[:2]) if sock is not None else ()
        self.failing[key] = self.failing.get(key, 0) + 1
        if self.failing[key] == 1:
            exc = context.get("exception")
            why = getattr(exc, "strerror", None) or type(exc).__name__
            log.warning(
                "%s: cannot accept connections (%s); retrying each second, logged once until it accepts again",
                ":".join(map(str, key)),
                why,
            )

    def accepted(self, key: tuple) -> None:
        self.failing.pop(key, None)


def _accept_errors(loop: asyncio.AbstractEventLoop) -> _AcceptErrors:
    handler = loop.get_exception_handler()
    if not isinstance(handler, _AcceptErrors):
        handler = _AcceptErrors(handler)
        loop.set_exception_handler(handler)
    return handler


class Guard:
    """One listening service's connection cap (see connection_cap), with its refusals logged
    once per episode: from the first refusal until the open connections fall to half the cap."""

    def __init__(self, what: str, host: str, port: int, limit: int | None = None):
        self.what, self.key = what, (host, port)
        self.limit = limit or connection_cap()
        self.active = 0
        self.refusing = False
        self._accepts = _accept_errors(asyncio.get_running_loop())

    def admit(self) -> bool:
        """A connection was accepted: may it stay? (Call release() for every True.)"""
        self._accepts.accepted(self.key)
        if self.active >= self.limit:
            if not self.refusing:
                self.refusing = True
                log.warning(
                    "%s %s:%s: %d connections open, refusing more until some close (logged once)",
                    self.what,
                    *self.key,
                    self.active,
                )
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
        if self.refusing and self.active <= self.limit // 2:
            self.refusing = False


class LabSession(Session):
    """aiosmtpd's session (made on connect and again after STARTTLS) as the lab's handlers read it."""

    @property
    def client_ip(self) -> str:
        # aiosmtpd annotates `peer` as str, but it holds the TCP socket's peername (host, port).
        return cast("tuple[str, int]", self.peer)[0]


class LabEnvelope(Envelope):
    """aiosmtpd's envelope (one per transaction) with the DSN ENVID its MAIL FROM carried."""

    def __init__(self) -> None:
        super().__init__()
        self.envid: str | None = None  # a well-formed ENVID: the traffic's message id
        self.refused_envid: str | None = None  # an ENVID outside the ids' grammar, as the client sent it
        self.spf_result: str | None = None  # a receiving server's SPF verdict, once per transaction


def message_id(envelope: LabEnvelope, data: bytes) -> tuple[str | None, dict[str, str]]:
    """The traffic's id of a received message (its X-Labgen-Id header, else its DSN ENVID) and,
    when a client sent an id outside the ids' grammar, a ledger field showing it escaped and
    shortened. Such an id is no id: it names no file and joins no events."""
    raw = header(data, MSGID_HEADER)
    msgid = safe_id(raw) or envelope.envid
    refused = raw if raw is not None and safe_id(raw) is None else envelope.refused_envid
    return msgid, ({"refused_id": clip(refused, 80)} if refused is not None else {})


def server_tls_context(chain: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ server context (Python's ssl) for the lab's sinks and built-in gateway, which ask
    for no client certificate. EOP uses tls.ServerTls instead (any client certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(chain, key)
    return ctx


class LabSMTP(SMTP):
    """aiosmtpd's SMTP with the lab's extensions. STARTTLS runs either on Python's ssl
    (`tls_context`, aiosmtpd's own) or, with `tls=ServerTls(...)`, on tls.TlsProtocol: the fake
    EOP's, which accepts any client certificate and sees the chain as presented."""

    guard: Guard | None = None  # set by serve(): the listening service's connection cap
    # What _create_session and _create_envelope make (aiosmtpd's hooks for subclassing them).
    session: LabSession | None
    envelope: LabEnvelope | None

    def __init__(
        self,
        handler: object,
        *,
        banner_host: str,
        banner_text: str | None = None,
        tls: ServerTls | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("enable_SMTPUTF8", True)
        kw.setdefault("decode_data", False)
        kw.setdefault("hostname", banner_host)
        kw.setdefault("timeout", IDLE_TIMEOUT_S)
        if tls is not None and kw.get("tls_context") is not None:
            raise ValueError("one of tls and tls_context")
        super().__init__(handler, **kw)
        self._server_tls = tls
        if tls is not None:
            # aiosmtpd reads tls_context after __init__ only as "is STARTTLS offered?"
            # (EHLO, HELP, require_starttls): the pyOpenSSL configuration answers yes.
            self.tls_context = tls  # type: ignore[assignment]  # see above: only its truth is read
        self._banner_text = banner_text
        self._bdat: list[bytes] = []
        self._bdat_size = 0
        self._admitted: Guard | None = None  # the guard that admitted this connection, until released
        self._refused = False
        # The session's transcript (transcript.py), into the run directory of the handler's ledger.
        ledger = getattr(handler, "ledger", None)
        self._transcript_to = (ledger.path.parent, ledger.service) if isinstance(ledger, Ledger) else None
        self.transcript: Recorder | None = None
        self._in_data = False  # between 354 and the end of the message: lines are data, not commands
        self._data_bytes = 0
        self._overrun = False  # the rest of a too-long command line comes next
        self._write_after_reply = False

    def _hear_reader(self) -> None:
        """Record what the client says: aiosmtpd reads command lines (and DATA lines) with
        readuntil; data lines are only counted."""
        reader = self._reader
        readuntil, read = reader.readuntil, reader.read

        async def heard_until(separator: Any = b"\n") -> bytes:
            try:
                line = await readuntil(separator)
            except asyncio.LimitOverrunError as e:
                rec = self.transcript
                if self._in_data:
                    self._data_bytes += e.consumed
                elif rec is not None and not self._overrun:
                    rec.note(f"<a command line of more than {e.consumed} octets, not recorded>")
                self._overrun = True
                raise
            self._heard(line)
            return line

        async def heard_read(n: int = -1) -> bytes:
            data = await read(n)
            if self._in_data:
                self._data_bytes += len(data)
            return data

        reader.readuntil = heard_until  # type: ignore[method-assign]
        reader.read = heard_read  # type: ignore[method-assign]

    def _heard(self, line: bytes) -> None:
        rec = self.transcript
        if self._in_data:
            if line == b".\r\n":
                if rec is not None:
                    rec.note(f"<message data: {self._data_bytes} octets, not recorded>")
                    rec.client(line)
                self._in_data = False
                self._write_after_reply = True
            else:
                self._data_bytes += len(line)
            return
        if self._overrun:  # the tail of a line already noted as too long
            self._overrun = False
            return
        if rec is not None:
            rec.client(line)
            verb = line[:5].rstrip(b"\r\n").upper()
            if verb in (b"QUIT", b"RSET") or (verb == b"BDAT " and b"LAST" in line.upper()):
                self._write_after_reply = True

    def _create_session(self) -> LabSession:
        return LabSession(self.loop)

    def _create_envelope(self) -> LabEnvelope:
        return LabEnvelope()

    async def _handle_client(self) -> None:
        # A scenario fault (faults.py): the greeting held back for a while.
        hold = getattr(self.event_handler, "greeting_fault", None)
        if hold is not None and self.session is not None:
            await hold(self.session.client_ip)
        await super()._handle_client()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # the TCP connection, not its TLS upgrade
            fault = getattr(self.event_handler, "connection_fault", None)
            peer = transport.get_extra_info("peername")
            if fault is not None and peer and fault("down", peer[0]):  # a scenario fault: down for it
                self._refused = True
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(f"{REPLY_DOWN}\r\n".encode())
                transport.close()
                return
            if self.guard is not None:
                if not self.guard.admit():
                    self._refused = True
                    if isinstance(transport, asyncio.WriteTransport):  # a TCP transport is one
                        transport.write(f"{TOO_MANY_CONNECTIONS}\r\n".encode())
                    transport.close()  # after the reply is flushed; no session starts
                    return
                self._admitted = self.guard
            if self._transcript_to is not None:
                self.transcript = Recorder(
                    *self._transcript_to,
                    peer=transport.get_extra_info("peername"),
                    local=transport.get_extra_info("sockname"),
                )
            if self._banner_text is not None:
                # EOP's banner carries the date of the connection.
                self.__ident__ = self._banner_text.format(date=format_datetime(dt.datetime.now(dt.UTC)))
            super().connection_made(transport)
            self._hear_reader()  # the reader exists now; the session's task has not run yet
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # no session was ever made
        if self._admitted is not None:  # once: aiosmtpd may report a failed TLS upgrade's loss twice
            guard, self._admitted = self._admitted, None
            guard.release()
        rec, self.transcript = self.transcript, None  # once: see above
        if rec is not None:
            rec.note("connection closed" if error is None else clip(f"connection lost: {error}"))
            rec.write(final=True)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes an idle connection; real MTAs say why first.
        if isinstance(self.transport, asyncio.WriteTransport) and not self.transport.is_closing():
            self.transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()

    def _set_post_data_state(self) -> None:
        # Every new envelope (RSET, EHLO, MAIL, end of message) drops the chunks received so far.
        super()._set_post_data_state()
        self._bdat, self._bdat_size = [], 0

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            status = _STOCK_REPLIES.get(status, status)
        rec = self.transcript
        if rec is not None:
            text = status if isinstance(status, str) else status.decode("utf-8", "replace")
            rec.server(text)
            if text.startswith("354"):
                self._in_data, self._data_bytes = True, 0
            if self._write_after_reply and text[3:4] != "-":
                self._write_after_reply = False
                rec.write()
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        # The message is in: its traffic id joins this session to the message (as message_id).
        if command == "DATA" and self.transcript is not None and self.envelope is not None:
            self.transcript.msgid(message_id(self.envelope, self.envelope.original_content or b"")[0])
        return await super()._call_handler_hook(command, *args)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A failed handshake is the client's or the policy's (an old TLS version refused):
            # smtp_STARTTLS recorded it in the ledger and the transcript; aiosmtpd closes the session.
            log.debug("SMTP %s: TLS handshake failed: %s", self.hostname, clip(repr(error.__cause__ or error), 300))
            return "454 4.7.0 TLS not available due to local problem"
        # aiosmtpd's default answers "500 Error: (Type) text", which can carry a server path.
        log.error(
            "SMTP %s: internal error serving %s: %s",
            self.hostname,
            self.session.peer if self.session else "?",
            clip(repr(error), 300),
        )
        return "451 4.3.0 Local error in processing, try again later"

    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and not hostname.isprintable():  # it ends up in Received: headers and the ledger
            await self.push("501 5.5.2 Syntax: EHLO hostname")
            return
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and not hostname.isprintable():
            await self.push("501 5.5.2 Syntax: HELO hostname")
            return
        await super().smtp_HELO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:
        # RFC 5321 allows no control characters in a path or a parameter; email's parser would
        # keep them (a bare CR, ESC, NUL) in the address.
        if arg and not arg.isprintable():
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        if self.session is None:  # made in connection_made, before any command
            raise RuntimeError("MAIL without a session")
        size = _SIZE.search(" " + (arg or ""))
        if size and self.session.extended_smtp:
            if not re.fullmatch(r"[0-9]{1,15}", size.group(1)):
                await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=<digits>]")
                return
            if self.data_size_limit and int(size.group(1)) > self.data_size_limit:
                await self.push(SIZE_EXCEEDED)
                return
        # The traffic puts its message id in the DSN ENVID; Postfix and the built-in gateway
        # carry it to the next hop, so a decision taken at RCPT time already knows the message.
        # Only a well-formed id counts (it names files); another is kept, escaped, for the ledger.
        envid = _ENVID.search(" " + (arg or ""))
        raw = xtext_decode(envid.group(1)) if envid else None
        if self.envelope is not None and not self.envelope.mail_from:
            self.envelope.envid = safe_id(raw)
            self.envelope.refused_envid = raw if raw is not None and safe_id(raw) is None else None
            if self.transcript is not None:
                self.transcript.msgid(self.envelope.envid)
        arg = _DSN_MAIL.sub("", arg or "")
        await super().smtp_MAIL(_BODY.sub(" BODY=8BITMIME", arg))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and not arg.isprintable():
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        if self.envelope is not None and len(self.envelope.rcpt_tos) >= MAX_RCPTS:
            await self.push("452 4.5.3 Too many recipients")
            return
        await super().smtp_RCPT(_DSN_RCPT.sub("", arg or ""))

    async def smtp_QUIT(self, arg: str) -> None:
        # With ENHANCEDSTATUSCODES offered, every reply carries one (aiosmtpd says "221 Bye").
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self.push("221 2.0.0 Service closing transmission channel")
        task, transport = self._handler_coroutine, self.transport
        if task is None or transport is None:  # both live while a command is served (this task)
            raise RuntimeError("QUIT outside a served connection")
        task.cancel()
        transport.close()

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            # aiosmtpd would start TLS inside TLS; RFC 3207 allows one negotiation per session.
            await self.push("503 5.5.1 Already in TLS")
            return
        # A scenario fault (faults.py): STARTTLS refused, or a handshake that cannot happen.
        fault = getattr(self.event_handler, "connection_fault", None)
        if fault is not None and not arg and self.session is not None:
            if fault("no-starttls", self.session.client_ip):
                await self.push(REPLY_NO_STARTTLS)
                return
            if fault("tls-fail", self.session.client_ip):
                await self.push("220 Ready to start TLS")
                if isinstance(self.transport, asyncio.Transport):
                    self.transport.abort()
                return
        try:
            if self._server_tls is None:
                await super().smtp_STARTTLS(arg)
            else:
                await self._starttls(arg, self._server_tls)
            rec = self.transcript
            if rec is not None and self.tls_version() is not None:
                rec.tls(self.tls_version(), self.tls_cipher_bits(), self.peer_chain())
        except TLSSetupException as e:
            if self.transcript is not None:
                self.transcript.note(clip(f"TLS handshake failed: {e.__cause__ or e}"))
            # A failed handshake ends this session only; the handler gets to record why.
            hook = getattr(self.event_handler, "tls_failed", None)
            if hook:
                hook(self.session, clip(str(e.__cause__ or e) or type(e.__cause__).__name__))
            raise

    async def _starttls(self, arg: str, config: ServerTls) -> None:
        """STARTTLS on tls.TlsProtocol, with aiosmtpd's semantics: its connection_made sees the
        upgrade (`_original_transport` set), clears what the client pipelined in plaintext, makes
        a new session (EHLO again) and copies the layer's `_extra` into session.ssl; a failure is
        TLSSetupException, after which aiosmtpd ends the session."""
        if arg:
            await self.push("501 Syntax: STARTTLS")  # aiosmtpd's texts, as on the ssl path
            return
        await self.push("220 Ready to start TLS")
        tcp = self.transport
        if tcp is None:  # set while a command is served
            raise RuntimeError("STARTTLS outside a served connection")
        waiter: asyncio.Future[None] = self.loop.create_future()
        layer = TlsProtocol(config, self, waiter)
        self._original_transport = tcp
        # aiosmtpd reads it as "TLS is on" and its `_extra` as session.ssl; nothing else.
        self._tls_protocol = layer  # type: ignore[assignment]
        self.transport = layer.transport
        layer.attach(tcp)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error

    async def smtp_BDAT(self, arg: str) -> None:
        """RFC 3030 CHUNKING: BDAT <size> [LAST]. A chunk is read in pieces; the message is kept
        only while it fits the size limit, so memory stays bounded by the limit."""
        m = _BDAT.fullmatch(arg or "")
        if not m:
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            return
        size, last = int(m.group(1)), m.group(2) is not None
        if self.envelope is None or not self.envelope.rcpt_tos:
            if await self._read_chunk(size, keep=False):
                await self.push("503 5.5.1 Error: need RCPT command")
            return
        limit = self.data_size_limit
        if limit and self._bdat_size + size > limit:
            # The transaction fails (RFC 3030 §2): chunks the client already pipelined find no
            # transaction and are discarded with 503.
            self._set_post_data_state()
            if await self._read_chunk(size, keep=False):
                await self.push(SIZE_EXCEEDED)
            return
        if not await self._read_chunk(size, keep=True):
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        data = b"".join(self._bdat)
        self.envelope.original_content = data
        self.envelope.content = data
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._set_post_data_state()
        await self.push("250 OK" if not isinstance(status, str) else status)

    async def _read_chunk(self, size: int, keep: bool) -> bool:
        """Read a BDAT chunk's octets (kept in self._bdat or discarded); False if the client
        went away in the middle."""
        try:
            while size:
                piece = await self._reader.readexactly(min(size, BDAT_PIECE))
                size -= len(piece)
                if keep:
                    self._bdat.append(piece)
                    self._bdat_size += len(piece)
        except asyncio.IncompleteReadError:
            if self.transport is not None:  # None once aiosmtpd saw the connection lost
                self.transport.close()
            return False
        return True

    def _tls_layer(self) -> TlsProtocol | None:
        layer = self._tls_protocol
        return layer if isinstance(layer, TlsProtocol) and layer.established else None

    def _ssl_object(self) -> ssl.SSLObject | None:
        return self.transport.get_extra_info("ssl_object") if self.transport else None

    def peer_chain(self) -> list[bytes]:
        """The client's certificates as it presented them (DER, leaf first). Python's ssl (the
        sinks, the gateway) shows only the leaf."""
        layer = self._tls_layer()
        if layer is not None:
            return list(layer.peer_chain)
        leaf = self.peer_certificate()
        return [leaf] if leaf else []

    def peer_certificate(self) -> bytes | None:
        layer = self._tls_layer()
        if layer is not None:
            return layer.peer_chain[0] if layer.peer_chain else None
        obj = self._ssl_object()
        return obj.getpeercert(binary_form=True) if obj else None

    def tls_version(self) -> str | None:
        layer = self._tls_layer()
        if layer is not None:
            return layer.version
        obj = self._ssl_object()
        return obj.version() if obj else None

    def tls_cipher(self) -> str | None:
        return (self.tls_cipher_bits() or (None, 0))[0]

    def tls_cipher_bits(self) -> tuple[str, int] | None:
        """The cipher's name and secret bits, as Postfix's Received line shows them."""
        layer = self._tls_layer()
        if layer is not None:
            return (layer.cipher, layer.cipher_bits or 0) if layer.cipher else None
        obj = self._ssl_object()
        cipher = obj.cipher() if obj else None
        return (cipher[0], cipher[2]) if cipher else None

    def local_ip(self) -> str | None:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        return sock[0] if sock else None


def xtext_decode(value: str) -> str:
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


async def serve(
    factory: Callable[[], LabSMTP], host: str, port: int, limit: int | None = None
) -> asyncio.AbstractServer:
    """An SMTP service on the running loop, with its connection cap (connection_cap() unless
    `limit`): beyond it a client is told 421 and disconnected."""
    guard = Guard("SMTP", host, port, limit)

    def guarded() -> LabSMTP:
        protocol = factory()
        protocol.guard = guard
        return protocol

    loop = asyncio.get_running_loop()
    return await loop.create_server(guarded, host=host, port=port, reuse_address=True)
