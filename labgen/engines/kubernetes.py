"""A workshop as Kubernetes manifests (issue #11, "Beyond one host"): `labgen workshop render
SCENARIO --kubernetes --seats N -o DIR` writes what `kubectl apply -k DIR` needs to run N seats
on a cluster, one pod per seat. Nothing here talks to a cluster or to Docker.

Each seat is a pod lab (Plan.topology "pod", engines/compose.py's _pod_data): two containers in
one network namespace, `lab` (DNS, EOP, the sinks and the traffic in one process) and `gateway`
(Postfix), every lab address a loopback one (198.51.100.10 -> 127.51.100.10). Loopback is the
pod's own, so every seat has the same addresses and no seat needs a fixed pod IP, a Service or
cluster DNS: the pod's resolv.conf names the seat's lab DNS only (dnsPolicy None), and a
NetworkPolicy with no rules lets nothing in or out (traffic on loopback is not subject to it).

Per seat, in namespace labgen-<workshop>-<seat>: the Namespace, a ConfigMap with the seat's lab
files (plan.json, resolv.conf, certs/ but its keys, gateway/postfix/*), a Secret with its private
keys (certs/*.key), the Deployment `seat` (one replica, Recreate: `kubectl delete pod` is the
seat's reset) and the NetworkPolicy. Keys of a ConfigMap or Secret cannot hold '/': each file
has a flat key and its path under /lab comes back through `items`.

Scenario files come from strangers: every manifest is data dumped by yaml.safe_dump, names are
checked against their grammar (textsafe.checked, and the Kubernetes grammars below), and file
names from the lab directory are checked before they become keys or paths.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import InfraError, InputError, escape, quote
from ..files import write_whole
from ..model.plan import Plan
from ..model.scenario import Scenario
from ..textsafe import checked, docker_reference, shown
from .compose import entry_command, health_probe
from .labels import POD_SERVICE

WHERE = "the Kubernetes manifests"
DEPLOYMENT = "seat"  # `kubectl exec -n NS deploy/seat -c lab -- ...`
CONFIG_MAP = "lab-files"
SECRET = "lab-keys"
LAB_MOUNT = "/lab"  # where every container finds the lab directory, as on Docker
SEED_MOUNT = "/seed"  # the projected ConfigMap and Secret, read by the init container only
CONTAINERS = (POD_SERVICE, "gateway")
MARKER = ".labgen-kubernetes"  # in DIR: a directory labgen rendered, which it may render again
MARKER_TEXT = "written by labgen workshop render --kubernetes: rendering again replaces its files\n"
KUSTOMIZATION = "kustomization.yaml"
README = "README.md"
SEAT_FILES = ("namespace.yaml", "configmap.yaml", "secret.yaml", "deployment.yaml", "networkpolicy.yaml")

# Memory and CPU per container, from BENCHMARKS.md (bench/bench_workshop.py, 30 pod seats on
# Docker): at rest the lab container holds ~50 MiB and the gateway ~20 MiB (cgroup memory less
# inactive page cache), and their peaks with all page cache were 96 and 60 MiB. Requests are what
# the scheduler counts (the figures at rest, rounded up), limits what the kernel enforces (twice
# the peak). No CPU limit: a CPU-throttled lab misses its own deadlines; a request spreads seats.
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    POD_SERVICE: {"requests": {"memory": "64Mi", "cpu": "50m"}, "limits": {"memory": "192Mi"}},
    "gateway": {"requests": {"memory": "32Mi", "cpu": "50m"}, "limits": {"memory": "128Mi"}},
}
# The init containers run before the seat's containers (a copy, one `ip route`): what they
# request does not add to the pod's (Kubernetes counts the larger of the two).
INIT_RESOURCES: dict[str, dict[str, str]] = {"requests": {"memory": "16Mi", "cpu": "10m"}, "limits": {"memory": "64Mi"}}
RUN_SIZE_LIMIT = "256Mi"  # the emptyDir holding /lab and /lab/run (ledger, mailboxes, Postfix's log)
GRACE_SECONDS = 10  # both processes stop on SIGTERM at once; a reset should not wait 30 s
CONFIG_MAP_MAX = 900 * 1024  # a ConfigMap or Secret is at most 1 MiB, its metadata included

# The init containers' scripts: constant text, nothing of a scenario in them.
# The projected volume's top level is the files' own names plus Kubernetes' "..data" links,
# which '*' does not match; -L copies what the links point to.
SEED_SCRIPT = "set -e; cp -RL /seed/* /lab/; mkdir -p /lab/run; chmod 0700 /lab/run"
# --no-default-route: an init container with NET_ADMIN removes the pod's default route, for a
# cluster whose network plugin does not enforce NetworkPolicy. Off by default: the baseline Pod
# Security Standard refuses NET_ADMIN, and the lab (all on loopback) never uses the route.
ROUTE_SCRIPT = "if ip -4 route show default | grep -q .; then ip -4 route del default; fi"

# Kubernetes' grammars (k8s.io/apimachinery validation): a namespace or object name is a
# DNS-1123 label; a label value is at most 63 characters that begin and end alphanumeric; a
# ConfigMap or Secret key is [-._a-zA-Z0-9]+, never '.' or '..'.
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
DATA_KEY = re.compile(r"(?!\.{1,2}$)[-._a-zA-Z0-9]{1,253}")
# The lab directory's files that the containers read, and nothing else: one safe name under each
# directory (the names plan.py and postfix.py give them).
_LAB_FILE = re.compile(
    r"plan\.json|resolv\.conf|certs/[a-z0-9][a-z0-9._-]{0,127}|gateway/postfix/[a-z0-9][a-z0-9._-]{0,63}"
)
_LAB_DIRS = ("certs", "gateway/postfix")
_LAB_TOP = ("plan.json", "resolv.conf")


def _k8s(grammar: re.Pattern[str], value: object, what: str) -> str:
    if isinstance(value, str) and grammar.fullmatch(value):
        return str(value)
    raise InfraError(
        f"refusing to write {what} {shown(value)} into {WHERE}: it is not a Kubernetes name (a labgen bug)"
    )


def _ok(kind: str, value: object, what: str) -> str:
    return str(checked(kind, value, what, WHERE))  # a plain str: yaml.safe_dump knows no subclasses


def check_cluster_name(workshop: str) -> str:
    """A workshop name that is also a Kubernetes label value (labgen's own grammar allows a
    trailing '-', Kubernetes' does not): bad input, named."""
    if not LABEL_VALUE.fullmatch(workshop):
        raise InputError(
            f"workshop name {quote(workshop)}: on Kubernetes it must also end with a letter or digit "
            "(it is a label value); choose another --name"
        )
    return workshop


def namespace(workshop: str, seat: str) -> str:
    return _k8s(DNS_LABEL, f"labgen-{workshop}-{seat}", "a namespace name")


def file_key(rel: str) -> str:
    """A lab file's ConfigMap/Secret key: its path with '/' as '_' (certs/ca-root.crt ->
    certs_ca-root.crt). One name under each of a few fixed directories: no two paths share a key."""
    return _k8s(DATA_KEY, rel.replace("/", "_"), "a ConfigMap key")


def is_key(rel: str) -> bool:
    """A private key: in the Secret, never in the ConfigMap."""
    return rel.startswith("certs/") and rel.endswith(".key")


def lab_files(labdir: Path) -> dict[str, bytes]:
    """The files of a rendered seat lab directory that its containers read, by relative path:
    plan.json, resolv.conf, certs/*, gateway/postfix/*. A name outside _LAB_FILE, a link or a
    subdirectory is refused (labgen wrote the directory: it is a bug)."""
    files: dict[str, bytes] = {}
    paths = [labdir / rel for rel in _LAB_TOP]
    for sub in _LAB_DIRS:
        paths += sorted((labdir / sub).iterdir())
    for path in paths:
        rel = path.relative_to(labdir).as_posix()
        if not _LAB_FILE.fullmatch(rel) or path.is_symlink() or not path.is_file():
            raise InfraError(f"refusing to put {shown(rel)} of {escape(labdir, 120)} into {WHERE} (a labgen bug)")
        files[rel] = path.read_bytes()
    return files


def refuse_own_gateway(s: Scenario) -> None:
    """A seat runs labgen's own Postfix (make_plan refuses both for a pod lab already; this keeps
    the promise here, before anything is written, should that change)."""
    if s.gateway.image is not None or s.gateway.postfix_config:
        what = "gateway.image" if s.gateway.image is not None else "gateway.postfix_config"
        raise InputError(
            f"{escape(s.source or s.name, 100)}: {what}: a Kubernetes seat runs labgen's own Postfix; "
            "run this scenario with `labgen up` instead"
        )


# ---------------------------------------------------------------- one seat's documents


@dataclass
class SeatManifests:
    seat: str
    namespace: str
    plan: Plan
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name in DIR/<seat>/ -> document


def _labels(workshop: str, seat: str, lab: str) -> dict[str, str]:
    from ..workshop import SEAT_LABEL, WORKSHOP_LABEL

    return {
        "app.kubernetes.io/name": "labgen",
        "app.kubernetes.io/managed-by": "labgen",
        WORKSHOP_LABEL: _k8s(LABEL_VALUE, workshop, "the workshop label"),
        SEAT_LABEL: _k8s(LABEL_VALUE, seat, "the seat label"),
        "io.labgen.lab": _k8s(LABEL_VALUE, lab, "the lab label"),
    }


def _seconds(duration: str) -> int:
    """compose's "30s" as Kubernetes' integer seconds."""
    if not re.fullmatch(r"[0-9]{1,4}s", duration):
        raise InfraError(f"health probe duration {shown(duration)} is not N seconds (a labgen bug)")
    return int(duration[:-1])


def readiness_probe(name: str) -> dict[str, Any]:
    """compose.health_probe's command and timing, as a readiness probe: a seat is ready once its
    services answer (no liveness probe: a slow seat is not restarted under a trainee)."""
    hc = health_probe(name, "pod")
    test = list(hc["test"])
    if test[:1] != ["CMD"]:
        raise InfraError(f"health probe {shown(test)} is no exec form (a labgen bug)")
    return {
        "exec": {"command": test[1:]},
        "initialDelaySeconds": _seconds(hc["start_period"]),
        "periodSeconds": _seconds(hc["interval"]),
        "timeoutSeconds": _seconds(hc["timeout"]),
        "failureThreshold": int(hc["retries"]),
    }


def _container(name: str, image: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": entry_command(name),
        "volumeMounts": [{"name": "lab", "mountPath": LAB_MOUNT}],
        "readinessProbe": readiness_probe(name),
        "resources": RESOURCES[name],
    }


def seat_documents(
    plan: Plan, files: dict[str, bytes], workshop: str, seat: str, image: str, drop_route: bool = False
) -> SeatManifests:
    """The seat's five documents, from its plan and its lab files (lab_files)."""
    if plan.topology != "pod":
        raise InfraError(f"lab {plan.lab} is planned for the {plan.topology} topology, not a pod (a labgen bug)")
    refuse_own_gateway(plan.scenario)
    ns = namespace(workshop, seat)
    image = _ok("image", image, "the lab image")
    dns = _ok("ipv4", plan.ip("dns"), "the lab DNS address")
    labels = _labels(workshop, seat, _ok("lab name", plan.lab, "the lab name"))
    meta = {"namespace": ns, "labels": labels}

    texts: dict[str, str] = {}
    binaries: dict[str, str] = {}
    secrets: dict[str, str] = {}
    config_items: list[dict[str, Any]] = []
    secret_items: list[dict[str, Any]] = []
    size = {"config": 0, "secret": 0}
    for rel, data in sorted(files.items()):
        if not _LAB_FILE.fullmatch(rel):
            raise InfraError(f"refusing to put {shown(rel)} into {WHERE} (a labgen bug)")
        key = file_key(rel)
        if key in texts or key in binaries or key in secrets:
            raise InfraError(f"two lab files share the key {key} in {WHERE} (a labgen bug)")
        if is_key(rel):
            secrets[key] = base64.b64encode(data).decode("ascii")
            secret_items.append({"key": key, "path": rel, "mode": 0o600})
            size["secret"] += len(secrets[key])
            continue
        try:
            texts[key] = data.decode("utf-8")
        except UnicodeDecodeError:
            binaries[key] = base64.b64encode(data).decode("ascii")
        config_items.append({"key": key, "path": rel})
        size["config"] += len(data)
    for kind, used in size.items():
        if used > CONFIG_MAP_MAX:
            raise InfraError(
                f"seat {seat}'s lab files take {used} bytes, more than a {kind} holds ({CONFIG_MAP_MAX}); "
                "the scenario is too large for a Kubernetes seat"
            )

    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, **meta},
        "data": texts,
    }
    if binaries:
        config_map["binaryData"] = binaries
    pod_labels = {k: labels[k] for k in ("app.kubernetes.io/name", "io.labgen.workshop", "io.labgen.seat")}
    hostname = _k8s(DNS_LABEL, plan.scenario.gateway.hostname.split(".", 1)[0], "the pod's hostname")
    init_base = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": INIT_RESOURCES,
    }
    pod_spec: dict[str, Any] = {
        "hostname": hostname,  # the gateway's first label; Postfix has its whole name (myhostname)
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "dnsPolicy": "None",
        "dnsConfig": {  # the seat's resolv.conf: its lab DNS, on loopback, and nothing else
            "nameservers": [dns],
            "options": [{"name": "timeout", "value": "1"}, {"name": "attempts", "value": "2"}],
        },
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "initContainers": [
            {
                "name": "seed",
                **init_base,
                "command": ["sh", "-c", SEED_SCRIPT],
                "volumeMounts": [
                    {"name": "seed", "mountPath": SEED_MOUNT, "readOnly": True},
                    {"name": "lab", "mountPath": LAB_MOUNT},
                ],
            },
        ]
        + (
            [
                {
                    "name": "no-route",
                    **init_base,
                    "command": ["sh", "-c", ROUTE_SCRIPT],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
                    },
                }
            ]
            if drop_route
            else []
        ),
        "containers": [_container(name, image) for name in CONTAINERS],
        "volumes": [
            {
                "name": "seed",
                "projected": {
                    "defaultMode": 0o644,
                    "sources": [
                        {"configMap": {"name": CONFIG_MAP, "items": config_items}},
                        {"secret": {"name": SECRET, "items": secret_items}},
                    ],
                },
            },
            {"name": "lab", "emptyDir": {"sizeLimit": RUN_SIZE_LIMIT}},
        ],
    }
    docs: dict[str, dict[str, Any]] = {
        "namespace.yaml": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}},
        "configmap.yaml": config_map,
        "secret.yaml": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, **meta},
            "type": "Opaque",
            "data": secrets,
        },
        "deployment.yaml": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": DEPLOYMENT, **meta},
            "spec": {
                "replicas": 1,
                # The old pod goes before the new one starts: `kubectl delete pod` resets the seat.
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 1,
                "selector": {"matchLabels": pod_labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
        "networkpolicy.yaml": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "seat-isolated", **meta},
            # Every pod of the namespace, both directions, no rule: nothing in, nothing out.
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
    }
    assert tuple(docs) == SEAT_FILES
    return SeatManifests(seat, ns, plan, docs)


# ---------------------------------------------------------------- the workshop


@dataclass
class Rendered:
    workshop: str
    out: Path
    seats: list[SeatManifests]
    written: list[Path]


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump's dumper without anchors and aliases (kustomize reads them poorly; shared
    label and resource mappings are written out each time), multi-line text as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted scalar where a block cannot hold the text exactly.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def _dump(doc: dict[str, Any]) -> str:
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=False, width=4096)
    if yaml.safe_load(text) != doc:
        raise InfraError("refusing to write a manifest that does not read back as its data (a labgen bug)")
    return text


def _check_out(out: Path) -> None:
    """DIR: new, empty, or one this command rendered before (its files are then replaced)."""
    if out.is_symlink():
        raise InputError(f"{escape(out, 120)} is a symbolic link; labgen does not follow links for its output")
    if out.exists() and not out.is_dir():
        raise InputError(f"{escape(out, 120)} exists and is not a directory; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InputError(
            f"{escape(out, 120)} is not empty and labgen did not render it; choose a new or empty directory (-o)"
        )


def _clear_previous(out: Path) -> None:
    """A directory rendered before: its seats and top-level files go, nothing else of it."""
    from ..workshop import SEAT_NAME

    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink() and SEAT_NAME.fullmatch(entry.name):
            shutil.rmtree(entry)
        elif entry.name in (KUSTOMIZATION, README) and not entry.is_dir():
            entry.unlink()


def seat_scenarios(ref: str, n: int, name: str | None) -> tuple[str, list[tuple[str, Scenario]]]:
    """The workshop's name and each seat's (seat, scenario), as `workshop up` makes them."""
    from ..workshop import read_exercise, seat_names, seat_scenario_of

    seats = seat_names(n)
    raw, _, base, workshop = read_exercise(ref, name)
    check_cluster_name(workshop)
    return workshop, [(seat, seat_scenario_of(raw, workshop, seat, base)) for seat in seats]


def render_workshop(
    ref: str,
    n: int,
    name: str | None,
    out: Path,
    image: str | None = None,
    labs: Path | None = None,
    drop_route: bool = False,
) -> Rendered:
    """Write DIR (`out`): kustomization.yaml, README.md and DIR/<seat>/*.yaml. Each seat's lab
    directory (plan, certificates, Postfix files) is rendered into `labs`/<seat> (a temporary
    directory when None, removed after: its files are in the manifests) without Docker."""
    from ..model.plan import make_plan
    from ..run import prepare_lab
    from ..workshop import SEAT_LABEL, WORKSHOP_LABEL
    from . import named
    from .compose import render_project
    from .images import image_tag

    out = Path(os.path.abspath(out))  # abspath, not resolve(): a symlinked DIR is refused, never followed
    _check_out(out)
    workshop, work = seat_scenarios(ref, n, name)
    if image is not None and docker_reference(image) is None:
        raise InputError(
            f"--image {quote(image)}: not an image reference (name[:tag][@digest], e.g. REGISTRY/labgen-lab:TAG)"
        )
    image = _ok("image", image or image_tag(), "the lab image")
    engine = named("docker", topology="pod")  # plans and renders; never contacts Docker
    for _, s in work:
        refuse_own_gateway(s)
    plans = {
        seat: make_plan(s, engine, None, {WORKSHOP_LABEL: workshop, SEAT_LABEL: seat}) for seat, s in work
    }  # every seat's bad input before anything is written
    manifests = []
    with tempfile.TemporaryDirectory(prefix="labgen-k8s-") as tmp:
        root = labs if labs is not None else Path(tmp)
        for seat, s in work:
            plan, labdir = prepare_lab(s, engine, root, labdir=root / seat, force=True, plan=plans[seat])
            render_project(plan, labdir, image)
            manifests.append(seat_documents(plan, lab_files(labdir), workshop, seat, image, drop_route))
    texts: dict[str, tuple[str, int]] = {}  # path under DIR -> (text, mode)
    for m in manifests:
        for fname, doc in m.documents.items():
            # The Secret holds private keys (lab keys, but keys): readable by the trainer only.
            texts[f"{m.seat}/{fname}"] = (_dump(doc), 0o600 if fname == "secret.yaml" else 0o644)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(texts),
    }
    texts[KUSTOMIZATION] = (_dump(kustomization), 0o644)
    texts[README] = (readme(workshop, manifests, image), 0o644)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        _clear_previous(out)
        write_whole(out / MARKER, MARKER_TEXT)
        for m in manifests:
            (out / m.seat).mkdir(mode=0o700, exist_ok=True)
        for rel, (text, mode) in texts.items():
            write_whole(out / rel, text, mode=mode)
            written.append(out / rel)
    except OSError as e:
        raise InfraError(f"cannot write {escape(out, 120)}: {e.strerror}; choose another -o") from None
    return Rendered(workshop, out, manifests, written)


# ---------------------------------------------------------------- README.md


def _mebibytes(quantity: str) -> int:
    m = re.fullmatch(r"([0-9]+)Mi", quantity)
    if not m:
        raise InfraError(f"memory {shown(quantity)} is not N Mi (a labgen bug)")
    return int(m.group(1))


def _millicores(quantity: str) -> int:
    m = re.fullmatch(r"([0-9]+)m", quantity)
    if not m:
        raise InfraError(f"CPU {shown(quantity)} is not N m (a labgen bug)")
    return int(m.group(1))


def seat_requests() -> tuple[int, int, int]:
    """One seat's memory request and limit (MiB) and CPU request (millicores), from RESOURCES."""
    mem = sum(_mebibytes(r["requests"]["memory"]) for r in RESOURCES.values())
    limit = sum(_mebibytes(r["limits"]["memory"]) for r in RESOURCES.values())
    cpu = sum(_millicores(r["requests"]["cpu"]) for r in RESOURCES.values())
    return mem, limit, cpu


def _cmd(*argv: str) -> str:
    line = shlex.join(argv)
    if not line.isprintable():
        raise InfraError(f"refusing to write README.md: {shown(line)} is not one printable line (a labgen bug)")
    return line


def readme(workshop: str, seats: list[SeatManifests], image: str) -> str:
    """DIR/README.md: labgen's own text; from the scenario only checked names, addresses (in
    code blocks, each command one shell-quoted line) and nothing of its prose."""
    first = seats[0]
    plan = first.plan
    tenant = next(iter(plan.scenario.tenants.values()), None)
    mailbox = tenant.mailboxes[0] if tenant and tenant.mailboxes else "user@example.com"
    ns = first.namespace
    eop = _ok("ipv4", plan.ip("eop"), "EOP's address")
    mem, limit, cpu = seat_requests()
    n = len(seats)
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else "latest"
    rows = "\n".join(f"| {m.seat} | `{m.namespace}` |" for m in seats)
    exec_swaks = _cmd(
        "kubectl", "exec", "-n", ns, f"deploy/{DEPLOYMENT}", "-c", POD_SERVICE, "--",
        "swaks", "--server", eop, "--to", mailbox, "--tls",
    )  # fmt: skip
    return f"""# Workshop {workshop} on Kubernetes

Rendered by labgen {__version__}: {n} seat(s), one pod each, image `{image}`.

## Apply

```
kubectl apply -k .
kubectl get pods -A -l io.labgen.workshop={workshop}
```

Each seat has its own namespace (below) with the Deployment `{DEPLOYMENT}` (one pod: containers `lab` and
`gateway`), a ConfigMap and a Secret holding its lab files and private keys, and a NetworkPolicy
that lets nothing in or out. Remove the workshop with `kubectl delete -k .`.

| seat | namespace |
|------|-----------|
{rows}

## The image

The pods run `{image}` with `imagePullPolicy: IfNotPresent`. Build it with `labgen images build`,
then bring it to the cluster, one of:

- kind: `kind load docker-image {image}`
- a containerd node (k3s, kubeadm): `docker save {image} | ssh NODE sudo ctr -n k8s.io images import -`
  (k3s: `docker save {image} | sudo k3s ctr images import -`), on every node
- a registry the cluster pulls from:
  `docker tag {image} REGISTRY/labgen-lab:{tag} && docker push REGISTRY/labgen-lab:{tag}`,
  then render again with `--image REGISTRY/labgen-lab:{tag}`

## A trainee's seat

The verdict (the traffic's outcome, as `labgen up` prints it) is the `lab` container's log:

```
kubectl logs -n {ns} deploy/{DEPLOYMENT} -c lab
```

Send a message of your own from inside the seat (swaks, dig and openssl are there):

```
{exec_swaks}
```

Reset a seat to its start: `kubectl delete pod -n {ns} -l io.labgen.seat={first.seat}` (the
Deployment is Recreate: a fresh pod with fresh files, the old one gone first).

## Cluster size

A seat requests {mem}Mi of memory and {cpu}m of CPU (limit {limit}Mi, no CPU limit): {n} seat(s)
request {n * mem}Mi and {n * cpu}m, plus headroom for the nodes' own pods. These per-seat figures are
the lab's as measured on Docker (BENCHMARKS.md), not on a cluster.

## Security

No Service, no service account token, no cluster DNS: the pod's resolv.conf names the seat's lab
DNS only. Each namespace's NetworkPolicy lets nothing in or out of the pod (the lab talks to
itself over loopback, which NetworkPolicy does not govern); it needs a network plugin that
enforces NetworkPolicy (Calico, Cilium; flannel alone does not). No container adds a capability.
On a cluster without such a plugin, render with `--no-default-route`: an init container with
NET_ADMIN then removes each pod's default route (the `baseline` Pod Security Standard refuses it;
see docs/kubernetes.md).
"""
