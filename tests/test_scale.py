"""Many messages a run: `count:` copies (model/scenario.py), and verdict building that reads and
classifies only what is new (results/collect.Collector, postfix.LogReader, verdict.Verdict).
Nothing here is timed: the incremental paths must give exactly what reading everything at once
gives, in whatever pieces the logs arrive."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml
from conftest import REPO, labgen_json

from labgen.engines import postfix
from labgen.errors import InputError
from labgen.model.plan import Plan
from labgen.model.scenario import load_scenario
from labgen.results.collect import Collector, collect_events
from labgen.results.contracts import AnyEvent, ResultDoc
from labgen.results.verdict import Verdict, classify

DATA = Path(__file__).parent / "data"
RECORDED = ["strict-eop-local", "strict-eop-docker"]
BROKEN = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())


def scenario_file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "scale.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_counts(*counts: int | None, name: str = "r-scale-test") -> dict:
    data = copy.deepcopy(BROKEN)
    data["name"] = name
    for m, n in zip(data["traffic"], counts, strict=False):
        if n is not None:
            m["count"] = n
    return data


# ---------------------------------------------------------------- count: copies


def test_count_makes_separate_messages_with_their_own_ids(tmp_path):
    s = load_scenario(str(scenario_file(tmp_path, with_counts(3, None, 2, 1))))
    assert [m.id for m in s.traffic] == [
        "to-fabrikam-1",
        "to-fabrikam-2",
        "to-fabrikam-3",
        "to-internet",
        "from-internet-1",
        "from-internet-2",
        "internal-routing",
    ]
    first, second = s.traffic[0], s.traffic[1]
    assert first is not second and first.to == second.to and first.expect == second.expect == "silently_discarded"
    assert all(m.count == 1 for m in s.traffic)  # a saved plan reloads without copying again


def test_default_ids_are_copied_too(tmp_path):
    data = with_counts(2)
    del data["traffic"][0]["id"]
    assert [m.id for m in load_scenario(str(scenario_file(tmp_path, data))).traffic][:2] == ["m1-1", "m1-2"]


def _long_id(d: dict) -> None:
    d["traffic"][0]["id"] = "x" * 40


def _clash(d: dict) -> None:
    d["traffic"][1]["id"] = "to-fabrikam-2"  # the second copy of traffic[0]


BAD_COUNTS = [
    # id, counts, patch, YAML path, words
    ("zero", (0,), None, "traffic[0].count", "greater than or equal to 1"),
    ("not-a-number", ("many",), None, "traffic[0].count", "valid integer"),
    (
        "copies-count-against-the-limit",
        (12_501, 12_500, 12_500, 12_500),
        None,
        "traffic",
        "50001 message × recipient pairs (copies counted); labgen sends at most 50000",
    ),
    ("id-too-long-for-its-copies", (10,), _long_id, "traffic", "too long for count 10"),
    ("copy-id-used-by-another-message", (2,), _clash, "traffic[1].id", "'to-fabrikam-2' is used twice"),
]


@pytest.mark.parametrize("counts, patch, path, words", [c[1:] for c in BAD_COUNTS], ids=[c[0] for c in BAD_COUNTS])
def test_bad_counts_are_one_line_naming_the_path(tmp_path, counts, patch, path, words):
    data = with_counts(*counts)
    if patch:
        patch(data)
    file = scenario_file(tmp_path, data)
    with pytest.raises(InputError) as e:
        load_scenario(str(file))
    assert e.value.message.startswith(f"{file}: {path}: "), e.value.message
    assert words in e.value.message and "\n" not in e.value.message


def test_the_limit_still_follows_the_environment(tmp_path, monkeypatch):
    file = scenario_file(tmp_path, with_counts(100, 100, 100, 100))
    monkeypatch.setenv("LABGEN_MAX_RECIPIENTS", "399")
    with pytest.raises(InputError, match="400 message × recipient pairs"):
        load_scenario(str(file))
    monkeypatch.setenv("LABGEN_MAX_RECIPIENTS", "400")
    assert len(load_scenario(str(file)).traffic) == 400


def test_count_500_on_the_local_engine_accounts_for_every_message(tmp_path):
    file = scenario_file(tmp_path, with_counts(125, 125, 125, 125))
    code, doc = labgen_json("up", file, "--engine", "local", cwd=tmp_path)
    ResultDoc.model_validate(doc)
    assert code == 0, doc["summary"]
    assert doc["summary"] == {
        "total": 500,
        "delivered": 375,
        "silently_discarded": 125,
        "rejected": 0,
        "deferred": 0,
        "unaccounted": 0,
        "expectations_failed": 0,
    }
    assert len({(m["id"], m["to"]) for m in doc["messages"]}) == 500


# ---------------------------------------------------------------- incremental == from scratch


def recorded_streams(run: str) -> tuple[Plan, list[list[AnyEvent]]]:
    """The run's plan and its events, one list per log file in file order."""
    lab = DATA / run
    plan = Plan.load(lab / "plan.json")
    out = [collect_events_of(path, plan) for path in sorted((lab / "run").glob("*.jsonl"))]
    log = lab / postfix.LOG_FILE
    if log.is_file():
        out.append(list(postfix.parse_log(log.read_text().splitlines(), plan)))
    return plan, [s for s in out if s]


def collect_events_of(path: Path, plan: Plan) -> list[AnyEvent]:
    from labgen.results.contracts import parse_event

    return [parse_event(line) for line in path.read_text().splitlines() if line.strip()]


def interleave(rng: random.Random, streams: list[list[AnyEvent]]) -> list[AnyEvent]:
    """The streams merged in a random order that keeps each stream's own order."""
    order = [i for i, s in enumerate(streams) for _ in s]
    rng.shuffle(order)
    pos = [0] * len(streams)
    out = []
    for i in order:
        out.append(streams[i][pos[i]])
        pos[i] += 1
    return out


def chunks(rng: random.Random, events: list[AnyEvent]) -> list[list[AnyEvent]]:
    cuts = sorted(rng.sample(range(1, len(events)), k=min(len(events) - 1, rng.randint(1, 8))))
    return [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=False)]


@pytest.mark.parametrize("run", RECORDED)
@pytest.mark.parametrize("seed", range(40))
def test_the_incremental_verdict_equals_the_verdict_from_scratch(run, seed):
    plan, streams = recorded_streams(run)
    rng = random.Random(seed)
    events = interleave(rng, streams)
    v = Verdict(plan)
    seen: list[AnyEvent] = []
    for piece in chunks(rng, events):
        v.add(piece)
        seen += piece
        incremental = v.results()
        scratch = classify(plan, seen)
        assert [r.as_dict() for r in incremental] == [r.as_dict() for r in scratch]
        assert [r.final for r in incremental] == [r.final for r in scratch]
        assert v.settled() == all(r.final for r in scratch)
    assert v.settled()


def in_pieces(rng: random.Random, src: Path) -> list[bytes]:
    data = src.read_bytes()
    cuts = sorted(rng.sample(range(1, len(data)), k=6))  # anywhere, mid-line included
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=False)]


@pytest.mark.parametrize("run", RECORDED)
@pytest.mark.parametrize("seed", range(10))
def test_the_collector_reads_appended_pieces_as_the_whole(tmp_path, run, seed):
    """Files grow piece by piece (a line may be half written when polled); every poll returns
    only new whole-line events, and all polls together are the events of the whole files."""
    src = DATA / run
    lab = tmp_path / "lab"
    (lab / "run").mkdir(parents=True)
    (lab / "plan.json").write_bytes((src / "plan.json").read_bytes())
    rng = random.Random(seed)
    files = sorted((src / "run").glob("*.jsonl")) + (
        [src / postfix.LOG_FILE] if (src / postfix.LOG_FILE).is_file() else []
    )
    pieces = {f: in_pieces(rng, f) for f in files}
    collector = Collector(lab)
    got: list[AnyEvent] = []
    while any(pieces.values()):
        f = rng.choice([f for f, p in pieces.items() if p])
        with (lab / "run" / f.name).open("ab") as out:
            out.write(pieces[f].pop(0))
        got += collector.poll()
    got += collector.poll()
    assert collector.poll() == []  # nothing is read twice
    whole = collect_events(lab)

    def per_file(events: list[AnyEvent]) -> dict[str, list[dict]]:
        """Each service's events in order (polls interleave the files differently)."""
        out: dict[str, list[dict]] = {}
        for e in events:
            out.setdefault(e.service or "", []).append(e.model_dump())
        return out

    assert per_file(got) == per_file(whole) and len(got) == len(whole) > 0


@pytest.mark.parametrize("seed", range(10))
def test_postfix_log_read_in_pieces_keeps_its_state(seed):
    lab = DATA / "strict-eop-docker"
    plan = Plan.load(lab / "plan.json")
    lines = (lab / postfix.LOG_FILE).read_text().splitlines()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(lines)), k=5))
    reader = postfix.LogReader(plan)
    events = [e for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=False) for e in reader.feed(lines[a:b])]
    assert events == postfix.parse_log(lines, plan)
    assert any(e.event == "ndr_queued" for e in events)  # the state that spans pieces: queue id -> message


def test_a_line_that_is_no_event_is_an_infra_error_naming_the_file(tmp_path):
    from labgen.errors import InfraError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eop.jsonl").write_text('{"ts": 1, "service": "eop", "event": "warp"}\n')
    with pytest.raises(InfraError, match=r"eop.jsonl line 1 is not a labgen ledger event"):
        Collector(tmp_path).poll()


def test_the_report_of_a_load_run_shows_what_needs_a_look_first(tmp_path):
    """A `count:` run's human report stays readable: at most SHOWN_MAX recipients, the ones not
    delivered first, and a line saying how many it left out (every one is in --json)."""
    from conftest import labgen

    from labgen.results.report import SHOWN_MAX

    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    data["name"] = "report-load"
    internet = next(m for m in data["traffic"] if m["id"] == "to-internet")
    internet["count"] = SHOWN_MAX + 5
    path = tmp_path / "report-load.yaml"
    path.write_text(yaml.safe_dump(data))
    p = labgen("up", path, "--engine", "local", "--workdir", tmp_path, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    total = SHOWN_MAX + 5 + len(data["traffic"]) - 1
    rows = [line for line in p.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == SHOWN_MAX
    assert "to-fabrikam" in rows[0] and "SILENTLY DISCARDED" in rows[0]  # what needs a look comes first
    assert f"… {total - SHOWN_MAX} more recipient(s) not shown" in p.stdout
    assert f"{total} recipient(s): {total - 1} delivered, 1 silently discarded" in p.stdout
