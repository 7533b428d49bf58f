"""`labgen test` (issue #10): a directory of scenarios as a test suite, JUnit XML that validates
against the common JUnit schema (tests/data/junit.xsd, with lxml), one case per expectation, the
failing case naming the hop and the reply; -j, -k, bad input, and the CI recipes. Local engine
only: every lab here runs on loopback addresses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, labgen
from lxml import etree

from labgen.results import junit
from labgen.results.contracts import json_schema

SCENARIOS = REPO / "labgen" / "scenarios"
XSD = etree.XMLSchema(etree.parse(str(REPO / "tests" / "data" / "junit.xsd")))


def valid_junit(path: Path) -> etree._ElementTree:
    doc = etree.parse(str(path))
    assert XSD.validate(doc), f"{path} is not valid JUnit XML: {XSD.error_log}"
    return doc


def wrong_expectation(dst: Path) -> None:
    """The field report's broken scenario, but expecting that mail to fabrikam arrives."""
    data = yaml.safe_load((SCENARIOS / "broken.yaml").read_text())
    data["name"] = "broken-wrong"
    for m in data["traffic"]:
        if m["id"] == "to-fabrikam":
            m["expect"] = "delivered"
    dst.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    sc = root / "scenarios"
    (sc / "nested").mkdir(parents=True)
    shutil.copy(SCENARIOS / "broken.yaml", sc / "broken.yaml")
    shutil.copy(SCENARIOS / "fixed.yaml", sc / "nested" / "fixed.yml")
    wrong_expectation(sc / "wrong.yaml")
    (root / "wd").mkdir()
    return root


def expectations(path: Path) -> set[tuple[str, str]]:
    data = yaml.safe_load(path.read_text())
    return {(m["id"], rcpt) for m in data["traffic"] if "expect" in m for rcpt in m["to"]}


@pytest.fixture(scope="module")
def serial(suite_dir):
    p = labgen("test", "scenarios", "--engine", "local", "--junit", "serial.xml", "--workdir", "wd", cwd=suite_dir)
    return p, suite_dir / "serial.xml"


def test_a_failed_expectation_exits_1_and_names_the_hop_and_reply(serial):
    p, _ = serial
    assert p.returncode == 1, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("✓ broken: 4/4"), p.stdout
    assert lines[1].startswith("✓ fixed: 4/4"), p.stdout  # paths sorted: scenarios/nested/ before wrong.yaml
    assert lines[2].startswith("✗ broken-wrong: 3/4"), p.stdout
    out = " ".join(p.stdout.split())
    assert "expectation failed in broken-wrong: to-fabrikam → carol@fabrikam.example: expected delivered" in out
    assert "at hop: EOP: attributed to contoso by certificate" in out
    assert "3 scenario(s), 12 expectation(s): 11 held, 1 failed" in out


def test_junit_validates_with_a_suite_per_scenario_and_a_case_per_expectation(serial, suite_dir):
    _, xml = serial
    root = valid_junit(xml).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == ["broken", "fixed", "broken-wrong"]
    files = {
        "broken": suite_dir / "scenarios/broken.yaml",
        "broken-wrong": suite_dir / "scenarios/wrong.yaml",
        "fixed": suite_dir / "scenarios/nested/fixed.yml",
    }
    for name, s in suites.items():
        cases = {tuple(str(c.get("name")).split(" → ")) for c in s.iter("testcase")}
        assert cases == expectations(files[str(name)]), name
        assert {c.get("classname") for c in s.iter("testcase")} == {f"labgen.{name}"}
        assert s.get("tests") == str(len(cases))
    assert [s.get("failures") for s in suites.values()] == ["0", "0", "1"]
    assert all(s.get("errors") == "0" for s in suites.values())


def test_the_failure_names_outcome_expected_hop_and_reply(serial):
    _, xml = serial
    root = valid_junit(xml).getroot()
    failures = root.findall(".//failure")
    assert len(failures) == 1
    case = root.find(".//testcase[failure]")
    assert case is not None and case.get("name") == "to-fabrikam → carol@fabrikam.example"
    msg = str(failures[0].get("message"))
    assert msg.startswith("outcome silently_discarded, expected delivered; at hop: EOP: attributed to contoso")
    assert "reply: 250 2.1.5" in msg
    assert "cross-tenant misattribution" in msg  # the verdict's why
    assert "gateway 'Internet' connector" in str(failures[0].text)  # the hops, in the body


def test_parallel_runs_give_the_same_verdicts(serial, suite_dir):
    p = labgen(
        "test", "scenarios", "--engine", "local", "-j", "2", "--junit", "par.xml", "--workdir", "wd", cwd=suite_dir
    )
    assert p.returncode == 1, p.stderr

    def verdicts(path: Path) -> dict:
        root = valid_junit(path).getroot()
        return {
            (s.get("name"), c.get("name")): [f.get("message") for f in c.iter("failure")]
            for s in root.iter("testsuite")
            for c in s.iter("testcase")
        }

    assert verdicts(suite_dir / "par.xml") == verdicts(serial[1])


def test_k_filters_by_name_and_json_is_a_test_document(suite_dir):
    import jsonschema

    p = labgen("test", "scenarios", "--engine", "local", "-k", "fix", "--json", "--workdir", "wd", cwd=suite_dir)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.validate(doc, json_schema("test"))
    assert [s["scenario"] for s in doc["suites"]] == ["fixed"]
    assert doc["summary"] == {"scenarios": 1, "tests": 4, "passed": 4, "failures": 0, "errors": 0}
    assert doc["suites"][0]["result"]["schema"] == "labgen.result/v1"
    p = labgen("test", "scenarios", "--engine", "local", "-k", "nothing-like-it", "--workdir", "wd", cwd=suite_dir)
    assert p.returncode == 2 and "matches no scenario" in p.stderr and len(p.stderr.splitlines()) == 1


def test_builtin_names_and_examples_are_accepted(tmp_path):
    p = labgen("test", "fixed", "example:dedicated-egress-ip", "--engine", "local", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [s["scenario"] for s in json.loads(p.stdout)["suites"]] == ["fixed", "dedicated-ip"]  # lab names


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("notes.yaml", "just: some yaml\n", ["notes.yaml"]),
        ("list.yml", "- a\n- b\n", ["list.yml"]),
        ("broken.yaml", "name: [unclosed\n", ["broken.yaml"]),
    ],
)
def test_a_file_that_is_no_scenario_is_bad_input_and_nothing_runs(tmp_path, name, text, words):
    sc = tmp_path / "scenarios"
    sc.mkdir()
    shutil.copy(SCENARIOS / "fixed.yaml", sc / "a-fixed.yaml")  # sorted first: would run first
    (sc / name).write_text(text)
    p = labgen("test", "scenarios", "--engine", "local", "--junit", "r.xml", cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and all(w in p.stderr for w in words), p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["scenarios"]  # no lab directory, no report


def test_bad_references_and_duplicate_lab_names_are_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copy(SCENARIOS / "fixed.yaml", tmp_path / "one.yaml")
    shutil.copy(SCENARIOS / "fixed.yaml", tmp_path / "two.yaml")
    for args, word in (
        (["no-such-dir/x.yaml"], "no such scenario file"),
        (["empty"], "no scenario file"),
        (["nope"], "unknown scenario"),
        (["one.yaml", "two.yaml"], "lab name 'fixed' is also"),
    ):
        p = labgen("test", *args, "--engine", "local", cwd=tmp_path)
        assert p.returncode == 2 and word in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    assert not list(tmp_path.glob("labgen-*"))


def test_the_current_directory_is_the_default_and_skips_lab_and_hidden_directories(tmp_path):
    shutil.copy(SCENARIOS / "fixed.yaml", tmp_path / "fixed.yaml")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "ci" / "github-actions.yml", tmp_path / ".github" / "workflows" / "ci.yml")
    shutil.copy(REPO / "examples" / "ci" / "gitlab-ci.yml", tmp_path / ".gitlab-ci.yml")
    first = labgen("test", "--engine", "local", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "labgen-fixed" / ".labgen-lab").is_file()
    (tmp_path / "labgen-fixed" / "compose.yaml").write_text("services: {}\n")  # a Docker lab's project
    again = labgen("test", "--engine", "local", cwd=tmp_path)  # the lab directory is not read as scenarios
    assert again.returncode == 0, again.stderr


# ---------------------------------------------------------------- the XML itself, without a lab

HOSTILE = ["\x00nul", "bell\x07", "esc\x1b[31mred", "]]>", "<b>&amp;</b>", "line\nbreak", "\ud800lone", "\ufffe"]


def hostile_result(s: str) -> dict:
    hop = {"service": "eop", "event": "rcpt", "reply": f"550 5.7.1 {s}", "action": "reject"}
    return {
        "scenario": "lab",
        "description": f"desc {s}",
        "engine": "local",
        "profile": "current",
        "duration_s": 0.5,
        "lab_dir": f"/tmp/{s}",
        "run_id": "r1",
        "messages": [
            {
                "id": "m1",
                "from": "a@b.example",
                "to": f"x{s}@c.example",
                "outcome": "rejected",
                "expected": "delivered",
                "ok": False,
                "hops": [hop],
                "why": f"why {s}",
            }
        ],
    }


@pytest.mark.parametrize("s", HOSTILE)
def test_hostile_strings_make_valid_xml(s, tmp_path):
    doc = hostile_result(s)
    suite = junit.Suite(
        scenario="lab",
        source=f"dir/{s}.yaml",
        engine="local",
        started="2026-12-07T00:00:00",
        duration_s=0.5,
        cases=junit.cases_from_result(doc),
        description=doc["description"],
        lab_dir=doc["lab_dir"],
    )
    broken = junit.Suite(
        scenario="other",
        source="x.yaml",
        engine="docker",
        started="2026-12-07T00:00:00",
        duration_s=0.0,
        cases=junit.cases_not_run([("m1", f"r{s}@x.example", "delivered")], f"could not run {s}"),
        error=f"could not run {s}",
    )
    path = tmp_path / "r.xml"
    junit.write(path, [suite, broken])
    root = valid_junit(path).getroot()
    failure = root.find(".//failure")
    assert failure is not None and "at hop: EOP" in str(failure.get("message"))
    error = root.find(".//error")
    assert error is not None and error.get("type") == "infrastructure"
    other = root.find(".//testsuite[@name='other']")
    assert other is not None and other.get("errors") == "1"


def test_a_lab_that_could_not_run_is_an_error_per_expectation_or_one_for_the_lab():
    assert [c.name for c in junit.cases_not_run([], "no engine")] == ["(lab) → every recipient"]
    cases = junit.cases_not_run([("a", "x@y", "delivered"), ("b", "x@y", "rejected")], "no engine")
    assert {c.status for c in cases} == {"error"} and len(cases) == 2


def test_unexpectated_recipients_are_no_cases_but_unaccounted_ones_are_errors():
    doc = hostile_result("x")
    plain = dict(doc["messages"][0], ok=None, expected=None, outcome="delivered", id="m2")
    lost = dict(doc["messages"][0], ok=None, expected=None, outcome="unaccounted", id="m3")
    doc["messages"] += [plain, lost]
    cases = junit.cases_from_result(doc)
    assert [(c.msgid, c.status) for c in cases] == [("m1", "failed"), ("m3", "error")]


# ---------------------------------------------------------------- the CI recipes


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_recipes_run_labgen_test_with_junit_and_publish_that_file(name):
    data = yaml.safe_load((REPO / "examples" / "ci" / name).read_text())
    if name == "github-actions.yml":
        steps = [s for job in data["jobs"].values() for s in job["steps"]]
        runs = [s["run"] for s in steps if "run" in s]
        publish = [s for s in steps if str(s.get("uses", "")).startswith("mikepenz/action-junit-report@")]
        assert len(publish) == 1 and publish[0]["if"]  # published when the tests fail too
        published = publish[0]["with"]["report_paths"]
    else:
        job = data["mail-flow"]
        runs = job["script"]
        assert job["artifacts"]["when"] == "always"
        published = job["artifacts"]["reports"]["junit"]
    assert any(r.startswith("pip install ") and ".whl" in r for r in runs), runs
    test = [r for r in runs if r.startswith("labgen test ")]
    assert len(test) == 1, runs
    words = test[0].split()
    assert words[words.index("--junit") + 1] == published
    assert "--engine" in words and words[words.index("--engine") + 1] == "local"


@pytest.mark.docker
def test_docker_labs_run_in_parallel_but_never_two_on_one_subnet_and_none_is_left(tmp_path, test_labs):
    """-j 2 on Docker: labs on distinct subnets run at once, two on the same subnet one after the
    other (else the second could not start), and each lab is removed after its verdict."""
    from conftest import TEST_LAB_PREFIX

    from labgen.engines.docker import lab_containers

    s1 = test_labs.free_subnet()
    s2 = next(s for s in iter(test_labs.free_subnet, None) if s != s1)
    sc = tmp_path / "scenarios"
    sc.mkdir()
    names = {}
    for key, src, subnet in (("a", "broken", s1), ("b", "fixed", s2), ("c", "wrong", s1)):
        if src == "wrong":
            wrong_expectation(sc / "c.yaml")
            data = yaml.safe_load((sc / "c.yaml").read_text())
        else:
            data = yaml.safe_load((SCENARIOS / f"{src}.yaml").read_text())
        names[key] = data["name"] = f"{TEST_LAB_PREFIX}-j{key}-{tmp_path.name[-6:].lower().replace('_', '-')}"
        data["lab"]["subnet"] = subnet
        (sc / f"{key}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        test_labs.names.append(names[key])  # removed at the end whatever happens
    p = labgen("test", "scenarios", "--engine", "docker", "-j", "2", "--junit", "d.xml", cwd=tmp_path, timeout=600)
    assert p.returncode == 1, p.stderr
    root = valid_junit(tmp_path / "d.xml").getroot()
    failed = {
        (s.get("name"), c.get("name"))
        for s in root.iter("testsuite")
        for c in s.iter("testcase")
        if c.find("failure") is not None
    }
    assert failed == {(names["c"], "to-fabrikam → carol@fabrikam.example")}, failed
    assert sum(1 for _ in root.iter("testcase")) == 12
    assert not any(lab_containers(n) for n in names.values()), "every lab is removed after its verdict"
