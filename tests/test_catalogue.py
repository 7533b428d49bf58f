"""The catalogue of documented failures (labgen/scenarios/): every entry and its fix run with
their expectations holding on the local engine, a representative subset agrees on Docker with
real Postfix, and `labgen scenarios` / `labgen explain` tell each one's story."""

from __future__ import annotations

import pytest
from conftest import by_id, labgen, labgen_json

from labgen.model.scenario import builtin_names, catalogue_entries, load_scenario
from labgen.resources import resource_dir

ENTRIES = catalogue_entries()
ALL = builtin_names()
DOCKER_SUBSET = [
    "cert-name-not-accepted",
    "reject-direct-send",
    "outbound-subject-mismatch",
    "dbeb-backscatter",
    "shared-egress-ip",
    "spf-not-listing-gateway",
]


@pytest.mark.parametrize("ref", ALL)
def test_every_catalogue_scenario_holds_its_expectations_on_the_local_engine(tmp_path, ref):
    code, doc = labgen_json("up", ref, "--engine", "local", cwd=tmp_path)
    failed = [(m["id"], m["to"], m["expected"], m["outcome"], m["why"]) for m in doc["messages"] if m["ok"] is False]
    assert code == 0 and not failed, failed
    assert all(m["expected"] for m in doc["messages"]), "every message states what it expects"


@pytest.mark.parametrize("name, fixed", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_each_entry_carries_its_story_and_a_fix(name, fixed):
    s = load_scenario(name)
    assert s.about is not None and s.about.symptom and s.about.fix and s.about.sources
    assert all(u.startswith("https://") for u in s.about.sources)
    assert fixed is not None, f"{name} has no fixed variant"
    f = load_scenario(fixed)
    assert f.eop.profile == s.eop.profile
    # The fix changes what happens to at least one message.
    before = {(m.id, r): (m.expected_for(r), m.expect_reply, m.expect_spf) for m in s.traffic for r in m.to}
    after = {(m.id, r): (m.expected_for(r), m.expect_reply, m.expect_spf) for m in f.traffic for r in m.to}
    assert before != after
    # The symptom is pinned: every message that is not delivered names the reply it gets.
    unpinned = [m.id for m in s.traffic if m.expect in ("rejected", "deferred") and not m.expect_reply]
    assert not unpinned, f"{name}: say which reply {unpinned} get (expect_reply)"


def test_every_file_is_an_entry_or_its_fix():
    stems = sorted(p.stem for p in resource_dir("scenarios").glob("*.yaml"))
    named = {n for e in ENTRIES for n in e if n}
    assert {s.replace(".fixed", ":fixed") if s.endswith(".fixed") else s for s in stems} == named


def test_scenarios_json_lists_every_entry_with_symptom_fix_and_source(tmp_path):
    code, doc = labgen_json("scenarios", cwd=tmp_path)
    assert code == 0 and doc["schema"] == "labgen.scenarios/v1"
    rows = {r["name"]: r for r in doc["scenarios"]}
    assert set(rows) == {e[0] for e in ENTRIES}
    for r in rows.values():
        assert r["symptom"] and r["fix"] and r["sources"] and r["fixed"] and r["tags"]
    assert rows["broken"]["fixed"] == "fixed" and rows["broken"]["profile"] == "seed"
    assert rows["reject-direct-send"]["fixed"] == "reject-direct-send:fixed"


def test_explain_tells_the_story(tmp_path):
    p = labgen("explain", "reject-direct-send", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for part in ("Symptom: ", "550 5.7.68", "What is configured (EOP profile current)", "app-to-bob", "Why: ", "Fix: "):
        assert part in p.stdout, part
    assert "https://techcommunity.microsoft.com/" in p.stdout


def test_explain_of_a_scenario_without_a_story_is_one_line_bad_input(tmp_path):
    p = labgen("explain", "reject-direct-send:fixed", cwd=tmp_path)
    assert p.returncode == 2 and "not a catalogue scenario" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.docker
@pytest.mark.parametrize("name", DOCKER_SUBSET)
def test_docker_postfix_agrees_on_a_representative_subset(test_labs, tmp_path, name):
    from pathlib import Path

    from labgen.model.scenario import scenario_path

    for ref in (name, f"{name}:fixed"):
        lab = test_labs.new(str(scenario_path(ref)), "cat")
        _, local = labgen_json("up", str(lab.scenario), "--engine", "local", cwd=tmp_path)
        code, docker = labgen_json("up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path)
        assert code == 0, [m for m in docker["messages"] if m["ok"] is False]
        assert {k: m["outcome"] for k, m in by_id(docker).items()} == {k: m["outcome"] for k, m in by_id(local).items()}
        assert Path(docker["lab_dir"]).is_dir()


def _run_with(tmp_path, ref: str, msg_id: str, rcpt: str, **fields) -> tuple[int, dict]:
    """A catalogue scenario with one message's fields changed, run on the local engine: that
    recipient's result, and the run's exit code."""
    import yaml

    from labgen.model.scenario import scenario_path

    doc = yaml.safe_load(scenario_path(ref).read_text())
    doc.pop("about", None)
    for m in doc["traffic"]:
        if m["id"] == msg_id:
            m.update(fields)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, result = labgen_json("up", str(path), "--engine", "local", cwd=tmp_path)
    return code, by_id(result)[(msg_id, rcpt)]


@pytest.mark.parametrize(
    "reply, ok",
    [
        ("550 5.7.68", True),
        ("5.7.68", True),
        ("direct send NOT allowed", True),
        ("550 5.7.64", False),
        ("4.7.68", False),
    ],
)
def test_expect_reply_holds_only_when_a_hop_gave_that_reply(tmp_path, reply, ok):
    """expect_reply pins the documented reply: the right outcome with another reply fails."""
    code, m = _run_with(tmp_path, "reject-direct-send", "app-to-bob", "bob@contoso.example", expect_reply=reply)
    assert (m["outcome"], m["expected_reply"], m["ok"], code) == ("rejected", reply, ok, 0 if ok else 1)


@pytest.mark.parametrize(
    "ref, spf, ok",
    [
        ("no-enhanced-filtering", "fail", True),
        ("no-enhanced-filtering", "pass", False),
        ("no-enhanced-filtering:fixed", "pass", True),
        ("no-enhanced-filtering:fixed", "fail", False),
    ],
)
def test_expect_spf_holds_only_when_eop_recorded_that_result(tmp_path, ref, spf, ok):
    """expect_spf pins the SPF result EOP stamped (Authentication-Results), not just delivery."""
    code, m = _run_with(tmp_path, ref, "from-internet", "bob@contoso.example", expect_spf=spf)
    assert (m["outcome"], m["expected_spf"], m["ok"], code) == ("delivered", spf, ok, 0 if ok else 1)
