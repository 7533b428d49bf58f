"""The lab image: its content-hash tag, the host-mirror lookup, and (docker) the built image."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from labgen.engines import images
from labgen.errors import InfraError

TAG = re.compile(r"^labgen-lab:[0-9a-f]{12}$")


@pytest.fixture
def sources(tmp_path, monkeypatch):
    """Point image_tag() at private copies of compose/lab-image and the labgen package."""
    lab = tmp_path / "lab-image"
    pkg = tmp_path / "labgen"
    shutil.copytree(images._lab_dir(), lab)
    shutil.copytree(images._package_dir(), pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(images, "_lab_dir", lambda: lab)
    monkeypatch.setattr(images, "_package_dir", lambda: pkg)
    return lab, pkg


def test_tag_is_stable(sources):
    tag = images.image_tag()
    assert TAG.match(tag)
    assert images.image_tag() == tag


def test_tag_follows_lab_image_files(sources):
    lab, _ = sources
    before = images.image_tag()
    dockerfile = lab / "Dockerfile"
    original = dockerfile.read_text()
    dockerfile.write_text(original + "# changed\n")
    assert images.image_tag() != before
    dockerfile.write_text(original)
    assert images.image_tag() == before
    (lab / "extra.conf").write_text("x")
    assert images.image_tag() != before


def test_tag_follows_package_source_only(sources):
    _, pkg = sources
    before = images.image_tag()
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (pkg / "notes.txt").write_text("not python")
    assert images.image_tag() == before
    (pkg / "errors.py").write_text((pkg / "errors.py").read_text() + "\n# changed\n")
    assert images.image_tag() != before


def test_base_packages_listed():
    assert {"postfix", "python3-pydantic", "swaks", "iproute2"} <= set(images._packages())


def test_debian_sources_reads_both_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb https://other.example/apt cloud-sdk-bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.example/\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://old.example/debian\nSuites: bullseye\nComponents: main\n"
    )
    assert images.debian_sources("bookworm", tmp_path) == [
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main",
        "deb http://sec.example/debian-security bookworm-security main",
    ]
    # Another release's image from the same host: its Debian mirrors, renamed; never the
    # third-party repository, never bullseye's entry twice.
    assert images.debian_sources("trixie", tmp_path) == [
        "deb [signed-by=/k.gpg] http://mirror.example/debian trixie main",
        "deb http://sec.example/debian-security trixie-security main",
        "deb http://old.example/debian trixie main",
    ]


def test_failed_step_names_itself_and_its_last_lines():
    cmd = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line $i; done; echo E: boom >&2; exit 4"]
    with pytest.raises(InfraError) as err:
        images._run(cmd, "demo step", images._Steps())
    message = err.value.message
    assert "'demo step'" in message and "exited 4" in message and "E: boom" in message
    assert "line 8" in message and "line 1 " not in message
    assert "\n" not in message and err.value.exit_code == 3


# --- docker ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_image(docker_ready):
    return docker_ready  # conftest: fails in CI when Docker is missing, never skips silently


def _run_in(image: str, command: str) -> str:
    import docker

    client = docker.from_env()
    out = client.containers.run(image, ["sh", "-c", command], network_mode="none", remove=True, stderr=True)
    return out.decode()


@pytest.mark.docker
@pytest.mark.parametrize(
    "command, expect",
    [
        ("postconf -d mail_version", r"mail_version = 3\."),
        (
            "python3 -c 'import labgen.lab.entrypoints, labgen.lab.eop.server, labgen.lab.dns_server; "
            "print(labgen.__file__)'",
            r"^/opt/labgen/labgen/__init__\.py",
        ),
        ("swaks --version", r"swaks version"),
        ("ip addr", r"\blo\b.*LOOPBACK"),
        ("pwd; command -v python3; command -v pip pip3 || echo no-pip", r"^/lab\n/usr/bin/python3\nno-pip"),
    ],
)
def test_image_has_tools(lab_image, command, expect):
    assert re.search(expect, _run_in(lab_image, command))


@pytest.mark.docker
def test_image_is_cached_and_listed(lab_image):
    assert images.ensure_image() == lab_image  # already there: no build
    current = [row for row in images.list_images() if row["current"]]
    assert [row["tag"] for row in current] == [lab_image]
    assert current[0]["size"] > 0 and current[0]["id"]


@pytest.mark.docker
def test_image_libraries_satisfy_pyproject(lab_image):
    """Debian's packages in the image stand in for pyproject's dependencies: each one must be
    there at a version pyproject.toml accepts (one version source: pyproject)."""
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    reqs = [Requirement(d) for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    script = (
        "import importlib.metadata as m\n"
        f"for name in {[r.name for r in reqs]!r}:\n"
        "    try: print(name, m.version(name))\n"
        "    except m.PackageNotFoundError: print(name, 'missing')\n"
    )
    found = dict(line.split() for line in _run_in(lab_image, f'python3 -c "{script}"').splitlines())
    bad = {
        r.name: found.get(r.name)
        for r in reqs
        if found.get(r.name) in (None, "missing") or not r.specifier.contains(found[r.name], prereleases=True)
    }
    assert not bad, f"image packages that do not satisfy pyproject.toml: {bad}"
