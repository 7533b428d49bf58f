"""The rendered Kubernetes seat, run on Docker as a kubelet would run it (issue #11: "prove that
topology with real containers here"). No cluster is at hand, so this test plays the kubelet's
part for the one Deployment of a seat, from the manifests alone:

- the projected volume: every ConfigMap and Secret item written at its path with its mode;
- the pod's network namespace: a sandbox container with loopback only (network none), which
  the init containers and the containers join (`container:` network mode), as a pod's do;
- the pod's resolv.conf from dnsConfig, bind-mounted over /etc/resolv.conf in every container;
- the emptyDir at /lab: a fresh directory;
- the init containers in order, each to exit 0, then the containers with the manifest's
  image, command and volume mounts, and their readiness probes run by exec.

The seat must then give the seed's verdicts. What the test cannot show, and docs/kubernetes.md
says: a real cluster's NetworkPolicy enforcement and its kubelet."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEST_LAB_PREFIX, by_id

from labgen.engines import kubernetes as k8s

pytestmark = pytest.mark.docker

SEED = {
    ("to-fabrikam", "carol@fabrikam.example"): "silently_discarded",
    ("to-internet", "dave@northwind.example"): "delivered",
    ("from-internet", "bob@contoso.example"): "delivered",
    ("internal-routing", "bob@contoso.mail.onmicrosoft.test"): "delivered",
}


def _doc(out: Path, seat: str, kind: str) -> dict[str, Any]:
    return yaml.safe_load((out / seat / f"{kind}.yaml").read_text())


def project(volume: dict[str, Any], config_map: dict[str, Any], secret: dict[str, Any], into: Path) -> None:
    """The kubelet's projected volume: each source's items at their paths, with their modes."""
    default = volume["projected"].get("defaultMode", 0o644)
    for source in volume["projected"]["sources"]:
        if "configMap" in source:
            assert source["configMap"]["name"] == config_map["metadata"]["name"]
            data = {k: v.encode() for k, v in config_map.get("data", {}).items()}
            data |= {k: base64.b64decode(v) for k, v in config_map.get("binaryData", {}).items()}
            items = source["configMap"]["items"]
        else:
            assert source["secret"]["name"] == secret["metadata"]["name"]
            data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            items = source["secret"]["items"]
        for item in items:
            path = into / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(item.get("mode", default))


def test_rendered_seat_runs_as_a_pod_on_docker_with_the_seeds_verdicts(docker_ready, tmp_path):
    import docker.errors

    from labgen.engines.dockerapi import client

    name = f"{TEST_LAB_PREFIX}-k8s-{secrets.token_hex(3)}"
    done = k8s.render_workshop("broken", 1, name, tmp_path / "out", image=docker_ready)
    out = done.out
    deployment, cm, secret = (_doc(out, "s01", k) for k in ("deployment", "configmap", "secret"))
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {"seed": tmp_path / "seed", "lab": tmp_path / "lab"}
    project(volumes["seed"], cm, secret, host["seed"])
    assert "emptyDir" in volumes["lab"]
    host["lab"].mkdir()
    resolv = tmp_path / "resolv.conf"
    opts = " ".join(f"{o['name']}:{o['value']}" for o in spec["dnsConfig"]["options"])
    resolv.write_text("".join(f"nameserver {ns}\n" for ns in spec["dnsConfig"]["nameservers"]) + f"options {opts}\n")
    assert spec["dnsPolicy"] == "None"

    c = client()
    label = {"io.labgen.test": name}

    def binds(container: dict[str, Any]) -> list[str]:
        mounts = [f"{resolv}:/etc/resolv.conf:ro"]
        for m in container.get("volumeMounts", []):
            mounts.append(f"{host[m['name']]}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}")
        return mounts

    try:
        sandbox = c.containers.run(
            docker_ready,
            ["sleep", "infinity"],
            name=f"{name}-pod",
            hostname=spec["hostname"],
            network_mode="none",
            labels=label,
            detach=True,
        )
        joined = f"container:{sandbox.id}"

        def start(container: dict[str, Any], **extra: Any) -> Any:
            """One of the pod's containers as the manifest says it, in the pod's namespace."""
            return c.containers.run(
                container["image"],
                container["command"],
                name=f"{name}-{container['name']}",
                network_mode=joined,
                volumes=binds(container),
                labels=label,
                detach=True,
                **extra,
            )

        for init in spec["initContainers"]:
            ctr = start(init)
            assert ctr.wait(timeout=120)["StatusCode"] == 0, ctr.logs().decode()
        running = {}
        for spec_c in spec["containers"]:
            assert "securityContext" not in spec_c  # no capability: the run below adds none either
            running[spec_c["name"]] = start(spec_c, init=True)
        result = host["lab"] / "run" / "result.json"
        deadline = time.monotonic() + 180  # bounds the wait; the verdict is the file's, not the clock's
        while not result.exists() and time.monotonic() < deadline:
            for ctr in running.values():
                ctr.reload()
                assert ctr.status == "running", ctr.logs(tail=20).decode()
            time.sleep(0.5)
        doc = json.loads(result.read_text())
        assert doc["topology"] == "pod"
        assert {k: m["outcome"] for k, m in by_id(doc).items()} == SEED
        lost = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
        assert lost["dropped_by"]["certificate"]["subject"] == "gw.contoso.example"
        assert "status=sent (250 2.6.0" in (host["lab"] / "run" / "postfix.log").read_text()
        for spec_c in spec["containers"]:  # the readiness probes, as the kubelet runs them
            code, output = running[spec_c["name"]].exec_run(spec_c["readinessProbe"]["exec"]["command"])
            assert code == 0, (spec_c["name"], output)
    finally:
        for ctr in c.containers.list(all=True, filters={"label": f"io.labgen.test={name}"}):
            try:
                ctr.remove(force=True)
            except docker.errors.NotFound:
                pass
