"""Deterministic faults (scenario `faults:`): what a lab server (EOP, the internet sinks) does
instead of its normal answer, for the transactions a fault matches, the first `times` of them
or always. Counts, not clocks (but for `delay` and a `down` window, which are about time): the same faults
give the same verdict on every run."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from ..model.scenario import Fault, Scenario
from ..results.contracts import FaultInjected, RcptDecision
from .eop.rules import name_matches
from .ledger import Ledger, clip

# RFC 3207: the reply to STARTTLS when TLS is temporarily unavailable.
REPLY_NO_STARTTLS = "454 4.7.0 TLS not available due to local problem"
# RFC 5321 4.2.3/3.8: a server that is not available answers the connection 421 and closes it.
REPLY_DOWN = "421 4.3.2 Service not available, closing transmission channel"


@dataclass(frozen=True)
class Facts:
    """What a fault can match on, as far as the transaction has got."""

    client_ip: str
    cert_names: tuple[str, ...] = ()
    mail_from: str | None = None
    rcpts: tuple[str, ...] = ()


class Faults:
    def __init__(self, s: Scenario, service: str):
        self._faults = [(i, f) for i, f in enumerate(s.faults) if f.at == service]
        self._used: Counter[int] = Counter()
        self._since: dict[int, float] = {}  # a time-window fault (down for `seconds`): its first use

    def __bool__(self) -> bool:
        return bool(self._faults)

    def take(self, do: str, facts: Facts, step: str | None = None) -> tuple[int, Fault] | None:
        """The first fault of kind `do` (at `step`, for delay) that matches and has uses left;
        using it counts. A `down` for `seconds` lasts that long from its first use: the one fault
        measured by the clock (the outcome stays the same; how many retries it costs may not)."""
        for i, f in self._faults:
            if f.do != do or f.step != step or not _matches(f, facts):
                continue
            if f.times is not None and self._used[i] >= f.times:
                continue
            if f.do == "down" and f.seconds is not None:
                first = self._since.setdefault(i, time.monotonic())
                if time.monotonic() - first >= f.seconds:
                    continue
            self._used[i] += 1
            return i, f
        return None


def _matches(f: Fault, facts: Facts) -> bool:
    w = f.when
    if w.source_ip is not None and w.source_ip != facts.client_ip:
        return False
    if w.sender is not None and (facts.mail_from or "").lower() != w.sender.lower():
        return False
    if w.rcpt is not None and w.rcpt.lower() not in (r.lower() for r in facts.rcpts):
        return False
    if w.certificate is not None and not any(name_matches(w.certificate, n) for n in facts.cert_names):
        return False
    return True


# ---------------------------------------------------------------- what a server does with a fault


def fault_reply(
    ledger: Ledger, hit: tuple[int, Fault], msgid: str | None, rcpt: str, client_ip: str, mail_from: str | None
) -> str:
    """do: reply: the fault's reply to RCPT, in the ledger as the server's decision on it."""
    i, f = hit
    reply = f.reply or ""
    ledger.emit(
        RcptDecision(
            event="rcpt",
            msgid=msgid,
            rcpt=clip(rcpt.lower()),
            action="defer" if reply.startswith("4") else "reject",
            reply=reply,
            reason=f"injected by faults[{i}]" + (f" ({f.times} time(s))" if f.times else ""),
            client_ip=client_ip,
            mail_from=clip(mail_from or ""),
        )
    )
    return reply


def fault_disconnect(
    ledger: Ledger, index: int, server: asyncio.Protocol, client_ip: str, msgid: str | None, rcpts: list[str]
) -> str:
    """do: disconnect: the message data is in, the connection goes without a reply."""
    ledger.emit(
        FaultInjected(
            event="fault",
            index=index,
            do="disconnect",
            client_ip=client_ip,
            msgid=msgid,
            rcpts=[clip(r.lower()) for r in rcpts],
        )
    )
    transport = getattr(server, "transport", None)
    if transport is not None:
        transport.abort()
    return "421 4.4.2 connection dropped"  # aiosmtpd writes it to a closed transport: nobody reads it


def connection_fault(ledger: Ledger, faults: Faults, do: str, client_ip: str) -> bool:
    """do: no-starttls, tls-fail or down for this client's connection: is there one (recorded)?"""
    hit = faults.take(do, Facts(client_ip))
    if hit is None:
        return False
    reply = {"no-starttls": REPLY_NO_STARTTLS, "down": REPLY_DOWN}.get(do)
    ledger.emit(FaultInjected(event="fault", index=hit[0], do=do, client_ip=client_ip, reply=reply))
    return True


async def fault_delay(ledger: Ledger, faults: Faults, step: str, facts: Facts, msgid: str | None = None) -> None:
    """do: delay at `step`: hold the reply back (recorded first: the client may give up meanwhile)."""
    hit = faults.take("delay", facts, step)
    if hit is None:
        return
    i, f = hit
    ledger.emit(
        FaultInjected(
            event="fault",
            index=i,
            do="delay",
            client_ip=facts.client_ip,
            msgid=msgid,
            rcpts=[clip(r.lower()) for r in facts.rcpts] or None,
            step=step,
            seconds=f.seconds,
        )
    )
    await asyncio.sleep(f.seconds or 0)
