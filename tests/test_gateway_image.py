"""The gateway as the user's own image (gateway.image, docs/gateway-image.md), with a gateway that
is not Postfix: Exim from Debian, built offline (tests/exim_gateway.py) and configured by hand for
the seed scenarios (tests/gateways/exim/). The seed's verdicts must come out the same as with
labgen's Postfix, resting on what EOP and the sinks recorded, and EOP must have seen the very
certificate Exim presented.

The input checks run everywhere; the labs need Docker and fail (never skip) in CI without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, by_id, labgen, labgen_json
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from labgen.wait import poll

EXIM = REPO / "tests" / "gateways" / "exim"


def scenario_copy(tmp: Path, name: str = "broken", **image) -> Path:
    """tests/gateways/exim/<name>.yaml with its configuration directory beside it, gateway.image
    updated with `image`."""
    data = yaml.safe_load((EXIM / f"{name}.yaml").read_text())
    data["gateway"]["image"].update(image)
    shutil.copytree(EXIM / name, tmp / name, dirs_exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


# ---------------------------------------------------------------- input: anywhere


@pytest.mark.parametrize(
    "ref", ["Upper/Case:1", "a:b:c", "x;rm -rf /", "-leading", "a___b", "x@sha256:short", "a" * 300, ""]
)
def test_an_image_ref_outside_dockers_grammar_is_refused(tmp_path, ref):
    path = scenario_copy(tmp_path, ref=ref)
    line = one_line_error(labgen("validate", path, cwd=tmp_path))
    assert "gateway.image.ref" in line and str(path.name) in line


@pytest.mark.parametrize(
    "ref", ["myorg/exim-gw:1", "localhost:5000/gw/exim:4.98", "registry.example.com/x/y@sha256:" + "ab" * 32]
)
def test_image_refs_in_dockers_grammar_validate(tmp_path, ref):
    p = labgen("validate", scenario_copy(tmp_path, ref=ref), cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_a_config_directory_that_escapes_through_a_symlink_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "exim4.conf").write_text("# not the scenario's\n")
    inner = tmp_path / "scenario"
    inner.mkdir()
    (inner / "cfg").symlink_to(outside)
    path = scenario_copy(inner, config="cfg")
    line = one_line_error(labgen("validate", path, cwd=tmp_path))
    assert "gateway.image.config" in line and "outside" in line


@pytest.mark.parametrize(
    ("config", "why"),
    [("../x", "inside"), ("/etc", "relative"), ("missing", "no such directory"), ("broken/exim4.conf", "directory")],
)
def test_a_config_that_is_no_directory_inside_the_scenarios_is_refused(tmp_path, config, why):
    line = one_line_error(labgen("validate", scenario_copy(tmp_path, config=config), cwd=tmp_path))
    assert "gateway.image.config" in line and why in line


@pytest.mark.parametrize("mount", ["/lab/certs", "/etc/resolv.conf", "/", "relative/path", "/a/../etc", "/lab"])
def test_a_config_mount_over_labgens_own_paths_is_refused(tmp_path, mount):
    line = one_line_error(labgen("validate", scenario_copy(tmp_path, config_mount=mount), cwd=tmp_path))
    assert "gateway.image.config_mount" in line


def test_the_local_engine_refuses_an_image_gateway_naming_the_file_and_what_to_do(tmp_path):
    path = scenario_copy(tmp_path)
    line = one_line_error(labgen("up", path, "--engine", "local", cwd=tmp_path))
    assert path.name in line and "gateway.image" in line and "--engine docker" in line
    assert not (tmp_path / "labgen-exim-broken").exists()  # refused before anything was created


def test_the_rendered_gateway_is_the_image_under_the_contract(tmp_path):
    path = scenario_copy(tmp_path, ref="myorg/exim-gw:1", config_mount="/etc/exim-lab")
    out = tmp_path / "project"
    p = labgen("render", path, "-o", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    gw = yaml.safe_load((out / "compose.yaml").read_text())["services"]["gateway"]
    assert gw["image"] == "myorg/exim-gw:1" and gw["hostname"] == "gw.contoso.example"
    # The image's own entry point and user, no capabilities: nothing of labgen's service block.
    assert not {"command", "entrypoint", "cap_add", "init", "healthcheck"} & set(gw)
    assert gw["labels"] == {"io.labgen.lab": "exim-broken", "io.labgen.service": "gateway"}
    vols = gw["volumes"]
    assert "./resolv.conf:/etc/resolv.conf:ro" in vols
    for f in ("ca-root.crt", "gw-selfsigned.chain.pem", "gw-selfsigned.key", "gateway-server.chain.pem"):
        assert f"./certs/{f}:/lab/certs/{f}:ro" in vols
    assert f"{(tmp_path / 'broken').resolve()}:/etc/exim-lab:ro" in vols
    assert not any("ca-root.key" in v or "ca-intermediate.key" in v for v in vols)  # never the CA's keys
    assert not (out / "gateway" / "postfix").exists()


# ---------------------------------------------------------------- the Exim gateway, in Docker


@pytest.fixture(scope="session")
def exim_image(docker_ready):
    """The Exim gateway image, built once per content (its tag is a hash of what goes into it)."""
    from exim_gateway import ensure_exim_image

    return ensure_exim_image()


def fingerprint(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex(":").upper()


@pytest.fixture(scope="module")
def exim_labs(test_labs, exim_image, tmp_path_factory):
    """broken and fixed with Exim as the gateway, each on its own subnet; the broken one with an
    extra egress address on its Internet connector, which labgen adds from outside."""
    out = {}
    for name in ("broken", "fixed", "strict"):
        seed = "broken" if name == "strict" else name
        lab = test_labs.new(str(EXIM / f"{seed}.yaml"), f"exim-{name}")
        data = yaml.safe_load(lab.scenario.read_text())
        data["gateway"]["image"]["ref"] = exim_image
        if name == "broken":
            data["gateway"]["connectors"][0]["source_ip"] = "198.51.100.11"
        if name == "strict":  # EOP refuses the misattributed recipient at RCPT (550 5.7.64)
            data["eop"]["misattribution"] = "reject"
            data["traffic"][0]["expect"] = "rejected"
        lab.scenario.write_text(yaml.safe_dump(data, sort_keys=False))
        shutil.copytree(EXIM / seed, lab.scenario.parent / seed, dirs_exist_ok=True)
        wd = tmp_path_factory.mktemp(f"exim-{name}")
        code, doc = labgen_json("up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, cwd=wd, timeout=600)
        out[name] = (code, doc, wd, lab)
    yield out
    for _, _, wd, lab in out.values():
        labgen("down", lab.name, cwd=wd)


SEED = {
    "broken": {
        ("to-fabrikam", "carol@fabrikam.example"): "silently_discarded",
        ("to-internet", "dave@northwind.example"): "delivered",
        ("from-internet", "bob@contoso.example"): "delivered",
        ("internal-routing", "bob@contoso.mail.onmicrosoft.test"): "delivered",
    },
}
SEED["fixed"] = {**SEED["broken"], ("to-fabrikam", "carol@fabrikam.example"): "delivered"}
SEED["strict"] = {**SEED["broken"], ("to-fabrikam", "carol@fabrikam.example"): "rejected"}


@pytest.mark.docker
@pytest.mark.parametrize("name", ["broken", "fixed", "strict"])
def test_exim_reproduces_the_seeds_verdict(exim_labs, name):
    code, doc, _, _ = exim_labs[name]
    assert code == 0, doc
    assert doc["engine"] == "docker"
    assert {k: m["outcome"] for k, m in by_id(doc).items()} == SEED[name]
    assert doc["summary"]["unaccounted"] == 0 and doc["summary"]["expectations_failed"] == 0
    for m in doc["messages"]:  # every message went through the gateway, whose log labgen did not read
        assert "its own log was not read" in m["why"], m["why"]
        assert not any(h["service"] == "gateway" for h in m["hops"])


def eop_certificates(doc: dict, msgid: str) -> list[dict]:
    (m,) = [m for m in doc["messages"] if m["id"] == msgid]
    return [h["certificate"] for h in m["hops"] if h["service"] == "eop" and h.get("certificate")]


@pytest.mark.docker
@pytest.mark.parametrize("name", ["broken", "fixed"])
def test_eop_saw_the_certificate_exim_presented(exim_labs, name):
    _, doc, wd, lab = exim_labs[name]
    certs = wd / f"labgen-{lab.name}" / "certs"
    selfsigned = fingerprint(certs / "gw-selfsigned.crt")
    internet = selfsigned if name == "broken" else fingerprint(certs / "gw-public.crt")
    # The Internet route: mail to fabrikam reaches fabrikam's MX, EOP, with that route's certificate.
    seen = eop_certificates(doc, "to-fabrikam")
    assert seen and {c["fingerprint_sha256"] for c in seen} == {internet}
    assert seen[0]["subject"] == ("gw.contoso.example" if name == "broken" else "mta.contoso.example")
    assert seen[0]["self_signed"] is (name == "broken")
    # The Office 365 route presents the self-signed certificate in both.
    for msgid in ("from-internet", "internal-routing"):
        assert {c["fingerprint_sha256"] for c in eop_certificates(doc, msgid)} == {selfsigned}
    (lost,) = [m for m in doc["messages"] if m["id"] == "to-fabrikam"]
    if name == "broken":
        assert lost["dropped_by"]["certificate"]["fingerprint_sha256"] == selfsigned
        assert lost["attribution"]["tenant"] == "contoso" and lost["attribution"]["by"] == "certificate"
        assert "EOP answered the gateway 250 and discarded it" in lost["why"]
    else:
        assert lost["attribution"]["tenant"] == "fabrikam"


def dexec(container: str, *cmd: str) -> str:
    p = subprocess.run(["docker", "exec", container, *cmd], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.docker
def test_the_gateway_container_is_the_image_under_labgens_contract(exim_labs, exim_image):
    import docker

    _, _, _, lab = exim_labs["broken"]
    name = f"labgen-{lab.name}-gateway"
    ctr = docker.from_env().containers.get(name)
    cfg, host = ctr.attrs["Config"], ctr.attrs["HostConfig"]
    assert exim_image in ctr.image.tags
    assert cfg["Cmd"] == ["/usr/local/sbin/exim-gateway-start"]  # its own, not replaced
    assert not host.get("CapAdd") and cfg["Hostname"] == "gw.contoso.example"
    assert cfg["Labels"]["io.labgen.service"] == "gateway" and cfg["Labels"]["io.labgen.lab"] == lab.name
    # Done from outside: the extra egress address is on its interface, Docker's default route gone.
    assert lab.ip("198.51.100.11") in dexec(name, "cat", "/proc/net/fib_trie")
    routes = [line.split() for line in dexec(name, "cat", "/proc/net/route").splitlines()[1:]]
    assert routes and not [r for r in routes if r[1] == "00000000"]
    assert f"nameserver {lab.ip('198.51.100.53')}" in dexec(name, "cat", "/etc/resolv.conf")
    # No helper left behind, and the gateway is still running.
    assert ctr.status == "running"
    helpers = docker.from_env().containers.list(all=True, filters={"name": f"labgen-{lab.name}-gateway-net"})
    assert not helpers
    # Exim (not Postfix) did the relaying, and logged the certificates it presented.
    log = dexec(name, "cat", "/var/log/exim4/mainlog")
    assert "T=internet_smtp" in log and "T=office365_smtp" in log


@pytest.mark.docker
def test_a_refusal_at_rcpt_is_tied_to_its_message_by_the_envid_exim_passed_on(exim_labs):
    """No header exists at RCPT: EOP knows the message by the DSN ENVID, which Exim relayed."""
    _, doc, wd, lab = exim_labs["strict"]
    (m,) = [m for m in doc["messages"] if m["id"] == "to-fabrikam"]
    assert m["outcome"] == "rejected"
    (rcpt,) = [h for h in m["hops"] if h["service"] == "eop" and h["event"] == "rcpt"]
    assert rcpt["action"] == "reject" and rcpt["reply"].startswith("550 5.7.64")
    assert m["why"].startswith("eop rejected it: 550 5.7.64") and "its own log was not read" in m["why"]
    # Exim bounced it: the sender's NDR goes through EOP into her mailbox (the verdict did not wait
    # for it: labgen follows the NDRs of its own gateway only).
    box = wd / f"labgen-{lab.name}" / "run" / "mailboxes" / "alice@contoso.example"
    poll(lambda: any(box.glob("*.eml")), waiting_for="Exim's NDR in alice's mailbox", timeout=20, interval=0.2)
