"""Every name labgen stamps on what it starts, in one place (containerlab's constants/labels.go):
Docker labels, container names, and the local engine's state and registry files. Removal, status
and logs find a lab's parts by these names only, so a part labgen did not start is never touched."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Docker labels
LAB = "io.labgen.lab"  # on every container, network and volume of a lab: the lab's name
SERVICE = "io.labgen.service"  # on a container: the lab service it runs (dns, eop, sink, gateway, traffic)
IMAGE = "io.labgen.image"  # on an image: "lab" or "base"
IMAGE_HASH = "io.labgen.hash"  # on an image: the content hash its tag carries
COMPOSE_SERVICE = "com.docker.compose.service"  # set by compose itself

# Every service a running lab has (traffic runs once per `up`, in a container or in the CLI).
SERVICES = ("dns", "eop", "sink", "gateway", "traffic")

# A lab's name as the scenario validator allows it (model/scenario.py); `down`, `status` and `logs`
# take it from the command line and it names files and containers, so it is checked again there.
LAB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")


def project(lab: str) -> str:
    """The compose project and container-name prefix of a lab."""
    return f"labgen-{lab}"


# A pod lab's (Plan.topology "pod") Python container: DNS, EOP, the sinks and the traffic in one
# process; Postfix runs in the gateway container, in this one's network namespace.
POD_SERVICE = "lab"


def container(lab: str, service: str) -> str:
    return f"{project(lab)}-{service}"


def serving(topology: str, service: str) -> str:
    """The container (service name) that runs a lab service: its own, or in a pod lab every
    service but Postfix in the pod's Python container."""
    return service if topology == "network" or service == "gateway" else POD_SERVICE


def client_containers(lab: str) -> list[str]:
    """Where a lab's clients (swaks, openssl, dig) run: its traffic container, or a pod lab's
    Python container, whichever it has."""
    return [container(lab, "traffic"), container(lab, POD_SERVICE)]


# Local engine: a kept lab's child process writes STATE_FILE into its lab directory; the parent
# registers it under registry_dir() so that `labgen status` finds it from any directory.
STATE_FILE = "local-engine.json"
LOCAL_LOG = "run/local-engine.log"  # the kept lab's own log (its last line says why it stopped)
LOCAL_MODULE = "labgen.engines.local"  # what the child runs: python -m LOCAL_MODULE --lab DIR --token T


def registry_dir() -> Path:
    """Per user: $XDG_RUNTIME_DIR/labgen/local (gone at logout, like the processes), else the
    user's cache directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = (
        Path(runtime)
        if runtime and Path(runtime).is_dir()
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    )
    return base / "labgen" / "local"
