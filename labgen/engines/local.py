"""The local engine: every service on its own loopback address (the lab's addresses mapped onto
127.0.0.0/8), one free port chosen for all of them. No root, no Docker; the same service code as
in the containers.

Without --keep the services run in this process and stop after the verdict. With --keep they run
in a detached child (`python -m labgen.engines.local --lab DIR --token T`, its own session) that
serves until `labgen down LAB`: it writes labels.STATE_FILE into the lab directory once every
service listens, and the parent registers it under labels.registry_dir(), so that `status`,
`logs` and `down` find it from any directory. `down` signals only a process whose command line
carries the lab's token: never one labgen did not start.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Literal

from ..errors import InfraError, InputError, LabgenError, one_line
from ..files import write_whole
from ..lab.dns_server import serve_dns
from ..lab.eop.server import eop_factory
from ..lab.gateway import gateway_factory
from ..lab.ledger import close_ledgers, lab_fault, on_fault
from ..lab.sink import sink_factory
from ..lab.smtpd import log as server_log
from ..lab.traffic import run_traffic
from ..model.plan import Plan, loopback_ip
from ..results.contracts import LabRow, ServiceRow
from ..wait import poll
from . import labels
from .base import Mover, Removed

log = logging.getLogger(__name__)

LAB_SERVICES = ("dns", "eop", "sink", "gateway")  # what the local engine serves (traffic: the CLI sends)
CHILD_READY_S = 30.0  # a fresh interpreter imports labgen and makes the services' TLS contexts
STOP_S = 10.0  # a kept lab's process gets this long after SIGTERM before SIGKILL


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
    raise InfraError(
        f"no port is free on all of the lab's loopback addresses ({', '.join(ips)}); "
        "free some ports or use --engine docker"
    )


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
    topology: Literal["network", "pod"] = "network"  # each service its own loopback address
    runs_gateway_images = False
    can_render = False
    real_postfix = False  # its gateway is labgen's own: no user Postfix configuration
    writes_own_result = False

    def render(self, plan: Plan, labdir: Path) -> str:
        raise InputError("the local engine runs labs in this process: it has no project to render")

    def __init__(self, keep: bool = False, topology: str = "network"):
        if topology != "network":
            raise InputError(
                f"--topology {topology}: the local engine serves each host on its own loopback address, "
                "in this process; a pod runs on the Docker engine (--engine docker)"
            )
        self.keep = keep
        # In-process services (without keep, and in the kept lab's child).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list[Any] = []
        self.gateway: Any = None
        self.echoes: _FaultEchoes | None = None
        self.child: subprocess.Popen[bytes] | None = None  # with keep: the process serving the lab

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "the local engine serves the lab on loopback addresses"

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Mover | None:
        if subnet:
            raise InputError(
                f"--subnet {subnet}: applies to the docker engine only; the local engine "
                "maps the lab onto loopback addresses"
            )
        return loopback_ip

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        self.down(plan.lab)  # `up` on a kept lab replaces it (it writes into the run/ about to be renewed)
        ips = [ip for ips in plan.hosts.values() for ip in ips]
        port = pick_port(ips)
        return plan.model_copy(update={"smtp_port": port, "dns_port": port})

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        if self.keep:
            self._spawn(plan, labdir)
        else:
            self._serve(plan, labdir, deadline)

    def _serve(self, plan: Plan, labdir: Path, deadline: float) -> None:
        """Every service in this process, on an event loop of its own thread."""
        run_dir = labdir / "run"
        self.echoes = _FaultEchoes(run_dir)
        server_log.addFilter(self.echoes)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="labgen-local", daemon=True)
        self.thread.start()
        gw_factory, self.gateway = gateway_factory(plan, labdir, run_dir, deadline)
        services = [
            ("eop", eop_factory(plan, labdir, run_dir)),
            ("sink", sink_factory(plan, labdir, run_dir)),
            ("gateway", gw_factory),
        ]

        async def listen() -> None:
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
            self._stop(labdir)
            raise

    def _spawn(self, plan: Plan, labdir: Path) -> None:
        """The kept lab's process; ready once it has written its state file (the one readiness
        signal of this engine: it writes it after every service listens)."""
        token = secrets.token_hex(8)
        env = dict(os.environ)
        # The child imports this very labgen, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            with open(labdir / labels.LOCAL_LOG, "ab") as out:
                self.child = subprocess.Popen(
                    [sys.executable, "-m", labels.LOCAL_MODULE, "--lab", str(labdir), "--token", token],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=labdir,
                    env=env,
                    start_new_session=True,
                )  # a Ctrl-C at the terminal is for the CLI, not for the lab
        except OSError as e:
            raise InfraError(f"cannot start the local lab {plan.lab}'s process: {e}") from None
        _register(plan.lab, labdir, self.child.pid, token)
        try:
            poll(
                lambda: (_read_json(labdir / labels.STATE_FILE) or {}).get("token") == token,
                waiting_for=f"the local lab {plan.lab}'s services to listen",
                timeout=CHILD_READY_S,
                interval=0.02,
                abort=lambda: self._raise_if_child_exited(plan, labdir),
            )
        except BaseException:
            self.abort(plan, labdir)
            raise

    def _raise_if_child_exited(self, plan: Plan, labdir: Path) -> None:
        if self.child is not None and self.child.poll() is not None:
            raise InfraError(f"the local lab {plan.lab}'s process stopped: {_last_line(labdir)}")

    def inject(self, plan: Plan, labdir: Path) -> None:
        run_traffic(plan, labdir / "run")

    def check(self, plan: Plan, labdir: Path) -> None:
        fault = lab_fault(labdir / "run")  # a service (or the traffic) of this process could not write
        if fault:
            raise InfraError(fault)
        self._raise_if_child_exited(plan, labdir)  # it stops on its own faults, saying why

    def finish(self, plan: Plan, labdir: Path) -> bool:
        if self.child is None:
            self._stop(labdir)
            return False
        close_ledgers(labdir / "run")  # the traffic's; the child keeps writing its own
        log.info("lab %s stays up on loopback (pid %d) until `labgen down %s`", plan.lab, self.child.pid, plan.lab)
        self.child = None
        return True

    def abort(self, plan: Plan, labdir: Path) -> None:
        if self.child is not None:
            self.child.terminate()
            try:
                self.child.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
            self.child = None
            _forget(plan.lab, labdir)
            close_ledgers(labdir / "run")
        self._stop(labdir)

    def _stop(self, labdir: Path) -> None:
        if self.loop is None:
            return
        loop, thread = self.loop, self.thread
        assert thread is not None

        async def close() -> None:
            for s in self.servers:
                s.close()
            tasks = list(self.gateway.tasks) if self.gateway else []
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.gateway:  # its cached SMTP sessions say QUIT while the servers still answer
                await asyncio.to_thread(self.gateway.close_idle)
            # Server sides of connections that are closing now: ended here, as asyncio.run ends
            # its tasks, not destroyed pending with the loop.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            for s in self.servers:
                if isinstance(s, asyncio.AbstractServer):
                    await s.wait_closed()
            # A delivery attempt already in its thread finishes (bounded by its SMTP timeout).
            await loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=15)
        except Exception:
            pass  # stopping regardless: the process is about to report and exit
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        self.loop = None
        close_ledgers(labdir / "run")
        if self.echoes:
            server_log.removeFilter(self.echoes)
            self.echoes = None

    # ----- inspection: the kept labs of this user

    def status(self, lab: str | None = None) -> list[LabRow]:
        rows = []
        for entry in _entries(lab):
            labdir = Path(entry["lab_dir"])
            state = _read_json(labdir / labels.STATE_FILE) or {}
            ours = state.get("token") == entry["token"] and _is_ours(entry["pid"], entry["token"])
            port = state.get("port")
            hosts: dict[str, list[str]] = state.get("hosts") or {}
            services = [
                ServiceRow(
                    service=svc,
                    state="running" if ours else "exited",
                    addresses=[f"{ip}:{port}" for ip in hosts.get(svc, [])],
                )
                for svc in LAB_SERVICES
            ]
            rows.append(
                LabRow(
                    lab=entry["lab"],
                    engine=self.name,
                    state="running" if ours else "exited",
                    services=services,
                    addresses=[a for s in services for a in s.addresses],
                    lab_dir=str(labdir),
                    pid=entry["pid"],
                )
            )
        return rows

    def logs(self, lab: str, service: str, tail: int) -> str | None:
        """The service's ledger (its log), or the lab process's own log when it has none."""
        entry = next(iter(_entries(lab)), None)
        if entry is None:
            return None
        labdir = Path(entry["lab_dir"])
        for path in (labdir / "run" / f"{service}.jsonl", labdir / labels.LOCAL_LOG):
            if path.is_file() and path.stat().st_size:
                lines = path.read_text(errors="replace").splitlines()
                return "\n".join(lines[-tail:]) + "\n"
        return ""

    def down(self, lab: str) -> Removed | None:
        entry = next(iter(_entries(lab)), None)
        if entry is None:
            return None
        pid, token, labdir = entry["pid"], entry["token"], Path(entry["lab_dir"])
        stopped = []
        if _is_ours(pid, token):  # else it has stopped already (and its pid may be another's now)
            for sig, wait in ((signal.SIGTERM, STOP_S), (signal.SIGKILL, STOP_S)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                gone = poll(
                    lambda: not _is_ours(pid, token),
                    waiting_for=f"lab {lab}'s process {pid} to stop",
                    timeout=wait,
                    interval=0.05,
                    expire=lambda _: False,
                )
                if gone:
                    break
            stopped.append(f"pid {pid}")
        _forget(lab, labdir)
        return Removed(lab=lab, engine=self.name, parts={"processes": stopped})


# ---------------------------------------------------------------- state and registry


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    """Atomic (rename), so a reader never sees half a file; 0600 like everything in the lab."""
    write_whole(path, json.dumps(data), mode=0o600)


def _entry_path(lab: str) -> Path:
    return labels.registry_dir() / f"{lab}.json"


def _register(lab: str, labdir: Path, pid: int, token: str) -> None:
    reg = labels.registry_dir()
    try:
        reg.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_json(_entry_path(lab), {"lab": lab, "lab_dir": str(labdir.resolve()), "pid": pid, "token": token})
    except OSError as e:
        raise InfraError(f"cannot register the local lab {lab} in {reg}: {e.strerror or e}") from None


def _forget(lab: str, labdir: Path) -> None:
    for path in (_entry_path(lab), labdir / labels.STATE_FILE):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _entries(lab: str | None = None) -> list[dict]:
    """Registry entries (well-formed ones only; the registry is the user's own, 0700)."""
    reg = labels.registry_dir()
    paths = [_entry_path(lab)] if lab else sorted(reg.glob("*.json")) if reg.is_dir() else []
    entries = []
    for path in paths:
        e = _read_json(path)
        if (
            e
            and isinstance(e.get("pid"), int)
            and isinstance(e.get("token"), str)
            and isinstance(e.get("lab_dir"), str)
            and labels.LAB_NAME.fullmatch(str(e.get("lab")))
        ):
            entries.append(e)
    return entries


def _is_ours(pid: int, token: str) -> bool:
    """Whether `pid` is a kept lab's process with this token (its command line says so)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return labels.LOCAL_MODULE.encode() in argv and token.encode() in argv


def _last_line(labdir: Path) -> str:
    try:
        lines = [line for line in (labdir / labels.LOCAL_LOG).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "(its log is empty)"


# ---------------------------------------------------------------- the kept lab's process


def main(argv: list[str] | None = None) -> int:
    """Serve a prepared lab directory until SIGTERM (or a lab fault: then exit 1, saying why)."""
    p = argparse.ArgumentParser(prog=f"python -m {labels.LOCAL_MODULE}")
    p.add_argument("--lab", required=True, help="the prepared lab directory")
    p.add_argument("--token", required=True, help="identifies this process to `labgen down`")
    a = p.parse_args(argv)
    labdir = Path(a.lab)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    on_fault(lambda _run_dir, _message: stop.set())
    engine = LocalEngine()
    try:
        plan = Plan.load(labdir / "plan.json")
        # A kept lab's gateway retries as long as it runs, as Postfix does.
        engine.start(plan, labdir, float("inf"))
        _write_json(
            labdir / labels.STATE_FILE,
            {
                "lab": plan.lab,
                "engine": engine.name,
                "pid": os.getpid(),
                "token": a.token,
                "port": plan.smtp_port,
                "hosts": {svc: plan.hosts[svc] for svc in LAB_SERVICES},
            },
        )
        while not stop.is_set():
            stop.wait(1.0)  # wakes for signals on every platform
    except (LabgenError, OSError) as e:
        print(one_line(f"labgen local lab: {getattr(e, 'message', None) or e}"), flush=True)
        return 1
    finally:
        engine._stop(labdir)
    fault = lab_fault(labdir / "run")
    if fault:
        print(one_line(f"labgen local lab: {fault}"), flush=True)  # its last words: `status`, the runner quote them
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
