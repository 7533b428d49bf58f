"""labgen as users install it: the built wheel in a fresh virtualenv outside the checkout, with no
pip inside it (as `uv tool install` or pipx make them), run from a directory that is not the
source tree. An editable install hides missing package data; this does not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """The venv's bin directory, with labgen installed from its wheel."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # Built from a copy of the tracked tree: setuptools' in-tree build/ would otherwise carry
    # modules that no longer exist into the wheel, and the checkout stays untouched.
    src = root / "src"
    tracked = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, tracked):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheels = list(dist.glob("labgen-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert not (venv / "bin" / "pip").exists()
    # The outer pip installs into the pip-less venv; dependencies come from the package index.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--disable-pip-version-check",
            "-q",
            str(wheels[0]),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return venv / "bin"


def _labgen(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LABGEN_WORKDIR")}
    return subprocess.run(
        [str(bin_dir / "labgen"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_runs_from_the_wheel_not_the_checkout(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import labgen; print(labgen.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" in where and not where.startswith(str(REPO))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("version")
    p = _labgen(installed, "--version", cwd=tmp_path)
    assert p.returncode == 0
    import labgen

    assert p.stdout.strip().endswith(labgen.__version__)
    assert version in (None, labgen.__version__)  # one version source: labgen/__init__.py


def test_up_broken_local_from_the_wheel(installed, tmp_path):
    p = _labgen(installed, "up", "broken", "--engine", "local", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    outcomes = {m["id"]: m["outcome"] for m in doc["messages"]}
    assert outcomes["to-fabrikam"] == "silently_discarded"
    assert doc["summary"]["unaccounted"] == 0
    assert Path(doc["lab_dir"]).parent == tmp_path


def test_render_from_the_wheel(installed, tmp_path):
    out = tmp_path / "lab"
    p = _labgen(installed, "render", "fixed", "-o", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for rel in (
        "compose.yaml",
        "plan.json",
        "README.md",
        "gateway/postfix/main.cf",
        "gateway/postfix/master.cf",
        "gateway/postfix/transport",
    ):
        assert (out / rel).is_file(), rel


def test_examples_ship_in_the_wheel(installed, tmp_path):
    p = _labgen(installed, "examples", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    listed = sorted(r["name"] for r in json.loads(p.stdout)["examples"])
    assert listed == sorted(f.stem for f in (REPO / "examples").glob("*.yaml"))
    where = subprocess.run(
        [str(installed / "python"), "-c", "from labgen.resources import resource_dir; print(resource_dir('examples'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert "site-packages" in where  # the wheel's own copy, found through importlib.resources


def test_up_an_example_from_the_wheel(installed, tmp_path):
    p = _labgen(installed, "up", "example:dedicated-egress-ip", "--engine", "local", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr  # 0: every expectation held
    doc = json.loads(p.stdout)
    assert doc["scenario"] == "dedicated-ip" and doc["summary"]["expectations_failed"] == 0
    assert doc["summary"]["delivered"] == doc["summary"]["total"] > 0


# What `--version` and `--help` may load: the standard library, click, and labgen's own light modules.
# Anything heavy (rich, pydantic, yaml, jinja2, docker, cryptography...) must wait for a command.
HEAVY = (
    "rich",
    "pydantic",
    "pydantic_core",
    "yaml",
    "jinja2",
    "docker",
    "cryptography",
    "aiosmtpd",
    "dns",
    "dnslib",
    "requests",
    "urllib3",
    "labgen.model",
    "labgen.engines",
    "labgen.lab",
    "labgen.results",
    "labgen.run",
)


@pytest.mark.parametrize("args", [["--version"], ["--help"]], ids=["version", "help"])
def test_start_up_loads_no_heavy_module(installed, tmp_path, args):
    """Start-up time is what the CLI imports before it answers (bench/bench_startup.py has the
    figures); a module-level import of one of these undoes it, so the test names it."""
    code = (
        "import sys, runpy; sys.argv = ['labgen', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('labgen.cli', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
    )
    p = subprocess.run(
        [str(installed / "python"), "-c", code, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    loaded = p.stderr.split()
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"`labgen {' '.join(args)}` imports {heavy}"
    assert "click" in loaded  # it did run the CLI
    assert "labgen" in p.stdout.lower()


@pytest.mark.docker
def test_wheel_carries_the_whole_image_recipe(installed, tmp_path, docker_ready):
    """The image tag is a hash of the recipe and the source: the wheel computes the same one as the
    checkout, so it ships every file the image build reads."""
    p = _labgen(installed, "images", "ls", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    current = [r["tag"] for r in json.loads(p.stdout)["images"] if r["current"]]
    assert current == [docker_ready]
