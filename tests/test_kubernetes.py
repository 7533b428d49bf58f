"""`labgen workshop render --kubernetes` (issue #11, "Beyond one host"): no cluster, no Docker.
Three seats of `broken` are rendered once; every document is validated offline against
Kubernetes 1.30's schemas (kubernetes_validate, strict), then checked table by table: a namespace
per seat, a NetworkPolicy that denies both directions, the pod's resolver the seat's lab DNS,
the ConfigMap and Secret items giving back every file the containers read (keys only in the
Secret), the kustomization listing exactly the manifests written; bad input is one line, exit 2."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from click.testing import CliRunner

from labgen.cli import main
from labgen.engines import kubernetes as k8s
from labgen.engines.compose import entry_command, health_probe
from labgen.errors import InputError
from labgen.model.plan import Plan

K8S_VERSION = "1.30"
SEATS = ["s01", "s02", "s03"]
WORKSHOP = "class"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, k8s.Rendered]:
    base = tmp_path_factory.mktemp("k8s")
    out, labs = base / "out", base / "labs"
    done = k8s.render_workshop("broken", len(SEATS), WORKSHOP, out, labs=labs)
    return out, labs, done


def load(path: Path) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1, path
    return docs[0]


def resources(out: Path) -> list[str]:
    return load(out / k8s.KUSTOMIZATION)["resources"]


def seat_doc(out: Path, seat: str, kind: str) -> dict[str, Any]:
    return load(out / seat / f"{kind}.yaml")


def pod_spec(out: Path, seat: str) -> dict[str, Any]:
    return seat_doc(out, seat, "deployment")["spec"]["template"]["spec"]


# ---------------------------------------------------------------- every document, against the API's schemas


def test_every_document_is_valid_kubernetes(rendered):
    out, _, _ = rendered
    names = resources(out)
    assert len(names) == len(SEATS) * len(k8s.SEAT_FILES)
    for name in names:
        doc = load(out / name)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")


def test_the_validator_is_strict_enough_to_catch_a_slip(rendered):
    """The check above would catch a misspelt field or a wrong type (it is no formality)."""
    out, _, _ = rendered
    dep = seat_doc(out, "s01", "deployment")
    for breaks in (
        lambda d: d["spec"]["template"]["spec"].update(dnsPolicy_="None"),
        lambda d: d["spec"].update(replicas="1"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
    ):
        bad = copy.deepcopy(dep)
        breaks(bad)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_exactly_the_manifests_written(rendered):
    out, _, done = rendered
    kust = load(out / k8s.KUSTOMIZATION)
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kust["kind"] == "Kustomization"
    assert set(kust) == {"apiVersion", "kind", "resources"}  # no namespace: that would move every seat
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.yaml")} - {k8s.KUSTOMIZATION}
    assert set(listed) == on_disk
    assert {p.relative_to(out).as_posix() for p in done.written} == on_disk | {k8s.KUSTOMIZATION, k8s.README}
    assert (out / "s01" / "secret.yaml").stat().st_mode & 0o077 == 0  # private keys: the trainer's only


# ---------------------------------------------------------------- per seat


@pytest.mark.parametrize("seat", SEATS)
def test_one_namespace_per_seat_holds_all_of_it(rendered, seat):
    out, _, _ = rendered
    ns = f"labgen-{WORKSHOP}-{seat}"
    doc = seat_doc(out, seat, "namespace")
    assert doc["kind"] == "Namespace" and doc["metadata"]["name"] == ns
    assert doc["metadata"]["labels"]["io.labgen.workshop"] == WORKSHOP
    assert doc["metadata"]["labels"]["io.labgen.seat"] == seat
    for kind in ("configmap", "secret", "deployment", "networkpolicy"):
        assert seat_doc(out, seat, kind)["metadata"]["namespace"] == ns, kind
    namespaces = [load(out / r)["metadata"]["name"] for r in resources(out) if r.endswith("/namespace.yaml")]
    assert sorted(namespaces) == [f"labgen-{WORKSHOP}-{s}" for s in SEATS]


@pytest.mark.parametrize("seat", SEATS)
def test_network_policy_lets_nothing_in_or_out(rendered, seat):
    out, _, _ = rendered
    spec = seat_doc(out, seat, "networkpolicy")["spec"]
    assert spec["podSelector"] == {}  # every pod of the namespace
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in spec and "egress" not in spec  # no rule: nothing allowed


@pytest.mark.parametrize("seat", SEATS)
def test_pod_resolves_with_the_seats_lab_dns_only(rendered, seat):
    out, labs, _ = rendered
    plan = Plan.load(labs / seat / "plan.json")
    assert plan.topology == "pod" and plan.ip("dns").startswith("127.")
    spec = pod_spec(out, seat)
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == [plan.ip("dns")]
    assert "searches" not in spec["dnsConfig"]
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert plan.labels == {"io.labgen.workshop": WORKSHOP, "io.labgen.seat": seat}


@pytest.mark.parametrize("seat", SEATS)
def test_deployment_runs_the_pod_lab(rendered, seat):
    out, _, done = rendered
    dep = seat_doc(out, seat, "deployment")
    assert dep["metadata"]["name"] == k8s.DEPLOYMENT
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    spec = pod_spec(out, seat)
    image = spec["containers"][0]["image"]
    assert image.startswith("labgen-lab:")
    by_name = {c["name"]: c for c in spec["containers"]}
    assert list(by_name) == ["lab", "gateway"]
    for name, c in by_name.items():
        assert c["command"] == entry_command(name)
        assert c["image"] == image and c["imagePullPolicy"] == "IfNotPresent"
        assert c["volumeMounts"] == [{"name": "lab", "mountPath": "/lab"}]
        assert c["readinessProbe"]["exec"]["command"] == health_probe(name, "pod")["test"][1:]
        assert c["resources"] == k8s.RESOURCES[name] and "cpu" not in c["resources"]["limits"]
        assert "securityContext" not in c  # the lab's containers add no capability
    seed, *others = spec["initContainers"]
    assert others == []  # no capability anywhere unless --no-default-route asks for one
    assert seed["name"] == "seed" and "/lab/run" in seed["command"][-1]
    assert {m["mountPath"] for m in seed["volumeMounts"]} == {"/seed", "/lab"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["lab"]


@pytest.mark.parametrize("seat", SEATS)
def test_configmap_and_secret_give_back_every_file_the_containers_read(rendered, seat):
    """The projected volume's items, laid out as the kubelet would, are the seat's lab files byte
    for byte (what the init container copies to /lab); private keys come from the Secret only."""
    out, labs, _ = rendered
    labdir = labs / seat
    want = {"plan.json", "resolv.conf"}
    for sub in ("certs", "gateway/postfix"):
        want |= {p.relative_to(labdir).as_posix() for p in (labdir / sub).iterdir()}
    assert {"gateway/postfix/main.cf", "gateway/postfix/master.cf", "certs/ca-root.crt"} <= want

    cm, secret = seat_doc(out, seat, "configmap"), seat_doc(out, seat, "secret")
    projected = next(v for v in pod_spec(out, seat)["volumes"] if v["name"] == "seed")["projected"]
    sources = {next(iter(s)): s[next(iter(s))] for s in projected["sources"]}
    assert sources["configMap"]["name"] == cm["metadata"]["name"]
    assert sources["secret"]["name"] == secret["metadata"]["name"]

    got: dict[str, bytes] = {}
    for item in sources["configMap"]["items"]:
        key = item["key"]
        data = cm["data"][key].encode() if key in cm["data"] else base64.b64decode(cm["binaryData"][key])
        got[item["path"]] = data
    secret_paths = set()
    for item in sources["secret"]["items"]:
        assert item["path"] not in got
        got[item["path"]] = base64.b64decode(secret["data"][item["key"]])
        secret_paths.add(item["path"])
        assert item["mode"] == 0o600
    assert set(got) == want
    for rel in want:
        assert got[rel] == (labdir / rel).read_bytes(), rel
    keys = {rel for rel in want if rel.endswith(".key")}
    assert keys and secret_paths == keys  # every key in the Secret, nothing else there
    text = (out / seat / "configmap.yaml").read_text()
    assert "PRIVATE KEY" not in text
    assert set(cm["data"]) | set(cm.get("binaryData", {})) == {i["key"] for i in sources["configMap"]["items"]}
    assert set(secret["data"]) == {i["key"] for i in sources["secret"]["items"]}
    assert all("/" not in key for key in [*cm["data"], *secret["data"]])


def test_seats_differ_only_where_they_must(rendered):
    """Same loopback addresses in every seat (pods do not share loopback), own names and keys."""
    out, labs, _ = rendered
    plans = [Plan.load(labs / s / "plan.json") for s in SEATS]
    assert len({tuple(p.hosts["dns"]) for p in plans}) == 1
    assert len({p.lab for p in plans}) == len(SEATS)
    keys = [seat_doc(out, s, "secret")["data"]["certs_ca-root.key"] for s in SEATS]
    assert len(set(keys)) == len(SEATS)


def test_readme_says_how_to_apply_and_reach_a_seat(rendered):
    out, _, _ = rendered
    text = (out / k8s.README).read_text()
    for needle in (
        "kubectl apply -k .",
        "docker save labgen-lab:",
        "docker push REGISTRY/labgen-lab:",
        f"kubectl exec -n labgen-{WORKSHOP}-s01 deploy/seat -c lab -- swaks",
        f"kubectl logs -n labgen-{WORKSHOP}-s01 deploy/seat -c lab",
        f"{len(SEATS)} seat(s)\nrequest {len(SEATS) * 96}Mi",
        "BENCHMARKS.md",
    ):
        assert needle in text, needle


def test_render_again_replaces_the_seats(tmp_path):
    out = tmp_path / "out"
    k8s.render_workshop("broken", 2, "again", out)
    k8s.render_workshop("broken", 1, "again", out)
    assert resources(out) == [f"s01/{f}" for f in k8s.SEAT_FILES]
    assert not (out / "s02").exists()
    assert not (tmp_path / "labs").exists()  # the seats' lab directories were temporary


def test_image_option_is_used_and_checked(tmp_path):
    out = tmp_path / "out"
    k8s.render_workshop("broken", 1, None, out, image="registry.example:5000/labgen-lab:v1")
    assert {c["image"] for c in pod_spec(out, "s01")["containers"]} == {"registry.example:5000/labgen-lab:v1"}


# ---------------------------------------------------------------- bad input: one line, exit 2


def run_cli(*args: str):
    return CliRunner().invoke(main, ["workshop", "render", *args])


def assert_one_line(res, *needles: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    assert res.stderr.endswith("\n") and res.stderr.count("\n") == 1, repr(res.stderr)
    line = res.stderr[:-1]
    assert line.startswith("labgen: ") and line.isprintable() and len(line) <= 300, line
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    "name, needle",
    [
        ("Class", "workshop name"),
        ("../../etc", "workshop name"),
        ("a\nb", "workshop name"),
        ("x" * 40, "workshop name"),
        ("ends-", "end with a letter or digit"),  # labgen's grammar allows it, a label value does not
        ("-starts", "workshop name"),
        ("a b", "workshop name"),
    ],
)
def test_hostile_workshop_name_is_one_line(tmp_path, name, needle):
    res = run_cli("broken", "--kubernetes", "--seats", "2", "--name", name, "-o", str(tmp_path / "out"))
    assert_one_line(res, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seats", ["0", "-1", "100"])
def test_bad_seat_count_is_one_line(tmp_path, seats):
    res = run_cli("broken", "--kubernetes", "--seats", seats, "-o", str(tmp_path / "out"))
    assert_one_line(res, f"--seats {seats}")
    assert not (tmp_path / "out").exists()


def test_without_kubernetes_is_one_line(tmp_path):
    assert_one_line(run_cli("broken", "--seats", "2", "-o", str(tmp_path / "out")), "--kubernetes")


def test_bad_image_is_one_line(tmp_path):
    res = run_cli("broken", "--kubernetes", "--seats", "1", "--image", "Bad Image;rm", "-o", str(tmp_path / "o"))
    assert_one_line(res, "--image")
    assert not (tmp_path / "o").exists()


def test_a_directory_labgen_did_not_render_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    assert_one_line(run_cli("broken", "--kubernetes", "--seats", "1", "-o", str(tmp_path)), "not empty")
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert_one_line(run_cli("broken", "--kubernetes", "--seats", "1", "-o", str(link)), "symbolic link")


def test_a_gateway_of_ones_own_is_refused(tmp_path):
    """gateway.postfix_config (and gateway.image) need the network topology: refused, nothing written."""
    own = str(REPO / "examples" / "own-postfix" / "broken.yaml")
    res = run_cli(own, "--kubernetes", "--seats", "1", "-o", str(tmp_path / "o"))
    assert_one_line(res, "gateway.postfix_config")
    assert not (tmp_path / "o").exists()
    data = yaml.safe_load((REPO / "labgen/exercises/broken.yaml").read_text())
    data["gateway"]["image"] = {"ref": "myorg/exim-gw:1"}
    scenario = tmp_path / "image.yaml"
    scenario.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="gateway.image"):
        k8s.render_workshop(str(scenario), 1, "img", tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def test_no_default_route_adds_one_init_container_with_net_admin_only(tmp_path):
    done = k8s.render_workshop("broken", 1, "wsroute", tmp_path / "out", drop_route=True)
    doc = yaml.safe_load((done.out / "s01" / "deployment.yaml").read_text())
    init = {c["name"]: c for c in doc["spec"]["template"]["spec"]["initContainers"]}
    assert list(init) == ["seed", "no-route"]
    assert init["no-route"]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert init["no-route"]["command"] == ["sh", "-c", k8s.ROUTE_SCRIPT]
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
