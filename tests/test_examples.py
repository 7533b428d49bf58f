"""The shipped examples (labgen issue 7, section 3): `labgen examples` lists every examples/*.yaml,
`example:NAME` resolves through the listing of what ships (never a path as typed) in every command
that takes a scenario, and the data packages are found through importlib.resources with the
checkout's layout as the fallback. The wheel's side is in test_wheel.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, labgen, labgen_json

from labgen import resources
from labgen.errors import InputError
from labgen.model.scenario import example_names, scenario_path

SHIPPED = sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- resolution


def test_every_example_file_is_listed_and_git_tracks_it():
    assert SHIPPED and example_names() == SHIPPED
    tracked = subprocess.run(
        ["git", "ls-files", "examples"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    # untracked examples would be missing from the wheel test's copy of the tree, and from users' wheels
    # examples/*.yaml are the listed ones; a directory (own-postfix/) is an example of its own, run by path
    assert sorted(Path(t).stem for t in tracked if t.endswith(".yaml") and t.count("/") == 1) == SHIPPED


@pytest.mark.parametrize(
    "ref, expected",
    [
        *[(f"example:{n}", EXAMPLES / f"{n}.yaml") for n in SHIPPED],
        ("broken", REPO / "labgen" / "scenarios" / "broken.yaml"),
        ("fixed", REPO / "labgen" / "scenarios" / "fixed.yaml"),
        (str(EXAMPLES / "shared-egress-ip.yaml"), EXAMPLES / "shared-egress-ip.yaml"),
    ],
)
def test_scenario_path_resolves(ref, expected):
    assert scenario_path(ref).resolve() == expected.resolve()


@pytest.mark.parametrize(
    "ref, words",
    [
        ("example:nope", ["example:nope", "unknown example", "dedicated-egress-ip", "labgen examples"]),
        ("example:", ["unknown example"]),
        ("example:dedicated-egress-ip.yaml", ["unknown example"]),  # a name, not a file name
        ("example:../labgen/scenarios/broken", ["unknown example"]),  # never joined onto a path
        ("example:/etc/passwd", ["unknown example"]),
        ("example:DEDICATED-EGRESS-IP", ["unknown example"]),
        ("example:broken", ["unknown example"]),  # built-ins are not examples
        ("example:x\x1b[31mred", ["\\x1b"]),  # escaped, not interpreted
        ("dedicated-egress-ip", ["unknown scenario", "did you mean example:dedicated-egress-ip?"]),
        ("nope", ["unknown scenario", "broken, fixed", "example:NAME"]),
        ("..", ["unknown scenario"]),
    ],
)
def test_unknown_references_are_one_line_bad_input(ref, words, tmp_path):
    with pytest.raises(InputError) as exc:
        scenario_path(ref)
    for w in words:
        assert w in exc.value.message, exc.value.message
    p = labgen("validate", ref, cwd=tmp_path)
    one_line_error(p, 2, *words)
    assert list(tmp_path.iterdir()) == []  # nothing started


def test_a_file_whose_name_starts_with_example_is_given_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "example:mine.yaml"
    f.write_text((EXAMPLES / "dedicated-egress-ip.yaml").read_text())
    assert scenario_path(f"./{f.name}") == Path(f"./{f.name}")
    p = labgen("validate", f"./{f.name}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------- every command that takes a scenario


@pytest.mark.parametrize(
    "args, check",
    [
        (["validate", "example:wildcard-connector-name", "--json"], lambda d: d["scenario"] == "wildcard"),
        (
            ["certs", "example:wildcard-connector-name", "--json"],
            lambda d: "gw-public" in {c["name"] for c in d["certificates"]},
        ),
        (
            ["up", "example:dedicated-egress-ip", "--engine", "local", "--json"],
            lambda d: d["summary"]["expectations_failed"] == 0 and d["summary"]["delivered"] == d["summary"]["total"],
        ),
        (
            ["compare", "example:shared-egress-ip", "example:dedicated-egress-ip", "--engine", "local", "--json"],
            lambda d: any(c["a"] == "silently_discarded" and c["b"] == "delivered" for c in d["changes"]),
        ),
    ],
    ids=["validate", "certs", "up", "compare"],
)
def test_commands_take_example_refs(args, check, tmp_path):
    code, doc = labgen_json(*args[:-1], cwd=tmp_path)
    assert code == 0, doc
    assert check(doc), doc


def test_render_takes_an_example_ref(tmp_path):
    p = labgen("render", "example:strict-eop-reject", "-o", tmp_path / "lab", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "lab" / "compose.yaml").is_file() and (tmp_path / "lab" / "plan.json").is_file()


# ---------------------------------------------------------------- labgen examples


def test_examples_json_lists_every_example_with_what_it_shows(tmp_path):
    code, doc = labgen_json("examples", cwd=tmp_path)
    assert code == 0
    assert doc["schema"] == "labgen.examples/v1"
    rows = {r["name"]: r for r in doc["examples"]}
    assert sorted(rows) == SHIPPED
    for name, r in rows.items():
        assert r["ref"] == f"example:{name}" and r["description"] and r["messages"] > 0
    # what each shows: the outcomes its expectations name
    assert "silently_discarded" in rows["shared-egress-ip"]["expected"]
    assert rows["dedicated-egress-ip"]["expected"] == ["delivered"]
    assert "rejected" in rows["strict-eop-reject"]["expected"]
    assert "deferred" in rows["partner-requires-tls"]["expected"]
    assert list(tmp_path.iterdir()) == []  # listing starts nothing


def test_examples_json_validates_against_its_published_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(labgen("schema", "examples", cwd=tmp_path).stdout)
    _, doc = labgen_json("examples", cwd=tmp_path)
    jsonschema.validate(doc, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does constrain the document
        jsonschema.validate({**doc, "examples": [{"name": "x"}]}, schema)


def test_examples_text_names_each_ref(tmp_path):
    p = labgen("examples", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for name in SHIPPED:
        assert f"example:{name}" in p.stdout


# ---------------------------------------------------------------- data packages


@pytest.mark.parametrize(
    "name, marker",
    [
        ("scenarios", "broken.yaml"),
        ("templates", "postfix"),
        ("compose", "lab-image"),
        ("examples", "dedicated-egress-ip.yaml"),
    ],
)
def test_resource_dirs(name, marker):
    assert (resources.resource_dir(name) / marker).exists()


def test_resource_dir_falls_back_to_the_checkout_when_the_package_is_unknown(monkeypatch):
    # An editable install made before a data package was mapped in does not know it.
    def unknown(package: str):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(resources.importlib.resources, "files", unknown)
    assert resources.resource_dir("examples") == REPO / "examples"


def test_resource_dir_refuses_names_that_are_not_data_packages():
    for name in ("model", "../examples", "engines"):
        with pytest.raises(ValueError):
            resources.resource_dir(name)


def test_readme_table_names_every_shipped_example_and_only_those():
    readme = (REPO / "README.md").read_text()
    table = re.findall(r"^\| `example:([a-z0-9-]+)` \|", readme, flags=re.M)
    assert sorted(table) == SHIPPED
    mentioned = set(re.findall(r"example:([a-z0-9][a-z0-9-]*)", readme)) - {"NAME"}
    assert mentioned <= set(SHIPPED), mentioned - set(SHIPPED)
