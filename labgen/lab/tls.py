"""Server-side STARTTLS that accepts any client certificate and shows the chain as presented.

Real EOP asks for a client certificate, takes whatever the client presents at the TLS layer and
judges it afterwards (an untrusted chain gets an SMTP-level 550 5.7.64, not a failed handshake).
Python's ssl cannot do that: with CERT_OPTIONAL it fails the handshake on a certificate it cannot
verify, and it does not show the intermediates the client sent. pyOpenSSL (the PyCA project's
binding of OpenSSL, packaged by Debian as python3-openssl) can: a verify callback that accepts
everything, and SSL_get_peer_cert_chain. Its memory BIOs let TLS run inside asyncio without
CPython's internal asyncio.sslproto.

TlsProtocol sits between the TCP transport and the SMTP protocol: it takes the TCP transport's
bytes (an asyncio Protocol) and gives the SMTP protocol a TlsTransport to write to.

The peer chain: OpenSSL's SSL_get_peer_cert_chain leaves the peer's own certificate out on the
server side (it includes it on the client side), so peer_chain is the leaf
(SSL_get_peer_certificate) followed by that list, in the order the client sent them.
Session resumption is off: a resumed session keeps only the leaf, and EOP's verdict needs the
chain of every session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto

_READ = 1 << 16


class TlsHandshakeError(Exception):
    """The TLS handshake failed; the text says why (OpenSSL's reasons, or the connection's end)."""


def _accept_any(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    return True  # every certificate passes the TLS layer; the server judges it afterwards


def describe(error: Exception) -> str:
    """OpenSSL's reasons for a failure, as one line ("tlsv1 alert unknown ca", "unsupported protocol")."""
    args = error.args[0] if error.args else None
    if isinstance(args, list) and args and all(isinstance(a, tuple) and len(a) == 3 for a in args):
        return "; ".join(str(a[2]) for a in args)
    if isinstance(error, SSL.SysCallError) and len(error.args) == 2:
        return str(error.args[1])
    return str(error) or type(error).__name__


# A fatal protocol_version alert (RFC 5246 7.2: level 2, description 70) in a TLS record of the
# given minor version (1: TLS 1.0, 2: TLS 1.1): what a TLS 1.2-minimum server answers an older client.
def protocol_version_alert(minor: int) -> bytes:
    return bytes((21, 3, minor, 0, 2, 2, 70))


class ServerTls:
    """A TLS server configuration: the server's chain and key, and (with request_client_cert) a
    request for a client certificate that any certificate satisfies, as does none.

    Versions: TLS 1.2 or later, refused below that by OpenSSL itself. With `refuse_version`, the
    server *sees* older clients instead (OpenSSL allows TLS 1.0 and, at security level 0, its
    ciphers) and asks refuse_version(version) once the ClientHello chose one: a reason refuses the
    session with a protocol_version alert, as a TLS 1.2-minimum server does, and is the handshake's
    error; None lets the handshake go on."""

    def __init__(
        self,
        chain: str,
        key: str,
        *,
        request_client_cert: bool = True,
        refuse_version: Callable[[str], str | None] | None = None,
    ):
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        if refuse_version is None:
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        else:
            ctx.set_min_proto_version(SSL.TLS1_VERSION)
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        self.refuse_version = refuse_version
        ctx.use_certificate_chain_file(chain)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
        # No resumption (see the module's doc): no session cache, no tickets.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_id(b"labgen")  # OpenSSL wants one whenever it verifies peers
        if request_client_cert:
            # VERIFY_PEER without VERIFY_FAIL_IF_NO_PEER_CERT: asked for, not required.
            ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
        self.context = ctx
        self.request_client_cert = request_client_cert


class TlsTransport(asyncio.Transport):
    """What the SMTP protocol writes to once STARTTLS began: plaintext in, TLS records out."""

    def __init__(self, layer: TlsProtocol):
        super().__init__()
        self._layer = layer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "labgen_tls":
            return self._layer
        tcp = self._layer.tcp
        return tcp.get_extra_info(name, default) if tcp is not None else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._layer.write(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    def close(self) -> None:
        self._layer.close()

    def abort(self) -> None:
        self._layer.abort()

    def is_closing(self) -> bool:
        return self._layer.closing

    def pause_reading(self) -> None:
        if self._layer.tcp is not None:
            self._layer.tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._layer.tcp is not None:
            self._layer.tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._layer.tcp is not None and self._layer.tcp.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._layer.tcp.get_write_buffer_size() if self._layer.tcp is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._layer.tcp is not None:
            self._layer.tcp.set_write_buffer_limits(high, low)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._layer.app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app


class TlsProtocol(asyncio.Protocol):
    """The server side of one TLS session over a TCP transport. The handshake's end is told to
    `waiter` (a result, or TlsHandshakeError / ConnectionResetError); only after a successful
    handshake does `app` get connection_made, its data and, in the end, connection_lost. Before
    that, the waiter is the only news: the SMTP protocol that awaits it ends its own session."""

    def __init__(self, config: ServerTls, app: asyncio.BaseProtocol, waiter: asyncio.Future[None]):
        self.app = app
        self.tcp: asyncio.Transport | None = None
        self.transport = TlsTransport(self)
        self.closing = False
        self.established = False
        self.version: str | None = None  # "TLSv1.2", "TLSv1.3"
        self.cipher: str | None = None  # OpenSSL's name, e.g. "TLS_AES_256_GCM_SHA384"
        self.cipher_bits: int | None = None
        self.peer_chain: list[bytes] = []  # DER, leaf first, as the client presented them
        self._waiter = waiter
        self._failed = False
        self._app_lost = False
        self._config = config
        self._conn = SSL.Connection(config.context, None)
        self._conn.set_accept_state()
        # aiosmtpd copies this into session.ssl when the upgraded connection is made.
        self._extra: dict[str, Any] = {}

    def attach(self, tcp: asyncio.BaseTransport) -> None:
        """Take over `tcp` from the protocol it served (which keeps `self.transport` instead):
        from now on its bytes are TLS records. The handshake runs as the client's arrive."""
        if not isinstance(tcp, asyncio.Transport):
            raise TypeError("STARTTLS needs a stream transport")
        tcp.set_protocol(self)
        self.connection_made(tcp)

    # ----- the TCP side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):
            raise TypeError("TLS runs over a stream transport")
        self.tcp = transport  # the client speaks first (ClientHello)

    def data_received(self, data: bytes) -> None:
        if self._failed or self.closing:
            return
        self._conn.bio_write(data)
        if not self.established and not self._handshake():
            return
        self._read_records()
        self._flush()

    def eof_received(self) -> bool:
        self._conn.bio_shutdown()
        if not self.established:
            self._fail(ConnectionResetError("the client closed the connection during the TLS handshake"))
            return False
        self._read_records()
        if not self._app_lost and isinstance(self.app, asyncio.Protocol):
            self.app.eof_received()
        return False  # close the TCP connection: TLS has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.established:
            self._fail(ConnectionResetError("the connection was lost during the TLS handshake"))
            return
        if not self._app_lost:
            self._app_lost = True
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.established:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.established:
            self.app.resume_writing()

    # ----- TLS
    def _handshake(self) -> bool:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            if self._refused():
                return False
            self._flush()
            return False
        except SSL.Error as e:
            self._flush()  # the alert that tells the client why
            self._fail(TlsHandshakeError(describe(e)))
            return False
        self.established = True
        self.version = self._conn.get_protocol_version_name()
        self.cipher = self._conn.get_cipher_name()
        self.cipher_bits = self._conn.get_cipher_bits()
        self.peer_chain = self._presented_chain()
        self._extra.update(version=self.version, cipher=self.cipher, peer_chain=self.peer_chain)
        self._flush()
        self.app.connection_made(self.transport)
        if not self._waiter.done():
            self._waiter.set_result(None)
        return True

    def _refused(self) -> bool:
        """After a handshake step: did the ClientHello choose a version below TLS 1.2 that the
        configuration refuses? Then the server's answer (still in the memory BIO) is dropped, a
        protocol_version alert goes out instead and the handshake fails with the reason. (Before
        the ClientHello, OpenSSL reports the method's newest version.)"""
        refuse = self._config.refuse_version
        version = self._conn.get_protocol_version()
        if refuse is None or version >= SSL.TLS1_2_VERSION or version < SSL.TLS1_VERSION:
            return False
        reason = refuse(self._conn.get_protocol_version_name())
        if reason is None:
            return False
        while True:  # the ServerHello OpenSSL wrote: never sent
            try:
                if not self._conn.bio_read(_READ):
                    break
            except SSL.WantReadError:
                break
        if self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(protocol_version_alert(version & 0xFF))
        self._fail(TlsHandshakeError(reason))
        return True

    def _presented_chain(self) -> list[bytes]:
        leaf = self._conn.get_peer_certificate()
        if leaf is None:
            return []
        chain = [leaf.to_cryptography().public_bytes(Encoding.DER)]
        for c in self._conn.get_peer_cert_chain() or []:
            der = c.to_cryptography().public_bytes(Encoding.DER)
            if der != chain[0] or len(chain) > 1:  # server side: the leaf is not in the list
                chain.append(der)
        return chain

    def _read_records(self) -> None:
        while not self._app_lost:
            try:
                data = self._conn.recv(_READ)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:  # the client's close_notify
                self.close()
                return
            except SSL.Error:  # a bad record, or the TCP end without close_notify
                self.abort()
                return
            if not data:
                return
            if isinstance(self.app, asyncio.Protocol):
                self.app.data_received(data)

    def _flush(self) -> None:
        while True:
            try:
                out = self._conn.bio_read(_READ)
            except SSL.WantReadError:
                return
            if not out:
                return
            if self.tcp is not None and not self.tcp.is_closing():
                self.tcp.write(out)

    def _fail(self, error: Exception) -> None:
        if self._failed:
            return
        self._failed = self.closing = True
        if not self._waiter.done():
            self._waiter.set_exception(error)
        if self.tcp is not None:
            self.tcp.close()  # after the alert is sent

    # ----- the application side
    def write(self, data: bytes) -> None:
        if self.closing or not self.established:
            return
        self._conn.sendall(data)  # into the memory BIO: never blocks
        self._flush()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.established:
            try:
                self._conn.shutdown()  # close_notify
            except SSL.Error:
                pass
            self._flush()
        if self.tcp is not None:
            self.tcp.close()

    def abort(self) -> None:
        self.closing = True
        if self.tcp is not None:
            self.tcp.abort()
