"""The Docker engine: the lab as a rendered compose project (real Postfix as the gateway, the
services from the lab image), on an internal documentation-range network. Lifecycle (containerlab
style): names labgen-<lab>-<service>, label io.labgen.lab=<lab>, everything removable by label.

The rendered compose project is the artifact users keep and run by hand; `labgen up` starts the
same project itself through the Docker SDK (start_project: the network, then the five containers
created and started in parallel, from compose.compose_data's very dict), which saves
docker-compose's own start-up and its one-at-a-time creates on every run. The SDK also does what
must work without the project directory: collision checks, status, logs, removal by label.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from ..errors import InfraError, InputError
from ..lab.ledger import read_events
from ..model.plan import Plan, gateway_config_dir, loopback_ip, subnet_mover
from ..results.collect import Collector
from ..results.contracts import LabRow, ServiceRow
from ..wait import poll
from . import labels
from .base import Mover, Removed
from .compose import compose_data, project_name, render_project, traffic_container
from .dockerapi import answers, client
from .postfix import LOG_FILE

log = logging.getLogger(__name__)

LABEL = labels.LAB
_CONTAINER_LAB = re.compile(r"(?<![\w./-])/lab(?=/|\b)")  # the lab directory's path inside a container
READY_S = 60.0
LAB_SERVICES = ("dns", "eop", "sink", "gateway")  # what answers before the traffic starts


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
    of this command is in flight) one pass does it."""
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

        def remove(ctr: Any) -> None:
            try:
                ctr.remove(force=True, v=True)
                gone["containers"].append(ctr.attrs["Names"][0].lstrip("/"))
            except docker.errors.NotFound:
                pass  # already gone

        # In parallel: `up` on a running lab replaces it, and each removal waits for its kill.
        _each(remove, containers)
        networks, volumes = c.networks.list(filters=flt), c.volumes.list(filters=flt)
        for item, kind in [(n, "networks") for n in networks] + [(v, "volumes") for v in volumes]:
            try:
                item.remove()
                gone[kind].append(item.name)
            except docker.errors.NotFound:
                pass
        # Without linger nothing else is creating: what this pass found is gone, no second look.
        return not linger or (passes[0] > 1 and not (containers or networks or volumes))

    # A creation still in flight lands within a few passes; after that, what is gone is reported.
    poll(one_pass, waiting_for=f"lab {lab} to be removed", timeout=2.0, interval=0.3, expire=lambda _: True)
    return gone


def _each(fn: Callable[[Any], None], items: list[Any]) -> None:
    """fn on every item at once (Docker API calls that each wait on the engine); the first
    exception, if any, is raised once all have finished."""
    if len(items) < 2:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


_DURATION = re.compile(r"(\d+)s")


def _nanoseconds(duration: str) -> int:
    m = _DURATION.fullmatch(duration)
    if not m:
        raise InfraError(f"compose duration {duration!r} is not whole seconds (a labgen bug)")
    return int(m.group(1)) * 1_000_000_000


def _bind(volume: str, labdir: Path, absolute: frozenset[str] = frozenset()) -> str:
    """A compose short-syntax bind ("./x:/dst[:ro]") with its source made absolute: compose takes
    relative sources from the project directory, the lab directory. `absolute`: host paths that
    may be mounted as they are (an image gateway's configuration directory, checked by the plan)."""
    src, rest = volume.split(":", 1)
    if src in absolute:
        return volume
    if not src.startswith("./"):
        raise InfraError(f"compose volume {volume!r} is not relative to the project (a labgen bug)")
    return f"{(labdir / src).resolve()}:{rest}"


# compose_data's keys start_project knows how to apply: a key added there must be taught here.
_SERVICE_KEYS = {
    "image",
    "init",
    "cap_add",
    "volumes",
    "container_name",
    "hostname",
    "command",
    "healthcheck",
    "depends_on",
    "labels",
    "networks",
    "network_mode",
}
_NETWORK_KEYS = {"name", "driver", "internal", "driver_opts", "labels", "ipam"}


def container_kwargs(
    project: str, service: str, block: dict[str, Any], net: str, labdir: Path, absolute: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """docker-py's containers.create arguments for one compose service block. The compose labels
    let a user's `docker compose -p PROJECT down` (or ps, logs) find what labgen started.
    `absolute`: host paths the block may mount as they are (_bind)."""

    unknown = set(block) - _SERVICE_KEYS
    if unknown:
        raise InfraError(
            f"compose key(s) {sorted(unknown)} of service {service} not applied by the engine (a labgen bug)"
        )
    if "network_mode" in block:  # a pod lab's: no network, or another container's namespace
        mode = block["network_mode"]
        joined = mode.removeprefix("service:")
        network: dict[str, Any] = {"network_mode": mode if joined == mode else f"container:{project}-{joined}"}
    else:
        (_, endpoint), *more = block["networks"].items()
        if more:
            raise InfraError(f"service {service} on more than one network (a labgen bug)")
        network = {
            "network": net,
            # plain data here; start_project makes the SDK's EndpointConfig (it needs the API version)
            "networking_config": {net: {"ipv4_address": endpoint["ipv4_address"], "aliases": [service]}},
        }
    # An image gateway's block has no command, init, capabilities or healthcheck: the image's own.
    optional: dict[str, Any] = {k: block[k] for k in ("command", "init", "cap_add", "hostname") if k in block}
    hc = block.get("healthcheck")
    if hc:
        optional["healthcheck"] = {
            "test": hc["test"],
            "interval": _nanoseconds(hc["interval"]),
            "timeout": _nanoseconds(hc["timeout"]),
            "retries": hc["retries"],
            "start_period": _nanoseconds(hc["start_period"]),
        }
    return {
        "image": block["image"],
        **optional,
        "name": block["container_name"],
        "volumes": [_bind(v, labdir, absolute) for v in block["volumes"]],
        "labels": {
            **block["labels"],
            "com.docker.compose.project": project,
            labels.COMPOSE_SERVICE: service,
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.container-number": "1",
            "com.docker.compose.project.working_dir": str(labdir.resolve()),
            "com.docker.compose.project.config_files": str((labdir / "compose.yaml").resolve()),
        },
        **network,
        "detach": True,
    }


def start_project(plan: Plan, labdir: Path, image: str) -> None:
    """Start the lab exactly as `compose up -d` would start its rendered project: the network,
    the containers (created at once), the services started at once, then those that depend on
    them (depends_on orders starts only; the traffic container waits for answers by itself)."""
    import docker.errors
    import docker.types

    data = compose_data(plan, image)
    project = project_name(plan.lab)
    networks = list(data.get("networks", {}).items())  # a pod lab has none
    if len(networks) > 1 or any(set(netdef) - _NETWORK_KEYS for _, netdef in networks):
        raise InfraError("the compose network has keys the engine does not apply (a labgen bug)")
    c = client()
    try:
        for key, netdef in networks:
            c.networks.create(
                netdef["name"],
                driver=netdef["driver"],
                internal=netdef["internal"],
                options=netdef["driver_opts"],
                labels={**netdef["labels"], "com.docker.compose.project": project, "com.docker.compose.network": key},
                ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=cfg["subnet"]) for cfg in netdef["ipam"]["config"]]
                ),
            )
        net = networks[0][1]["name"] if networks else ""
        services: dict[str, dict[str, Any]] = data["services"]
        made: dict[str, Any] = {}

        config = gateway_config_dir(plan.scenario)  # an image gateway's, mounted from where it is
        own = frozenset([str(config)] if config else [])

        def create(name: str) -> None:
            kw = container_kwargs(project, name, services[name], net, labdir, own if name == "gateway" else frozenset())
            if "networking_config" in kw:
                kw["networking_config"] = {
                    n: c.api.create_endpoint_config(**e) for n, e in kw["networking_config"].items()
                }
            made[name] = c.containers.create(**kw)

        # A container that joins another's network namespace is created once that one exists.
        joins = [n for n in services if str(services[n].get("network_mode", "")).startswith("service:")]
        _each(create, [n for n in services if n not in joins])
        _each(create, joins)
        started: set[str] = set()
        while len(started) < len(services):  # waves: what depends only on started services
            wave = [n for n in services if n not in started and set(services[n].get("depends_on", [])) <= started]
            if not wave:
                raise InfraError("the compose services' depends_on form a cycle (a labgen bug)")
            _each(lambda n: made[n].start(), wave)
            started.update(wave)
            if "gateway" in wave and plan.scenario.gateway.image is not None:
                # Before the traffic starts: the gateway's addresses are in place and it answers.
                setup_image_gateway(plan, labdir, image)
    except docker.errors.DockerException as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InfraError(f"Docker could not start lab {plan.lab}: {first}") from None


def have_image(ref: str) -> None:
    """The user's gateway image on the engine: present, or pulled from a registry it reaches."""
    import docker.errors

    c = client()
    try:
        c.images.get(ref)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        c.images.pull(ref)
    except docker.errors.DockerException as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InfraError(
            f"the gateway image {ref} (gateway.image.ref) is not on this Docker engine and could not be "
            f"pulled: {first}; build or `docker load` it first"
        ) from None


def setup_image_gateway(plan: Plan, labdir: Path, image: str) -> None:
    """What labgen does for a gateway that is the user's image (docs/gateway-image.md), from
    outside so that the image needs neither NET_ADMIN nor `ip`: a short-lived lab-image container
    in the gateway's network namespace adds the gateway's extra addresses (the connectors'
    source_ip), removes Docker's default route, waits until port 25 answers 220 and writes the
    gateway's `ready` event to the ledger. It is removed once it has exited."""
    import docker.errors

    c = client()
    project = project_name(plan.lab)
    gateway = f"{project}-gateway"
    ref = plan.scenario.gateway.image.ref if plan.scenario.gateway.image else "?"
    ctr = c.containers.run(
        image,
        ["python3", "-m", "labgen.lab.entrypoints", "gateway-net"],
        name=f"{project}-gateway-net",
        network_mode=f"container:{gateway}",
        cap_add=["NET_ADMIN"],
        volumes=[f"{labdir.resolve()}:/lab:ro", f"{(labdir / 'run').resolve()}:/lab/run"],
        labels={LABEL: plan.lab, labels.SERVICE: "gateway-net"},
        detach=True,
    )
    try:
        try:
            code = ctr.wait(timeout=READY_S + 10).get("StatusCode", 1)
        except Exception:  # the engine's wait timed out: the helper's own deadline is shorter
            code = -1
        if code != 0:
            lines = [x for x in ctr.logs(tail=5).decode("utf-8", "replace").splitlines() if x.strip()]
            helper = lines[-1] if lines else f"exit {code}"
            gw_tail = container_log_tail(gateway, 5).strip().replace("\n", " | ")
            raise InfraError(
                f"the gateway image {ref} of lab {plan.lab} did not come up: {helper}; "
                f"last lines of its own log: {gw_tail or '(empty)'}"
            )
    finally:
        try:
            ctr.remove(force=True)
        except docker.errors.NotFound:
            pass


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


def own_postfix_summary(labdir: Path) -> str:
    """One line on a user's own Postfix configuration as the gateway installed it: the overrides
    made, the send transports found (run/gateway-config.json has them all)."""
    from ..lab.postfix_install import REPORT
    from ..results.documents import read_json
    from ..textsafe import one_line

    path = labdir / "run" / REPORT
    try:  # written in the gateway container, next to the user's configuration: read with care
        doc = read_json(path, "the gateway's configuration report")
        overrides = sorted({str(o["parameter"]) for o in doc["overrides"]})
        transports = [str(t["service"]) for t in doc["transports"]]
        warnings = [line for line in doc["postfix_check"] if "warning" in line or "fatal" in line]
    except Exception as e:  # its absence is worth a line, not a failed run
        return one_line(f"your Postfix configuration: no report in {path} ({e})", 300)
    return one_line(
        f"your Postfix configuration: {len(doc['overrides'])} lab override(s) ({', '.join(overrides)}); "
        f"send transports {', '.join(transports) or 'none'}; postfix check: {len(warnings)} warning(s); "
        f"all in {path}",
        600,
    )


class DockerEngine:
    """Docker labs always stay up after their verdict, for exploration, until `labgen down`."""

    name = "docker"
    runs_gateway_images = True
    can_render = True
    real_postfix = True  # its gateway is Postfix: a user's own configuration can run
    writes_own_result = True

    def __init__(
        self, keep: bool = True, image: str | None = None, topology: Literal["network", "pod"] = "network"
    ):  # keep: `up --keep` is this engine's default
        # image: start the lab from this image as it is (a workshop seat restarted with a trainee's
        # change: the image its containers already run, never a build); None: the current one.
        self.pinned = image
        self.image: str | None = None
        # "pod": two containers in one network namespace on loopback addresses (Plan.topology).
        self.topology = topology

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return answers()

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Mover | None:
        if self.topology == "pod":
            if subnet:
                raise InputError(
                    f"--subnet {subnet}: a pod lab has no network to place; its addresses are loopback ones"
                )
            return loopback_ip  # the local engine's mapping: CIDR-based connectors keep their meaning
        return subnet_mover(net, subnet)

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        return plan

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        from .images import ensure_image

        client()
        remove_lab(plan.lab, linger=False)  # `up` on an existing lab replaces it
        if plan.topology == "network":
            check_subnet(plan)  # a pod lab has no network: its loopback addresses collide with nothing
        self.image = self.pinned or ensure_image()
        if plan.scenario.gateway.image is not None:
            have_image(plan.scenario.gateway.image.ref)
        render_project(plan, labdir, self.image)  # the artifact, also what a user runs by hand
        log.debug("lab %s: starting %s/compose.yaml's project through the Docker API", plan.lab, labdir)
        start_project(plan, labdir, self.image)
        self._wait_ready(plan, labdir)
        if plan.scenario.gateway.postfix_config:
            log.info("%s", own_postfix_summary(labdir))

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
            tail = container_log_tail(labels.container(plan.lab, labels.serving(plan.topology, svc)))
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
            detail=lambda: f"last lines of its log:\n{container_log_tail(traffic_container(plan))}",
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

    def status(self, lab: str | None = None) -> list[LabRow]:
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
                    ServiceRow(
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
                LabRow(
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
        every = lab_containers(lab)
        ctrs = [c for c in every if c.labels.get(labels.SERVICE) == service]
        if not ctrs and service != "gateway":  # a pod lab's other services are its `lab` container's
            ctrs = [c for c in every if c.labels.get(labels.SERVICE) == labels.POD_SERVICE]
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
