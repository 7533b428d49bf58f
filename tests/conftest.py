"""Shared test helpers: run the real CLI, and the Docker gate (CI fails rather than skips)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def labgen(*args, cwd, timeout=300, env=None):
    """Run `labgen ...` as a user would; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "labgen.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def labgen_json(*args, cwd, **kw) -> tuple[int, dict]:
    p = labgen(*args, "--json", cwd=cwd, **kw)
    try:
        return p.returncode, json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON (exit {p.returncode}):\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")


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
    from labgen.images import ensure_image
    return ensure_image()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path
