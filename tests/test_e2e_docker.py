"""End to end on the Docker engine: real Postfix as the gateway, the lab image, an internal
documentation-range network. In CI these fail (never skip) when Docker is missing.

Every lab here is the tests' own (conftest.test_labs: its own name and a free subnet), removed
by name at the end: the tests never touch a lab they did not create, and never `down --all`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import EXAMPLES, by_id, labgen, labgen_json

pytestmark = pytest.mark.docker


def labelled(lab: str) -> dict[str, list[str]]:
    """What Docker holds for a lab: containers, networks, volumes (by label)."""
    flt = f"label=io.labgen.lab={lab}"
    out = {}
    for kind, cmd in (
        ("containers", ["docker", "ps", "-aq", "--filter", flt]),
        ("networks", ["docker", "network", "ls", "-q", "--filter", flt]),
        ("volumes", ["docker", "volume", "ls", "-q", "--filter", flt]),
    ):
        out[kind] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return out


def dexec(container: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, *cmd], capture_output=True, text=True, timeout=60)


def swaks_as_gateway(container: str, *extra: str) -> subprocess.CompletedProcess:
    """swaks in a lab container to contoso's EOP, presenting the gateway's certificate."""
    return dexec(
        container,
        "swaks",
        "--server",
        "contoso.mail.protection.outlook.test",
        "--from",
        "alice@contoso.example",
        "--to",
        "bob@contoso.example",
        "--tls",
        "--tls-cert",
        "/lab/certs/gw-selfsigned.chain.pem",
        "--tls-key",
        "/lab/certs/gw-selfsigned.key",
        *extra,
    )


STRICT_REPEATS = 3

EMPTY: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


def up(lab, cwd, *extra) -> tuple[int, dict]:
    return labgen_json("up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, *extra, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def docker_broken(test_labs, tmp_path_factory):
    lab = test_labs.new("broken", "broken")
    wd = tmp_path_factory.mktemp("docker-broken")
    code, doc = up(lab, wd)
    assert code == 0, doc
    yield doc, wd, lab
    labgen("down", lab.name, cwd=wd)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    out = {}
    for name in ("broken", "fixed"):
        code, doc = labgen_json("up", name, "--engine", "local", cwd=tmp_path_factory.mktemp(f"local-{name}"))
        assert code == 0
        out[name] = {k: m["outcome"] for k, m in by_id(doc).items()}
    return out


def test_docker_broken_agrees_with_local_engine(docker_broken, local_results):
    doc, _, _ = docker_broken
    assert doc["engine"] == "docker" and doc["summary"]["unaccounted"] == 0
    assert {k: m["outcome"] for k, m in by_id(doc).items()} == local_results["broken"]


def test_postfix_log_shows_sent_250_for_the_discarded_message(docker_broken):
    doc, _, lab = docker_broken
    lost = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert lost["outcome"] == "silently_discarded"
    sent = [h for h in lost["hops"] if h["service"] == "gateway" and h["event"] == "sent"][-1]
    assert sent["connector"] == "Internet" and sent["relay"].startswith(
        "fabrikam-example.mail.protection.outlook.test["
    )
    log = open(os.path.join(doc["lab_dir"], "run", "postfix.log")).read()
    line = next(ln for ln in log.splitlines() if "to=<carol@fabrikam.example>" in ln)
    assert "/smtp[" in line and "status=sent (250 2.6.0" in line
    assert "Queued mail for delivery" in line
    # Postfix presented the connector's certificate, which EOP saw.
    assert lost["dropped_by"]["certificate"]["subject"] == "gw.contoso.example"
    assert lost["dropped_by"]["client_ip"] == lab.ip("198.51.100.10")


def test_docker_fixed_agrees_with_local_engine(test_labs, local_results, tmp_path):
    lab = test_labs.new("fixed", "fixed")
    code, doc = up(lab, tmp_path)
    try:
        assert code == 0, doc
        assert {k: m["outcome"] for k, m in by_id(doc).items()} == local_results["fixed"]
        assert set(local_results["fixed"].values()) == {"delivered"}
    finally:
        labgen("down", lab.name, cwd=tmp_path)
    assert labelled(lab.name) == EMPTY


def test_two_egress_ips_for_two_connectors(test_labs, tmp_path):
    """dedicated-egress-ip: the Internet connector binds its own address, which Postfix uses."""
    lab = test_labs.new(str(EXAMPLES / "dedicated-egress-ip.yaml"), "egress")
    code, doc = up(lab, tmp_path)
    try:
        assert code == 0, doc
        fab = {m["id"]: m for m in doc["messages"]}["to-fabrikam"]
        eop = [h for h in fab["hops"] if h["service"] == "eop" and h["event"] == "rcpt"][-1]
        assert eop["client_ip"] == lab.ip("192.0.2.11") and fab["outcome"] == "delivered"
        inbound = {m["id"]: m for m in doc["messages"]}["from-internet"]
        eop_in = [h for h in inbound["hops"] if h["service"] == "eop" and h["event"] == "rcpt"][-1]
        # From the primary address; an internet sender's domain is no tenant's, so by recipient.
        assert eop_in["client_ip"] == lab.ip("192.0.2.10") and eop_in["attribution"]["by"] == "recipient"
    finally:
        labgen("down", lab.name, cwd=tmp_path)


def check_strict_eop(doc: dict) -> None:
    """EOP rejected with 550 5.7.64, Postfix bounced, and its NDR is in alice's mailbox."""
    m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    bounced = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "bounced"]
    # EOP's reply as Postfix logged it, with EOP's bracketed diagnostic at the end.
    assert bounced and bounced[-1]["reply"].startswith("550 5.7.64 TenantAttribution; Relay Access Denied ["), m
    assert m["outcome"] == "rejected" and m["ndr"] and m["ndr"]["mailbox"] == "alice@contoso.example", m
    assert m["ndr_lost"] is None


def test_postfix_bounce_reaches_the_sender_as_an_ndr_every_time(test_labs, tmp_path):
    """The verdict waits for the gateway's bounce and the NDR's fate, never for a clock: each
    run names the NDR, and the lab's own verdict (run/result.json) agrees with the host's."""
    lab = test_labs.new(str(EXAMPLES / "strict-eop-reject.yaml"), "strict")
    try:
        for _ in range(STRICT_REPEATS):
            code, doc = up(lab, tmp_path)
            assert code == 0, doc
            check_strict_eop(doc)
            result = os.path.join(doc["lab_dir"], "run", "result.json")
            deadline = time.monotonic() + 60  # an upper bound for the traffic container's verdict
            while not os.path.exists(result) and time.monotonic() < deadline:
                time.sleep(0.2)
            check_strict_eop(json.load(open(result)))
    finally:
        labgen("down", lab.name, cwd=tmp_path)


def test_postfix_deferrals_are_read_from_its_log(test_labs, tmp_path):
    """451 from a Partner connector that requires TLS: Postfix defers and retries; the verdict
    reads status=deferred lines with EOP's reply."""
    lab = test_labs.new(str(EXAMPLES / "partner-requires-tls.yaml"), "partner")
    code, doc = up(lab, tmp_path)
    try:
        assert code == 0, doc
        m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
        deferred = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "deferred"]
        assert m["outcome"] == "deferred" and deferred
        assert deferred[-1]["reply"].startswith("451 5.7.3 STARTTLS is required to send mail [")
        assert "tls" not in deferred[-1]  # the connector sent in the clear
    finally:
        labgen("down", lab.name, cwd=tmp_path)


def test_lab_is_isolated_structurally(docker_broken):
    """No route beyond the lab: internal network, no default route, DNS answers lab names only.
    Nothing is sent to an outside address."""
    _, _, lab = docker_broken
    net = json.loads(
        subprocess.run(
            ["docker", "network", "inspect", f"labgen-{lab.name}-net"], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert net["Internal"] is True
    assert [c["Subnet"] for c in net["IPAM"]["Config"]] == [lab.subnet]
    for svc in ("dns", "eop", "sink", "gateway", "traffic"):
        routes = dexec(f"labgen-{lab.name}-{svc}", "ip", "-4", "route", "show").stdout.strip().splitlines()
        assert routes and all(r.startswith(f"{lab.subnet} ") for r in routes), (svc, routes)
    q = dexec(f"labgen-{lab.name}-traffic", "dig", "+norecurse", "+time=2", "+tries=1", "example.com", "A")
    assert "status: NXDOMAIN" in q.stdout
    q = dexec(f"labgen-{lab.name}-traffic", "dig", "+short", "fabrikam.example", "MX")
    assert q.stdout.strip() == "10 fabrikam-example.mail.protection.outlook.test."  # Microsoft's per-domain name
    resolv = dexec(f"labgen-{lab.name}-gateway", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {lab.ip('198.51.100.53')}" in resolv and resolv.count("nameserver") == 1


def test_status_and_logs(docker_broken):
    _, wd, lab = docker_broken
    code, st = labgen_json("status", lab.name, cwd=wd)
    assert code == 0
    rows = {r["service"]: r for r in st["containers"]}
    assert set(rows) == {"dns", "eop", "sink", "gateway", "traffic"}
    assert rows["gateway"]["addresses"] == [lab.ip("198.51.100.10")] and rows["gateway"]["state"] == "running"
    p = labgen("logs", "gateway", "--lab", lab.name, cwd=wd)
    assert p.returncode == 0 and "status=sent" in p.stdout


def test_swaks_inside_the_lab_against_eop(docker_broken):
    """swaks from the traffic container, presenting the gateway's certificate, over the lab network."""
    doc, _, lab = docker_broken
    p = swaks_as_gateway(f"labgen-{lab.name}-traffic", "--header", "X-Labgen-Id: swaks-docker")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Microsoft ESMTP MAIL Service ready" in p.stdout and "250 2.6.0" in p.stdout
    events = [json.loads(x) for x in open(os.path.join(doc["lab_dir"], "run", "eop.jsonl"))]
    rcpt = [e for e in events if e["event"] == "rcpt" and e["client_ip"] == lab.ip("198.51.100.100")][-1]
    assert rcpt["attribution"]["by"] == "certificate" and rcpt["attribution"]["tenant"] == "contoso"


def compose_command() -> list[str]:
    """The machine's compose, as a user would run it: the v2 plugin, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_rendered_project_runs_by_hand(test_labs, tmp_path):
    """The same project, started with the machine's compose command, gives the same verdict."""
    lab = test_labs.new("broken", "byhand")
    out = tmp_path / "by-hand"
    p = labgen("render", lab.scenario, "-o", out, "--subnet", lab.subnet, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cmd = [*compose_command(), "-p", f"labgen-{lab.name}", "up", "-d"]
    try:
        up_ = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=300)
        assert up_.returncode == 0, up_.stderr
        result = out / "run" / "result.json"
        deadline = time.monotonic() + 120
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        doc = json.loads(result.read_text())
        assert {k: m["outcome"] for k, m in by_id(doc).items()} == {
            ("to-fabrikam", "carol@fabrikam.example"): "silently_discarded",
            ("to-internet", "dave@northwind.example"): "delivered",
            ("from-internet", "bob@contoso.example"): "delivered",
            ("internal-routing", "bob@contoso.mail.onmicrosoft.test"): "delivered",
        }
        assert "status=sent (250 2.6.0" in (out / "run" / "postfix.log").read_text()
        # The traffic container writes result.json, then prints its report: wait for the print.
        deadline = time.monotonic() + 60
        while True:
            logs = subprocess.run(["docker", "logs", f"labgen-{lab.name}-traffic"], capture_output=True, text=True)
            if "SILENT LOSS: to-fabrikam" in logs.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "SILENT LOSS: to-fabrikam" in logs.stdout
    finally:
        subprocess.run(
            [*compose_command(), "-p", f"labgen-{lab.name}", "down"], cwd=out, capture_output=True, timeout=120
        )
    assert labelled(lab.name) == EMPTY


def test_down_leaves_nothing(test_labs, tmp_path):
    lab = test_labs.new("broken", "down")
    code, _ = up(lab, tmp_path)
    assert code == 0
    assert labelled(lab.name)["containers"]
    p = labgen("down", lab.name, cwd=tmp_path)
    assert p.returncode == 0
    assert labelled(lab.name) == EMPTY


def test_ctrl_c_during_up_leaves_nothing(test_labs, tmp_path):
    lab = test_labs.new("broken", "ctrlc")  # a fresh name: every container seen below is this run's
    proc = subprocess.Popen(
        [sys.executable, "-m", "labgen.cli", "up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not labelled(lab.name)["containers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert labelled(lab.name)["containers"], "the lab never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert labelled(lab.name) == EMPTY


def test_subnet_taken_exits_3_naming_the_network(test_labs, tmp_path):
    lab = test_labs.new("broken", "taken")
    name = f"labgen-{lab.name}-squatter"
    subprocess.run(
        [
            "docker",
            "network",
            "create",
            "--internal",
            "--subnet",
            lab.subnet,
            "--label",
            f"io.labgen.lab={lab.name}-squatter",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        p = labgen("up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path)
        assert p.returncode == 3
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "--subnet" in lines[0]
        assert labelled(lab.name)["containers"] == []
    finally:
        subprocess.run(["docker", "network", "rm", name], capture_output=True)
