"""The published contracts (results/contracts.py): `labgen schema NAME` prints each JSON Schema,
docs/schemas/ holds the same files, and every --json output of the CLI and every ledger line of
a run validates against its schema with a third-party validator (jsonschema)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, labgen, labgen_json

SCHEMAS = REPO / "docs" / "schemas"
# Every document `labgen schema` publishes (cli.SCHEMAS; checked below).
NAMES = [
    "scenario",
    "result",
    "compare",
    "event",
    "scenarios",
    "examples",
    "validate",
    "certs",
    "trace",
    "transcript",
    "status",
    "down",
    "images",
    "lint",
    "test",
    "workshop-status",
    "check",
    "class-report",
]


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def check(name: str, doc: object) -> None:
    """`doc` is a valid labgen.<name>/v1 document (raises jsonschema.ValidationError)."""
    jsonschema.Draft202012Validator(schema(name)).validate(doc)
    if isinstance(doc, dict) and name not in ("scenario", "event"):
        assert doc["schema"] == f"labgen.{name}/v1"


def test_every_published_schema_is_checked_here():
    from labgen.cli import SCHEMAS as PUBLISHED

    assert sorted(PUBLISHED) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_schema_is_what_the_command_prints(tmp_path, name):
    p = labgen("schema", name, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == schema(name), f"docs/schemas/{name}.json is stale: labgen schema {name} > it"
    jsonschema.Draft202012Validator.check_schema(schema(name))


def test_schema_alone_is_the_scenario_schema(tmp_path):
    assert json.loads(labgen("schema", cwd=tmp_path).stdout) == schema("scenario")


def test_every_scenario_file_validates_against_the_scenario_schema():
    files = sorted((REPO / "labgen" / "scenarios").glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))
    assert files
    for f in files:
        check("scenario", yaml.safe_load(f.read_text()))


# Wrong documents must fail: the schemas are not vacuous.
NOT_VALID = [
    ("result-without-summary", "result", lambda d: d.pop("summary")),
    ("result-unknown-outcome", "result", lambda d: d["messages"][0].update(outcome="lost")),
    ("result-extra-field", "result", lambda d: d.update(surprise=1)),
    ("result-v2", "result", lambda d: d.update(schema="labgen.result/v2")),
    ("hop-without-service", "result", lambda d: d["messages"][0]["hops"][0].pop("service")),
]


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("contracts")
    code, doc = labgen_json("up", "broken", "--engine", "local", cwd=wd)
    assert code == 0, doc
    return wd, doc


@pytest.mark.parametrize("name, spoil", [c[1:] for c in NOT_VALID], ids=[c[0] for c in NOT_VALID])
def test_a_spoilt_document_does_not_validate(broken_run, name, spoil):
    doc = json.loads(json.dumps(broken_run[1]))
    spoil(doc)
    with pytest.raises(jsonschema.ValidationError):
        check(name, doc)


def test_up_json_is_a_result(broken_run):
    check("result", broken_run[1])


def test_every_ledger_line_of_a_run_is_an_event(broken_run):
    wd, doc = broken_run
    validator = jsonschema.Draft202012Validator(schema("event"))
    lines = [
        line for f in sorted((Path(doc["lab_dir"]) / "run").glob("*.jsonl")) for line in f.read_text().splitlines()
    ]
    assert {json.loads(line)["event"] for line in lines} >= {
        "start",
        "submitted",
        "received",
        "sent",
        "session",
        "rcpt",
        "accepted",
        "delivered",
        "discarded",
        "trace",
        "query",
        "injected",
    }
    for line in lines:
        validator.validate(json.loads(line))


@pytest.mark.parametrize("run", ["strict-eop-local", "strict-eop-docker"])
def test_recorded_ledgers_and_postfix_events_are_events(run):
    """Both engines' gateway events, the built-in gateway's NDR events and Postfix's parsed log
    alike: one vocabulary."""
    from labgen.engines import postfix
    from labgen.model.plan import Plan

    lab = REPO / "tests" / "data" / run
    validator = jsonschema.Draft202012Validator(schema("event"))
    for f in sorted((lab / "run").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            validator.validate(json.loads(line))
    log = lab / postfix.LOG_FILE
    if log.is_file():
        events = postfix.parse_log(log.read_text().splitlines(), Plan.load(lab / "plan.json"))
        assert {e.event for e in events} >= {"ready", "received", "sent", "bounced", "ndr_queued"}
        for e in events:
            validator.validate(json.loads(e.model_dump_json(exclude_unset=True)))


def test_compare_json_is_a_compare(tmp_path):
    code, doc = labgen_json("compare", "broken", "fixed", "--engine", "local", cwd=tmp_path)
    assert code == 0, doc
    check("compare", doc)
    check("result", doc["a"])
    check("result", doc["b"])


def test_trace_json_is_a_trace(broken_run):
    wd, _ = broken_run
    code, doc = labgen_json("trace", "contoso", "--lab", "broken", cwd=wd)
    assert code == 0 and doc["entries"], doc
    check("trace", doc)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["scenarios"], "scenarios"),
        (["examples"], "examples"),
        (["validate", "broken"], "validate"),
        (["validate", str(REPO / "examples" / "strict-eop-reject.yaml")], "validate"),
        (["certs", "broken"], "certs"),
    ],
    ids=["scenarios", "examples", "validate-builtin", "validate-file", "certs"],
)
def test_read_only_commands(tmp_path, argv, name):
    code, doc = labgen_json(*argv, cwd=tmp_path)
    assert code == 0, doc
    check(name, doc)


def test_status_and_down_of_a_kept_local_lab(tmp_path):
    """A lab name of this test's own; the local engine only (no Docker lab of anyone else's is
    touched)."""
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    data["name"] = name = f"r-contract-{secrets.token_hex(3)}"
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(yaml.safe_dump(data))
    p = labgen("up", scenario, "--engine", "local", "--keep", cwd=tmp_path)
    try:
        assert p.returncode == 0, p.stderr
        code, doc = labgen_json("status", name, cwd=tmp_path)
        assert code == 0, doc
        check("status", doc)
        assert [lab["lab"] for lab in doc["labs"]] == [name]
    finally:
        code, doc = labgen_json("down", name, cwd=tmp_path)
    assert code == 0, doc
    check("down", doc)
    assert name in doc["removed"]


@pytest.mark.docker
def test_images_ls_json_is_images(docker_ready, tmp_path):
    code, doc = labgen_json("images", "ls", cwd=tmp_path)
    assert code == 0, doc
    check("images", doc)
    assert any(row["current"] for row in doc["images"])


@pytest.mark.docker
def test_docker_up_status_and_down_json(test_labs, tmp_path):
    """The Docker engine's result (Postfix's parsed log in its hops), its status rows with
    containers, and down: each a valid document."""
    lab = test_labs.new("broken", "contract")
    code, doc = labgen_json("up", lab.scenario, "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path)
    assert code == 0, doc
    check("result", doc)
    code, status = labgen_json("status", lab.name, cwd=tmp_path)
    assert code == 0 and status["containers"], status
    check("status", status)
    code, gone = labgen_json("down", lab.name, cwd=tmp_path)
    assert code == 0 and gone["removed"][lab.name]["containers"], gone
    check("down", gone)
