"""The lab DNS: authoritative for the lab's zones (MX, A and SPF TXT records from the plan), never
recursive, NXDOMAIN for everything else; every query is logged to the ledger.

Clients may be hostile, so it answers like a careful authoritative server: a packet whose header
does not even parse, or a response (QR=1), gets no answer; another opcode than QUERY gets NOTIMP;
a malformed question (not exactly one, a label over 63 octets, a name over 255) gets FORMERR;
zone transfers and other classes than IN get REFUSED. Nothing a client sends raises out of the
handler: what cannot be answered is one `bad_query` ledger event."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from dnslib import CLASS, MX, OPCODE, QTYPE, RCODE, RR, SOA, TXT, A, DNSBuffer, DNSHeader, DNSLabel, DNSRecord

from ..model.plan import Plan
from ..results.contracts import BadQuery, Query
from .ledger import Ledger, clip
from .smtpd import Guard

TTL = 60
# A TCP client is dropped after this long without a complete message (RFC 7766 suggests seconds).
TCP_IDLE_S = 10.0
_REFUSED_TYPES = {QTYPE.AXFR, QTYPE.IXFR}  # no zone transfers for anyone


class LabResolver:
    def __init__(self, plan: Plan, ledger: Ledger | None):
        self.zones = [DNSLabel(z) for z in plan.zones]
        self.own_ip = plan.ip("dns")
        self.records: dict[tuple[str, str], list] = {}
        for r in plan.records:
            rdata = A(r.value) if r.type == "A" else TXT(r.value) if r.type == "TXT" else MX(r.value, r.preference)
            self.records.setdefault((r.name.lower().rstrip("."), r.type), []).append(rdata)
        self.ledger = ledger

    def _zone(self, qname: DNSLabel):
        return next((z for z in self.zones if qname.matchSuffix(z)), None)

    def answer(self, data: bytes, client_ip: str, udp: bool) -> bytes | None:
        """The reply to one DNS message from a client, or None for no reply at all. Never raises:
        this is the boundary between a client's bytes and the server."""
        head = None
        try:
            try:
                head = DNSHeader.parse(DNSBuffer(data))
            except Exception:  # shorter than a header: nothing to answer to
                self._bad(client_ip, "no DNS header", data)
                return None
            reply = self._reply(head, data, client_ip)
            if reply is None:
                return None
            packed = reply.pack()
            if udp and len(packed) > 512:
                reply = DNSRecord(
                    DNSHeader(id=head.id, qr=1, aa=reply.header.aa, tc=1, rd=head.rd, rcode=reply.header.rcode),
                    q=reply.q,
                )
                packed = reply.pack()  # the client retries over TCP
            return packed
        except Exception as e:
            try:
                self._bad(client_ip, f"{type(e).__name__}: {e}", data)
            except Exception:
                pass  # not even the ledger takes it (e.g. a full disk): keep serving the others
            return _error(head, RCODE.SERVFAIL).pack() if head is not None else None

    def _reply(self, head: DNSHeader, data: bytes, client_ip: str) -> DNSRecord | None:
        if head.qr:
            self._bad(client_ip, "a response (QR=1), not a query", data)
            return None
        if head.opcode != OPCODE.QUERY:
            self._bad(client_ip, f"opcode {OPCODE.get(head.opcode, head.opcode)}", data)
            return _error(head, RCODE.NOTIMP)
        if head.q != 1:
            self._bad(client_ip, f"{head.q} questions", data)
            return _error(head, RCODE.FORMERR)
        try:
            request = DNSRecord.parse(data)
        except Exception as e:  # dnslib's DNSError, and whatever else a crafted packet provokes
            self._bad(client_ip, f"malformed: {e}", data)
            return _error(head, RCODE.FORMERR)
        labels = request.q.qname.label
        if any(len(label) > 63 for label in labels) or sum(len(label) + 1 for label in labels) + 1 > 255:
            self._bad(client_ip, "name longer than DNS allows", data)
            return _error(head, RCODE.FORMERR)
        if request.q.qtype in _REFUSED_TYPES or request.q.qclass != CLASS.IN:
            reply = request.reply()
            reply.header.ra, reply.header.aa, reply.header.rcode = 0, 0, RCODE.REFUSED
            self._log_query(request, reply, client_ip)
            return reply
        return self.resolve(request, client_ip)

    def resolve(self, request, client_ip: str):
        reply = request.reply()
        reply.header.ra = 0  # no recursion, ever
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        name = str(qname).lower().rstrip(".")
        zone = self._zone(qname)
        if qtype == "ANY":  # RFC 8482 allows a subset; the lab's names have two or three RRsets
            answers = [(t, rdata) for (n, t), rdatas in self.records.items() if n == name for rdata in rdatas]
        else:
            answers = [(qtype, rdata) for rdata in self.records.get((name, qtype), [])]
        for rtype, rdata in answers:
            reply.add_answer(RR(qname, getattr(QTYPE, rtype), rdata=rdata, ttl=TTL))
            if rtype == "MX":  # glue, as a real authoritative server would add
                for a in self.records.get((str(rdata.label).lower().rstrip("."), "A"), []):
                    reply.add_ar(RR(rdata.label, QTYPE.A, rdata=a, ttl=TTL))
        exists = any(k[0] == name for k in self.records)
        reply.header.aa = int(zone is not None)  # authoritative for its own zones only
        if zone is not None:
            if not answers:
                reply.add_auth(
                    RR(
                        zone,
                        QTYPE.SOA,
                        ttl=TTL,
                        rdata=SOA(f"ns.{zone}", f"hostmaster.{zone}", (1, 3600, 600, 86400, TTL)),
                    )
                )
        if not answers and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        self._log_query(request, reply, client_ip)
        return reply

    def _log_query(self, request, reply, client_ip: str) -> None:
        if self.ledger and client_ip != self.own_ip:  # not the container's own health checks
            self.ledger.emit(
                Query(
                    event="query",
                    qname=clip(str(request.q.qname).lower().rstrip(".")),
                    qtype=QTYPE[request.q.qtype],
                    client_ip=client_ip,
                    rcode=RCODE[reply.header.rcode],
                    answers=[str(a.rdata) for a in reply.rr],
                )
            )

    def _bad(self, client_ip: str, why: str, data: bytes) -> None:
        if self.ledger:
            self.ledger.emit(
                BadQuery(
                    event="bad_query", client_ip=client_ip, why=clip(why, 200), size=len(data), head=data[:32].hex()
                )
            )


def _error(head: DNSHeader, rcode: int) -> DNSRecord:
    """An answer with no sections: the query's id, opcode and RD echoed, the error code set."""
    return DNSRecord(DNSHeader(id=head.id, qr=1, opcode=head.opcode, rd=head.rd, rcode=rcode))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: LabResolver):
        self.resolver = resolver

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        reply = self.resolver.answer(data, addr[0], udp=True)
        if reply:
            self.transport.sendto(reply, addr)


async def serve_dns(plan: Plan, host: str, port: int, run_dir: Path | None, limit: int | None = None) -> list:
    """UDP and TCP listeners on the running loop; returns what to close. TCP holds at most
    `limit` (default smtpd.connection_cap()) connections at once: one more is closed at once."""
    resolver = LabResolver(plan, Ledger(run_dir, "dns") if run_dir else None)
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(resolver), local_addr=(host, port))
    guard = Guard("DNS over TCP", host, port, limit)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        if not guard.admit():
            writer.close()
            return
        try:
            while True:
                # Both the length and the message must arrive within TCP_IDLE_S.
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S))[0]
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S)
                reply = resolver.answer(data, writer.get_extra_info("peername")[0], udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            guard.release()
            writer.close()

    server = await asyncio.start_server(tcp, host, port, reuse_address=True)
    return [udp, server]
