"""Next-hop lookup through the lab DNS with a real resolver (dnspython): MX, then the implicit
MX (the name's own A record) when a domain has no MX, as RFC 5321 §5.1 says. Given the MTA's own
addresses it also refuses to hand mail back to itself, as Postfix's smtp_addr.c does."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import dns.exception
import dns.resolver


@dataclass
class Hop:
    host: str
    ip: str
    pref: int = 0  # the MX preference it came from (0: a host looked up by name)


class DnsFailure(Exception):
    """No usable next hop. `status` is the enhanced status code Postfix logs as dsn=."""

    def __init__(self, message: str, permanent: bool, status: str | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.status = status or ("5.4.4" if permanent else "4.4.3")

    @property
    def reply(self) -> str:
        """As Postfix's log reads back (postfix._reply): 'dsn text'."""
        return f"{self.status} {self}"


def loops_back(name: str) -> DnsFailure:
    # smtp_addr.c, smtp_host_addr() and smtp_domain_addr(): a hard error, never retried.
    return DnsFailure(f"mail for {name} loops back to myself", permanent=True, status="5.4.6")


def resolver(dns_ip: str, dns_port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [dns_ip]
    r.port = dns_port
    r.timeout, r.lifetime = 1.0, 3.0
    return r


def _a(r: dns.resolver.Resolver, host: str) -> list[str]:
    try:
        return [a.address for a in r.resolve(host, "A")]
    except dns.resolver.NXDOMAIN:
        raise DnsFailure(
            f"Host or domain name not found. Name service error for name={host} type=A: Host not found", permanent=True
        ) from None
    except dns.resolver.NoAnswer:
        raise DnsFailure(
            f"Host or domain name not found. Name service error for name={host} type=A: "
            "No address associated with hostname",
            permanent=True,
        ) from None
    except dns.exception.DNSException as e:
        raise DnsFailure(f"Host or domain name lookup failed for {host}: {e}", permanent=False) from None


def _host(r: dns.resolver.Resolver, name: str, own: Collection[str]) -> list[Hop]:
    hops = [Hop(name, ip) for ip in _a(r, name)]
    if any(h.ip in own for h in hops):
        raise loops_back(name)
    return hops


def next_hops(r: dns.resolver.Resolver, name: str, mx: bool, own: Collection[str] = ()) -> list[Hop]:
    """For mx=True, the MX hosts of a domain in preference order; else the host itself. `own` are
    the sending MTA's own addresses: a next hop among them is a mail loop (DnsFailure 5.4.6)."""
    if not mx:
        return _host(r, name, own)
    try:
        answer = sorted(r.resolve(name, "MX"), key=lambda m: m.preference)
    except dns.resolver.NXDOMAIN:
        raise DnsFailure(
            f"Host or domain name not found. Name service error for name={name} type=MX: Host not found", permanent=True
        ) from None
    except dns.resolver.NoAnswer:
        return _host(r, name, own)
    except dns.exception.DNSException as e:
        raise DnsFailure(f"MX lookup failed for {name}: {e}", permanent=False) from None
    hops: list[Hop] = []
    failure: DnsFailure | None = None
    for m in answer:
        host = str(m.exchange).rstrip(".")
        try:
            hops += [Hop(host, ip, m.preference) for ip in _a(r, host)]
        except DnsFailure as e:  # as Postfix: an MX host without an address is skipped
            failure = e
    if not hops:
        assert failure is not None  # an MX answer is never empty
        raise failure
    return without_self(hops, name, answer[0].preference, own)


def without_self(hops: list[Hop], domain: str, best_pref: int, own: Collection[str]) -> list[Hop]:
    """Postfix's smtp_domain_addr(): when this MTA is one of the domain's MX hosts, only the more
    preferred ones remain; none left is a loop (this MTA is the best MX) or, when the better MX
    hosts had no address, a soft 'unable to find primary relay'."""
    self_hop = next((h for h in hops if h.ip in own), None)
    if self_hop is None:
        return hops
    kept = hops[: next(i for i, h in enumerate(hops) if h.pref == self_hop.pref)]
    if kept:
        return kept
    if hops[0].pref != best_pref:
        raise DnsFailure(f"unable to find primary relay for {domain}", permanent=False, status="4.4.4")
    raise loops_back(domain)
