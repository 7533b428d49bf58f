"""Render a lab as a self-contained docker-compose project (the artifact users keep and run by
hand): compose.yaml, the Postfix configuration, the lab's resolv.conf, plan.json, the
certificates and a README, all under the lab directory with relative paths only.

Scenario files come from strangers, so nothing here pastes a scenario string into structure:
compose.yaml is data dumped by yaml.safe_dump, human text appears only as one sanitised line
(labgen.textsafe), identifiers must match their grammar, and the Postfix files are checked line
by line before anything is written (labgen.engines.postfix)."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .. import __version__
from ..errors import InfraError
from ..model.plan import EOP_POOL_HOST, Plan
from ..resources import resource_dir
from ..textsafe import checked, md_inline, one_line, shown
from . import labels, postfix
from .labels import POD_SERVICE

SERVICES = ("dns", "eop", "sink", "gateway", "traffic")
HOSTNAMES = {"dns": "ns.lab.test", "sink": "mx-sink.lab.test", "traffic": "traffic.lab.test"}


def project_name(lab: str) -> str:
    return f"labgen-{lab}"


def _env(finalize: Callable[[Any], Any]) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(resource_dir("templates"))),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=False,
        finalize=finalize,
    )


def _ok(kind: str, value: object, what: str, where: str = "compose.yaml") -> str:
    return str(checked(kind, value, what, where))  # a plain str: yaml.safe_dump knows no subclasses


# ---------------------------------------------------------------- compose.yaml


def _services(plan: Plan) -> list[dict]:
    names = {**HOSTNAMES, "eop": EOP_POOL_HOST, "gateway": plan.scenario.gateway.hostname}
    out = []
    for svc in SERVICES:
        ips = [_ok("ipv4", ip, f"{svc}'s address") for ip in plan.hosts[svc]]
        out.append(
            {
                "name": svc,
                "ip": ips[0],
                "extra_ips": ips[1:],
                "hostname": _ok("hostname", names[svc], f"{svc}'s hostname"),
                # A pod lab's services other than Postfix all live in its one Python container.
                "container": labels.container(plan.lab, labels.serving(plan.topology, svc)),
                # One start-up wave for the services (none needs another to start; Compose v1
                # waits a wave per level), then traffic, which waits until every one answers.
                "depends_on": [s for s in SERVICES if s != "traffic"] if svc == "traffic" else [],
            }
        )
    return out


# The gateway-image contract (docs/gateway-image.md): where the lab's certificates appear in the
# user's gateway container.
GATEWAY_CERTS = "/lab/certs"


def gateway_image_block(plan: Plan, project: str, svc: dict[str, Any]) -> dict[str, Any]:
    """The compose service of a gateway that is the user's own image (gateway.image): the image's
    own entry point and user, no capabilities; the lab's resolv.conf, the scenario's certificates
    (and the gateway's server certificate) with the lab's CA certificates read-only under
    GATEWAY_CERTS, and the configuration directory read-only where the scenario says. Its extra
    addresses and the removal of Docker's default route are done from outside (docker.py)."""
    from ..model.plan import gateway_config_dir, gateway_server_cert

    gw = plan.scenario.gateway
    assert gw.image is not None  # only called for an image gateway
    names = [*plan.scenario.certificates, gateway_server_cert(plan)]
    files = [plan.ca_root, plan.ca_intermediate]
    for name in dict.fromkeys(names):
        f = plan.certs[name]
        files += [f.cert, f.key, f.chain]
    volumes = ["./resolv.conf:/etc/resolv.conf:ro"]
    for rel in files:
        rel = _ok("cert path", rel, "a certificate file")
        volumes.append(f"./{rel}:{GATEWAY_CERTS}/{rel.removeprefix('certs/')}:ro")
    config = gateway_config_dir(plan.scenario)
    if config is not None:
        volumes.append(f"{config}:{gw.image.config_mount}:ro")
    return {
        "image": _ok("image", gw.image.ref, "the gateway image"),
        "volumes": volumes,
        "container_name": f"{project}-gateway",
        "hostname": svc["hostname"],
        "labels": {**_extra_labels(plan), "io.labgen.lab": plan.lab, "io.labgen.service": "gateway"},
        "networks": {"lab": {"ipv4_address": svc["ip"]}},
    }


_EXTRA_LABEL = re.compile(r"io\.labgen\.[a-z]{1,20}")


def _extra_labels(plan: Plan) -> dict[str, str]:
    """The plan's extra labels (a workshop seat's), each name labgen's own and each value a lab
    name's grammar: they land in compose.yaml and on Docker objects as they are."""
    for key, value in plan.labels.items():
        if not _EXTRA_LABEL.fullmatch(key):
            raise InfraError(f"label {key!r} is not one of labgen's io.labgen.* labels (a labgen bug)")
        _ok("lab name", value, f"label {key}")
    return dict(plan.labels)


def entry_command(name: str) -> list[str]:
    """The lab image's command for one service (POD_SERVICE: the pod's Python services)."""
    return ["python3", "-m", "labgen.lab.entrypoints", name]


def health_probe(name: str, topology: str = "network") -> dict[str, Any]:
    # Informational (labgen waits on its ledger, not on health): every 30 s, so that many labs or
    # seats on one host do not spend their CPU probing each other. A pod's gateway asks Postfix
    # itself (its master runs, so it listens): a Python probe there would keep the interpreter's
    # files in that container's page cache, a fifth of a seat's memory where the storage driver
    # (fuse-overlayfs) shares no page cache between containers.
    test = ["postfix", "status"] if (topology, name) == ("pod", "gateway") else [*entry_command(name), "--probe"]
    return {
        "test": ["CMD", *test],
        "interval": "30s",
        "timeout": "5s",
        "retries": 3,
        "start_period": "5s",
    }


LAB_VOLUMES = ["./:/lab:ro", "./run:/lab/run", "./resolv.conf:/etc/resolv.conf:ro"]


def compose_data(plan: Plan, image: str) -> dict:
    """The compose project as data. `version` stays so Debian's docker-compose 1.29 accepts it."""
    lab = _ok("lab name", plan.lab, "the lab name")
    project = project_name(lab)
    image = _ok("image", image, "the lab image")
    if plan.topology == "pod":
        return _pod_data(plan, lab, project, image)
    services: dict[str, dict] = {}
    for svc in _services(plan):
        name = svc["name"]
        if name == "gateway" and plan.scenario.gateway.image is not None:
            services[name] = gateway_image_block(plan, project, svc)
            continue
        block: dict[str, Any] = {
            "image": image,
            "init": True,
            "cap_add": ["NET_ADMIN"],
            "volumes": list(LAB_VOLUMES),
            "container_name": f"{project}-{name}",
            "hostname": svc["hostname"],
            "command": entry_command(name),
            "healthcheck": health_probe(name),
        }
        if svc["depends_on"]:
            block["depends_on"] = svc["depends_on"]
        block["labels"] = {**_extra_labels(plan), "io.labgen.lab": lab, "io.labgen.service": name}
        block["networks"] = {"lab": {"ipv4_address": svc["ip"]}}
        services[name] = block
    return {
        "version": "3.8",
        "services": services,
        "networks": {
            "lab": {
                "name": f"{project}-net",
                "driver": "bridge",
                "internal": True,
                "driver_opts": {"com.docker.network.bridge.inhibit_ipv4": "true"},
                "labels": {**_extra_labels(plan), "io.labgen.lab": lab},
                "ipam": {"config": [{"subnet": _ok("ipv4 network", plan.subnet, "the lab subnet")}]},
            }
        },
    }


def _pod_data(plan: Plan, lab: str, project: str, image: str) -> dict:
    """A pod lab: two containers in one network namespace with nothing but loopback in it
    (network_mode none), as a Kubernetes pod's containers share one. No capabilities: every
    address is in 127.0.0.0/8, which is local without setup, and there is no route to remove."""
    gateway_name = _ok("hostname", plan.scenario.gateway.hostname, "the gateway's hostname")

    def block(name: str) -> dict[str, Any]:
        return {
            "image": image,
            "init": True,
            "volumes": list(LAB_VOLUMES),
            "container_name": f"{project}-{name}",
            "command": entry_command(name),
            "healthcheck": health_probe(name, "pod"),
            "labels": {**_extra_labels(plan), "io.labgen.lab": lab, "io.labgen.service": name},
        }

    # The namespace's owner carries the pod's hostname (a container joining it cannot set one):
    # the gateway's, which Postfix also has as myhostname.
    pod = {**block(POD_SERVICE), "hostname": gateway_name, "network_mode": "none"}
    gateway = {**block("gateway"), "network_mode": f"service:{POD_SERVICE}", "depends_on": [POD_SERVICE]}
    return {"version": "3.8", "services": {POD_SERVICE: pod, "gateway": gateway}}


def traffic_container(plan: Plan) -> str:
    """The container that sends the traffic and has the clients (swaks, openssl, dig)."""
    return labels.container(plan.lab, labels.serving(plan.topology, "traffic"))


def _compose_text(plan: Plan, image: str) -> str:
    data = compose_data(plan, image)
    project = project_name(plan.lab)
    extra = "; ".join(f"{s['name']} {', '.join(s['extra_ips'])}" for s in _services(plan) if s["extra_ips"])
    header = [
        f'Lab "{one_line(plan.lab, 64)}", rendered by labgen {__version__}.',
        one_line(plan.scenario.description, 200),
        "",
        f"Run by hand from this directory:  docker compose -p {project} up -d   (or docker-compose)",
        f"The verdict: docker logs -f {traffic_container(plan)}   and   run/result.json",
        "",
    ]
    if plan.topology == "pod":
        header += [
            "A pod lab: the lab container serves DNS, EOP and the sinks and sends the traffic, in one",
            "process; Postfix runs in the gateway container, which joins its network namespace. That",
            "namespace has loopback only (network_mode none): every lab address is a 127.x one.",
        ]
    else:
        header += [
            "NET_ADMIN stays inside each container's own network namespace: it lets the service remove the",
            "default route Docker adds even on internal networks, and add its extra lab addresses "
            f"({extra or 'none'}).",
        ]
    header += [
        "resolv.conf: the lab DNS is the only resolver; it answers lab names and nothing else.",
    ]
    if plan.topology == "network":
        header += [
            "The network is internal: documentation-range addresses that lead nowhere, no NAT, and the",
            "host itself takes no address on the bridge.",
        ]
    if plan.scenario.gateway.image is not None:
        header += [
            "",
            "The gateway is your own image (gateway.image; docs/gateway-image.md): its own entry point, no",
            "capabilities. `labgen up` adds its extra addresses and removes its default route from outside;",
            f"by hand, once it runs: docker run --rm --network container:{project}-gateway --cap-add NET_ADMIN",
            f'  -v "$PWD:/lab:ro" -v "$PWD/run:/lab/run" {image} python3 -m labgen.lab.entrypoints gateway-net',
        ]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=False, width=4096)
    text = "".join(f"# {line}\n" if line else "#\n" for line in header) + body
    # The header is comments only: the file must read back as exactly the data.
    if yaml.safe_load(text) != data:
        raise InfraError("refusing to write compose.yaml: its header comments changed the data (a labgen bug)")
    return text


# ---------------------------------------------------------------- README.md


class Verbatim(str):
    """README text labgen composed itself (shell commands, quoted with shlex): printed as is."""


def _markdown(value: Any) -> Any:
    """The README template's `finalize`: every {{ }} is literal Markdown text on one line,
    except Verbatim, which must already be a single printable line."""
    if isinstance(value, Verbatim):
        if not value.isprintable():
            raise InfraError(f"refusing to write README.md: {shown(value)} is not one printable line (a labgen bug)")
        return value
    return md_inline(value, 500)


def _commands(plan: Plan) -> dict[str, Verbatim]:
    """The README's shell commands: every argument quoted, so a scenario value cannot add any."""
    project = project_name(plan.lab)
    first = next(iter(plan.scenario.tenants.values()), None)
    mailbox = first.mailboxes[0] if first and first.mailboxes else "user@example"

    def cmd(*argv: str) -> Verbatim:
        return Verbatim(shlex.join(argv))

    return {
        "up": cmd("docker", "compose", "-p", project, "up", "-d"),
        "up_v1": cmd("docker-compose", "-p", project, "up", "-d"),
        "logs": cmd("docker", "logs", "-f", traffic_container(plan)),
        "swaks": cmd(
            "docker",
            "exec",
            "-it",
            traffic_container(plan),
            "swaks",
            "--server",
            plan.hosts["eop"][0],
            "--to",
            mailbox,
            "--tls",
        ),
        "down": cmd("docker", "compose", "-p", project, "down"),
        "down_labgen": cmd("labgen", "down", plan.lab),
    }


def _readme(plan: Plan, image: str) -> str:
    env = _env(_markdown)
    project = project_name(_ok("lab name", plan.lab, "the lab name", "README.md"))
    ctx = {
        "plan": plan,
        "s": plan.scenario,
        "project": project,
        "image": _ok("image", image, "the image", "README.md"),
        "version": __version__,
        "services": _services(plan),
        "cmd": _commands(plan),
    }
    return env.get_template("compose/README.md.j2").render(ctx)


# ---------------------------------------------------------------- Postfix


def _postfix_files(plan: Plan) -> dict[str, str | bytes]:
    """main.cf and master.cf from templates that print only checked values, each file then
    checked line by line against its template (postfix.check_*). A user's own configuration
    (gateway.postfix_config) is copied as it is instead: the gateway container installs it with
    the lab's overrides (labgen.lab.postfix_install)."""
    own = plan.scenario.gateway.postfix_config
    if own:
        from ..model.postfix_dir import read_config_dir

        config = read_config_dir(plan.scenario.base_dir, own, plan.scenario.source)
        return {f"gateway/postfix/{rel}": data for rel, data in config.files.items()}
    env = _env(postfix.only_checked)
    ctx = postfix.render_context(plan)
    out: dict[str, str | bytes] = {}
    for name, check in (("main.cf", postfix.check_main_cf), ("master.cf", postfix.check_master_cf)):
        template = f"postfix/{name}.j2"
        assert env.loader is not None  # _env() always gives one
        source = env.loader.get_source(env, template)[0]
        out[f"gateway/postfix/{name}"] = check(env.get_template(template).render(ctx), source)
    out["gateway/postfix/transport"] = postfix.transport_map(plan)
    out.update({f"gateway/postfix/{name}": text for name, text in postfix.map_files(plan).items()})
    return out


def render_project(plan: Plan, labdir: Path, image: str) -> list[Path]:
    """Write the compose project for `plan` into labdir (which already holds certs/ and plan.json).
    Every file is rendered and checked before the first is written."""
    files: dict[str, str | bytes] = {
        "compose.yaml": _compose_text(plan, image),
        "README.md": _readme(plan, image),
        "resolv.conf": f"# The lab DNS only: no recursion, no internet.\n"
        f"nameserver {_ok('ipv4', plan.ip('dns'), 'the DNS address', 'resolv.conf')}\n"
        "options timeout:1 attempts:2\n",
        # An image gateway brings its own configuration: no Postfix files to render.
        **(_postfix_files(plan) if plan.scenario.gateway.image is None else {}),
    }
    # A directory left by an earlier rendering may hold files this one does not write (a user's
    # configuration that lost a file): the gateway's configuration is this rendering's alone.
    shutil.rmtree(labdir / "gateway" / "postfix", ignore_errors=True)
    written = []
    for rel, text in files.items():
        path = labdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        written.append(path)
    return written
