"""Next-hop lookup through the lab DNS with a real resolver (dnspython): MX, then the implicit
MX (the name's own A record) when a domain has no MX, as RFC 5321 §5.1 says."""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver


@dataclass
class Hop:
    host: str
    ip: str


class DnsFailure(Exception):
    def __init__(self, message: str, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


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
        raise DnsFailure(f"Host or domain name not found. Name service error for name={host} type=A: "
                         "Host not found", permanent=True) from None
    except dns.resolver.NoAnswer:
        raise DnsFailure(f"Host or domain name not found. Name service error for name={host} type=A: "
                         "No address associated with hostname", permanent=True) from None
    except dns.exception.DNSException as e:
        raise DnsFailure(f"Host or domain name lookup failed for {host}: {e}", permanent=False) from None


def next_hops(r: dns.resolver.Resolver, name: str, mx: bool) -> list[Hop]:
    """For mx=True, the MX hosts of a domain in preference order; else the host itself."""
    if not mx:
        return [Hop(name, ip) for ip in _a(r, name)]
    try:
        answer = sorted(r.resolve(name, "MX"), key=lambda m: m.preference)
    except dns.resolver.NXDOMAIN:
        raise DnsFailure(f"Host or domain name not found. Name service error for name={name} type=MX: "
                         "Host not found", permanent=True) from None
    except dns.resolver.NoAnswer:
        return [Hop(name, ip) for ip in _a(r, name)]
    except dns.exception.DNSException as e:
        raise DnsFailure(f"MX lookup failed for {name}: {e}", permanent=False) from None
    hops = []
    for m in answer:
        host = str(m.exchange).rstrip(".")
        hops += [Hop(host, ip) for ip in _a(r, host)]
    return hops
