"""The Docker engine: the lab as a rendered compose project (real Postfix as the gateway, the
services from the lab image), on an internal documentation-range network. Lifecycle (containerlab
style): names labgen-<lab>-<service>, label io.labgen.lab=<lab>, everything removable by label.

Compose runs the project (it is the artifact users keep); the Docker SDK does what must work
even without the project directory: collision checks, status, logs, and removal by label.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InfraError
from ..lab.ledger import read_events
from ..model.plan import Plan, subnet_mover
from ..results.collect import Collector
from ..wait import poll
from . import labels
from .base import LabStatus, Mover, Removed, ServiceStatus
from .compose import project_name, render_project
from .dockerapi import answers, client
from .postfix import LOG_FILE

log = logging.getLogger(__name__)

LABEL = labels.LAB
_CONTAINER_LAB = re.compile(r"(?<![\w./-])/lab(?=/|\b)")  # the lab directory's path inside a container
READY_S = 60.0
LAB_SERVICES = ("dns", "eop", "sink", "gateway")  # what answers before the traffic starts


@lru_cache(maxsize=1)
def compose_command() -> tuple[str, ...]:
    """`docker compose` (v2 plugin) where present, else Debian's `docker-compose` (v1)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    raise InfraError(
        "neither `docker compose` nor `docker-compose` is installed; install one "
        "(Debian: apt-get install docker-compose)"
    )


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
                raise InfraError(
                    f"subnet {plan.subnet} of lab {plan.lab} overlaps Docker network "
                    f"'{net.name}' ({other}); remove that network or choose another "
                    "subnet with --subnet (e.g. one from 198.18.0.0/15)"
                )


def remove_lab(lab: str, linger: bool = True) -> dict[str, list[str]]:
    """Remove every container, network and volume labelled for `lab`. Passes repeat until one
    finds nothing: after an interrupted `compose up`, the engine may still finish creating a
    container it was asked for. Without `linger` (clearing the way before a start, when nothing
    of this command is in flight) a first pass that finds nothing ends it."""
    import docker.errors

    c = client()
    flt = {"label": f"{LABEL}={lab}"}
    gone: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}
    passes = [0]

    def one_pass() -> bool:
        """True once a pass after the first finds nothing left."""
        passes[0] += 1
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
        return (passes[0] > 1 or not linger) and not (containers or networks or volumes)

    # A creation still in flight lands within a few passes; after that, what is gone is reported.
    poll(one_pass, waiting_for=f"lab {lab} to be removed", timeout=2.0, interval=0.3, expire=lambda _: True)
    return gone


def lab_containers(lab: str | None = None) -> list[Any]:
    flt = {"label": f"{LABEL}={lab}" if lab else LABEL}
    return client().containers.list(all=True, filters=flt)


def lab_dir_of(container: Any) -> Path | None:
    for m in container.attrs.get("Mounts", []):
        if m.get("Destination") == "/lab":
            return Path(m["Source"])
    return None


def container_log_tail(name: str, lines: int = 30) -> str:
    try:
        return client().containers.get(name).logs(tail=lines).decode("utf-8", "replace")
    except Exception as e:
        return f"(no log: {e})"


def stopped_service(plan: Plan) -> tuple[str, str] | None:
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
        if host is None:
            return svc, last
        # The replacement is a template: the host path's backslashes doubled, nothing else special.
        return svc, _CONTAINER_LAB.sub(host.replace("\\", "\\\\"), last)
    return None


def raise_if_stopped(plan: Plan) -> None:
    stopped = stopped_service(plan)
    if stopped:
        svc, last = stopped
        raise InfraError(f"service {svc} of lab {plan.lab} stopped: {last}")  # its last words say why


class DockerEngine:
    """Docker labs always stay up after their verdict, for exploration, until `labgen down`."""

    name = "docker"
    can_render = True

    def __init__(self, keep: bool = True):  # keep: what `up --keep` asks is this engine's default
        self.image: str | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return answers()

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Mover | None:
        return subnet_mover(net, subnet)

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        return plan

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        from .images import ensure_image

        client()
        remove_lab(plan.lab, linger=False)  # `up` on an existing lab replaces it
        check_subnet(plan)
        self.image = ensure_image()
        render_project(plan, labdir, self.image)
        cmd = [*compose_command(), "-p", project_name(plan.lab), "-f", str(labdir / "compose.yaml"), "up", "-d"]
        log.debug("lab %s: %s", plan.lab, " ".join(cmd))
        proc = subprocess.run(cmd, cwd=labdir, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise InfraError(f"`{' '.join(cmd[:2])} up` failed for lab {plan.lab}: {tail}")
        self._wait_ready(plan, labdir)

    def _wait_ready(self, plan: Plan, labdir: Path) -> None:
        """The one readiness signal: each service's `ready` event in the ledger (Postfix's from its
        own log), written once it listens."""
        waiting = set(LAB_SERVICES)
        collector = Collector(labdir, plan)  # reads only what was appended since its last poll

        def ready() -> bool:
            waiting.difference_update(e.service for e in collector.poll() if e.event == "ready")
            return not waiting

        def log_tail() -> str:
            svc = sorted(waiting)[0]
            tail = container_log_tail(labels.container(plan.lab, svc))
            return f"service {svc} is not ready; last lines of its log:\n{tail}"

        poll(
            ready,
            waiting_for=f"lab {plan.lab}'s services to become ready",
            timeout=READY_S,
            interval=0.2,
            abort=lambda: raise_if_stopped(plan),
            detail=log_tail,
        )

    def inject(self, plan: Plan, labdir: Path) -> None:
        """The traffic container sends by itself once everything answers; wait until it has."""
        poll(
            lambda: any(e.get("event") == "injected" for e in read_events(labdir / "run")),
            waiting_for=f"lab {plan.lab}'s traffic generator to finish sending",
            timeout=READY_S,
            abort=lambda: raise_if_stopped(plan),
            detail=lambda: f"last lines of its log:\n{container_log_tail(labels.container(plan.lab, 'traffic'))}",
        )

    def check(self, plan: Plan, labdir: Path) -> None:
        raise_if_stopped(plan)  # e.g. a service that could not write its ledger: no more events come

    def finish(self, plan: Plan, labdir: Path) -> bool:
        return True  # the lab stays up for exploration until `labgen down`

    def abort(self, plan: Plan, labdir: Path) -> None:
        remove_lab(plan.lab)

    def render(self, plan: Plan, labdir: Path) -> str:
        """Write the compose project alone (`labgen render`); returns how to run it by hand."""
        from .images import image_tag

        render_project(plan, labdir, image_tag())
        return f"cd {labdir} && docker compose -p {project_name(plan.lab)} up -d   (the image: labgen images build)"

    # ----- inspection

    def status(self, lab: str | None = None) -> list[LabStatus]:
        by_lab: dict[str, list[Any]] = {}
        for c in sorted(lab_containers(lab), key=lambda c: c.name):
            by_lab.setdefault(c.labels.get(LABEL) or "", []).append(c)
        rows = []
        for name, ctrs in sorted(by_lab.items()):
            services = []
            for c in ctrs:
                nets = c.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
                ips = [n.get("IPAddress") or (n.get("IPAMConfig") or {}).get("IPv4Address") for n in nets.values()]
                services.append(
                    ServiceStatus(
                        service=c.labels.get(labels.SERVICE) or c.name,
                        state=c.status,
                        addresses=[i for i in ips if i],
                        container=c.name,
                        health=(c.attrs.get("State", {}).get("Health") or {}).get("Status"),
                        image=(c.image.tags or [c.image.short_id])[0] if c.image else None,
                    )
                )
            states = {s.state for s in services}
            labdir = next((d for c in ctrs if (d := lab_dir_of(c))), None)
            rows.append(
                LabStatus(
                    lab=name,
                    engine=self.name,
                    state=states.pop() if len(states) == 1 else "degraded",
                    services=services,
                    addresses=[a for s in services for a in s.addresses],
                    lab_dir=str(labdir) if labdir else None,
                )
            )
        return rows

    def logs(self, lab: str, service: str, tail: int) -> str | None:
        """The container's own log, then the service's ledger (the gateway's: Postfix's maillog)."""
        ctrs = [c for c in lab_containers(lab) if c.labels.get(labels.SERVICE) == service]
        if not ctrs:
            return None
        c = ctrs[0]
        text = c.logs(tail=tail).decode("utf-8", "replace")
        labdir = lab_dir_of(c)
        if labdir:
            for path in (
                (labdir / LOG_FILE, labdir / "run" / f"{service}.jsonl")
                if service == "gateway"
                else (labdir / "run" / f"{service}.jsonl",)
            ):
                if path.is_file():
                    lines = path.read_text(errors="replace").splitlines()
                    text += "\n".join(lines[-tail:]) + "\n"
                    break
        return text

    def down(self, lab: str) -> Removed | None:
        if not lab_containers(lab) and not client().networks.list(filters={"label": f"{LABEL}={lab}"}):
            return None
        return Removed(lab=lab, engine=self.name, parts=remove_lab(lab))
