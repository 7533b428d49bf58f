"""The lab DNS: authoritative for the lab's zones (MX and A records from the plan), never
recursive, NXDOMAIN for everything else; every query is logged to the ledger."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, SOA, A, MX, DNSError, DNSLabel, DNSRecord

from .ledger import Ledger
from .plan import Plan

TTL = 60


class LabResolver:
    def __init__(self, plan: Plan, ledger: Ledger | None):
        self.zones = [DNSLabel(z) for z in plan.zones]
        self.own_ip = plan.ip("dns")
        self.records: dict[tuple[str, str], list] = {}
        for r in plan.records:
            rdata = A(r.value) if r.type == "A" else MX(r.value, r.preference)
            self.records.setdefault((r.name.lower().rstrip("."), r.type), []).append(rdata)
        self.ledger = ledger

    def _zone(self, qname: DNSLabel):
        return next((z for z in self.zones if qname.matchSuffix(z)), None)

    def answer(self, data: bytes, client_ip: str, udp: bool) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError:
            return None  # not DNS: no answer, as a real server would
        reply = self.resolve(request, client_ip)
        packed = reply.pack()
        if udp and len(packed) > 512:
            reply = request.reply()
            reply.header.tc = 1  # the client retries over TCP
            packed = reply.pack()
        return packed

    def resolve(self, request, client_ip: str):
        reply = request.reply()
        reply.header.ra = 0  # no recursion, ever
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        name = str(qname).lower().rstrip(".")
        zone = self._zone(qname)
        answers = self.records.get((name, qtype), [])
        for rdata in answers:
            reply.add_answer(RR(qname, request.q.qtype, rdata=rdata, ttl=TTL))
            if qtype == "MX":  # glue, as a real authoritative server would add
                for a in self.records.get((str(rdata.label).lower().rstrip("."), "A"), []):
                    reply.add_ar(RR(rdata.label, QTYPE.A, rdata=a, ttl=TTL))
        exists = any(k[0] == name for k in self.records)
        reply.header.aa = int(zone is not None)  # authoritative for its own zones only
        if zone is not None:
            if not answers:
                reply.add_auth(RR(zone, QTYPE.SOA, ttl=TTL, rdata=SOA(
                    f"ns.{zone}", f"hostmaster.{zone}", (1, 3600, 600, 86400, TTL))))
        if not answers and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        if self.ledger and client_ip != self.own_ip:  # not the container's own health checks
            self.ledger.emit("query", qname=name, qtype=qtype, client_ip=client_ip,
                             rcode=RCODE[reply.header.rcode], answers=[str(a.rdata) for a in reply.rr])
        return reply


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, resolver: LabResolver):
        self.resolver = resolver

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        reply = self.resolver.answer(data, addr[0], udp=True)
        if reply:
            self.transport.sendto(reply, addr)


async def serve_dns(plan: Plan, host: str, port: int, run_dir: Path | None) -> list:
    """UDP and TCP listeners on the running loop; returns what to close."""
    resolver = LabResolver(plan, Ledger(run_dir, "dns") if run_dir else None)
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(resolver), local_addr=(host, port))

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = resolver.answer(await reader.readexactly(size), writer.get_extra_info("peername")[0], udp=False)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tcp, host, port, reuse_address=True)
    return [udp, server]
