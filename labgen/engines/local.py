"""The local engine: every service in this process, each on its own loopback address (the plan
maps the lab's addresses onto 127.0.0.0/8), one free port chosen for all of them. No root, no
Docker; the same service code as in the containers."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
from pathlib import Path

from ..lab.dns_server import serve_dns
from ..lab.eop.server import eop_factory
from ..errors import InfraError
from ..lab.gateway import gateway_factory
from ..lab.ledger import close_ledgers, lab_fault, read_events
from ..model.plan import Plan
from ..lab.sink import sink_factory
from ..lab.smtpd import log as server_log
from ..lab.traffic import run_traffic


def _port_free_everywhere(port: int, ips: list[str]) -> bool:
    socks = []
    try:
        for ip in ips:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def pick_port(ips: list[str], tries: int = 50) -> int:
    for _ in range(tries):
        port = random.randint(20000, 60999)
        if _port_free_everywhere(port, ips):
            return port
    raise InfraError(f"no port is free on all of the lab's loopback addresses ({', '.join(ips)}); "
                     "free some ports or use --engine docker")


class _FaultEchoes(logging.Filter):
    """Once the lab has a fault (ledger.note_fault: e.g. the disk is full), what its services log
    is that fault's echo, a line per failing session; the runner's one line says it all."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return lab_fault(self.run_dir) is None


class LocalEngine:
    name = "local"

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list = []
        self.gateway = None
        self.echoes: _FaultEchoes | None = None

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        ips = [ip for ips in plan.hosts.values() for ip in ips]
        port = pick_port(ips)
        return plan.model_copy(update={"smtp_port": port, "dns_port": port})

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        run_dir = labdir / "run"
        self.echoes = _FaultEchoes(run_dir)
        server_log.addFilter(self.echoes)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="labgen-local", daemon=True)
        self.thread.start()
        gw_factory, self.gateway = gateway_factory(plan, labdir, run_dir, deadline)
        services = [("eop", eop_factory(plan, labdir, run_dir)), ("sink", sink_factory(plan, labdir, run_dir)),
                    ("gateway", gw_factory)]

        async def listen():
            from ..lab.smtpd import serve
            try:
                self.servers += await serve_dns(plan, plan.ip("dns"), plan.dns_port, run_dir)
            except OSError as e:
                raise InfraError(f"lab DNS cannot listen on {plan.ip('dns')}:{plan.dns_port}: {e}") from None
            for host, factory in services:
                try:
                    self.servers.append(await serve(factory, plan.ip(host), plan.smtp_port))
                except OSError as e:
                    raise InfraError(f"{host} cannot listen on {plan.ip(host)}:{plan.smtp_port}: {e}") from None
        try:
            asyncio.run_coroutine_threadsafe(listen(), self.loop).result(timeout=10)
        except BaseException:
            self.finish(plan, labdir)
            raise

    def inject(self, plan: Plan, labdir: Path) -> None:
        run_traffic(plan, labdir / "run")

    def events(self, plan: Plan, labdir: Path) -> list[dict]:
        return list(read_events(labdir / "run"))

    def abort(self, plan: Plan, labdir: Path) -> None:
        self.finish(plan, labdir)

    def finish(self, plan: Plan, labdir: Path) -> None:
        if self.loop is None:
            return

        async def close():
            for s in self.servers:
                s.close()
            tasks = list(self.gateway.tasks) if self.gateway else []
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in self.servers:
                if isinstance(s, asyncio.AbstractServer):
                    await s.wait_closed()
            # A delivery attempt already in its thread finishes (bounded by its SMTP timeout).
            await self.loop.shutdown_default_executor()
        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=15)
        except Exception:
            pass  # stopping regardless: the process is about to report and exit
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()
        self.loop = None
        close_ledgers(labdir / "run")
        if self.echoes:
            server_log.removeFilter(self.echoes)
            self.echoes = None
