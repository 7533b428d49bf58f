"""Fake-EOP throughput with STARTTLS and connection reuse, as a ratio to a bare aiosmtpd sink
(the named baseline: aiosmtpd's SMTP with a handler that only answers 250, same TLS context,
same client) measured alternately in the same run (target ratio ≥ 0.5).

Each server runs in its own process; the client sends N messages over one TLS connection
(EHLO, STARTTLS once, then MAIL/RCPT/DATA per message), presenting the gateway's certificate."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import smtplib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import machine

from labgen.engines.local import LocalEngine
from labgen.lab.smtp_client import client_tls_context
from labgen.lab.smtpd import server_tls_context
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab


class BareSink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"


def _serve(kind: str, plan, labdir: Path, ready):
    from aiosmtpd.smtp import SMTP

    from labgen.lab.eop.server import eop_factory

    async def main():
        files = plan.certs["eop-server"]
        factory: Callable[[], asyncio.BaseProtocol]  # the fake EOP's SMTP or the bare baseline's
        if kind == "eop":
            factory = eop_factory(plan, labdir, labdir / "run")
        else:
            tls = server_tls_context(str(labdir / files.chain), str(labdir / files.key))
            factory = lambda: SMTP(BareSink(), tls_context=tls)  # noqa: E731
        await asyncio.get_running_loop().create_server(factory, plan.ip("eop"), plan.smtp_port)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _client(plan, labdir: Path, n: int) -> float:
    files = plan.certs["gw-selfsigned"]
    ctx = client_tls_context(str(labdir / files.chain), str(labdir / files.key))
    body = b"Subject: bench\r\nX-Labgen-Id: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26
    t0 = time.perf_counter()
    s = smtplib.SMTP(
        plan.ip("eop"), plan.smtp_port, local_hostname="gw.contoso.example", source_address=(plan.ip("gateway"), 0)
    )
    # The SNI name, as labgen's own client sets it (smtp_client.Session.open): connecting by IP
    # leaves it empty, and typeshed does not declare smtplib's private attribute.
    s._host = "contoso.mail.protection.outlook.test"  # type: ignore[attr-defined]
    s.ehlo()
    s.starttls(context=ctx)
    s.ehlo()
    for _ in range(n):
        s.sendmail("alice@contoso.example", ["bob@contoso.example"], body)
    s.quit()
    return n / (time.perf_counter() - t0)


def measure(kind: str, plan, labdir: Path, n: int) -> float:
    ready = mp.Event()
    proc = mp.Process(target=_serve, args=(kind, plan, labdir, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(10):
            raise SystemExit(f"{kind} server did not start")
        return _client(plan, labdir, n)
    finally:
        proc.terminate()
        proc.join(5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as wd:
        plan, labdir = prepare_lab(load_scenario("broken"), LocalEngine(), Path(wd))
        eop, bare = [], []
        for _ in range(a.rounds):
            eop.append(measure("eop", plan, labdir, a.messages))
            bare.append(measure("bare", plan, labdir, a.messages))
    me, mb = statistics.median(eop), statistics.median(bare)
    print(f"machine: {machine()}")
    print(f"{a.messages} messages per round over one STARTTLS connection, {a.rounds} rounds, alternating")
    print(f"fake EOP (attribution, ledger, mailbox .eml): median {me:.0f} msg/s {[round(x) for x in eop]}")
    print(f"baseline bare aiosmtpd sink (250 only):       median {mb:.0f} msg/s {[round(x) for x in bare]}")
    print(f"ratio EOP/baseline: {me / mb:.2f}   target ≥ 0.5: {'met' if me / mb >= 0.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
