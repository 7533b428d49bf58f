"""The Docker engine: the lab as a rendered compose project (real Postfix as the gateway, the
services from the lab image), on an internal documentation-range network. Lifecycle (containerlab
style): names labgen-<lab>-<service>, label io.labgen.lab=<lab>, everything removable by label.

Compose runs the project (it is the artifact users keep); the Docker SDK does what must work
even without the project directory: collision checks, status, logs, and removal by label.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..results.collect import collect_events
from .dockerapi import client
from ..errors import InfraError
from ..lab.ledger import read_events
from ..model.plan import Plan
from .compose import project_name, render_project

LABEL = "io.labgen.lab"
_CONTAINER_LAB = re.compile(r"(?<![\w./-])/lab(?=/|\b)")  # the lab directory's path inside a container
READY_S = 60.0


@lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """`docker compose` (v2 plugin) where present, else Debian's `docker-compose` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise InfraError("neither `docker compose` nor `docker-compose` is installed; install one "
                     "(Debian: apt-get install docker-compose)")


def check_subnet(plan: Plan) -> None:
    """A lab subnet that overlaps another Docker network would break both: say which one."""
    mine = ipaddress.ip_network(plan.subnet)
    own = f"{project_name(plan.lab)}-net"
    for net in client().networks.list():
        if net.name == own:
            continue
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                other = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if other.version == 4 and other.overlaps(mine):
                raise InfraError(f"subnet {plan.subnet} of lab {plan.lab} overlaps Docker network "
                                 f"'{net.name}' ({other}); remove that network or choose another "
                                 "subnet with --subnet (e.g. one from 198.18.0.0/15)")


def remove_lab(lab: str) -> dict:
    """Remove every container, network and volume labelled for `lab`. Passes repeat until one
    finds nothing: after an interrupted `compose up`, the engine may still finish creating a
    container it was asked for."""
    import docker.errors
    c = client()
    flt = {"label": f"{LABEL}={lab}"}
    gone: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}
    for attempt in range(6):
        # sparse: no per-container inspect, which would race a removal happening meanwhile
        containers = c.containers.list(all=True, filters=flt, sparse=True)
        for ctr in containers:
            try:
                ctr.remove(force=True, v=True)
                gone["containers"].append(ctr.attrs["Names"][0].lstrip("/"))
            except docker.errors.NotFound:
                pass  # already gone
        networks, volumes = c.networks.list(filters=flt), c.volumes.list(filters=flt)
        for item, kind in [(n, "networks") for n in networks] + [(v, "volumes") for v in volumes]:
            try:
                item.remove()
                gone[kind].append(item.name)
            except docker.errors.NotFound:
                pass
        if not (containers or networks or volumes) and attempt:
            break
        time.sleep(0.3)
    return gone


def lab_containers(lab: Optional[str] = None) -> list:
    flt = {"label": f"{LABEL}={lab}" if lab else LABEL}
    return client().containers.list(all=True, filters=flt)


def lab_dir_of(container) -> Optional[Path]:
    for m in container.attrs.get("Mounts", []):
        if m.get("Destination") == "/lab":
            return Path(m["Source"])
    return None


def container_log_tail(name: str, lines: int = 30) -> str:
    try:
        return client().containers.get(name).logs(tail=lines).decode("utf-8", "replace")
    except Exception as e:
        return f"(no log: {e})"


def stopped_service(plan: Plan) -> Optional[tuple[str, str]]:
    """(service, last line of its log) of a lab container that has stopped, else None. A lab
    service runs until `labgen down`: one that stopped (e.g. it could not write its ledger to
    run/) will answer nothing more, so waiting for it is pointless."""
    flt = {"label": f"{LABEL}={plan.lab}", "status": ["exited", "dead"]}
    for ctr in client().containers.list(all=True, filters=flt, sparse=True):
        name = ctr.attrs["Names"][0].lstrip("/")
        svc = (ctr.attrs.get("Labels") or {}).get("com.docker.compose.service") or name
        lines = [line for line in container_log_tail(name, 5).splitlines() if line.strip()]
        last = lines[-1] if lines else "(its log is empty)"
        # Its paths are the container's: /lab is the lab directory on this host.
        host = next((m["Source"] for m in ctr.attrs.get("Mounts") or [] if m.get("Destination") == "/lab"), None)
        return svc, (_CONTAINER_LAB.sub(lambda _: host, last) if host else last)
    return None


def raise_if_stopped(plan: Plan) -> None:
    stopped = stopped_service(plan)
    if stopped:
        svc, last = stopped
        raise InfraError(f"service {svc} of lab {plan.lab} stopped: {last}")  # its last words say why


class DockerEngine:
    name = "docker"

    def __init__(self, console=None):
        self.console = console
        self.image: Optional[str] = None

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        return plan

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        from .images import ensure_image
        client()
        remove_lab(plan.lab)  # `up` on an existing lab replaces it
        check_subnet(plan)
        self.image = ensure_image(console=self.console)
        render_project(plan, labdir, self.image)
        cmd = [*compose_command(), "-p", project_name(plan.lab), "-f", str(labdir / "compose.yaml"), "up", "-d"]
        proc = subprocess.run(cmd, cwd=labdir, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise InfraError(f"`{' '.join(cmd[:2])} up` failed for lab {plan.lab}: {tail}")
        self._wait_ready(plan, labdir)

    def _wait_ready(self, plan: Plan, labdir: Path) -> None:
        waiting = {"dns", "eop", "sink", "gateway"}
        until = time.monotonic() + READY_S
        while waiting and time.monotonic() < until:
            for e in collect_events(labdir, plan):
                if e.get("event") == "ready":
                    waiting.discard(e["service"])
            if waiting:
                raise_if_stopped(plan)  # it will not become ready
                time.sleep(0.2)
        if waiting:
            svc = sorted(waiting)[0]
            name = f"{project_name(plan.lab)}-{svc}"
            raise InfraError(f"lab {plan.lab}: service {svc} did not become ready within {READY_S:.0f} s; "
                             f"last lines of its log:\n{container_log_tail(name)}")

    def inject(self, plan: Plan, labdir: Path) -> None:
        """The traffic container sends by itself once everything answers; wait until it has."""
        until = time.monotonic() + READY_S
        name = f"{project_name(plan.lab)}-traffic"
        while time.monotonic() < until:
            if any(e.get("event") == "injected" for e in read_events(labdir / "run")):
                return
            raise_if_stopped(plan)
            time.sleep(0.1)
        raise InfraError(f"lab {plan.lab}: the traffic generator did not finish sending; last lines of "
                         f"its log:\n{container_log_tail(name)}")

    def events(self, plan: Plan, labdir: Path) -> list[dict]:
        raise_if_stopped(plan)  # e.g. a service that could not write its ledger: no more events come
        return collect_events(labdir, plan)

    def finish(self, plan: Plan, labdir: Path) -> None:
        pass  # the lab stays up for exploration until `labgen down`

    def abort(self, plan: Plan, labdir: Path) -> None:
        remove_lab(plan.lab)


