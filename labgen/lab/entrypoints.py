"""Entry points of the lab's containers: `python -m labgen.lab.entrypoints SERVICE` inside the lab image.
Every container mounts the rendered lab directory at /lab (plan.json, certificates, configs) and
its run/ directory read-write for the ledger. The services are the same code the local engine
runs in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..errors import InfraError, LabgenError, one_line
from ..wait import poll

if TYPE_CHECKING:
    from ..model.plan import Plan

# engines.labels.POD_SERVICE, written again: importing labgen.engines would load the model, and
# the probe must not (tests/test_pod.py holds the two equal).
POD_SERVICE = "lab"

# Imports stay light at the top: the gateway's entry point is on every Docker lab's critical path
# (the last service to answer), and it needs no model, ledger or pydantic to start Postfix.


def _add_addresses(ips: list[str], prefixlen: int) -> None:
    """Extra addresses on this container's lab interface (needs NET_ADMIN): the gateway's other
    egress IPs, the traffic host's second identity."""
    if len(ips) < 2:
        return
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    dev = next(line.split()[1] for line in out.splitlines() if f" {ips[0]}/" in line)
    for ip in ips[1:]:
        if f" {ip}/" not in out:
            subprocess.run(["ip", "addr", "add", f"{ip}/{prefixlen}", "dev", dev], check=True)


def _drop_default_route() -> None:
    """Docker gives containers on internal networks a default route anyway; the lab removes it
    so that nothing in it has a route beyond the lab subnet (needs NET_ADMIN)."""
    out = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True).stdout
    if out.strip():
        subprocess.run(["ip", "-4", "route", "del", "default"], check=True)


def _forever_async(start, run_dir: Path, then: Callable[[], None] | None = None) -> None:
    """Serve what `start` starts until SIGTERM or a ledger fault; `then` (a pod lab's traffic)
    runs in a thread once it listens, and its exception stops the service with its reason."""
    from .ledger import lab_fault, on_fault

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # A service that cannot write its ledger (or mailboxes) stops: its container exits with
        # the reason as the last line of its log, and the runner, seeing it stopped, says so.
        on_fault(lambda _run_dir, _message: loop.call_soon_threadsafe(stop.set))
        await start()
        if then is not None:
            await asyncio.to_thread(then)
        await stop.wait()

    asyncio.run(main())
    fault = lab_fault(run_dir)
    if fault:
        raise InfraError(fault)


def run_smtp_service(name: str, plan: Plan, lab: Path) -> None:
    from ..results.contracts import Ready
    from .eop.server import eop_factory
    from .ledger import Ledger
    from .sink import sink_factory
    from .smtpd import serve

    factory = {"eop": eop_factory, "sink": sink_factory}[name](plan, lab, lab / "run")

    async def start():
        await serve(factory, plan.ip(name), plan.smtp_port)
        Ledger(lab / "run", name).emit(Ready(event="ready", ip=plan.ip(name), port=plan.smtp_port))

    _forever_async(start, lab / "run")


def run_dns(plan: Plan, lab: Path) -> None:
    from ..results.contracts import Ready
    from .dns_server import serve_dns
    from .ledger import Ledger

    async def start():
        await serve_dns(plan, plan.ip("dns"), plan.dns_port, lab / "run")
        Ledger(lab / "run", "dns").emit(Ready(event="ready", ip=plan.ip("dns"), port=plan.dns_port))

    _forever_async(start, lab / "run")


def run_pod(plan: Plan, lab: Path) -> None:
    """A pod lab's Python container (Plan.topology "pod"): DNS, EOP and the sinks in one process
    on their loopback addresses, then the traffic and the verdict, then serving on until stopped.
    Postfix runs beside it, in its network namespace (the gateway container)."""
    from ..results.contracts import Ready
    from .dns_server import serve_dns
    from .eop.server import eop_factory
    from .ledger import Ledger
    from .sink import sink_factory
    from .smtpd import serve

    run = lab / "run"

    async def start():
        await serve_dns(plan, plan.ip("dns"), plan.dns_port, run)
        Ledger(run, "dns").emit(Ready(event="ready", ip=plan.ip("dns"), port=plan.dns_port))
        for name, factory in (("eop", eop_factory), ("sink", sink_factory)):
            await serve(factory(plan, lab, run), plan.ip(name), plan.smtp_port)
            Ledger(run, name).emit(Ready(event="ready", ip=plan.ip(name), port=plan.smtp_port))

    def then() -> None:
        send_and_judge(plan, lab)
        _give_back_memory()  # the process serves on for hours: what the run used goes back

    _forever_async(start, run, then=then)


def _give_back_memory() -> None:
    """Free what the traffic and the verdict left behind and return glibc's free heap to the
    system (a pod seat is measured by its memory at rest, BENCHMARKS.md)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def run_postfix(lab: Path, plan: dict) -> NoReturn:
    """Postfix as the gateway, from plan.json as plain JSON: only its addresses are needed."""
    if plan.get("topology", "network") == "network":  # a pod lab's loopback addresses need no setup
        _add_addresses(plan["hosts"]["gateway"], int(plan["subnet"].split("/")[1]))
    # Postfix's load_file() reads a file again, 300 ms apart, for as long as its mtime is recent
    # (it might still be being written): freshly copied files cost ~2 s on every lab's critical
    # path. Their content is final here, so their mtime is set a minute back.
    if plan["scenario"]["gateway"].get("postfix_config"):
        from .postfix_install import install

        install(lab, plan)  # the user's own configuration, with the lab's overrides only
        os.execvp("postfix", ["postfix", "start-fg"])
    stale = time.time() - 60
    for name in ("main.cf", "master.cf", "transport", "relay_recipients", "virtual"):  # postfix.MAP_FILES
        shutil.copy(lab / "gateway" / "postfix" / name, f"/etc/postfix/{name}")
        os.utime(f"/etc/postfix/{name}", (stale, stale))
    # No `postfix check` here, and start-fg's own two checks are skipped through the queue
    # directory's quick-start file (Debian's postfix-script): the image already made the queue
    # directories and labgen's renderer checked every line it wrote (engines/postfix.py), while
    # the checks cost ~0.4 s each on every lab's critical path. Postfix's master still refuses a
    # configuration it cannot run, and the container then stops.
    Path("/var/spool/postfix/quick-start").touch()
    os.execvp("postfix", ["postfix", "start-fg"])


def run_gateway_net(lab: Path) -> int:
    """For a gateway that is the user's image (docs/gateway-image.md), run once in its network
    namespace by the Docker engine: its extra addresses, no default route, then wait until it
    answers 220 on port 25 of its primary address and write its `ready` event to the ledger."""
    from ..model.plan import Plan
    from ..results.contracts import Ready
    from .ledger import Ledger

    plan = Plan.load(lab / "plan.json")
    _add_addresses(plan.hosts["gateway"], int(plan.subnet.split("/")[1]))
    _drop_default_route()
    try:
        poll(
            lambda: answers(plan, "gateway"),
            waiting_for=f"the gateway image to answer 220 on {plan.ip('gateway')}:{plan.smtp_port}",
            timeout=55.0,
            interval=0.2,
        )
    except InfraError as e:
        raise SystemExit(one_line(f"labgen gateway-net: {e.message}")) from None
    Ledger(lab / "run", "gateway").emit(Ready(event="ready", ip=plan.ip("gateway"), port=plan.smtp_port))
    return 0


def answers(plan: Plan, name: str) -> bool:
    """Does a lab service answer as it should: the DNS with the gateway's address, an SMTP
    service with a 220 greeting."""
    from . import nexthop

    try:
        if name == "dns":
            nexthop.next_hops(nexthop.resolver(plan.ip("dns"), plan.dns_port), plan.scenario.gateway.hostname, mx=False)
            return True
        with socket.create_connection((plan.ip(name), plan.smtp_port), timeout=2) as s:
            s.settimeout(2)
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return True
    except Exception:  # refused, timeout, DNS failure: not (yet) answering
        pass
    return False


def wait_for_services(plan: Plan, deadline: float) -> None:
    """Until every service answers (docker-mailserver's pattern: wait with a deadline)."""
    pending = ["dns", "eop", "sink", "gateway"]

    def all_answer() -> bool:
        pending[:] = [name for name in pending if not answers(plan, name)]
        return not pending

    try:
        poll(
            all_answer,
            waiting_for="the lab's services to answer",
            until=deadline,
            interval=0.2,
            detail=lambda: f"not answering: {', '.join(pending)}",
        )
    except InfraError as e:
        raise SystemExit(f"traffic: {e.message}") from None


def run_traffic_service(plan: Plan, lab: Path, stay: bool) -> None:
    _add_addresses(plan.hosts["traffic"], int(plan.subnet.split("/")[1]))
    send_and_judge(plan, lab)
    if stay:
        # Stay up for exploration (`docker exec -it <lab>-traffic swaks ...`) as a process that
        # holds none of Python's memory.
        sys.stdout.flush()
        os.execvp("sleep", ["sleep", "infinity"])


def send_and_judge(plan: Plan, lab: Path) -> None:
    """Once every service answers: the scenario's traffic, then the verdict once every message
    settled, written to run/result.json and printed to the container's log."""
    from rich.console import Console

    from ..results.collect import Collector
    from ..results.report import print_result
    from ..run import result_document, wait_settled
    from .ledger import cannot_write, lab_fault
    from .traffic import run_traffic

    t0 = time.monotonic()
    wait_for_services(plan, t0 + 60)
    deadline = time.monotonic() + plan.scenario.deadline_s
    run_traffic(plan, lab / "run")

    def check() -> None:
        fault = lab_fault(lab / "run")
        if fault:
            raise InfraError(fault)

    results = wait_settled(plan, Collector(lab, plan).poll, deadline, check)
    doc = result_document(plan, lab, results, time.monotonic() - t0)
    try:
        (lab / "run" / "result.json").write_text(doc.model_dump_json(indent=2, by_alias=True))
    except OSError as e:
        raise InfraError(cannot_write("the lab's result", lab / "run" / "result.json", e)) from None
    print_result(doc, Console(width=160, emoji=False, highlight=False))
    sys.stdout.flush()


def _dns_answers(ip: str, port: int, name: str) -> bool:
    """A DNS A query for `name` gets an answer (RFC 1035 by hand: the probe imports no resolver)."""
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split(".")) + b"\0"
    query = b"\x4c\x47\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (ip, port))
        reply = s.recv(4096)
    # Our id, a response, rcode 0, at least one answer.
    return reply[:2] == b"\x4c\x47" and bool(reply[2] & 0x80) and reply[3] & 0x0F == 0 and reply[6:8] != b"\0\0"


def probe(lab: Path, name: str) -> int:
    """Docker's healthcheck: 0 when the service answers (traffic: once its verdict is written).
    Run in every container every interval, so it imports nothing of labgen's model: the plan as
    plain JSON, a socket (with the model it cost half a CPU-second a probe)."""
    if name == "traffic":
        return 0 if (lab / "run" / "result.json").is_file() else 1
    if name == POD_SERVICE:  # a pod lab's Python services: EOP answering stands for them
        name = "eop"
    try:
        plan = json.loads((lab / "plan.json").read_text())
        ip = plan["hosts"][name][0]
        if name == "dns":
            return 0 if _dns_answers(ip, int(plan["dns_port"]), plan["scenario"]["gateway"]["hostname"]) else 1
        with socket.create_connection((ip, int(plan["smtp_port"])), timeout=2) as s:
            s.settimeout(2)
            if s.recv(512).startswith(b"220"):
                s.sendall(b"QUIT\r\n")
                return 0
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass  # not (yet) answering
    return 1


def main(argv: list[str] | None = None) -> int:
    """The container's process: a service's exit status (probe: 0 when it answers)."""
    p = argparse.ArgumentParser(prog="python -m labgen.lab.entrypoints")
    p.add_argument("service", choices=["eop", "sink", "dns", "gateway", "traffic", "gateway-net", POD_SERVICE])
    p.add_argument("--lab", default="/lab", help="the rendered lab directory")
    p.add_argument("--once", action="store_true", help="traffic: exit after the verdict")
    p.add_argument("--probe", action="store_true", help="health check: does the service answer?")
    a = p.parse_args(argv)
    lab = Path(a.lab)
    if a.service == "gateway-net":  # an image gateway's network set-up, from outside (docker.py)
        return run_gateway_net(lab)
    if a.probe:
        return probe(lab, a.service)
    # A pod lab's namespace is the pod's: on Docker it has loopback only, on Kubernetes its route
    # is the cluster's and its NetworkPolicy keeps the seat in (without NET_ADMIN to change it).
    raw = json.loads((lab / "plan.json").read_text())
    pod = raw.get("topology") == "pod"
    if a.service == "gateway":
        if not pod:
            _drop_default_route()
        run_postfix(lab, raw)
    from ..model.plan import Plan

    plan = Plan.load(lab / "plan.json")
    if not pod:
        _drop_default_route()
    try:
        if a.service == POD_SERVICE:
            run_pod(plan, lab)
        elif a.service in ("eop", "sink"):
            run_smtp_service(a.service, plan, lab)
        elif a.service == "dns":
            run_dns(plan, lab)
        else:
            run_traffic_service(plan, lab, stay=not a.once)
    except LabgenError as e:  # one line as the container's last words (the runner quotes it), exit 1
        raise SystemExit(one_line(f"labgen {a.service}: {e.message}")) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
