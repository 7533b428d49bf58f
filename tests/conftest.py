"""Shared test helpers: run the real CLI, and the Docker gate (CI fails rather than skips)."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def labgen(*args, cwd, timeout=300, env=None):
    """Run `labgen ...` as a user would; returns CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "labgen.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def labgen_json(*args, cwd, **kw) -> tuple[int, dict]:
    p = labgen(*args, "--json", cwd=cwd, **kw)
    try:
        return p.returncode, json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(
            f"no JSON (exit {p.returncode}):\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
        ) from e


def set_path(path: list, value):
    """A patch for a loaded scenario: d[path...] = value (path: keys and list indexes)."""

    def patch(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return patch


def by_id(doc: dict) -> dict:
    return {(m["id"], m["to"]): m for m in doc["messages"]}


def docker_available() -> tuple[bool, str]:
    from labgen.engines import docker_answers

    return docker_answers()


@pytest.fixture(scope="session")
def docker_ready():
    """The Docker engine and the lab image. In CI (CI=true) a missing engine fails the test."""
    ok, why = docker_available()
    if not ok:
        if os.environ.get("CI") or os.environ.get("LABGEN_REQUIRE_DOCKER"):
            pytest.fail(f"Docker tests must run here but {why}")
        pytest.skip(f"Docker tests need a Docker engine: {why}")
    from labgen.engines.images import ensure_image

    return ensure_image()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


# ---------------------------------------------------------------- Docker labs the tests own

# Docker tests only ever touch labs they created: each gets its own name (a prefix, a random
# tag) and a /24 of 198.18.0.0/15 that no Docker network uses, and is removed by name at the end.
TEST_LAB_PREFIX = os.environ.get("LABGEN_TEST_LAB_PREFIX", "d")


@dataclass
class OwnLab:
    name: str
    scenario: Path  # a copy of the scenario under the lab's own name
    subnet: str  # the --subnet to run it on
    original: str  # the scenario's own subnet

    def ip(self, address: str) -> str:
        """Where one of the scenario's addresses lands on the lab's subnet."""
        return str(
            ipaddress.ip_network(self.subnet)[
                int(ipaddress.ip_address(address)) - int(ipaddress.ip_network(self.original)[0])
            ]
        )


def _docker_subnets() -> list:
    from labgen.engines.dockerapi import client

    nets = []
    for net in client().networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                nets.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
            except ValueError:
                continue
    return nets


class OwnLabs:
    def __init__(self, root: Path) -> None:
        self.root, self.rng = root, random.Random()
        self.names: list[str] = []

    def free_subnet(self) -> str:
        taken = _docker_subnets()
        for _ in range(200):
            net = ipaddress.ip_network(f"198.{self.rng.randint(18, 19)}.{self.rng.randint(0, 255)}.0/24")
            if not any(net.overlaps(t) for t in taken if t.version == 4):
                return str(net)
        raise AssertionError("no free /24 in 198.18.0.0/15 for a test lab")

    def new(self, scenario: str, short: str, beside: bool = False) -> OwnLab:
        """`beside`: the copy goes next to the scenario (whose files it names relative to itself)."""
        src = Path(scenario) if scenario.endswith(".yaml") else REPO / "labgen" / "scenarios" / f"{scenario}.yaml"
        data = yaml.safe_load(src.read_text())
        name = f"{TEST_LAB_PREFIX}-{short}-{secrets.token_hex(3)}"
        data["name"] = name
        path = (src.parent if beside else self.root) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.names.append(name)
        return OwnLab(name, path, self.free_subnet(), data["lab"]["subnet"])

    def remove_all(self) -> None:
        from labgen.engines.docker import remove_lab

        for name in self.names:
            remove_lab(name)


_SESSION_LABS: list[OwnLabs] = []


@pytest.fixture(scope="session")
def test_labs(docker_ready, tmp_path_factory):
    """Make test labs with `test_labs.new(scenario, short)`; every one is removed at the end, and
    one made by a test itself (not by a module fixture) as soon as that test ends."""
    labs = OwnLabs(tmp_path_factory.mktemp("labs"))
    _SESSION_LABS.append(labs)
    try:
        yield labs
    finally:
        labs.remove_all()
        _SESSION_LABS.remove(labs)


@pytest.fixture(autouse=True)
def _remove_this_tests_labs():
    """A Docker lab stays up after `up`, its five health probes running: a session that kept every
    test's lab to its end had 35 labs probing at once and ran at a fraction of its speed. Labs a
    test made (after the wider-scoped fixtures it uses were set up) go when it ends."""
    before = {id(labs): len(labs.names) for labs in _SESSION_LABS}
    yield
    for labs in _SESSION_LABS:
        made = labs.names[before.get(id(labs), 0) :]
        if made:
            from labgen.engines.docker import remove_lab

            for name in made:
                remove_lab(name)
            del labs.names[before.get(id(labs), 0) :]
