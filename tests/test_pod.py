"""The pod topology (issue #11): a lab as a Kubernetes pod runs it, proven on Docker. Two
containers share one network namespace that has loopback only: `lab` serves DNS, EOP and the
sinks and sends the traffic in one process, `gateway` is real Postfix; every address is the local
engine's 127.x mapping of the scenario's. The seed's verdicts must come out of it unchanged.

The render checks need no Docker; the rest run real labs (their own names, removed by name)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml
from conftest import by_id, labgen, labgen_json
from test_e2e_docker import EMPTY, compose_command, dexec, labelled, swaks_as_gateway

from labgen.engines import named
from labgen.engines.compose import compose_data, render_project
from labgen.engines.postfix import check_master_cf
from labgen.errors import InfraError
from labgen.model.plan import make_plan
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab

SEED = {
    ("to-fabrikam", "carol@fabrikam.example"): "silently_discarded",
    ("to-internet", "dave@northwind.example"): "delivered",
    ("from-internet", "bob@contoso.example"): "delivered",
    ("internal-routing", "bob@contoso.mail.onmicrosoft.test"): "delivered",
}


def outcomes(doc: dict) -> dict:
    return {k: m["outcome"] for k, m in by_id(doc).items()}


# ---------------------------------------------------------------- the rendered pod, no Docker


@pytest.fixture(scope="module")
def pod_render(tmp_path_factory):
    engine = named("docker", topology="pod")
    s = load_scenario("broken")
    plan, labdir = prepare_lab(s, engine, tmp_path_factory.mktemp("pod"), plan=make_plan(s, engine))
    render_project(plan, labdir, "labgen-lab:test")
    return plan, labdir


def test_the_pod_container_has_one_name():
    from labgen.engines import labels
    from labgen.lab import entrypoints

    assert entrypoints.POD_SERVICE == labels.POD_SERVICE == "lab"


def test_pod_plan_is_on_loopback(pod_render):
    plan, _ = pod_render
    assert plan.topology == "pod" and plan.smtp_port == 25 and plan.dns_port == 53
    assert plan.ip("gateway") == "127.51.100.10" and plan.ip("eop") == "127.51.100.25"
    assert all(ip.startswith("127.") for ips in plan.hosts.values() for ip in ips)


def test_pod_compose_is_two_containers_in_one_namespace(pod_render):
    plan, labdir = pod_render
    data = yaml.safe_load((labdir / "compose.yaml").read_text())
    assert data == compose_data(plan, "labgen-lab:test")
    assert "networks" not in data and sorted(data["services"]) == ["gateway", "lab"]
    lab, gw = data["services"]["lab"], data["services"]["gateway"]
    assert lab["network_mode"] == "none" and gw["network_mode"] == "service:lab"
    assert "cap_add" not in lab and "cap_add" not in gw  # loopback needs no NET_ADMIN
    assert lab["command"][-1] == "lab" and gw["command"][-1] == "gateway"
    assert lab["hostname"] == plan.scenario.gateway.hostname and "hostname" not in gw


def test_pod_postfix_listens_on_its_own_loopback_address(pod_render):
    _, labdir = pod_render
    main_cf = (labdir / "gateway" / "postfix" / "main.cf").read_text().splitlines()
    master_cf = (labdir / "gateway" / "postfix" / "master.cf").read_text().splitlines()
    assert "inet_interfaces = loopback-only" in main_cf
    assert "mynetworks = 127.0.0.1/32" in main_cf  # not 127.0.0.0/8: every lab host is on loopback
    assert any(line.startswith("127.51.100.10:smtp      inet ") for line in master_cf)


@pytest.mark.parametrize(
    "prefix",
    ["198.51.100.10:", "127.0.0.999:", "0.0.0.0:", "127.1.2.3:smtp inet n - n - - smtpd\nx"],
)
def test_master_cf_check_admits_only_a_loopback_listening_address(pod_render, prefix):
    from labgen.resources import resource_dir

    _, labdir = pod_render
    text = (labdir / "gateway" / "postfix" / "master.cf").read_text()
    bad = text.replace("127.51.100.10:smtp", prefix + "smtp", 1)
    with pytest.raises(InfraError):
        check_master_cf(bad, (resource_dir("templates") / "postfix" / "master.cf.j2").read_text())


def test_pod_refuses_what_needs_a_network(tmp_path):
    """An image gateway or a user's Postfix directory: bad input naming the field, exit 2."""
    src = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "labgen", "scenarios", "broken.yaml")))
    for field, value, says in (
        ("image", {"ref": "example/mta:1"}, "gateway.image: a pod lab"),
        ("postfix_config", "postfix", "gateway.postfix_config: your Postfix configuration runs in the network"),
    ):
        data = dict(src, name="podbad")
        data["gateway"] = {**src["gateway"], field: value}
        (tmp_path / "postfix").mkdir(exist_ok=True)
        (tmp_path / "postfix" / "main.cf").write_text("myhostname = x\n")
        (tmp_path / "postfix" / "master.cf").write_text("smtp inet n - n - - smtpd\n")
        path = tmp_path / f"{field}.yaml"
        path.write_text(yaml.safe_dump(data))
        p = labgen("render", path, "--topology", "pod", "-o", tmp_path / field, cwd=tmp_path)
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


# ---------------------------------------------------------------- real pods on Docker


def up_pod(lab, cwd) -> tuple[int, dict]:
    return labgen_json("up", lab.scenario, "--engine", "docker", "--topology", "pod", cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def pod_broken(test_labs, tmp_path_factory):
    lab = test_labs.new("broken", "pod")
    wd = tmp_path_factory.mktemp("pod-broken")
    code, doc = up_pod(lab, wd)
    assert code == 0, doc
    yield doc, wd, lab
    labgen("down", lab.name, cwd=wd)


@pytest.mark.docker
def test_pod_gives_the_seeds_verdicts(pod_broken):
    doc, _, _ = pod_broken
    assert doc["engine"] == "docker" and doc["topology"] == "pod"
    assert outcomes(doc) == SEED
    lost = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    # Real Postfix sent it with the Internet connector's certificate from its own loopback address.
    assert lost["dropped_by"]["certificate"]["subject"] == "gw.contoso.example"
    assert lost["dropped_by"]["client_ip"] == "127.51.100.10"
    log = open(os.path.join(doc["lab_dir"], "run", "postfix.log")).read()
    line = next(ln for ln in log.splitlines() if "to=<carol@fabrikam.example>" in ln)
    assert "/smtp[" in line and "status=sent (250 2.6.0" in line


@pytest.mark.docker
def test_pod_is_one_namespace_with_loopback_only(pod_broken):
    _, _, lab = pod_broken
    ctr = {
        svc: json.loads(subprocess.check_output(["docker", "inspect", f"labgen-{lab.name}-{svc}"]))[0]
        for svc in ("lab", "gateway")
    }
    assert ctr["lab"]["HostConfig"]["NetworkMode"] == "none"
    assert ctr["gateway"]["HostConfig"]["NetworkMode"] == f"container:{ctr['lab']['Id']}"
    assert labelled(lab.name)["networks"] == []
    links = dexec(f"labgen-{lab.name}-gateway", "ip", "-o", "link", "show").stdout.split("\n")
    assert [ln.split(":")[1].strip() for ln in links if ln] == ["lo"]
    assert dexec(f"labgen-{lab.name}-lab", "ip", "-4", "route", "show").stdout.strip() == ""
    q = dexec(f"labgen-{lab.name}-lab", "dig", "+short", "fabrikam.example", "MX")
    assert q.stdout.strip() == "10 fabrikam-example.mail.protection.outlook.test."


@pytest.mark.docker
def test_swaks_inside_the_pod_against_eop(pod_broken):
    doc, _, lab = pod_broken
    p = swaks_as_gateway(f"labgen-{lab.name}-lab")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Microsoft ESMTP MAIL Service ready" in p.stdout and "250 2.6.0" in p.stdout


@pytest.mark.docker
def test_pod_fixed_delivers_everything(test_labs, tmp_path):
    lab = test_labs.new("fixed", "podfix")
    try:
        code, doc = up_pod(lab, tmp_path)
        assert code == 0, doc
        assert set(outcomes(doc)) == set(SEED) and set(outcomes(doc).values()) == {"delivered"}
    finally:
        labgen("down", lab.name, cwd=tmp_path)
    assert labelled(lab.name) == EMPTY


@pytest.mark.docker
def test_rendered_pod_runs_by_hand(test_labs, tmp_path):
    """The pod project started with the machine's compose command gives the seed's verdicts."""
    lab = test_labs.new("broken", "podhand")
    out = tmp_path / "by-hand"
    p = labgen("render", lab.scenario, "--topology", "pod", "-o", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    try:
        up_ = subprocess.run(
            [*compose_command(), "-p", f"labgen-{lab.name}", "up", "-d"],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up_.returncode == 0, up_.stderr
        result = out / "run" / "result.json"
        deadline = time.monotonic() + 120  # a bound on a wait, not a verdict: the verdict is the file's
        while not result.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert outcomes(json.loads(result.read_text())) == SEED
    finally:
        subprocess.run(
            [*compose_command(), "-p", f"labgen-{lab.name}", "down"], cwd=out, capture_output=True, timeout=120
        )
    assert labelled(lab.name) == EMPTY


@pytest.mark.docker
def test_pod_status_and_logs(pod_broken):
    _, wd, lab = pod_broken
    code, st = labgen_json("status", lab.name, cwd=wd)
    assert code == 0
    assert {r["service"]: r["state"] for r in st["containers"]} == {"lab": "running", "gateway": "running"}
    p = labgen("logs", "gateway", "--lab", lab.name, cwd=wd)
    assert p.returncode == 0 and "status=sent" in p.stdout
    p = labgen("logs", "eop", "--lab", lab.name, cwd=wd)  # served by the lab container
    assert p.returncode == 0 and '"event": "rcpt"' in p.stdout.replace('"event":"rcpt"', '"event": "rcpt"')
