"""Workshops (issue #11): seats on one host. Unit tables for subnet allocation and the trainee's
overlay (untrusted input), then the issue's "Done when" on real Docker labs with real Postfix:
up 4 seats -> each seat's to-fabrikam silently discarded; `workshop check` fails every seat; the
fix in s02's overlay passes s02 only; `workshop reset s02` fails again; `workshop down` leaves
nothing labelled for the workshop."""

from __future__ import annotations

import ipaddress
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TEST_LAB_PREFIX, labgen, labgen_json
from test_report_html import browser as chromium  # noqa: F401  (the headless chromium fixture, as a fixture here)

from labgen import workshop as ws
from labgen.errors import InputError
from labgen.model.scenario import load_scenario, parse_scenario

REPO = Path(__file__).resolve().parent.parent
EXERCISE = REPO / "labgen" / "exercises" / "broken.yaml"
MAY = ["gateway.connectors[*].certificate", "certificates"]

# ---------------------------------------------------------------- subnets


def net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


@pytest.mark.parametrize(
    "n, prefix, taken, start, want",
    [
        (2, 24, [], 0, ["198.18.0.0/24", "198.18.1.0/24"]),
        (2, 24, [net("198.18.0.0/24")], 0, ["198.18.1.0/24", "198.18.2.0/24"]),
        (1, 24, [net("198.18.0.0/16")], 0, ["198.19.0.0/24"]),  # a wider network in the way
        (1, 24, [net("198.18.0.128/25")], 0, ["198.18.1.0/24"]),  # a narrower one inside a /24
        (2, 24, [], 511, ["198.19.255.0/24", "198.18.0.0/24"]),  # wraps around the pool
        (1, 24, [net("10.0.0.0/8"), net("172.17.0.0/16")], 5, ["198.18.5.0/24"]),  # others don't matter
        (2, 25, [], 0, ["198.18.0.0/25", "198.18.0.128/25"]),  # the scenario's size
    ],
)
def test_allocate_subnets(n, prefix, taken, start, want):
    got = ws.allocate_subnets(n, prefix, taken, start=start)
    assert got == want
    assert all(net(g).subnet_of(ws.POOL) for g in got)


def test_allocate_subnets_random_start_distinct_and_free():
    taken = [net(f"198.18.{i}.0/24") for i in range(0, 256, 2)]
    got = [net(g) for g in ws.allocate_subnets(40, 24, taken)]
    assert len(set(got)) == 40
    assert not any(g.overlaps(t) for g in got for t in taken)


def test_allocate_subnets_pool_full_names_what_is_in_the_way():
    with pytest.raises(Exception) as e:
        ws.allocate_subnets(1, 24, [net("198.18.0.0/15")])
    assert "Docker networks" in str(e.value) and getattr(e.value, "exit_code", None) == 3


def test_allocate_subnets_scenario_too_wide_is_bad_input():
    with pytest.raises(InputError):
        ws.allocate_subnets(1, 14, [])


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["w", "class-1", "a" * 27])
def test_workshop_names_ok(name):
    assert ws.check_workshop_name(name) == name
    assert len(ws.seat_lab(name, "s99")) <= 31


@pytest.mark.parametrize("name", ["", "A", "-x", "a" * 28, "x/y", "x\n", "../x", "x y", "é"])
def test_workshop_names_refused(name):
    with pytest.raises(InputError):
        ws.check_workshop_name(name)


@pytest.mark.parametrize("seat", ["s1", "s001", "S01", "01", "s0a", "s01\n", "../s01"])
def test_seat_names_refused(seat):
    with pytest.raises(InputError):
        ws.check_seat(seat)


# ---------------------------------------------------------------- the overlay


def base() -> dict:
    return yaml.safe_load(EXERCISE.read_text())


FIX = {
    "certificates": {"gw-public": {"cn": "mta.contoso.example", "sans": ["mta.contoso.example"], "issuer": "public"}},
    "gateway": {"connectors": [{"name": "Internet", "certificate": "gw-public"}]},
}


def test_overlay_fix_merges_by_connector_name():
    merged = ws.merge_overlay(base(), FIX, MAY, "s02/overlay.yaml")
    s = parse_scenario(merged, "s02/overlay.yaml")
    by_name = {c.name: c for c in s.gateway.connectors}
    assert by_name["Internet"].certificate == "gw-public"
    assert by_name["Office 365"].certificate == "gw-selfsigned"  # untouched
    assert set(s.certificates) == {"gw-selfsigned", "gw-public"}
    assert s.exercise is not None and s.traffic[0].id == "to-fabrikam"


def test_empty_overlay_changes_nothing():
    assert ws.merge_overlay(base(), {}, MAY, "o") == base()


@pytest.mark.parametrize(
    "overlay, says",
    [
        ({"name": "other"}, "name: this exercise does not let you change it"),
        ({"lab": {"subnet": "10.0.0.0/24"}}, "lab: this exercise does not let you change it"),
        ({"traffic": []}, "traffic: this exercise does not let you change it"),
        ({"exercise": {"goals": []}}, "exercise: this exercise does not let you change it"),
        ({"eop": {"profile": "current"}}, "eop: this exercise"),
        ({"gateway": {"hostname": "x.example"}}, "gateway.hostname: this exercise"),
        ({"gateway": {"connectors": [{"name": "Internet", "tls": "none"}]}}, "gateway.connectors[*].tls"),
        ({"gateway": {"connectors": [{"name": "Nope", "certificate": "x"}]}}, "'Nope' is not one of the seat's"),
        ({"gateway": {"connectors": [{"certificate": "x"}]}}, "connectors[0].name: 'None'"),
        ({"gateway": {"connectors": ["Internet"]}}, "expected a mapping with name"),
        ({"gateway": {"connectors": [{"name": ["x"], "certificate": "x"}]}}, "is not one of the seat's"),
        ({"gateway": {"connectors": "all"}}, "gateway.connectors: this exercise"),
        ({"certificates": {"x": {"cert_file": "/etc/shadow", "key_file": "/etc/shadow"}}}, "cannot name files"),
        ({"gateway": {"postfix_config": "/etc"}}, "cannot name files"),
        ({"gateway": {"image": {"ref": "evil"}}}, "cannot name files"),
        ({1: "x"}, "key '1' is no scenario key"),
        ({"certificates\n": {}}, "is no scenario key"),
        ({"\x1b[31mred": 1}, "\\x1b"),
        ({"gateway": {"\u202eevil": 1}}, "\\u202e"),
    ],
)
def test_overlay_refused(overlay, says):
    with pytest.raises(InputError) as e:
        ws.merge_overlay(base(), overlay, MAY, "s02/overlay.yaml")
    msg = e.value.message
    assert says in msg, msg
    assert msg.startswith("s02/overlay.yaml: ")
    assert msg.isprintable() and "\n" not in msg


@pytest.mark.parametrize(
    "overlay, says",
    [
        # allowed paths, invalid values: the scenario's own validation says why
        ({"gateway": {"connectors": [{"name": "Internet", "certificate": "nope"}]}}, "unknown certificate 'nope'"),
        ({"certificates": {"Bad.Key": {"cn": "x.example"}}}, "certificates"),
        ({"certificates": {"c": {"cn": "x\u2028y.example"}}}, "certificates.c"),
        ({"certificates": {"c": {"cn": "a.example", "issuer": "nobody"}}}, "certificates.c.issuer"),
    ],
)
def test_overlay_values_validated_as_a_scenario(overlay, says):
    merged = ws.merge_overlay(base(), overlay, MAY, "o")
    with pytest.raises(InputError) as e:
        parse_scenario(merged, "s02/overlay.yaml")
    assert says in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize(
    "text, says",
    [
        ("gateway: [\n", "malformed YAML"),
        ("a: 1\na: 2\n", "duplicate key"),
        ("- a\n- b\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        ("a: &x [*x]\n", "alias"),
        ("a: !!python/object:os.system x\n", "malformed YAML"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "nested deeper"),
    ],
)
def test_overlay_bad_yaml(tmp_path, text, says):
    p = tmp_path / "overlay.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        ws.read_overlay(p, "s02/overlay.yaml")
    assert says in e.value.message and "\n" not in e.value.message


def test_overlay_comment_only_or_missing_is_empty(tmp_path):
    p = tmp_path / "overlay.yaml"
    assert ws.read_overlay(p, "o") == {}
    p.write_text(ws.OVERLAY_HEADER)
    assert ws.read_overlay(p, "o") == {}


def test_overlay_symlink_refused(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text("{}\n")
    (tmp_path / "overlay.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(InputError):
        ws.read_overlay(tmp_path / "overlay.yaml", "o")


# ---------------------------------------------------------------- exercise: in the scenario


def test_shipped_exercise_is_valid():
    s = load_scenario(str(EXERCISE))
    assert s.exercise is not None
    assert [(g.message, g.expect) for g in s.exercise.goals][0] == ("to-fabrikam", "delivered")
    assert s.exercise.may_change == MAY


@pytest.mark.parametrize(
    "exercise, says",
    [
        ({"task": "t", "goals": [{"message": "nope", "expect": "delivered"}], "may_change": ["certificates"]}, "nope"),
        (
            {
                "task": "t",
                "goals": [{"message": "to-fabrikam", "to": "x@y.example", "expect": "delivered"}],
                "may_change": ["certificates"],
            },
            "exercise.goals[0].to",
        ),
        (
            {"task": "t", "goals": [{"message": "to-fabrikam", "expect": "delivered"}], "may_change": ["lab"]},
            "may_change",
        ),
        (
            {"task": "t", "goals": [{"message": "to-fabrikam", "expect": "lost"}], "may_change": ["certificates"]},
            "expect",
        ),
        ({"task": "", "goals": [{"message": "to-fabrikam", "expect": "delivered"}], "may_change": ["gateway"]}, "task"),
        (
            {"task": "a\nb", "goals": [{"message": "to-fabrikam", "expect": "delivered"}], "may_change": ["gateway"]},
            "task",
        ),
        ({"task": "t", "goals": [], "may_change": ["gateway"]}, "goals"),
    ],
)
def test_exercise_refused(exercise, says):
    data = base()
    data["exercise"] = exercise
    with pytest.raises(InputError) as e:
        parse_scenario(data, "x.yaml")
    assert says in e.value.message, e.value.message


# ---------------------------------------------------------------- the command line: bad input, nothing started


@pytest.mark.parametrize(
    "args",
    [
        ["workshop", "up", "broken", "--seats", "0"],
        ["workshop", "up", "broken", "--seats", "2", "--name", "Bad_Name"],
        ["workshop", "up", "broken", "--seats", "2", "--name", "a" * 28],
        ["workshop", "up", "no-such-scenario", "--seats", "2"],
        ["workshop", "reset"],
        ["workshop", "status", "BAD"],
        ["check", "--seat", "../s01", "w"],
        ["check", "--seat", "s01", "Bad!"],
        ["workshop", "exec", "--name", "w", "s1", "--", "true"],
    ],
)
def test_cli_bad_input(tmp_path, args):
    p = (
        labgen(*args, "--workdir", tmp_path, cwd=tmp_path)
        if args[:2] == ["workshop", "up"]
        else labgen(*args, cwd=tmp_path)
    )
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "labgen-broken").exists()


# ---------------------------------------------------------------- Done when (Docker, real Postfix)


def _docker_objects(name: str) -> tuple[list, list]:
    return ws.workshop_objects(name)


def _result(seat_dir: Path) -> dict:
    return json.loads((seat_dir / "run" / "result.json").read_text())


def _outcome(seat_dir: Path, msg: str) -> str:
    return next(m["outcome"] for m in _result(seat_dir)["messages"] if m["id"] == msg)


def _valid(name: str, doc: dict) -> None:
    """A published document (docs/schemas/<name>.json, labgen.<name>/v1)."""
    import jsonschema

    jsonschema.Draft202012Validator(json.loads((REPO / "docs" / "schemas" / f"{name}.json").read_text())).validate(doc)
    assert doc["schema"] == f"labgen.{name}/v1"


# What a seat is made of in each topology: its containers (service names), and whether the
# seats have networks (each its own /24 of the pool) or share the same loopback addresses.
TOPOLOGIES: dict[str, dict[str, Any]] = {
    "pod": {"services": ["gateway", "lab"], "up_on": "127.51.100.0/24", "networks": 0},
    "network": {"services": ["dns", "eop", "gateway", "sink", "traffic"], "up_on": "198.1", "networks": 1},
}


@pytest.mark.docker
@pytest.mark.parametrize("topology", ["pod", "network"])
def test_workshop_done_when(docker_ready, tmp_path, topology):
    name = f"{TEST_LAB_PREFIX}-{secrets.token_hex(3)}"
    wdir = tmp_path / f"labgen-{name}"
    seats = ["s01", "s02", "s03", "s04"]
    want = TOPOLOGIES[topology]
    try:
        # up: 4 seats, each with the exercise's starting verdict (pod is the default)
        args = ["--topology", "network"] if topology == "network" else []
        p = labgen(
            "workshop", "up", "broken", "--seats", "4", "--name", name, "--workdir", tmp_path, *args, cwd=tmp_path
        )
        assert p.returncode == 0, (p.stdout, p.stderr)
        for seat in seats:
            assert f"{seat}: up on {want['up_on']}" in p.stdout
            assert (wdir / seat / "seat.yaml").is_file() and (wdir / seat / "overlay.yaml").is_file()
            assert yaml.safe_load((wdir / seat / "overlay.yaml").read_text()) is None  # empty at start
            assert _outcome(wdir / seat, "to-fabrikam") == "silently_discarded"
            assert f"`labgen check --seat {seat} {name}`" in (wdir / seat / "handout.md").read_text()
        assert "| s04 |" in (wdir / "handout.md").read_text()
        code, doc = labgen_json("workshop", "status", name, cwd=tmp_path)
        assert code == 0
        _valid("workshop-status", doc)
        rows = {r["seat"]: r for r in doc["seats"]}
        assert sorted(rows) == seats
        subnets = [ipaddress.IPv4Network(r["subnet"]) for r in rows.values()]
        if topology == "network":
            assert len(set(subnets)) == 4 and all(s.subnet_of(ws.POOL) for s in subnets)
        else:  # the same loopback addresses, each seat in its own namespace
            assert {str(s) for s in subnets} == {want["up_on"]}
        n = len(want["services"])
        assert all(r["state"] == "running" and r["containers"] == n for r in rows.values())
        containers, networks = _docker_objects(name)
        assert len(containers) == 4 * n and len(networks) == 4 * want["networks"]
        assert {c.name for c in containers} == {f"labgen-{name}-{st}-{svc}" for st in seats for svc in want["services"]}
        for c in containers:
            seat = c.labels["io.labgen.seat"]
            assert c.labels["io.labgen.lab"] == f"{name}-{seat}" and c.name.startswith(f"labgen-{name}-{seat}-")

        # exec in a seat: output and exit status passed through
        p = labgen("workshop", "exec", "--name", name, "s01", "--", "sh", "-c", "echo hello; exit 7", cwd=tmp_path)
        assert p.returncode == 7 and p.stdout == "hello\n", (p.stdout, p.stderr)

        # workshop check: every seat fails, class report written
        p = labgen("workshop", "check", name, cwd=tmp_path)
        assert p.returncode == 1, (p.stdout, p.stderr)
        report = json.loads((wdir / "class-report.json").read_text())
        _valid("class-report", report)
        assert report["passed"] == [] and sorted(report["seats"]) == seats
        fab = [r for r in report["rows"] if r["message"] == "to-fabrikam"]
        assert len(fab) == 4 and not any(r["passed"] for r in fab)
        assert all("gw.contoso.example" in r["reason"] and "silently_discarded" in r["reason"] for r in fab)
        assert (wdir / "class-report.csv").read_text().startswith("seat,goal,message,")
        page = (wdir / "class-report.html").read_text()
        assert page.count('<tr class="seat-row"') == 4 and page.count(">FAIL<") == 8  # the table and each section
        for seat in seats:  # each seat's own run report, linked from the class page
            assert f'href="{seat}/run/report.html"' in page and (wdir / seat / "run" / "report.html").is_file()

        # an overlay outside what the exercise allows: one line, exit 2, the seat untouched
        before = {c.id for c in _docker_objects(name)[0] if c.labels["io.labgen.seat"] == "s03"}
        (wdir / "s03" / "overlay.yaml").write_text("lab:\n  subnet: 10.0.0.0/24\n")
        p = labgen("check", "--seat", "s03", name, cwd=tmp_path)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, (p.stdout, p.stderr)
        assert "s03/overlay.yaml: lab: this exercise does not let you change it" in p.stderr
        assert before == {c.id for c in _docker_objects(name)[0] if c.labels["io.labgen.seat"] == "s03"}

        # the fix in s02's overlay: the Internet connector's own certificate with another name
        (wdir / "s02" / "overlay.yaml").write_text(yaml.safe_dump(FIX))
        others = {seat: _result(wdir / seat)["run_id"] for seat in ("s01", "s04")}
        code, doc = labgen_json("check", "--seat", "s02", name, cwd=tmp_path)
        assert code == 0, doc
        _valid("check", doc)
        assert all(g["passed"] for g in doc["goals"]) and len(doc["goals"]) == 4
        fab_goal = next(g for g in doc["goals"] if g["message"] == "to-fabrikam")
        assert "mta.contoso.example" in fab_goal["reason"]
        for seat, run_id in others.items():  # the others were not touched and still fail
            assert _result(wdir / seat)["run_id"] == run_id
            assert _outcome(wdir / seat, "to-fabrikam") == "silently_discarded"

        # reset s02: back to the start, and it fails again
        p = labgen("workshop", "reset", "s02", "--name", name, cwd=tmp_path)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert yaml.safe_load((wdir / "s02" / "overlay.yaml").read_text()) is None
        assert _outcome(wdir / "s02", "to-fabrikam") == "silently_discarded"
        code, doc = labgen_json("check", "--seat", "s02", name, cwd=tmp_path)
        assert code == 1 and not all(g["passed"] for g in doc["goals"])

        # down: nothing with the workshop's label is left
        p = labgen("workshop", "down", name, cwd=tmp_path)
        assert p.returncode == 0, (p.stdout, p.stderr)
        containers, networks = _docker_objects(name)
        assert containers == [] and networks == []
    finally:
        ws.down(name)


def test_shipped_exercises_validate_against_the_published_scenario_schema():
    import jsonschema

    schema = json.loads((REPO / "docs" / "schemas" / "scenario.json").read_text())
    for f in sorted((REPO / "labgen" / "exercises").glob("*.yaml")):
        jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(f.read_text()))


@pytest.mark.docker
def test_workshop_seat_that_cannot_start_is_named_and_the_others_run(docker_ready, tmp_path):
    """Something not labgen's in s02's way (a container with its name): s02 is named with the
    reason, s01 comes up and stays up, exit 3; the blocker is not touched by `workshop down`."""
    from labgen.engines.dockerapi import client

    name = f"{TEST_LAB_PREFIX}-{secrets.token_hex(3)}"
    blocker = client().containers.create(
        docker_ready, ["sleep", "600"], name=f"labgen-{name}-s02-gateway", labels={"io.labgen.test": name}
    )
    try:
        p = labgen("workshop", "up", "broken", "--seats", "2", "--name", name, "--workdir", tmp_path, cwd=tmp_path)
        assert p.returncode == 3, (p.stdout, p.stderr)
        assert "s01: up on 127.51.100.0/24" in p.stdout
        assert "seat s02" in p.stdout and "did not start" in p.stdout and f"labgen-{name}-s02-gateway" in p.stdout
        assert "1 of 2 seat(s) up" in p.stdout
        code, doc = labgen_json("workshop", "status", name, cwd=tmp_path)
        assert [r["seat"] for r in doc["seats"]] == ["s01"] and doc["seats"][0]["state"] == "running"
        p = labgen("workshop", "down", name, cwd=tmp_path)
        assert p.returncode == 0, (p.stdout, p.stderr)
        assert ws.workshop_objects(name) == ([], [])
        blocker.reload()  # still there: not labgen's
    finally:
        ws.down(name)
        blocker.remove(force=True)


# ---------------------------------------------------------------- hand-outs


def _handout_inputs(tmp_path, **exercise):
    from labgen.model.plan import make_plan
    from labgen.model.scenario import parse_scenario
    from labgen.results.handout import SeatAccess

    data = yaml.safe_load(EXERCISE.read_text())
    data["exercise"].update(exercise)
    s = parse_scenario(data, "broken.yaml", base_dir=EXERCISE.parent)
    seat = SeatAccess("s02", "ws-s02", "198.18.7.0/24", tmp_path / "labgen-ws" / "s02")
    return s, seat, make_plan(s, "local")


def test_seat_handout_tells_the_story_and_the_task_never_the_cause_or_fix(tmp_path):
    from labgen.results.handout import class_handout, seat_handout

    s, seat, plan = _handout_inputs(tmp_path)
    text = seat_handout("ws", seat, s, plan)
    assert s.about is not None and s.exercise is not None
    assert text.startswith("# One certificate on the Internet and Office 365 send connectors")
    assert "## What the admin sees" in text and "250 2.6.0 Queued mail for delivery" in text
    assert s.about.cause not in text and s.about.fix not in text
    assert "```mermaid\n" in text and "send connector Internet" in text
    assert all(f"`{p}`" in text for p in s.exercise.may_change)
    assert "`labgen check --seat s02 ws`" in text
    swaks = "swaks --server gw.contoso.example --to carol@fabrikam.example"
    assert f"`labgen workshop exec --name ws s02 -- {swaks}`" in text
    klass = class_handout("ws", [seat], s, plan)
    assert "| s02 | ws-s02 | 198.18.7.0/24 |" in klass and "`labgen workshop check ws`" in klass
    assert all(h not in klass for h in s.exercise.hints)  # the trainer's to give


def test_handout_escapes_what_the_scenario_says(tmp_path):
    from labgen.results.handout import seat_handout

    hostile = "Fix it <script>alert(1)</script> [click](javascript:alert(1)) `rm -rf /` | cell"
    s, seat, plan = _handout_inputs(tmp_path, task=hostile)
    text = seat_handout("ws", seat, s, plan)
    assert "<script>" not in text and "[click](javascript:" not in text and "`rm -rf /`" not in text
    assert "\\<script\\>" in text or "&lt;script" in text


# ---------------------------------------------------------------- the class report page

HOSTILE_REASON = '<script>alert(1)</script><img src=x onerror=alert(2)> "quoted" & =cmd|calc'


def _class_report(tmp_path: Path) -> tuple[Path, Path, Path]:
    w = ws.Workshop("cls", tmp_path / "labgen-cls", "broken", EXERCISE.parent)
    w.dir.mkdir()
    for seat in ("s01", "s02", "s03"):
        w.seats.append(ws.Seat(seat, f"cls-{seat}", "198.18.0.0/24", w.dir / seat))
    goal = dict(message="to-fabrikam", to="carol@fabrikam.example", expect="delivered", says="")
    results = [
        ws.GoalResult("s01", 1, outcome="delivered", passed=True, reason="delivered: in mailbox", **goal),
        ws.GoalResult("s01", 2, outcome="delivered", passed=True, reason="delivered", **goal),
        ws.GoalResult("s02", 1, outcome="silently_discarded", passed=False, reason=HOSTILE_REASON, **goal),
        ws.GoalResult("s02", 2, outcome="delivered", passed=True, reason="delivered", **goal),
        ws.GoalResult("s03", 1, outcome="not run", passed=False, reason="overlay refused", **goal),
        ws.GoalResult("s03", 2, outcome="not run", passed=False, reason="overlay refused", **goal),
    ]
    return ws.write_class_report(w, results)


def test_class_report_page_has_a_row_per_seat_and_escapes_reasons(tmp_path):
    jpath, cpath, hpath = _class_report(tmp_path)
    page = hpath.read_text()
    assert jpath.is_file() and cpath.is_file()
    assert page.count('<tr class="seat-row"') == 3
    assert "<script>" not in page and "<img" not in page  # the reason is text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "no report" in page  # no seat has run here: nothing to link
    doc = json.loads(jpath.read_text())
    assert doc["passed"] == ["s01"]


def test_class_report_page_in_a_browser(tmp_path, request):
    browser = request.getfixturevalue("chromium")
    _, _, hpath = _class_report(tmp_path)
    browser.open(hpath.as_uri())
    assert browser.problems() == []  # no dialog: neither alert ran
    rows = json.loads(
        browser.eval(
            """JSON.stringify([...document.querySelectorAll('#seats tr.seat-row')].map(r =>
                [r.dataset.seat, r.cells[1].textContent.trim(), r.cells[2].textContent.trim()]))"""
        )
    )
    assert rows == [["s01", "PASS", "2 of 2"], ["s02", "FAIL", "1 of 2"], ["s03", "FAIL", "0 of 2"]]
    assert browser.eval("document.scripts.length") == 0
    assert HOSTILE_REASON in browser.eval("document.querySelector('#seats tr[data-seat=s02] td.reason').textContent")
    browser.screenshot(tmp_path / "class-report.png")
