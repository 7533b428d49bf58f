"""SPF as EOP evaluates it for inbound mail, with Enhanced Filtering for Connectors.

Behind a gateway, EOP sees the gateway's address, so the sender domain's SPF fails ("implicit"
authentication only). Enhanced Filtering (Set-InboundConnector -EFSkipLastIP / -EFSkipIPs) makes
EOP skip the gateway and judge the address before it, which the gateway recorded in its
Received: header, and stamp X-MS-Exchange-SkipListedInternetSender and
X-MS-Exchange-ExternalOriginalInternetSender (Enhanced Filtering for Connectors, learn.microsoft.com).

The SPF check itself is pyspf (RFC 7208), querying the lab DNS for real.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

import dns.resolver
import spf

from ...model.plan import Plan
from ...model.scenario import Scenario, domain_of
from .. import nexthop
from .rules import Session, _ip_in, name_matches

# The client's address in a Received: header as Postfix (and the built-in gateway) write it:
# "from HELO (name [192.0.2.100])".
_RECEIVED_FROM = re.compile(r"^\s*from\s+(\S+)\s+\((?:[^()\[\]]*\s)?\[([0-9.]{7,15})\]\)")


@dataclass(frozen=True)
class SpfVerdict:
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror
    ip: str  # the address judged
    domain: str  # the identity's domain (MAIL FROM, or HELO for a null sender)
    skipped: tuple[str, str] | None = None  # the skip-listed hop (ip, helo) when Enhanced Filtering applied

    def headers(self, helo: str | None) -> list[str]:
        """The lines EOP stamps: Authentication-Results and Received-SPF, and with Enhanced
        Filtering the skip-listed and the original internet sender."""
        designates = "designates" if self.result == "pass" else "does not designate"
        lines = [
            f"Authentication-Results: spf={self.result} (sender IP is {self.ip}) smtp.mailfrom={self.domain};",
            f"Received-SPF: {self.result.capitalize()} (protection.outlook.test: domain of {self.domain} "
            f"{designates} {self.ip} as permitted sender)",
        ]
        if self.skipped is not None:
            # Both carry "the true source address" (Enhanced Filtering for Connectors), as real
            # ones do: ip=[<original client>];domain=<its HELO>.
            source = f"ip=[{self.ip}];domain={helo or self.domain}"
            lines += [
                f"X-MS-Exchange-SkipListedInternetSender: {source}",
                f"X-MS-Exchange-ExternalOriginalInternetSender: {source}",
            ]
        return lines


def use_lab_dns(plan: Plan) -> None:
    """pyspf asks dnspython's default resolver: point it at the lab DNS (the lab's own process
    or container has no other use for it)."""
    dns.resolver.default_resolver = nexthop.resolver(plan.ip("dns"), plan.dns_port)


def skip_listed(s: Scenario, session: Session, tenant: str) -> bool:
    """Does an inbound connector of the tenant that names this source (its address or its
    certificate) skip it: EFSkipLastIP, or the address in EFSkipIPs?"""
    for c in s.tenants[tenant].inbound_connectors:
        if not c.enabled or not (c.ef_skip_last_ip or c.ef_skip_ips):
            continue
        by_ip = bool(c.sender_ip_addresses) and _ip_in(session.source_ip, c.sender_ip_addresses)
        name = c.tls_sender_certificate_name
        by_cert = bool(name) and session.tls and any(name_matches(name or "", n) for n in session.cert_names)
        if c.ef_skip_ips and _ip_in(session.source_ip, c.ef_skip_ips):
            return True
        if c.ef_skip_last_ip and (by_ip or by_cert):
            return True
    return False


def previous_hop(data: bytes) -> tuple[str, str] | None:
    """(ip, helo) of the client the last hop received the message from: its Received: header."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data[:65536])
    received = headers.get_all("Received") or []
    m = _RECEIVED_FROM.match(str(received[0]).replace("\n", " ")) if received else None
    return (m.group(2), m.group(1)) if m else None


def evaluate(
    s: Scenario, session: Session, helo: str | None, mail_from: str, tenant: str, data: bytes
) -> tuple[SpfVerdict, str | None]:
    """SPF for a message EOP received for `tenant`: the verdict and the HELO of the judged hop.
    Blocking (DNS): the server runs it in a thread."""
    ip, judged_helo, skipped = session.source_ip, helo, None
    if skip_listed(s, session, tenant):
        before = previous_hop(data)
        if before is not None:
            skipped = (session.source_ip, helo or "")
            ip, judged_helo = before
    identity = mail_from or f"postmaster@{judged_helo or 'unknown'}"
    result, _ = spf.check2(i=ip, s=identity, h=judged_helo or "unknown")
    return SpfVerdict(result, ip, domain_of(identity), skipped), judged_helo
