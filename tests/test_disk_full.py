"""A full disk mid-run (labgen issue 6, "Lifecycle"): the run stops at once with exit 3 and one
line naming the file it could not write, leaves nothing running, prints no traceback; and a
Ctrl-C during interpreter shutdown ends as 130 with the one interrupt line.

The disks are real: small tmpfs mounts (we run as root), filled with fallocate."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, labgen

from labgen.engines.local import LocalEngine
from labgen.errors import InfraError
from labgen.lab.ledger import Ledger, clear_fault, lab_fault, write_mailbox
from labgen.model.scenario import load_scenario
from labgen.results.contracts import Delivered, RcptDecision
from labgen.run import MIN_FREE_BYTES, check_space, run_lab

ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"
PAGE = os.sysconf("SC_PAGE_SIZE")

# `labgen` with the free-space floor off, so that a run reaches the writes that fail (the floor
# would stop it before anything starts: test_a_nearly_full_disk_stops_the_run_before_it_starts).
NO_FLOOR = textwrap.dedent("""
    import sys
    import labgen.run
    labgen.run.MIN_FREE_BYTES = labgen.run.MIN_FREE_INODES = 0
    from labgen.cli import entry
    sys.argv[0] = "labgen"
    entry()
""")


@pytest.fixture
def small_disk(tmp_path):
    """A mounted tmpfs of the requested size; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        p = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            pytest.fail(
                f"these tests mount a small tmpfs and need root (or CAP_SYS_ADMIN): mount said {p.stderr.strip()!r}"
            )
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in mounted:
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, keep: int) -> None:
    """Allocate all of disk's free space but `keep` bytes (a multiple of the page size)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, free_bytes(disk) - keep)
    finally:
        os.close(fd)
    assert free_bytes(disk) == keep


def nobody_listens(ip: str, port: int) -> bool:
    """No socket of the lab is bound there any more. TCP with SO_REUSEADDR, as the servers bind:
    closed sessions in TIME_WAIT do not count, a listener does."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def one_line(p: subprocess.CompletedProcess, code: int) -> str:
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and len(lines) == 1, (p.returncode, p.stderr)
    return lines[0]


# ---------------------------------------------------------------- the ledger records, never raises


class FailingFile:
    """A ledger file whose every write fails with `code`, as the kernel would report it."""

    def __init__(self, code: int):
        self.code, self.closed, self.writes = code, False, 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(self.code, os.strerror(self.code))

    def flush(self) -> None:
        raise OSError(self.code, os.strerror(self.code))

    def close(self) -> None:
        self.closed = True  # as io's close: closed even though the final flush fails
        raise OSError(self.code, os.strerror(self.code))


DELIVERED = Delivered(
    event="delivered",
    msgid="m1",
    rcpt="dave@northwind.example",
    mailbox="dave@northwind.example",
    file="mailboxes/dave@northwind.example/000001-m1.eml",
)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES])
def test_a_ledger_write_error_becomes_the_labs_fault_not_the_services(tmp_path, monkeypatch, code):
    run_dir = tmp_path / "run"
    ledger = Ledger(run_dir, "eop")
    real, failing = ledger._file, FailingFile(code)
    monkeypatch.setattr(ledger, "_file", failing)
    try:
        ledger.emit(
            RcptDecision(event="rcpt", rcpt="carol@fabrikam.example", action="deliver", reply="250 2.1.5 Recipient OK")
        )  # does not raise into the service
        fault = lab_fault(run_dir)
        assert fault == (
            f"cannot write the lab's ledger {run_dir / 'eop.jsonl'}: {os.strerror(code)}; "
            "free space there or choose another --workdir"
        )
        ledger.emit(DELIVERED)  # the ledger has a hole now: it writes nothing more
        assert failing.writes == 1
        ledger.close()
        assert lab_fault(run_dir) == fault  # the first fault stands
    finally:
        real.close()
        clear_fault(run_dir)
    assert lab_fault(run_dir) is None


def test_ledger_and_mailbox_on_a_really_full_disk(small_disk):
    disk = small_disk(1 << 20)
    fill(disk, 0)
    run_dir = disk / "run"
    try:
        ledger = Ledger(run_dir, "sink")  # an empty file needs no block
        ledger.emit(DELIVERED.model_copy(update={"file": "x" * 5000}))
        assert lab_fault(run_dir) == (
            f"cannot write the lab's ledger {run_dir / 'sink.jsonl'}: {ENOSPC}; "
            "free space there or choose another --workdir"
        )
        ledger.close()  # what is left in its buffer cannot be written either: still no exception
    finally:
        clear_fault(run_dir)
    with pytest.raises(OSError):  # the SMTP server answers 451 for it, as before
        write_mailbox(run_dir / "mailboxes", "dave@northwind.example", "m1", b"y" * 10000)
    fault = lab_fault(run_dir)
    assert fault is not None and fault.startswith(f"cannot write a mailbox file in {run_dir / 'mailboxes'}: {ENOSPC}")
    clear_fault(run_dir)


@pytest.mark.parametrize(
    "keep, full",
    [(0, True), (MIN_FREE_BYTES - PAGE, True), (MIN_FREE_BYTES, False), (MIN_FREE_BYTES + 64 * PAGE, False)],
)
def test_check_space_says_which_directory_is_full(small_disk, keep, full):
    disk = small_disk(MIN_FREE_BYTES + 128 * PAGE)
    fill(disk, keep)
    if full:
        with pytest.raises(InfraError) as e:
            check_space(disk)
        assert f"the lab's run directory {disk} is on a full file system ({keep // 1024} KiB free" in e.value.message
        assert ENOSPC in e.value.message
    else:
        check_space(disk)


# ---------------------------------------------------------------- whole runs, local engine


def test_a_nearly_full_disk_stops_the_run_before_it_starts(small_disk):
    disk = small_disk(2 << 20)
    assert labgen("certs", "broken", cwd=disk).returncode == 0
    fill(disk, 16 * 1024)
    p = labgen("up", "broken", "--engine", "local", cwd=disk)
    run_dir = disk / "labgen-broken" / "run"
    line = one_line(p, 3)
    assert line.startswith(f"labgen: the lab's run directory {run_dir} is on a full file system") and ENOSPC in line
    assert not list(run_dir.glob("*.jsonl"))  # no service was started


def plan_pages(tmp_path: Path) -> int:
    """The pages `up` needs for plan.json (written before anything starts)."""
    assert labgen("render", "broken", "-o", tmp_path / "measure", cwd=tmp_path).returncode == 0
    return -(-(tmp_path / "measure" / "plan.json").stat().st_size // PAGE) + 1  # + 1: a port number may grow it


def test_a_disk_that_fills_mid_run_stops_it_at_once_with_one_line(small_disk, tmp_path):
    disk = small_disk(2 << 20)
    assert labgen("certs", "broken", cwd=disk).returncode == 0
    # Room for plan.json and one page more: the lab's ledgers (a page per file) and mailboxes
    # need several, so some write fails whatever the order in which the services write.
    fill(disk, (plan_pages(tmp_path) + 1) * PAGE)
    p = subprocess.run(
        [sys.executable, "-c", NO_FLOOR, "up", "broken", "--engine", "local"],
        cwd=disk,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = one_line(p, 3)
    run_dir = disk / "labgen-broken" / "run"
    assert line.startswith("labgen: cannot write ") and f" {run_dir}/" in line, line
    assert line.endswith(f": {ENOSPC}; free space there or choose another --workdir"), line
    assert "recipient(s)" not in p.stdout  # no verdict: the run stopped for the fault, not at its deadline


def test_a_full_disk_mid_run_leaves_no_thread_or_listener(small_disk, tmp_path, monkeypatch, capfd):
    """In process, as the local engine runs: after the failure nothing of the lab is left, nothing
    printed a traceback, and the next run works."""
    from labgen import run as run_module

    disk = small_disk(2 << 20)
    assert labgen("certs", "broken", cwd=disk).returncode == 0
    fill(disk, (plan_pages(tmp_path) + 1) * PAGE)
    monkeypatch.setattr(run_module, "MIN_FREE_BYTES", 0)
    with pytest.raises(InfraError) as e:
        run_lab(load_scenario("broken"), LocalEngine(), disk)
    assert f"{disk / 'labgen-broken' / 'run'}/" in e.value.message and ENOSPC in e.value.message
    plan = json.loads((disk / "labgen-broken" / "plan.json").read_text())
    monkeypatch.undo()

    assert not [t for t in threading.enumerate() if t.name == "labgen-local"]
    ips = [ip for ips in plan["hosts"].values() for ip in ips]
    assert all(nobody_listens(ip, plan["smtp_port"]) for ip in ips)  # every listener is closed
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err

    again = tmp_path / "again"
    doc = run_lab(load_scenario("broken"), LocalEngine(), again)
    assert doc.summary.unaccounted == 0 and doc.summary.delivered == 3, doc.summary


# ---------------------------------------------------------------- Docker engine


@pytest.mark.docker
def test_docker_a_service_that_cannot_write_stops_and_the_run_says_so(small_disk, test_labs, tmp_path):
    lab = test_labs.new("broken", "disk")
    disk = small_disk(8 << 20)
    labdir = disk / f"labgen-{lab.name}"
    # Everything the host writes for `up` (render: plan, compose project, configs, PKI), then all
    # but one page of what is left: the containers' ledgers and logs need more than that.
    r = labgen("render", lab.scenario, "-o", labdir, "--subnet", lab.subnet, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fill(disk, 2 * PAGE)
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_FLOOR,
            "up",
            lab.scenario,
            "--engine",
            "docker",
            "--subnet",
            lab.subnet,
            "--workdir",
            disk,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = one_line(p, 3)
    assert line.startswith("labgen: service ") and f" of lab {lab.name} stopped: " in line, line
    assert f" {labdir}/run/" in line and ENOSPC in line, line
    from labgen.engines.docker import lab_containers

    assert not lab_containers(lab.name)  # the runner's abort removed the lab


# ---------------------------------------------------------------- Ctrl-C during shutdown

LATE_CTRL_C = textwrap.dedent("""
    import sys, threading, time

    def hold():  # keeps the interpreter in its shutdown (joining threads) until signalled
        while threading.main_thread().is_alive():
            time.sleep(0.01)
        print("SHUTDOWN", flush=True)
        threading.Event().wait()

    threading.Thread(target=hold).start()
    sys.argv = ["labgen", "scenarios"]
    from labgen.cli import entry
    entry()
""")


def test_ctrl_c_during_shutdown_after_the_result_is_130_and_one_line():
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["labgen"]
    assert script == "labgen.cli:entry"
    p = subprocess.Popen(
        [sys.executable, "-c", LATE_CTRL_C], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None  # a pipe
    try:
        out = []
        for line in p.stdout:
            if line.strip() == "SHUTDOWN":
                break
            out.append(line)
        assert "broken" in "".join(out)  # the result came out before the Ctrl-C
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    from labgen.cli import INTERRUPTED

    assert p.returncode == 130 and err == INTERRUPTED + "\n", (p.returncode, err)
