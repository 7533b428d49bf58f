"""End to end on the Docker engine: real Postfix as the gateway, the lab image, an internal
documentation-range network. In CI these fail (never skip) when Docker is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import by_id, labgen, labgen_json

pytestmark = pytest.mark.docker


def labelled(lab: str) -> dict:
    """What Docker holds for a lab: containers, networks, volumes (by label)."""
    flt = f"label=io.labgen.lab={lab}"
    out = {}
    for kind, cmd in (("containers", ["docker", "ps", "-aq", "--filter", flt]),
                      ("networks", ["docker", "network", "ls", "-q", "--filter", flt]),
                      ("volumes", ["docker", "volume", "ls", "-q", "--filter", flt])):
        out[kind] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return out


def dexec(container: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, *cmd], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def docker_broken(docker_ready, tmp_path_factory):
    wd = tmp_path_factory.mktemp("docker-broken")
    code, doc = labgen_json("up", "broken", "--engine", "docker", cwd=wd, timeout=600)
    assert code == 0, doc
    yield doc, wd
    labgen("down", "broken", cwd=wd)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    out = {}
    for name in ("broken", "fixed"):
        code, doc = labgen_json("up", name, "--engine", "local", cwd=tmp_path_factory.mktemp(f"local-{name}"))
        assert code == 0
        out[name] = {k: m["outcome"] for k, m in by_id(doc).items()}
    return out


def test_docker_broken_agrees_with_local_engine(docker_broken, local_results):
    doc, _ = docker_broken
    assert doc["engine"] == "docker" and doc["summary"]["unaccounted"] == 0
    assert {k: m["outcome"] for k, m in by_id(doc).items()} == local_results["broken"]


def test_postfix_log_shows_sent_250_for_the_discarded_message(docker_broken):
    doc, _ = docker_broken
    lost = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert lost["outcome"] == "silently_discarded"
    sent = [h for h in lost["hops"] if h["service"] == "gateway" and h["event"] == "sent"][-1]
    assert sent["connector"] == "Internet" and sent["relay"].startswith("fabrikam.mail.protection.outlook.test[")
    log = open(os.path.join(doc["lab_dir"], "run", "postfix.log")).read()
    line = next(ln for ln in log.splitlines() if "to=<carol@fabrikam.example>" in ln)
    assert "postfix/conn0/smtp" in line and "status=sent (250 2.6.0" in line
    assert "Queued mail for delivery" in line
    # Postfix presented the connector's certificate, which EOP saw.
    assert lost["dropped_by"]["certificate"]["subject"] == "gw.contoso.example"
    assert lost["dropped_by"]["client_ip"] == "198.51.100.10"


def test_docker_fixed_agrees_with_local_engine(docker_ready, local_results, tmp_path):
    code, doc = labgen_json("up", "fixed", "--engine", "docker", cwd=tmp_path, timeout=600)
    try:
        assert code == 0, doc
        assert {k: m["outcome"] for k, m in by_id(doc).items()} == local_results["fixed"]
        assert set(local_results["fixed"].values()) == {"delivered"}
    finally:
        labgen("down", "fixed", cwd=tmp_path)
    assert labelled("fixed") == {"containers": [], "networks": [], "volumes": []}


def test_two_egress_ips_for_two_connectors(docker_ready, tmp_path):
    """dedicated-egress-ip: the Internet connector binds its own address, which Postfix uses."""
    from conftest import EXAMPLES
    code, doc = labgen_json("up", EXAMPLES / "dedicated-egress-ip.yaml", "--engine", "docker", cwd=tmp_path,
                            timeout=600)
    try:
        assert code == 0, doc
        fab = {m["id"]: m for m in doc["messages"]}["to-fabrikam"]
        eop = [h for h in fab["hops"] if h["service"] == "eop" and h["event"] == "rcpt"][-1]
        assert eop["client_ip"] == "192.0.2.11" and fab["outcome"] == "delivered"
        inbound = {m["id"]: m for m in doc["messages"]}["from-internet"]
        eop_in = [h for h in inbound["hops"] if h["service"] == "eop" and h["event"] == "rcpt"][-1]
        # From the primary address; an internet sender's domain is no tenant's, so by recipient.
        assert eop_in["client_ip"] == "192.0.2.10" and eop_in["attribution"]["by"] == "recipient"
    finally:
        labgen("down", "dedicated-ip", cwd=tmp_path)


def test_postfix_bounce_reaches_the_sender_as_an_ndr(docker_ready, tmp_path):
    """A stricter EOP rejects with 550 5.7.64; Postfix bounces and its NDR lands in alice's mailbox."""
    from conftest import EXAMPLES
    code, doc = labgen_json("up", EXAMPLES / "strict-eop-reject.yaml", "--engine", "docker", cwd=tmp_path,
                            timeout=600)
    try:
        assert code == 0, doc
        m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
        bounced = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "bounced"][-1]
        assert bounced["reply"] == "550 5.7.64 TenantAttribution; Relay Access Denied"
        assert m["outcome"] == "rejected" and m["ndr"]["mailbox"] == "alice@contoso.example"
    finally:
        labgen("down", "strict-eop", cwd=tmp_path)


def test_postfix_deferrals_are_read_from_its_log(docker_ready, tmp_path):
    """451 from a Partner connector that requires TLS: Postfix defers and retries; the verdict
    reads status=deferred lines with EOP's reply."""
    from conftest import EXAMPLES
    code, doc = labgen_json("up", EXAMPLES / "partner-requires-tls.yaml", "--engine", "docker", cwd=tmp_path,
                            timeout=600)
    try:
        assert code == 0, doc
        m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
        deferred = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "deferred"]
        assert m["outcome"] == "deferred" and deferred
        assert deferred[-1]["reply"] == "451 5.7.3 STARTTLS is required to send mail"
        assert "tls" not in deferred[-1]  # the connector sent in the clear
    finally:
        labgen("down", "partner-tls", cwd=tmp_path)


def test_lab_is_isolated_structurally(docker_broken):
    """No route beyond the lab: internal network, no default route, DNS answers lab names only.
    Nothing is sent to an outside address."""
    net = json.loads(subprocess.run(["docker", "network", "inspect", "labgen-broken-net"], capture_output=True,
                                    text=True, check=True).stdout)[0]
    assert net["Internal"] is True
    assert [c["Subnet"] for c in net["IPAM"]["Config"]] == ["198.51.100.0/24"]
    for svc in ("dns", "eop", "sink", "gateway", "traffic"):
        routes = dexec(f"labgen-broken-{svc}", "ip", "-4", "route", "show").stdout.strip().splitlines()
        assert routes and all(r.startswith("198.51.100.0/24 ") for r in routes), (svc, routes)
    q = dexec("labgen-broken-traffic", "dig", "+norecurse", "+time=2", "+tries=1", "example.com", "A")
    assert "status: NXDOMAIN" in q.stdout
    q = dexec("labgen-broken-traffic", "dig", "+short", "fabrikam.example", "MX")
    assert q.stdout.strip() == "10 fabrikam.mail.protection.outlook.test."
    resolv = dexec("labgen-broken-gateway", "cat", "/etc/resolv.conf").stdout
    assert "nameserver 198.51.100.53" in resolv and resolv.count("nameserver") == 1


def test_status_and_logs(docker_broken):
    doc, wd = docker_broken
    code, st = labgen_json("status", "broken", cwd=wd)
    assert code == 0
    rows = {r["service"]: r for r in st["containers"]}
    assert set(rows) == {"dns", "eop", "sink", "gateway", "traffic"}
    assert rows["gateway"]["addresses"] == ["198.51.100.10"] and rows["gateway"]["state"] == "running"
    p = labgen("logs", "gateway", "--lab", "broken", cwd=wd)
    assert p.returncode == 0 and "status=sent" in p.stdout


def test_swaks_inside_the_lab_against_eop(docker_broken):
    """swaks from the traffic container, presenting the gateway's certificate, over the lab network."""
    p = dexec("labgen-broken-traffic", "swaks", "--server", "contoso.mail.protection.outlook.test",
              "--from", "alice@contoso.example", "--to", "bob@contoso.example", "--tls",
              "--tls-cert", "/lab/certs/gw-selfsigned.chain.pem", "--tls-key", "/lab/certs/gw-selfsigned.key",
              "--header", "X-Labgen-Id: swaks-docker")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Microsoft ESMTP MAIL Service ready" in p.stdout and "250 2.6.0" in p.stdout
    doc, _ = docker_broken
    events = [json.loads(x) for x in open(os.path.join(doc["lab_dir"], "run", "eop.jsonl"))]
    rcpt = [e for e in events if e["event"] == "rcpt" and e["client_ip"] == "198.51.100.100"][-1]
    assert rcpt["attribution"]["by"] == "certificate" and rcpt["attribution"]["tenant"] == "contoso"


def test_rendered_project_runs_by_hand(docker_ready, tmp_path):
    """The same project, started with the machine's compose command, gives the same verdict."""
    from labgen.engines.docker import compose_command
    labgen("down", "broken", cwd=tmp_path)  # the module's lab of the same name
    out = tmp_path / "by-hand"
    p = labgen("render", "broken", "-o", out, "--subnet", "198.18.10.0/24", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cmd = [*compose_command(), "-p", "labgen-broken", "up", "-d"]
    try:
        up = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        result = out / "run" / "result.json"
        deadline = time.monotonic() + 120
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        doc = json.loads(result.read_text())
        assert {k: m["outcome"] for k, m in by_id(doc).items()} == {
            ("to-fabrikam", "carol@fabrikam.example"): "silently_discarded",
            ("to-internet", "dave@northwind.example"): "delivered",
            ("from-internet", "bob@contoso.example"): "delivered",
            ("internal-routing", "bob@contoso.mail.onmicrosoft.test"): "delivered"}
        assert "status=sent (250 2.6.0" in (out / "run" / "postfix.log").read_text()
        logs = subprocess.run(["docker", "logs", "labgen-broken-traffic"], capture_output=True, text=True)
        assert "SILENT LOSS: to-fabrikam" in logs.stdout
    finally:
        subprocess.run([*compose_command(), "-p", "labgen-broken", "down"], cwd=out, capture_output=True, timeout=120)
    assert labelled("broken") == {"containers": [], "networks": [], "volumes": []}


def test_down_leaves_nothing(docker_ready, tmp_path):
    code, _ = labgen_json("up", "broken", "--engine", "docker", cwd=tmp_path, timeout=600)
    assert code == 0
    assert labelled("broken")["containers"]
    p = labgen("down", "broken", cwd=tmp_path)
    assert p.returncode == 0
    assert labelled("broken") == {"containers": [], "networks": [], "volumes": []}


def test_ctrl_c_during_up_leaves_nothing(docker_ready, tmp_path):
    labgen("down", "--all", cwd=tmp_path)  # so that the containers seen below are this run's
    proc = subprocess.Popen([sys.executable, "-m", "labgen.cli", "up", "broken", "--engine", "docker"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not labelled("broken")["containers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert labelled("broken")["containers"], "the lab never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert labelled("broken") == {"containers": [], "networks": [], "volumes": []}


def test_subnet_taken_exits_3_naming_the_network(docker_ready, tmp_path):
    name = "labgen-test-squatter"
    subprocess.run(["docker", "network", "create", "--internal", "--subnet", "198.18.20.0/24",
                    "--label", "io.labgen.lab=test-squatter", name], check=True, capture_output=True)
    try:
        p = labgen("up", "broken", "--engine", "docker", "--subnet", "198.18.20.0/24", cwd=tmp_path)
        assert p.returncode == 3
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "--subnet" in lines[0]
        assert labelled("broken")["containers"] == []
    finally:
        subprocess.run(["docker", "network", "rm", name], capture_output=True)
