"""The lab DNS: authoritative for the lab's zones (MX and A records from the plan), never
recursive, NXDOMAIN for everything else; every query is logged to the ledger."""

from __future__ import annotations

from pathlib import Path

from dnslib import QTYPE, RCODE, RR, SOA, A, MX, DNSLabel
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from .ledger import Ledger
from .plan import Plan

TTL = 60


class LabResolver(BaseResolver):
    def __init__(self, plan: Plan, ledger: Ledger | None):
        self.zones = [DNSLabel(z) for z in plan.zones]
        self.records: dict[tuple[str, str], list] = {}
        for r in plan.records:
            rdata = A(r.value) if r.type == "A" else MX(r.value, r.preference)
            self.records.setdefault((r.name.lower().rstrip("."), r.type), []).append(rdata)
        self.ledger = ledger

    def _zone(self, qname: DNSLabel):
        return next((z for z in self.zones if qname.matchSuffix(z)), None)

    def resolve(self, request, handler):
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
        if zone is not None:
            reply.header.aa = 1
            if not answers:
                reply.add_auth(RR(zone, QTYPE.SOA, ttl=TTL, rdata=SOA(
                    f"ns.{zone}", f"hostmaster.{zone}", (1, 3600, 600, 86400, TTL))))
        if not answers and not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        if self.ledger:
            self.ledger.emit("query", qname=name, qtype=qtype, client_ip=handler.client_address[0],
                             rcode=RCODE[reply.header.rcode], answers=[str(a.rdata) for a in reply.rr])
        return reply


class LabDNS:
    """UDP and TCP listeners in threads (dnslib's server), started and stopped together."""

    def __init__(self, plan: Plan, host: str, port: int, run_dir: Path | None):
        resolver = LabResolver(plan, Ledger(run_dir, "dns") if run_dir else None)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.servers = [DNSServer(resolver, address=host, port=port, logger=quiet),
                        DNSServer(resolver, address=host, port=port, tcp=True, logger=quiet)]

    def start(self):
        for s in self.servers:
            s.start_thread()

    def stop(self):
        for s in self.servers:
            s.stop()
            s.server.server_close()
