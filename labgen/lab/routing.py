"""The gateway's routing rules, shared by the built-in gateway and the Postfix configuration:
which send connector takes a recipient (most specific address space wins), and which mail the
gateway may relay at all."""

from __future__ import annotations

from ..model.scenario import Scenario, SendConnector, domain_of


def specificity(space: str, domain: str) -> int:
    """How well an address space covers a domain: -1 no, else higher = more specific."""
    if space == "*":
        return 0
    if space.startswith("*."):
        base = space[2:]
        return len(base) + 1 if domain == base or domain.endswith("." + base) else -1
    return 1000 + len(space) if domain == space else -1


def pick_connector(domain: str, connectors: list[SendConnector]) -> SendConnector | None:
    best, best_score = None, -1
    for c in connectors:
        for space in c.address_space:
            score = specificity(space, domain.lower())
            if score > best_score:
                best, best_score = c, score
    return best


def inbound_domains(s: Scenario) -> list[str]:
    """Domains the gateway accepts mail for from anyone: those whose MX it is, and InternalRelay
    domains (it stands for the on-premises side that holds their other recipients)."""
    return sorted(
        d.name for t in s.tenants.values() for d in t.domains if d.mx == "gateway" or d.domain_type == "InternalRelay"
    )


def may_relay(s: Scenario, client_trusted: bool, rcpt: str) -> bool:
    return client_trusted or domain_of(rcpt) in inbound_domains(s)
