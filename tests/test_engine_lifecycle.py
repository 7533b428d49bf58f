"""One lifecycle on every engine (labgen issue 7, section 2): `up --keep`, `status --json` from
another directory, `logs`, a real client against the kept lab, `down`, and nothing left behind
(no process, no container). Plus what `down` must never do: signal a process labgen did not
start. Local tests use their own registry ($XDG_RUNTIME_DIR) and a lab name of their own."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml
from conftest import REPO, labgen, labgen_json

from labgen.errors import InfraError
from labgen.wait import poll

BROKEN = REPO / "labgen" / "scenarios" / "broken.yaml"


def local_scenario(tmp_path: Path, short: str) -> tuple[str, Path]:
    data = yaml.safe_load(BROKEN.read_text())
    data["name"] = f"g-{short}-{secrets.token_hex(3)}"
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data["name"], path


@pytest.fixture
def registry(tmp_path, monkeypatch) -> dict[str, str]:
    """A registry of kept local labs for this test only (and for labgen in this process)."""
    run = tmp_path / "xdg-run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    return {"XDG_RUNTIME_DIR": str(run)}


def alive(pid: int) -> bool:
    try:
        return b"labgen.engines.local" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def labelled(lab: str) -> list[str]:
    """Containers (running or not) and networks labelled for `lab`."""
    out = []
    for cmd in (["docker", "ps", "-a"], ["docker", "network", "ls"]):
        out += subprocess.run(
            [*cmd, "-q", "--filter", f"label=io.labgen.lab={lab}"], capture_output=True, text=True, check=True
        ).stdout.split()
    return out


def smtp_probe(engine: str, lab: str, address: str) -> str:
    """swaks against the kept lab's EOP: from the host on loopback, from the lab's own traffic
    container on Docker (its network is internal)."""
    if engine == "local":
        host, port = address.rsplit(":", 1)
        cmd = ["swaks", "--server", host, "--port", port]
    else:
        cmd = ["docker", "exec", f"labgen-{lab}-traffic", "swaks", "--server", address]
    p = subprocess.run(
        [
            *cmd,
            "--from",
            "erin@northwind.example",
            "--to",
            "bob@contoso.example",
            "--quit-after",
            "EHLO",
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return p.stdout + p.stderr


@pytest.mark.parametrize("engine", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_same_lifecycle_on_every_engine(engine, tmp_path, registry, request):
    if engine == "docker":
        own = request.getfixturevalue("test_labs").new("broken", "keep")
        lab, extra = own.name, [own.scenario, "--subnet", own.subnet]
    else:
        lab, path = local_scenario(tmp_path, "keep")
        extra = [path]
    wd, elsewhere = tmp_path / "wd", tmp_path / "elsewhere"
    wd.mkdir(), elsewhere.mkdir()
    try:
        code, doc = labgen_json("up", *extra, "--engine", engine, "--keep", cwd=wd, env=registry, timeout=600)
        assert code == 0 and doc["engine"] == engine and doc["summary"]["unaccounted"] == 0

        code, st = labgen_json("status", cwd=elsewhere, env=registry)  # found from any directory
        assert code == 0
        row = next(r for r in st["labs"] if r["lab"] == lab)
        assert row["engine"] == engine and row["state"] == "running"
        assert row["lab_dir"] == str(wd / f"labgen-{lab}")
        services = {s["service"]: s for s in row["services"]}
        assert {"dns", "eop", "sink", "gateway"} <= set(services) and all(s["addresses"] for s in services.values())

        p = labgen("logs", "eop", "--lab", lab, cwd=elsewhere, env=registry)
        assert p.returncode == 0, p.stderr
        assert any(
            json.loads(line).get("event") == "accepted" for line in p.stdout.splitlines() if line.startswith("{")
        )

        answer = smtp_probe(engine, lab, services["eop"]["addresses"][0])
        assert "Microsoft ESMTP MAIL Service ready" in answer and "250" in answer, answer
        if engine == "local":  # and the lab DNS answers with the gateway's address
            host, port = services["dns"]["addresses"][0].rsplit(":", 1)
            reply = dns.query.udp(dns.message.make_query("gw.contoso.example", "A"), host, port=int(port), timeout=5)
            assert [r.to_text() for rr in reply.answer for r in rr] == [
                services["gateway"]["addresses"][0].rsplit(":", 1)[0]
            ]

        p = labgen("down", lab, cwd=elsewhere, env=registry)
        assert p.returncode == 0 and lab in p.stdout, p.stderr
        code, st = labgen_json("status", cwd=elsewhere, env=registry)
        assert code == 0 and lab not in {r["lab"] for r in st["labs"]}
        if engine == "local":
            assert not alive(row["pid"])
            assert not (wd / f"labgen-{lab}" / "local-engine.json").exists()
            assert not list(Path(registry["XDG_RUNTIME_DIR"]).rglob(f"{lab}.json"))
        else:
            assert labelled(lab) == []
    finally:
        labgen("down", lab, cwd=elsewhere, env=registry)


def test_local_up_without_keep_leaves_nothing_running(tmp_path, registry):
    lab, path = local_scenario(tmp_path, "nokeep")
    code, doc = labgen_json("up", path, "--engine", "local", cwd=tmp_path, env=registry)
    assert code == 0 and doc["summary"]["unaccounted"] == 0
    code, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
    assert st["labs"] == []


def test_up_again_replaces_the_kept_lab(tmp_path, registry):
    lab, path = local_scenario(tmp_path, "again")
    pids = []
    try:
        for _ in range(2):
            code, _doc = labgen_json("up", path, "--engine", "local", "--keep", cwd=tmp_path, env=registry)
            assert code == 0
            _, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
            pids += [r["pid"] for r in st["labs"]]
        assert len(pids) == 2 and pids[0] != pids[1]
        assert not alive(pids[0]) and alive(pids[1])
    finally:
        labgen("down", lab, cwd=tmp_path, env=registry)


def test_a_kept_lab_that_died_shows_as_exited_and_down_cleans_up(tmp_path, registry):
    lab, path = local_scenario(tmp_path, "died")
    code, _ = labgen_json("up", path, "--engine", "local", "--keep", cwd=tmp_path, env=registry)
    assert code == 0
    _, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
    pid = st["labs"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not alive(pid), waiting_for="the killed lab process to be gone", timeout=30)
    _, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
    assert st["labs"][0]["state"] == "exited"
    p = labgen("down", lab, cwd=tmp_path, env=registry)
    assert p.returncode == 0, p.stderr
    _, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
    assert st["labs"] == []


# ---------------------------------------------------------------- down never signals a stranger


def _stranger(argv_tail: list[str]) -> subprocess.Popen:
    """A process that is not a kept lab's (it only looks like one to a careless check)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv_tail])


@pytest.mark.parametrize(
    "argv_tail",
    [
        [],  # any process of the user's
        ["-m", "labgen.engines.local", "--token", "0123456789abcdef"],  # looks like one, another token
    ],
    ids=["foreign", "other-token"],
)
def test_down_signals_only_its_own_process(tmp_path, registry, argv_tail):
    from labgen.engines import labels

    lab = f"g-stranger-{secrets.token_hex(3)}"
    labdir = tmp_path / f"labgen-{lab}"
    labdir.mkdir()
    stranger = _stranger(argv_tail)
    try:
        token = "fedcba9876543210"
        reg = labels.registry_dir()
        reg.mkdir(parents=True)
        (reg / f"{lab}.json").write_text(
            json.dumps({"lab": lab, "lab_dir": str(labdir), "pid": stranger.pid, "token": token})
        )
        (labdir / labels.STATE_FILE).write_text(json.dumps({"token": token, "port": 1, "hosts": {}}))
        _, st = labgen_json("status", lab, cwd=tmp_path, env=registry)
        assert st["labs"][0]["state"] == "exited"  # not ours, whatever its pid runs
        p = labgen("down", lab, cwd=tmp_path, env=registry)
        assert p.returncode == 0, p.stderr
        assert stranger.poll() is None  # still running: never signalled
        assert not (reg / f"{lab}.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize(
    "args",
    [
        ["down", "../etc"],
        ["down", "Upper"],
        ["down", "a/b"],
        ["status", "x" * 40],
        ["logs", "eop", "--lab", ".."],
    ],
    ids=["dotdot", "upper", "slash", "long", "logs-dotdot"],
)
def test_lab_names_from_the_command_line_are_checked(tmp_path, registry, args):
    p = labgen(*args, cwd=tmp_path, env=registry)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "not a lab name" in lines[0], p.stderr


# ---------------------------------------------------------------- the seams, and the one wait


def test_cli_and_planner_never_name_an_engine():
    """A guard only (the proof is the lifecycle above): no engine module imported by name, no
    branch on an engine's name, in the CLI, the planner and the pipeline."""
    for rel in ("labgen/cli.py", "labgen/model/plan.py", "labgen/run.py"):
        text = (REPO / rel).read_text()
        for pattern in (
            r"engines\.(docker|local)\b",
            r"==\s*[\"'](local|docker)[\"']",
            r"engine\s*==",
            r"!=\s*[\"'](local|docker)[\"']",
        ):
            assert not re.search(pattern, text), (rel, pattern)


def test_poll_returns_what_the_probe_found():
    seen = iter([None, 0, "", "found"])
    assert poll(lambda: next(seen), waiting_for="x", timeout=60, interval=0) == "found"


def test_poll_stops_when_abort_raises():
    calls = []

    def abort() -> None:
        calls.append(1)
        raise InfraError("the service stopped")

    with pytest.raises(InfraError, match="the service stopped"):
        poll(lambda: None, waiting_for="x", timeout=60, abort=abort)
    assert calls == [1]


def test_poll_says_what_it_waited_for():
    with pytest.raises(InfraError) as e:
        poll(
            lambda: None,
            waiting_for="the lab's services to answer",
            until=time.monotonic(),
            detail=lambda: "not answering: eop",
        )
    assert "waiting for the lab's services to answer" in e.value.message and "not answering: eop" in e.value.message


def test_poll_expire_returns_instead_of_raising():
    def probe() -> list[object]:
        return []  # never truthy: poll waits until the deadline

    def expire(last: list[object] | None) -> list[object]:
        return ["gave up", last]

    assert poll(probe, waiting_for="x", timeout=0, expire=expire) == ["gave up", []]
