"""The lab image: the one Docker image every lab container runs.

Its tag is a content hash of what goes into it (compose/lab-image/ and labgen's own source), so
`ensure_image()` builds only when that content changed. It builds without any container registry:
the base is a Debian trixie rootfs made with mmdebstrap from the host's Debian mirror and
`docker import`ed. Every dependency, labgen's Python libraries included, is a Debian package of
that rootfs (trixie carries pydantic 2, cryptography 43, aiosmtpd 1.4.6): no pip, no wheels, no
virtualenv, so the build needs nothing from the Python that runs labgen and is one mmdebstrap plus
a COPY. Where a registry works, the same Dockerfile builds FROM debian:trixie instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import labgen
from labgen.engines import labels
from labgen.engines.dockerapi import client as docker_client
from labgen.errors import InfraError, escape
from labgen.resources import resource_dir
from labgen.wait import poll

log = logging.getLogger(__name__)

LAB_REPO = "labgen-lab"
BASE_REPO = "labgen-base"
LABEL = labels.IMAGE  # "lab" or "base"
HASH_LABEL = labels.IMAGE_HASH
BUILD_LOCK_WAIT_S = 1800.0  # another labgen's build: a cold offline build takes minutes
SUITE = "trixie"  # the first Debian release whose packages cover every labgen dependency
REGISTRY_BASE = f"debian:{SUITE}"
PULL_PROBE_SECONDS = 5  # how long a registry gets to answer before we build offline
_TAIL = 6  # output lines quoted in an InfraError


# --- the tag ---------------------------------------------------------------------------------


def _lab_dir() -> Path:
    return resource_dir("compose") / "lab-image"


def _package_dir() -> Path:
    return Path(labgen.__file__).resolve().parent


def _files(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts)


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:  # length-prefix each part so that no two different inputs collide
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:12]


# Data packages: top-level directories in a checkout, labgen/<name> in a wheel (pyproject.toml).
_DATA_PACKAGES = ("templates", "compose", "examples")


def _snapshot() -> dict[str, bytes]:
    """What the tag covers, read once: context path -> bytes. The lab-image files sit at the
    build context's root and labgen's *.py files under labgen/, as the Dockerfile expects. The
    build writes exactly these bytes, so the tag matches the image even while files change."""
    lab, pkg = _lab_dir(), _package_dir()
    files = {p.relative_to(lab).as_posix(): p.read_bytes() for p in _files(lab)}
    for p in _files(pkg, "*.py"):
        rel = p.relative_to(pkg)
        if rel.parts[0] in _DATA_PACKAGES:
            continue  # in a wheel they sit inside the package; the image needs neither
        files["labgen/" + rel.as_posix()] = p.read_bytes()
    return files


def _tag_of(snapshot: dict[str, bytes]) -> str:
    parts = [part for path in sorted(snapshot) for part in (path.encode(), snapshot[path])]
    return f"{LAB_REPO}:{_hash(*parts)}"


def image_tag() -> str:
    """`labgen-lab:<12 hex>` for the current lab-image recipe and labgen source."""
    return _tag_of(_snapshot())


# --- progress and failures -------------------------------------------------------------------


Progress = Callable[[str], None]  # the step's latest line, for a status display


class _Steps:
    """Each step is logged as it starts and when done (INFO, with its duration); its output lines
    go to DEBUG and to `progress` (e.g. the CLI's status line)."""

    def __init__(self, progress: Progress | None = None):
        self.progress = progress
        self._title = ""

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        self._title = title
        log.info("%s ...", title)
        if self.progress:
            self.progress(title)
        yield
        log.info("✓ %s (%.0fs)", title, time.monotonic() - start)

    def note(self, text: str) -> None:
        line = escape(text.strip(), 100)
        if line:
            log.debug("%s: %s", self._title, line)
            if self.progress:
                self.progress(f"{self._title}: {line}")


def _fail(step: str, reason: str, tail=()) -> InfraError:
    lines = [line.strip() for line in tail if line.strip()][-_TAIL:]
    last = f"; last output: {' | '.join(lines)}" if lines else ""
    return InfraError(f"building the lab image failed at step '{step}': {reason}{last}")


def _why(e: Exception) -> str:
    return getattr(e, "explanation", None) or str(e)  # docker's APIError: the engine's own words


def _run(cmd: list[str], step: str, steps: _Steps) -> None:
    """Run a command, feeding its output to the progress line; fail with its last lines."""
    tail: deque[str] = deque(maxlen=50)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace"
        )
    except OSError as e:
        raise _fail(step, f"cannot run {cmd[0]}: {e}") from None
    for line in proc.stdout or ():  # always set with stdout=PIPE
        tail.append(line)
        steps.note(line)
    if proc.wait() != 0:
        raise _fail(step, f"{Path(cmd[0]).name} exited {proc.returncode}", tail)


# --- docker ----------------------------------------------------------------------------------


def _has_image(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _pull_registry_base(client, steps: _Steps, bounded: bool) -> bool:
    """Pull the registry base. When `bounded`, give up (False) unless the registry answers within
    PULL_PROBE_SECONDS: a pull with no registry either fails at once or hangs on connect."""
    events: queue.Queue = queue.Queue()

    def pull():  # in a thread, so a hanging pull cannot hang us
        try:
            for event in client.api.pull("debian", tag=SUITE, stream=True, decode=True):
                events.put(event)
        except Exception as e:
            events.put({"error": _why(e)})
        events.put(None)

    threading.Thread(target=pull, daemon=True).start()
    timeout = PULL_PROBE_SECONDS if bounded else None
    while True:
        try:
            event = events.get(timeout=timeout)
        except queue.Empty:
            return False
        if event is None:
            break
        if "error" in event:
            if bounded:
                return False
            raise _fail(f"docker pull {REGISTRY_BASE}", event["error"])
        timeout = None  # the registry answered: let the pull take as long as it takes
        steps.note(" ".join(str(event.get(k, "")) for k in ("status", "progress")))
    return _has_image(client, REGISTRY_BASE)


# --- the offline base ------------------------------------------------------------------------


def _packages() -> list[str]:
    text = (_lab_dir() / "packages.txt").read_text()
    return [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]


def base_tag() -> str:
    """`labgen-base:<hash>` of the mmdebstrap rootfs: packages, debconf answers and suite."""
    preseed = (_lab_dir() / "debconf.txt").read_bytes()
    return f"{BASE_REPO}:{_hash(SUITE.encode(), ' '.join(_packages()).encode(), preseed)}"


# Debian's release names: a host entry for any of them points at a mirror of the whole archive.
_DEBIAN_SUITE = re.compile(
    r"^(buster|bullseye|bookworm|trixie|forky|duke|sid|oldstable|stable|testing|unstable)"
    r"(-updates|-security)?$"
)


def _apt_stanzas(apt_dir: Path) -> list[dict[str, str]]:
    """The host's apt sources from sources.list(.d), both formats, as deb822-style fields."""
    stanzas: list[dict[str, str]] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":  # deb822: blank-line separated stanzas of Key: value
            for block in re.split(r"\n\s*\n", text):
                fields, key = {}, None
                for line in block.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0].isspace() and key:  # continuation line (e.g. an inline key)
                        fields[key] += "\n" + line.strip()
                    elif ":" in line:
                        key, value = line.split(":", 1)
                        key = key.strip().lower()
                        fields[key] = value.strip()
                stanzas.append(fields)
        elif f.name == "sources.list" or f.suffix == ".list":
            for line in text.splitlines():
                m = re.match(r"\s*(deb)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
                if m:
                    opts = dict(o.split("=", 1) for o in (m[2] or "").split() if "=" in o)
                    stanzas.append(
                        {
                            "types": m[1],
                            "uris": m[3],
                            "suites": m[4],
                            "components": m[5],
                            "signed-by": opts.get("signed-by", ""),
                        }
                    )
    return stanzas


def debian_sources(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> list[str]:
    """The host's Debian mirrors as one-line `deb` entries for `suite` (and -updates, -security),
    main component only. A host on another Debian release (bookworm building the trixie image)
    lends its mirrors: a Debian mirror serves every release, so its suites are renamed."""
    exact: list[str] = []
    renamed: list[str] = []
    for s in _apt_stanzas(apt_dir):
        if (
            "deb" not in s.get("types", "").split()
            or s.get("enabled", "yes") == "no"
            or "main" not in s.get("components", "").split()
        ):
            continue
        signed = s.get("signed-by", "")
        opt = f"[signed-by={signed}] " if signed and "\n" not in signed else ""
        for uri in s.get("uris", "").split():
            for host_suite in s.get("suites", "").split():
                m = _DEBIAN_SUITE.match(host_suite)
                if not m:
                    continue  # a third-party repository that happens to have main
                entry = f"deb {opt}{uri} {suite}{m[2] or ''} main"
                target = exact if m[1] == suite else renamed
                if entry not in target:
                    target.append(entry)
    return exact or renamed


def _build_offline_base(client, steps: _Steps, force: bool) -> str:
    tag = base_tag()
    if not force and _has_image(client, tag):
        return tag
    if shutil.which("mmdebstrap") is None:
        raise InfraError(
            f"cannot build the lab image: {REGISTRY_BASE} could not be pulled and mmdebstrap is "
            "not installed (apt-get install mmdebstrap, or make a registry reachable)"
        )
    # With no Debian entry on the host at all, mmdebstrap falls back to its own default mirror.
    mirrors = debian_sources()
    preseed = _lab_dir() / "debconf.txt"
    with (
        steps.step(f"base rootfs {tag} (mmdebstrap {SUITE})"),
        tempfile.TemporaryDirectory(prefix="labgen-base-") as tmp,
    ):
        rootfs = Path(tmp) / "rootfs.tar"
        _run(
            [
                "mmdebstrap",
                "--variant=apt",
                "--include=" + ",".join(_packages()),
                # postfix asks debconf questions in its postinst: answer them before it installs.
                f'--essential-hook=chroot "$1" debconf-set-selections < {shlex.quote(str(preseed))}',
                SUITE,
                str(rootfs),
                *mirrors,
            ],
            "mmdebstrap (base rootfs)",
            steps,
        )
        steps.note("docker import")
        repo, _, version = tag.partition(":")
        try:
            client.api.import_image_from_file(
                str(rootfs),
                repository=repo,
                tag=version,
                changes=[f"LABEL {LABEL}=base", f"LABEL {HASH_LABEL}={version}"],
            )
        except Exception as e:
            raise _fail("docker import (base rootfs)", _why(e)) from None
        if not _has_image(client, tag):
            raise _fail("docker import (base rootfs)", f"{tag} is missing after the import")
    return tag


def _base_image(client, steps: _Steps, from_registry: bool | None, force: bool) -> str:
    if from_registry is True:
        if force or not _has_image(client, REGISTRY_BASE):
            with steps.step(f"docker pull {REGISTRY_BASE}"):
                _pull_registry_base(client, steps, bounded=False)
        return REGISTRY_BASE
    if from_registry is None:
        if _has_image(client, REGISTRY_BASE):
            return REGISTRY_BASE
        # An offline base built before is as good: don't probe the network on every rebuild.
        if not _has_image(client, base_tag()):
            with steps.step(f"probing for {REGISTRY_BASE}"):
                if _pull_registry_base(client, steps, bounded=True):
                    return REGISTRY_BASE
    return _build_offline_base(client, steps, force)


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labgen"


# --- the lab image ---------------------------------------------------------------------------


def _build_lab(client, steps: _Steps, snapshot: dict[str, bytes], base: str, force: bool) -> str:
    tag = _tag_of(snapshot)
    with steps.step(f"docker build {tag}"), tempfile.TemporaryDirectory(prefix="labgen-image-") as tmp:
        ctx = Path(tmp)
        for rel, data in snapshot.items():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_bytes(data)

        tail: deque[str] = deque(maxlen=50)
        try:
            # The SDK speaks to the engine's classic builder: no buildx/BuildKit needed.
            for event in client.api.build(
                path=str(ctx),
                tag=tag,
                buildargs={"BASE": base},
                pull=False,
                rm=True,
                forcerm=True,
                nocache=force,
                decode=True,
                labels={LABEL: "lab", HASH_LABEL: tag.partition(":")[2]},
            ):
                if "stream" in event:
                    for line in event["stream"].splitlines():
                        tail.append(line)
                        steps.note(line)
                if "error" in event:
                    raise _fail("docker build", event["error"].strip(), tail)
        except InfraError:
            raise
        except Exception as e:
            raise _fail("docker build", _why(e), tail) from None
    if not _has_image(client, tag):
        raise _fail("docker build", f"{tag} is missing after the build", tail)
    return tag


def ensure_image(force: bool = False, from_registry: bool | None = None, progress: Progress | None = None) -> str:
    """Return the current lab image's tag, building it first if the engine lacks it.

    from_registry: None picks the base by itself (a local registry base, else an offline base
    built before, else a pull if a registry answers within seconds, else mmdebstrap); True
    insists on the registry base; False always uses the mmdebstrap base.
    force: rebuild even when present: a fresh offline base, no layer cache.
    progress: called with each step's latest line.
    """
    snapshot = _snapshot()
    tag = _tag_of(snapshot)
    client = docker_client()
    if not force and _has_image(client, tag):
        return tag
    steps = _Steps(progress)
    # One build at a time per host (parallel `labgen up`s, test workers): a waiter then finds
    # the image built.
    lock_path = _cache_home() / "build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:

        def locked() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not locked():
            with steps.step("waiting for another labgen build to finish"):
                poll(
                    locked,
                    waiting_for=f"another labgen image build to finish (lock {lock_path})",
                    timeout=BUILD_LOCK_WAIT_S,
                    interval=0.5,
                )
        if not force and _has_image(client, tag):
            return tag
        base = _base_image(client, steps, from_registry, force)
        return _build_lab(client, steps, snapshot, base, force)


def list_images() -> list[dict]:
    """The lab images the engine has, newest first; `current` marks the one for this code."""
    client = docker_client()
    current = image_tag()
    rows = []
    for image in client.images.list(filters={"label": f"{LABEL}=lab"}):
        tags = [t for t in image.tags if t.startswith(LAB_REPO + ":")]
        rows.append(
            {
                "tag": tags[0] if tags else None,  # None: replaced by a forced rebuild
                "id": image.short_id.removeprefix("sha256:"),
                "created": image.attrs.get("Created", ""),
                "size": image.attrs.get("Size", 0),
                "current": current in tags,
            }
        )
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def prune_images() -> list[str]:
    """Remove lab images other than the current one that no container uses; returns their ids."""
    client = docker_client()
    current = image_tag()
    in_use = {c.image.id for c in client.containers.list(all=True)}
    removed = []
    for image in client.images.list(filters={"label": f"{LABEL}=lab"}):
        if current in image.tags or image.id in in_use:
            continue
        client.images.remove(image.id, noprune=False)
        removed.append(image.short_id.removeprefix("sha256:"))
    return removed
