"""Lifecycle: lab directories that lose no data, failures that name what is in the way (labgen
issue 6). Everything here runs the real CLI; nothing touches Docker (`down --all` must refuse
before it does)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, labgen

BROKEN = REPO / "labgen" / "scenarios" / "broken.yaml"


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- directories


def foreign_dir(tmp_path: Path) -> Path:
    """A user's directory with their own data, including a run/ of their own."""
    d = tmp_path / "mine"
    (d / "run").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "run" / "results.csv").write_text("1,2,3")
    d.chmod(0o755)
    return d


@pytest.mark.parametrize(
    "command",
    [
        ["render", "broken", "-o", "{dir}"],
        ["render", "broken", "-o", "{dir}", "--subnet", "198.18.30.0/24"],
    ],
    ids=["render", "render-subnet"],
)
def test_render_refuses_a_non_empty_directory_it_did_not_create(tmp_path, command):
    d = foreign_dir(tmp_path)
    before = tree(d)
    p = labgen(*[c.format(dir=d) for c in command], cwd=tmp_path)
    one_line_error(p, 2, str(d), "--force")
    assert tree(d) == before and (d.stat().st_mode & 0o777) == 0o755


def test_render_force_never_deletes_a_run_directory_it_did_not_write(tmp_path):
    d = foreign_dir(tmp_path)
    before = tree(d)
    p = labgen("render", "broken", "-o", d, "--force", cwd=tmp_path)
    one_line_error(p, 2, str(d / "run"))
    assert tree(d) == before


def test_render_force_writes_beside_the_users_files(tmp_path):
    d = tmp_path / "mine"
    d.mkdir(mode=0o755)
    (d / "notes.txt").write_text("my notes")
    p = labgen("render", "broken", "-o", d, "--force", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (d / "notes.txt").read_text() == "my notes" and (d / "compose.yaml").is_file()
    assert (d.stat().st_mode & 0o777) == 0o755  # the user's directory keeps its mode
    assert (d / "certs").stat().st_mode & 0o777 == 0o700
    keys = list((d / "certs").glob("*.key"))
    assert keys and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    # From now on it is a lab directory: rendering again needs no --force and rewrites run/.
    assert labgen("render", "broken", "-o", d, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("make", ["absent", "empty"])
def test_render_creates_or_adopts_an_empty_directory_0700(tmp_path, make):
    d = tmp_path / "out"
    if make == "empty":
        d.mkdir(mode=0o755)
    p = labgen("render", "broken", "-o", d, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (d.stat().st_mode & 0o777) == 0o700 and (d / ".labgen-lab").is_file()
    (d / "run" / "old").write_text("x")
    assert labgen("render", "broken", "-o", d, cwd=tmp_path).returncode == 0
    assert not (d / "run" / "old").exists()  # labgen's own run/ is replaced


@pytest.mark.parametrize(
    "command",
    [
        lambda link: ["render", "broken", "-o", link],
        lambda link: ["up", "broken", "--engine", "local", "--workdir", link.parent],
        lambda link: ["certs", "broken", "--workdir", link.parent],
    ],
    ids=["render", "up", "certs"],
)
def test_a_symlinked_lab_directory_is_refused_not_followed(tmp_path, command):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    (target / "precious").write_text("keep")
    work = tmp_path / "work"
    work.mkdir()
    link = work / "labgen-broken"
    link.symlink_to(target)
    p = labgen(*command(link), cwd=tmp_path)
    one_line_error(p, 2, str(link), "symbolic link")
    assert tree(target) == {"precious": b"keep"} and (target.stat().st_mode & 0o777) == 0o755


@pytest.mark.parametrize("inside", ["run", "certs"])
def test_a_symlink_inside_a_lab_directory_is_refused(tmp_path, inside):
    assert labgen("certs", "broken", cwd=tmp_path).returncode == 0
    lab = tmp_path / "labgen-broken"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("keep")
    if (lab / inside).exists():
        shutil.rmtree(lab / inside)
    (lab / inside).symlink_to(target)
    p = labgen("up", "broken", "--engine", "local", cwd=tmp_path)
    one_line_error(p, 2, str(lab / inside), "symbolic link")
    assert tree(target) == {"precious": b"keep"}


def test_up_refuses_a_foreign_lab_directory_unless_forced(tmp_path):
    lab = tmp_path / "labgen-broken"
    lab.mkdir()
    (lab / "notes.txt").write_text("mine")
    one_line_error(labgen("up", "broken", "--engine", "local", cwd=tmp_path), 2, str(lab), "--force")
    assert tree(lab) == {"notes.txt": b"mine"}
    p = labgen("up", "broken", "--engine", "local", "--force", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (lab / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- torn PKI


def test_a_replaced_key_is_regenerated_not_an_opaque_tls_error(tmp_path):
    assert labgen("certs", "broken", cwd=tmp_path).returncode == 0
    certs = tmp_path / "labgen-broken" / "certs"
    other = tmp_path / "other"
    other.mkdir()
    assert labgen("certs", "broken", "--workdir", other, cwd=tmp_path).returncode == 0
    # Someone copies a key from another lab over this one's: same name, another key.
    for key in ("gw-selfsigned.key", "ca-intermediate.key"):
        shutil.copy(other / "labgen-broken" / "certs" / key, certs / key)
    p = labgen("up", "broken", "--engine", "local", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "KEY_VALUES_MISMATCH" not in p.stderr


def test_an_unchanged_pki_is_reused(tmp_path):
    assert labgen("certs", "broken", cwd=tmp_path).returncode == 0
    certs = tmp_path / "labgen-broken" / "certs"
    before = tree(certs)
    assert labgen("certs", "broken", cwd=tmp_path).returncode == 0
    assert tree(certs) == before


# ---------------------------------------------------------------- read-only places, full disks


@contextmanager
def tmpfs(path: Path, options: str):
    """A small file system of its own (we are root in the test environment)."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "labgen-test", str(path)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_certs_in_a_read_only_directory_exits_3_naming_it(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        p = labgen("certs", "broken", "--workdir", ro, cwd=tmp_path)
    one_line_error(p, 3, str(ro / "labgen-broken"), "Read-only file system", "--workdir")


def test_certs_in_a_read_only_lab_directory_exits_3_naming_it(tmp_path):
    lab = tmp_path / "labgen-broken"
    with tmpfs(lab, "size=1m"):
        (lab / ".labgen-lab").write_text("")
        subprocess.run(["mount", "-o", "remount,ro", str(lab)], check=True)
        p = labgen("certs", "broken", cwd=tmp_path)
    one_line_error(p, 3, str(lab), "Read-only file system")


# ---------------------------------------------------------------- down --all


def test_down_all_without_a_terminal_refuses_before_touching_anything(tmp_path):
    # DOCKER_HOST points nowhere: had it tried to list or remove labs, it would say so (exit 3).
    p = subprocess.run(
        [sys.executable, "-m", "labgen.cli", "down", "--all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
    )
    one_line_error(p, 2, "--yes")


def test_down_all_and_a_lab_name_is_bad_usage(tmp_path):
    p = labgen(
        "down", "broken", "--all", "--yes", cwd=tmp_path, env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    )
    one_line_error(p, 2, "--all")


# ---------------------------------------------------------------- Ctrl-C


def interrupt(tmp_path: Path, when) -> subprocess.CompletedProcess:
    """Start `labgen up broken --engine local`, SIGINT it once `when()` holds, collect it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "labgen.cli", "up", "broken", "--engine", "local"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60  # an upper bound only
    while not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before the interrupt"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# SIGINT exactly while labgen.cli imports its modules (rich, pydantic: a second on a slow machine).
INTERRUPT_WHILE_IMPORTING = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "rich.console":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, Interrupt())
sys.argv = ["labgen", "up", "broken", "--engine", "local"]
import labgen.cli
labgen.cli.main()
"""


def test_ctrl_c_while_loading_is_one_line_and_exit_130(tmp_path):
    p = subprocess.run(
        [sys.executable, "-c", INTERRUPT_WHILE_IMPORTING], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip().splitlines() == ["labgen: interrupted; nothing this command started is left running"]
    assert not (tmp_path / "labgen-broken").exists()


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    lock = tmp_path / "labgen-broken" / ".lock"
    p = interrupt(tmp_path, lock.exists)  # the command has begun: lab directory, PKI, engine start
    assert p.returncode == 130, p.stderr
    assert p.stderr.strip().splitlines() == ["labgen: interrupted; nothing this command started is left running"]
    assert not (tmp_path / "labgen-broken" / "run" / "result.json").exists()
