"""Workshops (issue #11): N isolated copies ("seats") of one scenario on one Docker host.

Seat sNN of workshop W is the lab `W-sNN`: containers labgen-W-sNN-<service>, labelled
io.labgen.lab=W-sNN, io.labgen.workshop=W and io.labgen.seat=sNN, on its own /24 (the scenario's
size) of 198.18.0.0/15 that no Docker network uses. Its directory is <workdir>/labgen-W/sNN/: the
scenario's copy (seat.yaml), the overlay the trainee edits (overlay.yaml) and the lab itself
(plan, certificates, run/). workshop.json in <workdir>/labgen-W/ records the seats.

`labgen check` merges a seat's overlay over seat.yaml (only the paths the scenario's exercise:
lets the trainee change), restarts the seat with it from the existing image and grades the
exercise's goals; `workshop reset` empties the overlay and restarts the seat as it started.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import random
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .engines import labels
from .errors import InfraError, InputError, LabgenError, escape, quote
from .files import write_whole
from .model.scenario import Exercise, Scenario, load_yaml, parse_scenario, read_scenario_text, scenario_path
from .resources import resource_dir
from .results.contracts import ClassReportDoc, MessageResult, ResultDoc, dump

WORKSHOP_LABEL = "io.labgen.workshop"
SEAT_LABEL = "io.labgen.seat"
# A workshop's name: a lab name short enough that "<name>-s01" still is one (31 characters).
WORKSHOP_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,26}")
SEAT_NAME = re.compile(r"s\d{2}")
MAX_SEATS = 99
PARALLEL = 4  # seats started at once: Docker itself is the bottleneck
POOL = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range: documentation-like, never routed
STATE_FILE = "workshop.json"
SEAT_FILE = "seat.yaml"
OVERLAY_FILE = "overlay.yaml"
REPORT_STEM = "class-report"
OVERLAY_HEADER = (
    "# Your change to this seat's scenario (seat.yaml), as a scenario overlay: the keys you set here\n"
    "# replace seat.yaml's. Connectors are matched by name, e.g.\n"
    "#   certificates:\n"
    "#     my-cert: {cn: mta.contoso.example, sans: [mta.contoso.example], issuer: public}\n"
    "#   gateway:\n"
    "#     connectors:\n"
    "#       - {name: Internet, certificate: my-cert}\n"
    "# Then: labgen check --seat SEAT. `labgen workshop reset SEAT` empties this file again.\n"
)
# Keys an overlay never sets, whatever the exercise allows: they name files or images on the host.
_HOST_KEYS = frozenset({"cert_file", "key_file", "postfix_config", "image"})
_OVERLAY_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


# ---------------------------------------------------------------- names


def check_workshop_name(name: str) -> str:
    if not isinstance(name, str) or not WORKSHOP_NAME.fullmatch(name):
        raise InputError(
            f"workshop name {quote(name)}: lower-case letters, digits and '-', at most 27 "
            "(seat labs are named <workshop>-s01)"
        )
    return name


def check_seat(seat: str) -> str:
    if not isinstance(seat, str) or not SEAT_NAME.fullmatch(seat):
        raise InputError(f"seat {quote(seat)}: a seat is s01, s02, ... (`labgen workshop status` lists them)")
    return seat


def seat_names(n: int) -> list[str]:
    if not 1 <= n <= MAX_SEATS:
        raise InputError(f"--seats {n}: a workshop has 1 to {MAX_SEATS} seats")
    return [f"s{i:02d}" for i in range(1, n + 1)]


def seat_lab(workshop: str, seat: str) -> str:
    return f"{workshop}-{seat}"


def workshop_dir(workdir: Path, workshop: str) -> Path:
    return Path(workdir) / f"labgen-{workshop}"


# ---------------------------------------------------------------- subnets


def allocate_subnets(n: int, prefixlen: int, taken: list[ipaddress.IPv4Network], start: int | None = None) -> list[str]:
    """`n` distinct subnets of size /`prefixlen` in 198.18.0.0/15 overlapping none of `taken`.
    The search starts at a random place (`start`: a fixed one), so that two workshops set up at
    the same moment rarely reach for the same subnets."""
    if not POOL.prefixlen <= prefixlen <= 29:
        raise InputError(
            f"the scenario's lab subnet is a /{prefixlen}; a workshop seat takes one of that size from {POOL}, "
            "so it must be between /15 and /29"
        )
    count = 1 << (prefixlen - POOL.prefixlen)
    first = random.randrange(count) if start is None else start % count
    size = 1 << (32 - prefixlen)
    chosen: list[ipaddress.IPv4Network] = []
    for i in range(count):
        net = ipaddress.IPv4Network((int(POOL.network_address) + ((first + i) % count) * size, prefixlen))
        if any(net.overlaps(t) for t in taken if t.version == 4) or net in chosen:
            continue
        chosen.append(net)
        if len(chosen) == n:
            return [str(c) for c in chosen]
    raise InfraError(
        f"only {len(chosen)} free /{prefixlen} subnet(s) in {POOL} for {n} seat(s): Docker networks use the "
        "rest; remove some (`docker network ls`) or ask for fewer seats"
    )


def docker_subnets() -> list[ipaddress.IPv4Network]:
    from .engines.dockerapi import client

    nets: list[ipaddress.IPv4Network] = []
    for net in client().networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                found = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if isinstance(found, ipaddress.IPv4Network):
                nets.append(found)
    return nets


# ---------------------------------------------------------------- the workshop's files


def exercise_names() -> list[str]:
    return sorted(p.stem for p in resource_dir("exercises").glob("*.yaml"))


def exercise_path(ref: str) -> Path:
    """A shipped exercise by name (labgen/exercises/NAME.yaml: `broken` is the field report with
    its exercise), else any scenario `labgen up` accepts."""
    if ref in exercise_names():  # looked up in the listing, never joined as typed
        return resource_dir("exercises") / f"{ref}.yaml"
    return scenario_path(ref)


@dataclass
class Seat:
    name: str
    lab: str
    subnet: str
    dir: Path


@dataclass
class Workshop:
    name: str
    dir: Path
    scenario: str  # as the trainer named it
    base_dir: Path  # the scenario file's directory: what its files are relative to
    seats: list[Seat] = field(default_factory=list)
    # Plan.topology of every seat: "pod" (two containers in one loopback namespace, the density
    # design) or "network" (a container per service on the seat's own lab network).
    topology: Literal["network", "pod"] = "pod"

    def seat(self, name: str) -> Seat:
        for s in self.seats:
            if s.name == name:
                return s
        have = ", ".join(s.name for s in self.seats) or "none"
        raise InputError(f"workshop {self.name} has no seat {name} (seats: {have})")

    def save(self) -> None:
        data = {
            "schema": "labgen.workshop/v1",
            "name": self.name,
            "scenario": self.scenario,
            "base_dir": str(self.base_dir),
            "topology": self.topology,
            "seats": [{"seat": s.name, "lab": s.lab, "subnet": s.subnet} for s in self.seats],
        }
        try:
            write_whole(self.dir / STATE_FILE, json.dumps(data, indent=2) + "\n", mode=0o600)
        except OSError as e:
            raise InfraError(f"cannot write {self.dir / STATE_FILE}: {e.strerror}; choose another --workdir") from None

    @classmethod
    def load(cls, wdir: Path, name: str) -> Workshop:
        path = wdir / STATE_FILE
        if not path.is_file() or path.is_symlink():
            raise InputError(
                f"{escape(wdir, 120)}: no workshop {name} here (no {STATE_FILE}); "
                "start one with `labgen workshop up`, or pass --workdir"
            )
        try:
            data = json.loads(path.read_text())
            w = cls(name=name, dir=wdir, scenario=str(data["scenario"]), base_dir=Path(data["base_dir"]))
            # Workshops written before topologies were all "network".
            w.topology = "pod" if data.get("topology", "network") == "pod" else "network"
            for row in data["seats"]:
                seat = check_seat(row["seat"])
                subnet = str(ipaddress.IPv4Network(row["subnet"]))
                w.seats.append(Seat(seat, seat_lab(name, seat), subnet, wdir / seat))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{escape(path, 120)}: not a workshop file labgen wrote ({escape(e, 80)})") from None
        if data.get("name") != name:
            raise InputError(f"{escape(path, 120)}: belongs to workshop {quote(data.get('name'))}, not {name}")
        return w


def _seat_data(raw: dict[str, Any], lab: str) -> dict[str, Any]:
    data = dict(raw)
    data["name"] = lab
    return data


def seat_scenario(w: Workshop, seat: Seat, with_overlay: bool = True) -> Scenario:
    """The seat's scenario: seat.yaml, with the trainee's overlay merged over it."""
    label = f"{seat.name}/{SEAT_FILE}"
    base = load_yaml(read_scenario_text(seat.dir / SEAT_FILE, label), label)
    if not isinstance(base, dict):
        raise InputError(f"{label}: (top level): expected a mapping of scenario keys")
    base = _seat_data(base, seat.lab)  # whatever seat.yaml says, the seat's lab keeps its name
    if not with_overlay:
        return parse_scenario(base, label, base_dir=w.base_dir)
    exercise = parse_scenario(base, label, base_dir=w.base_dir).exercise
    olabel = f"{seat.name}/{OVERLAY_FILE}"
    overlay = read_overlay(seat.dir / OVERLAY_FILE, olabel)
    merged = merge_overlay(base, overlay, exercise.may_change if exercise else [], olabel)
    return parse_scenario(merged, olabel, base_dir=w.base_dir)


# ---------------------------------------------------------------- the trainee's overlay (untrusted)


def read_overlay(path: Path, label: str) -> dict[str, Any]:
    if path.is_symlink():
        raise InputError(f"{label}: is a symbolic link; write the overlay in the seat's directory itself")
    if not path.exists():
        return {}
    data = load_yaml(read_scenario_text(path, label), label)  # size, depth, duplicate keys: refused
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{label}: (top level): expected a mapping, such as certificates: and gateway:")
    return data


def _allowed(path: str, patterns: list[str]) -> bool:
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in patterns)


def _reachable(path: str, patterns: list[str]) -> bool:
    """`path` may be set, or leads to something that may be."""
    return _allowed(path, patterns) or any(p.startswith(path + ".") or p.startswith(path + "[") for p in patterns)


def merge_overlay(base: dict[str, Any], overlay: dict[str, Any], may_change: list[str], label: str) -> dict[str, Any]:
    """`overlay` merged over `base`: mappings key by key, lists of named items (connectors) item
    by item matched on name, anything else replaced. Every path the overlay sets must be one the
    exercise lets the trainee change (may_change); the result is validated as a scenario after."""
    allowed = ", ".join(may_change) or "nothing"

    def refuse(path: str, why: str) -> InputError:
        return InputError(f"{label}: {path or '(top level)'}: {why}")

    def key_path(path: str, key: object) -> str:
        if not isinstance(key, str) or not _OVERLAY_KEY.fullmatch(key):
            raise refuse(path, f"key {quote(key)} is no scenario key")
        if key in _HOST_KEYS:
            raise refuse(f"{path}.{key}" if path else key, "an overlay cannot name files or images on the host")
        sub = f"{path}.{key}" if path else key
        if not _reachable(sub, may_change):
            raise refuse(sub, f"this exercise does not let you change it (you may change: {allowed})")
        return sub

    def merge(old: Any, new: Any, path: str) -> Any:
        if isinstance(new, dict):
            if old is not None and not isinstance(old, dict):
                if _allowed(path, may_change):
                    return new
                raise refuse(path, "expected a value, not a mapping")
            out = dict(old or {})
            for k, v in new.items():
                sub = key_path(path, k)
                out[k] = merge(out.get(k), v, sub)
            return out
        named = (
            isinstance(new, list)
            and isinstance(old, list)
            and old
            and all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in old)
        )
        if named:
            index = {x["name"]: i for i, x in enumerate(old)}
            items = [dict(x) for x in old]
            for j, item in enumerate(new):
                where = f"{path}[{j}]"
                if not isinstance(item, dict):
                    raise refuse(where, "expected a mapping with name: (items are matched by name)")
                name = item.get("name")
                if not isinstance(name, str) or name not in index:
                    have = escape(", ".join(index), 120)
                    raise refuse(f"{where}.name", f"{quote(name)} is not one of the seat's ({have})")
                merged = items[index[name]]
                for k, v in item.items():
                    if k == "name":
                        continue
                    sub = key_path(f"{path}[*]", k)
                    merged[k] = merge(merged.get(k), v, sub)
            return items
        if not _allowed(path, may_change):
            raise refuse(path, f"this exercise does not let you change it (you may change: {allowed})")
        return new

    return merge(base, overlay, "")


# ---------------------------------------------------------------- grading


@dataclass
class GoalResult:
    seat: str
    goal: int
    message: str
    to: str
    expect: str
    outcome: str
    passed: bool
    says: str
    reason: str

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def explain(m: MessageResult) -> str:
    """What happened to one recipient's message, in the trainee's terms: the outcome and why, the
    last hop's reply, the certificate EOP saw and to whom it attributed the message."""
    parts = [f"{m.outcome}: {m.why}"]
    replies = [h for h in m.hops if h.reply]
    if replies:
        h = replies[-1]
        parts.append(f"last reply from {h.service or '?'}: {h.reply}")
    certs = [h for h in m.hops if h.certificate is not None and h.service == "eop"]
    if certs:
        c = certs[0].certificate
        assert c is not None
        names = ", ".join(c.names or c.sans or []) or "no names"
        parts.append(f"EOP saw the certificate {c.subject or '?'} ({names}; issuer {c.issuer or '?'})")
    elif any(h.service == "eop" for h in m.hops):
        parts.append("no client certificate reached EOP")
    if m.attribution is not None and m.attribution.tenant:
        via = f" through {m.attribution.connector}" if m.attribution.connector else ""
        parts.append(f"EOP attributed it to tenant {m.attribution.tenant} by {m.attribution.by}{via}")
    return "; ".join(parts)


def grade(seat: str, exercise: Exercise, doc: ResultDoc) -> list[GoalResult]:
    rows: list[GoalResult] = []
    for i, g in enumerate(exercise.goals):
        found = [m for m in doc.messages if m.id == g.message and (g.to is None or m.to.lower() == g.to.lower())]
        if not found:
            rows.append(GoalResult(seat, i + 1, g.message, g.to or "", g.expect, "missing", False, g.says, "not sent"))
        for m in found:
            ok = m.outcome == g.expect
            reason = explain(m)
            rows.append(GoalResult(seat, i + 1, g.message, m.to, g.expect, m.outcome, ok, g.says, reason))
    return rows


# ---------------------------------------------------------------- Docker: what runs


def _engine(topology: Literal["network", "pod"], image: str | None = None):
    from .engines.docker import DockerEngine

    ok, why = DockerEngine.available()
    if not ok:
        raise InfraError(f"workshops run on the Docker engine, and {why}")
    return DockerEngine(image=image, topology=topology)


def _placed(w: Workshop, seat: Seat) -> str | None:
    """The --subnet a seat's plan is made with: its own subnet on a network; none for a pod,
    whose loopback addresses live in its own namespace."""
    return seat.subnet if w.topology == "network" else None


def seat_image(seat: Seat) -> str | None:
    """The image the seat's containers run (its traffic container's), to restart it from as it
    is; None when the seat has no container left (it then starts from the current image)."""

    ctr = _client_container(seat.lab)
    if ctr is None:
        return None
    image = ctr.attrs.get("Config", {}).get("Image") or ctr.attrs.get("Image")
    return str(image) if image else None


def _client_container(lab: str) -> Any | None:
    import docker.errors

    from .engines.dockerapi import client

    for name in labels.client_containers(lab):
        try:
            return client().containers.get(name)
        except docker.errors.NotFound:
            continue
    return None


def workshop_objects(workshop: str | None = None) -> tuple[list[Any], list[Any]]:
    """(containers, networks) labelled for `workshop` (for any workshop without one)."""
    from .engines.dockerapi import client

    flt = {"label": f"{WORKSHOP_LABEL}={workshop}" if workshop else WORKSHOP_LABEL}
    c = client()
    return c.containers.list(all=True, filters=flt), c.networks.list(filters=flt)


def running_workshops() -> list[str]:
    containers, networks = workshop_objects()
    return sorted(
        {x.attrs.get("Labels", {}).get(WORKSHOP_LABEL) or "" for x in networks}
        | {c.labels.get(WORKSHOP_LABEL, "") for c in containers} - {""}
    )


def pick_workshop(name: str | None) -> str:
    """The workshop named, else the only one up."""
    if name:
        return check_workshop_name(name)
    up = running_workshops()
    if len(up) == 1:
        return up[0]
    if not up:
        raise InputError("no workshop is up; name one, or start one with `labgen workshop up SCENARIO --seats N`")
    raise InputError(f"several workshops are up ({', '.join(up)}); name one")


def find_workshop(name: str, workdir: Path) -> Workshop:
    """A workshop's files: where its running seats' containers say, else <workdir>/labgen-W."""
    from .engines.docker import lab_dir_of

    containers, _ = workshop_objects(name)
    for c in containers:
        d = lab_dir_of(c)
        if d is not None and (d.parent / STATE_FILE).is_file():
            return Workshop.load(d.parent, name)
    return Workshop.load(workshop_dir(workdir, name), name)


# ---------------------------------------------------------------- up


@dataclass
class SeatRun:
    seat: str
    lab: str
    subnet: str
    dir: Path
    doc: ResultDoc | None = None
    error: str | None = None


def verdict_line(doc: ResultDoc) -> str:
    return ", ".join(f"{m.id} {m.outcome}" for m in doc.messages)


Progress = Callable[[str, str], None]


def _run_seats(
    w: Workshop,
    work: list[tuple[Seat, Scenario]],
    labels_of: Callable[[Seat], dict[str, str]],
    progress: Progress,
    restart: bool = False,
) -> list[SeatRun]:
    """Start (or `restart`: from the image they run, no build) seats, a few at once; a seat that
    fails is named, the others go on."""
    from .model.plan import make_plan
    from .run import run_lab

    engine0 = _engine(w.topology)
    plans = {seat.name: make_plan(s, engine0, _placed(w, seat), labels_of(seat)) for seat, s in work}  # bad input first
    images = {seat.name: seat_image(seat) if restart else None for seat, _ in work}
    if not all(images.values()):
        from .engines.images import ensure_image

        ensure_image()  # once, before the threads (each seat only finds it)
    runs = {seat.name: SeatRun(seat.name, seat.lab, seat.subnet, seat.dir) for seat, _ in work}
    lock = threading.Lock()

    def one(item: tuple[Seat, Scenario]) -> None:
        seat, s = item
        run = runs[seat.name]

        def phase(text: str) -> None:
            with lock:
                progress(seat.name, text)

        try:
            run.doc = run_lab(
                s,
                _engine(w.topology, images[seat.name]),
                w.dir,
                on_phase=phase,
                force=True,
                labdir=seat.dir,
                plan=plans[seat.name],
            )
        except LabgenError as e:
            run.error = (e.message.splitlines() or [""])[0]
        except Exception as e:  # one seat's surprise is not the class's
            run.error = f"unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        with lock:
            if run.doc is not None:
                progress(seat.name, f"up on {seat.subnet}: {verdict_line(run.doc)}")
            else:
                progress(seat.name, f"FAILED: {run.error}")

    with ThreadPoolExecutor(max_workers=min(PARALLEL, max(len(work), 1))) as pool:
        for f in [pool.submit(one, item) for item in work]:
            f.result()
    return [runs[seat.name] for seat, _ in work]


def seat_labels(workshop: str) -> Callable[[Seat], dict[str, str]]:
    return lambda seat: {WORKSHOP_LABEL: workshop, SEAT_LABEL: seat.name}


def read_exercise(ref: str, name: str | None) -> tuple[dict[str, Any], Scenario, Path, str]:
    """The exercise (or scenario) a workshop is made of: its data, parsed once as checked input,
    the directory its files are relative to, and the workshop's name (--name, else the
    scenario's)."""
    path = exercise_path(ref)
    label = escape(ref, 100)
    raw = load_yaml(read_scenario_text(path, label), label)
    s0 = parse_scenario(raw, ref, default_name=path.stem, base_dir=path.resolve().parent)
    assert isinstance(raw, dict)  # parse_scenario accepted it
    return raw, s0, path.resolve().parent, check_workshop_name(name or s0.name[:27].rstrip("-"))


def seat_scenario_of(raw: dict[str, Any], workshop: str, seat: str, base: Path) -> Scenario:
    """One seat's copy of the exercise, under the seat's lab name, validated as its seat file."""
    return parse_scenario(_seat_data(raw, seat_lab(workshop, seat)), f"{seat}/{SEAT_FILE}", base_dir=base)


def up(
    ref: str,
    n: int,
    name: str | None,
    workdir: Path,
    progress: Progress,
    topology: Literal["network", "pod"] = "pod",
) -> tuple[Workshop, list[SeatRun]]:
    seats = seat_names(n)
    raw, s0, base, wname = read_exercise(ref, name)
    engine = _engine(topology)
    containers, networks = workshop_objects(wname)
    if containers or networks:
        raise InputError(f"workshop {wname} is up already; `labgen workshop down {wname}` first, or choose --name")
    wdir = workshop_dir(workdir, wname)
    if wdir.is_symlink():
        raise InputError(f"{escape(wdir, 120)} is a symbolic link; labgen does not follow links for workshops")
    if wdir.exists() and any(wdir.iterdir()) and not (wdir / STATE_FILE).is_file():
        raise InputError(f"{escape(wdir, 120)} is not empty and is no workshop labgen made; choose another --workdir")
    from .model.plan import make_plan

    w = Workshop(wname, wdir, ref, base, topology=topology)
    if topology == "network":  # each seat its own subnet of 198.18.0.0/15, free on this host
        prefix = ipaddress.IPv4Network(s0.lab.subnet).prefixlen
        subnets = allocate_subnets(n, prefix, docker_subnets())
    else:  # each seat the same loopback addresses, in a network namespace of its own
        subnets = [make_plan(s0, engine).subnet] * n
    work: list[tuple[Seat, Scenario]] = []
    for seat, subnet in zip(seats, subnets, strict=True):
        s = seat_scenario_of(raw, wname, seat, base)
        w.seats.append(Seat(seat, seat_lab(wname, seat), subnet, wdir / seat))
        make_plan(s, engine, _placed(w, w.seats[-1]))  # every seat's addresses checked before anything is written
        work.append((w.seats[-1], s))
    try:
        wdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        from .run import make_lab_dir

        for st in w.seats:
            make_lab_dir(st.dir, force=True)
            write_whole(st.dir / SEAT_FILE, yaml.safe_dump(_seat_data(raw, st.lab), sort_keys=False), mode=0o600)
            write_whole(st.dir / OVERLAY_FILE, OVERLAY_HEADER, mode=0o600)
    except OSError as e:
        raise InfraError(
            f"cannot write the workshop directory {wdir}: {e.strerror}; choose another --workdir"
        ) from None
    w.save()
    runs = _run_seats(w, work, seat_labels(wname), progress)
    if all(r.doc is not None for r in runs):
        write_handouts(w)  # each seat's plan is written: its addresses are the hand-out's
    return w, runs


# ---------------------------------------------------------------- status, down, exec


def status(name: str | None) -> list[dict[str, Any]]:
    from .engines.docker import lab_dir_of

    containers, _ = workshop_objects(name)
    seats: dict[tuple[str, str], list[Any]] = {}
    for c in containers:
        key = (c.labels.get(WORKSHOP_LABEL, ""), c.labels.get(SEAT_LABEL, ""))
        seats.setdefault(key, []).append(c)
    rows = []
    for (wname, seat), ctrs in sorted(seats.items()):
        states = {c.status for c in ctrs}
        d = next((x for c in ctrs if (x := lab_dir_of(c))), None)
        subnet, verdict, summary = "", "", None
        if d is not None:
            try:
                subnet = json.loads((d / "plan.json").read_text())["subnet"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
            try:
                doc = ResultDoc.model_validate_json((d / "run" / "result.json").read_text())
                verdict, summary = verdict_line(doc), doc.summary.model_dump()
            except (OSError, ValueError):
                pass
        rows.append(
            {
                "workshop": wname,
                "seat": seat,
                "lab": ctrs[0].labels.get(labels.LAB, ""),
                "state": states.pop() if len(states) == 1 else "degraded",
                "containers": len(ctrs),
                "subnet": subnet,
                "verdict": verdict,
                "summary": summary,
                "lab_dir": str(d) if d else None,
            }
        )
    return rows


def down(name: str) -> dict[str, list[str]]:
    """Every seat of the workshop, by its label: the labs those containers and networks belong to."""
    from .engines.docker import remove_lab

    containers, networks = workshop_objects(name)
    labs = {c.labels.get(labels.LAB) for c in containers} | {
        (n.attrs.get("Labels") or {}).get(labels.LAB) for n in networks
    }
    gone: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}
    for lab in sorted(x for x in labs if x):
        for kind, names in remove_lab(lab).items():
            gone.setdefault(kind, []).extend(names)
    containers, networks = workshop_objects(name)  # nothing labelled for it may stay
    for c in containers:
        c.remove(force=True, v=True)
        gone["containers"].append(c.name)
    for n in networks:
        n.remove()
        gone["networks"].append(n.name)
    return gone


def exec_in_seat(name: str, seat: str, cmd: list[str]) -> tuple[int, bytes, bytes]:
    """CMD in the seat's traffic container (swaks, dig, openssl s_client reach every lab host)."""
    check_seat(seat)
    ctr = _client_container(seat_lab(name, seat))
    if ctr is None:
        raise InputError(
            f"seat {seat} of workshop {name} is not up (no {labels.client_containers(seat_lab(name, seat))[0]}); "
            "see `labgen workshop status`"
        )
    ctr_name = ctr.name
    if ctr.labels.get(WORKSHOP_LABEL) != name or ctr.labels.get(SEAT_LABEL) != seat:
        raise InputError(f"{ctr_name} is no seat of workshop {name}")
    if ctr.status != "running":
        raise InfraError(f"{ctr_name} is {ctr.status}, not running; `labgen workshop reset {seat}` restarts the seat")
    code, (stdout, stderr) = ctr.exec_run(cmd, demux=True)
    return int(code if code is not None else 1), stdout or b"", stderr or b""


# ---------------------------------------------------------------- check, reset


def check_seats(
    w: Workshop, seats: list[Seat], progress: Progress, tolerate: bool = False
) -> tuple[list[SeatRun], list[GoalResult]]:
    """Apply each seat's overlay (restart from the existing image) and grade the exercise's goals.
    A refused overlay is bad input (InputError), or with `tolerate` (the class's check) a failed
    row for that seat while the others are checked."""
    base = seat_scenario(w, seats[0], with_overlay=False) if seats else None
    exercise = base.exercise if base else None
    if exercise is None:
        raise InputError(f"workshop {w.name}'s scenario has no exercise: block, so there is nothing to grade")
    work: list[tuple[Seat, Scenario]] = []
    refused: dict[str, str] = {}
    for seat in seats:  # every overlay read before any seat restarts
        try:
            work.append((seat, seat_scenario(w, seat)))
        except InputError as e:
            if not tolerate:
                raise
            refused[seat.name] = e.message  # the class goes on; this seat's row says why
            progress(seat.name, f"overlay refused: {e.message}")
    runs = _run_seats(w, work, seat_labels(w.name), progress, restart=True) if work else []
    results: list[GoalResult] = []
    for name, why in refused.items():
        results += [
            GoalResult(name, i + 1, g.message, g.to or "", g.expect, "not run", False, g.says, why)
            for i, g in enumerate(exercise.goals)
        ]
    for run in runs:
        if run.doc is None:
            results += [
                GoalResult(run.seat, i + 1, g.message, g.to or "", g.expect, "not run", False, g.says, run.error or "")
                for i, g in enumerate(exercise.goals)
            ]
        else:
            results += grade(run.seat, exercise, run.doc)
    return runs, results


HANDOUT = "handout.md"


def write_handouts(w: Workshop) -> list[Path]:
    """The class hand-out in the workshop directory and each seat's in its own (results.handout)."""
    from .model.plan import Plan
    from .results.handout import SeatAccess, class_handout, seat_handout

    access = [SeatAccess(st.name, st.lab, st.subnet, st.dir) for st in w.seats]
    written = []
    try:
        plans = {st.name: Plan.load(st.dir / "plan.json") for st in w.seats}
        for st, acc in zip(w.seats, access, strict=True):
            s = seat_scenario(w, st, with_overlay=False)
            write_whole(st.dir / HANDOUT, seat_handout(w.name, acc, s, plans[st.name]), mode=0o644)
            written.append(st.dir / HANDOUT)
        first = w.seats[0]
        text = class_handout(w.name, access, seat_scenario(w, first, with_overlay=False), plans[first.name])
        write_whole(w.dir / HANDOUT, text, mode=0o644)
        written.append(w.dir / HANDOUT)
    except OSError as e:
        raise InfraError(f"cannot write the hand-outs in {w.dir}: {e.strerror}; choose another --workdir") from None
    return written


def reset_seats(w: Workshop, seats: list[Seat], progress: Progress) -> list[SeatRun]:
    """Empty each overlay and restart the seat as it started (no image build)."""
    for seat in seats:
        try:
            write_whole(seat.dir / OVERLAY_FILE, OVERLAY_HEADER, mode=0o600)
        except OSError as e:
            raise InfraError(f"cannot write {seat.dir / OVERLAY_FILE}: {e.strerror}") from None
    work = [(seat, seat_scenario(w, seat, with_overlay=False)) for seat in seats]
    return _run_seats(w, work, seat_labels(w.name), progress, restart=True)


REPORT_FIELDS = ["seat", "goal", "message", "to", "expect", "outcome", "passed", "says", "reason"]


def write_class_report(w: Workshop, results: list[GoalResult]) -> tuple[Path, Path, Path]:
    """class-report.json, .csv and .html in the workshop directory: a row per seat and goal (the
    page: a row per seat, then its goals, linking each seat's own run report, written beside its
    result). Reasons carry what lab services said: CSV cells that a spreadsheet would run as a
    formula are prefixed with a quote; the page escapes everything."""
    from jinja2 import TemplateError

    from .results import html

    rows = [r.row() for r in results]
    doc = dump(
        ClassReportDoc(
            workshop=w.name,
            scenario=w.scenario,
            seats=sorted({r.seat for r in results}),
            passed=sorted({r.seat for r in results} - {r.seat for r in results if not r.passed}),
            rows=rows,
        )
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r[k]) for k in REPORT_FIELDS})
    reports: dict[str, str] = {}
    for seat in w.seats:
        if seat.name in doc["seats"] and (seat.dir / "run" / "result.json").is_file():
            try:
                html.write_lab_report(seat.dir, f"workshop {w.name}, seat {seat.name}")
            except (LabgenError, OSError, TemplateError):
                continue  # the class page says "no report" for this seat; its result stands
            reports[seat.name] = f"{seat.name}/run/report.html"
    jpath, cpath, hpath = (w.dir / f"{REPORT_STEM}.{ext}" for ext in ("json", "csv", "html"))
    try:
        write_whole(jpath, json.dumps(doc, indent=2) + "\n", mode=0o600)
        write_whole(cpath, buf.getvalue(), mode=0o600)
        write_whole(hpath, html.render_class_report(doc, reports), mode=0o600)
    except OSError as e:
        raise InfraError(f"cannot write the class report in {w.dir}: {e.strerror}") from None
    return jpath, cpath, hpath


def _csv_cell(value: object) -> object:
    if isinstance(value, str):
        value = escape(value, 2000)
        if value[:1] in ("=", "+", "-", "@"):
            return "'" + value
    return value
