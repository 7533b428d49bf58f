"""`labgen test`: run a directory of scenarios as a test suite, each message × recipient
expectation a test case (issue #10), with JUnit XML (results/junit.py) and a labgen.test/v1
document for CI.

- Finding: PATHs are scenario files, directories (every *.yaml / *.yml below, sorted; hidden
  files and directories and labgen's own lab directories skipped) or built-in names
  (`broken`, `example:NAME`). Every scenario found is loaded and planned before any lab runs: one
  that is not a scenario is bad input (exit 2, one line naming it), and nothing starts.
- Running: each scenario through run.run_lab, the code path of `labgen up`. A message without
  any expectation is not a test case (it is in the result document); a recipient the lab lost
  track of (unaccounted) always is, as an error.
- Parallel (-j N): labs run in worker processes, not threads: the local engine serves a lab in
  the calling process, and its services share process-wide state (the SMTP servers' logger and
  its fault filter, the ledger's fault registry), so two labs in one process could silence each
  other's log lines; processes also spread the TLS work over cores. Local labs get their own
  port on their loopback addresses, so any two can run at once. Docker labs need distinct
  subnets: two whose subnets overlap never run at the same time (the later waits), and each
  Docker lab is removed after its verdict, so the next one with that subnet can start.
- Exit: 0 every expectation held, 1 one failed, 2 bad input, 3 a lab could not run.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .errors import InputError, LabgenError, escape
from .model.scenario import Scenario
from .results import junit
from .results.contracts import ResultDoc, TestCaseRow, TestDoc, TestSuiteRow, TestSummary
from .results.report import expectation_text

SUFFIXES = (".yaml", ".yml")
LAB_MARKER = ".labgen-lab"  # run.MARKER: a lab directory labgen wrote (it may hold compose.yaml)


@dataclass
class Entry:
    """A scenario found, loaded and planned: what `ref` names (as load_scenario takes it)."""

    ref: str
    scenario: Scenario


# ---------------------------------------------------------------- finding and validating


def _files_below(root: Path) -> list[Path]:
    found: list[Path] = []
    for path in sorted(root.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue  # .git, .github/workflows/*.yml, .gitlab-ci.yml: never scenarios
        if path.is_dir() and not path.is_symlink():
            if not (path / LAB_MARKER).is_file():  # labgen-LAB/compose.yaml is no scenario
                found += _files_below(path)
        elif path.suffix in SUFFIXES and path.is_file():
            found.append(path)
    return found


def find(paths: list[str]) -> list[str]:
    """Every scenario reference the PATHs name, in order: files as given, a directory's scenario
    files sorted, built-in names as they are. A directory holding none is bad input."""
    refs: list[str] = []
    for p in paths or ["."]:
        path = Path(p)
        if path.is_dir():
            below = _files_below(path)
            if not below:
                raise InputError(
                    f"{escape(p, 100)}: no scenario file (*.yaml, *.yml) in this directory; name files or another one"
                )
            # A path with a '/' is always read as a file (never a built-in's name).
            refs += [str(f) if "/" in str(f) else f"./{f}" for f in below]
        elif path.is_file() and path.suffix not in SUFFIXES and "/" not in p and not p.startswith("example:"):
            refs.append(f"./{p}")  # a file in this directory whose name looks like a built-in's
        else:
            refs.append(p)  # a file, `broken`, `example:NAME`: load_scenario says what is wrong
    return refs


def load_all(refs: list[str]) -> list[Entry]:
    """Load and plan every scenario (InputError on the first that is not one): nothing runs
    until all are known good. Two files for one lab name would share a lab directory: refused."""
    from .model.plan import AsWritten, make_plan
    from .model.scenario import load_scenario

    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for ref in refs:
        s = load_scenario(ref)
        make_plan(s, AsWritten())  # the address checks `labgen validate` makes
        if s.name in seen:
            raise InputError(
                f"{escape(ref, 100)}: lab name '{s.name}' is also {escape(seen[s.name], 100)}'s; two labs of "
                "one name share a lab directory: give one another name (name: in the file)"
            )
        seen[s.name] = ref
        entries.append(Entry(ref=ref, scenario=s))
    return entries


def select_entries(entries: list[Entry], pattern: str | None) -> list[Entry]:
    """-k: the scenarios whose name or source contains `pattern`; none is bad input."""
    if not pattern:
        return entries
    chosen = [e for e in entries if pattern in e.scenario.name or pattern in e.ref]
    if not chosen:
        raise InputError(
            f"-k {escape(pattern, 60)}: matches no scenario's name or file "
            f"({len(entries)} found: {escape(', '.join(e.scenario.name for e in entries), 120)})"
        )
    return chosen


# ---------------------------------------------------------------- running


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def run_job(ref: str, engine_name: str, workdir: str) -> dict[str, Any]:
    """One scenario, as `labgen up` runs it (run.run_lab); in a worker process with -j > 1, so
    it takes and returns plain data. A lab that could not run is reported, not raised."""
    from .engines import named
    from .model.scenario import load_scenario
    from .run import run_lab

    started, t0 = _utc_now(), time.monotonic()
    s = load_scenario(ref)  # known good: load_all read it before anything ran
    engine = named(engine_name)
    doc: ResultDoc | None = None
    error: str | None = None
    code = 0
    try:
        doc = run_lab(s, engine, Path(workdir))
    except LabgenError as e:
        error, code = e.message, e.exit_code
    except Exception as e:  # a bug or an environment labgen did not foresee: this lab's error
        error, code = f"unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}", 3
    finally:
        if engine.name == "docker":  # Docker labs stay up after `up`; a test suite leaves none behind
            try:
                engine.down(s.name)
            except LabgenError as e:
                error = error or f"could not remove the lab: {e.message}"
                code = code or 3
    return {
        "started": started,
        "duration_s": round(time.monotonic() - t0, 3),
        "result": doc.model_dump(mode="json", by_alias=True) if doc else None,
        "error": error,
        "code": code,
    }


def _conflict(engine_name: str, a: Scenario, b: Scenario) -> bool:
    """Can these two labs not run at once? Docker: their subnets overlap. Local: never (each lab
    has its own port on the loopback addresses)."""
    if engine_name != "docker":
        return False
    return ipaddress.ip_network(a.lab.subnet).overlaps(ipaddress.ip_network(b.lab.subnet))


def run_all(
    entries: list[Entry],
    engine_name: str,
    workdir: Path,
    jobs: int = 1,
    on_suite: Callable[[junit.Suite], None] = lambda _: None,
) -> list[junit.Suite]:
    """Run every entry (`jobs` at a time in worker processes), calling `on_suite` in the
    entries' order as each verdict is in; the suites in that order."""
    results: dict[int, dict[str, Any]] = {}
    suites: list[junit.Suite] = []

    def flush() -> None:
        while len(suites) in results:
            i = len(suites)
            suite = to_suite(entries[i], engine_name, results[i])
            suites.append(suite)
            on_suite(suite)

    if jobs <= 1 or len(entries) <= 1:
        for i, e in enumerate(entries):
            results[i] = run_job(e.ref, engine_name, str(workdir))
            flush()
        return suites
    pending = list(range(len(entries)))
    running: dict[Future[dict[str, Any]], int] = {}
    with ProcessPoolExecutor(max_workers=min(jobs, len(entries)), mp_context=get_context("spawn")) as pool:
        try:
            while pending or running:
                for i in list(pending):
                    if len(running) >= jobs:
                        break
                    if any(_conflict(engine_name, entries[i].scenario, entries[j].scenario) for j in running.values()):
                        continue
                    pending.remove(i)
                    running[pool.submit(run_job, entries[i].ref, engine_name, str(workdir))] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    i = running.pop(f)
                    try:
                        results[i] = f.result()
                    except Exception as e:  # the worker died (BrokenProcessPool, out of memory)
                        results[i] = {
                            "started": _utc_now(),
                            "duration_s": 0.0,
                            "result": None,
                            "error": f"the worker process running it failed: {type(e).__name__}: {e}",
                            "code": 3,
                        }
                flush()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # each running lab aborts on its own Ctrl-C
            raise
    return suites


def _expectations(s: Scenario) -> list[tuple[str, str, str]]:
    rows = []
    for m in s.traffic:
        for rcpt in m.to:
            expected = m.expected_for(rcpt)
            if expected or m.expect_reply or m.expect_spf:
                m_row = {"expected": expected, "expected_reply": m.expect_reply, "expected_spf": m.expect_spf}
                rows.append((str(m.id), rcpt, expectation_text(m_row)))
    return rows


def to_suite(entry: Entry, engine_name: str, job: dict[str, Any]) -> junit.Suite:
    s = entry.scenario
    doc = job["result"]
    if doc is None:
        error = job["error"] or "the lab did not run"
        return junit.Suite(
            scenario=s.name,
            source=entry.ref,
            engine=engine_name,
            started=job["started"],
            duration_s=job["duration_s"],
            cases=junit.cases_not_run(_expectations(s), error),
            description=s.description,
            error=error,
            profile=s.eop.profile,
        )
    unaccounted = [m for m in doc["messages"] if m["outcome"] == "unaccounted"]
    error = job["error"]
    if unaccounted and not error:  # as `labgen up` says it (exit 3)
        m = unaccounted[0]
        error = (
            f"{len(unaccounted)} message(s) unaccounted for in lab {doc['scenario']}: "
            f"{m['id']} to {m['to']}: {m['why']}"
        )
    return junit.Suite(
        scenario=doc["scenario"],
        source=entry.ref,
        engine=doc["engine"],
        started=job["started"],
        duration_s=doc["duration_s"],
        cases=junit.cases_from_result(doc),
        description=doc["description"],
        error=error,
        lab_dir=doc["lab_dir"],
        run_id=doc["run_id"],
        profile=doc.get("profile"),
        result=doc,
    )


# ---------------------------------------------------------------- verdict and output


def exit_code(suites: list[junit.Suite]) -> int:
    """3 when a lab could not run (its verdict is missing), else 1 when an expectation failed, else 0."""
    if any(s.status == "error" for s in suites):
        return 3
    return 1 if any(s.status == "failed" for s in suites) else 0


def document(suites: list[junit.Suite], engine: str, jobs: int) -> TestDoc:
    rows = []
    for s in suites:
        c = s.counts
        rows.append(
            TestSuiteRow(
                scenario=s.scenario,
                source=s.source,
                status=s.status,
                tests=c["tests"],
                failures=c["failures"],
                errors=c["errors"],
                duration_s=s.duration_s,
                error=s.error,
                cases=[
                    TestCaseRow(
                        id=k.msgid,
                        to=k.rcpt,
                        status=k.status,
                        expected=k.expected,
                        outcome=k.outcome,
                        message=k.message,
                    )
                    for k in s.cases
                ],
                result=ResultDoc.model_validate(s.result) if s.result else None,
            )
        )
    total = sum(r.tests for r in rows)
    failures = sum(r.failures for r in rows)
    errors = sum(r.errors for r in rows)
    return TestDoc(
        engine=engine,
        jobs=jobs,
        exit_code=exit_code(suites),
        suites=rows,
        summary=TestSummary(
            scenarios=len(rows), tests=total, passed=total - failures - errors, failures=failures, errors=errors
        ),
    )


def suite_line(s: junit.Suite) -> str:
    """One line per scenario: ✓/✗ (! when its lab could not run), the counts, the time."""
    c = s.counts
    mark = {"passed": "✓", "failed": "✗", "error": "!"}[s.status]
    passed = c["tests"] - c["failures"] - c["errors"]
    extra = f", {c['errors']} error(s)" if c["errors"] else ""
    return (
        f"{mark} {s.scenario}: {passed}/{c['tests']} expectation(s) held, {c['failures']} failed{extra} "
        f"({s.duration_s:.1f} s, {s.source})"
    )


def failure_lines(s: junit.Suite) -> list[str]:
    """The failures of a scenario, as `labgen up` words them (results/report.py), then its error."""
    lines = []
    for c in s.cases:
        if c.status == "failed":
            lines.append(
                f"  expectation failed in {s.scenario}: {c.name}: expected {c.expected}, got {c.outcome} ({c.why})"
            )
            lines.append(f"      {c.at}")
        elif c.status == "error" and c.outcome == "unaccounted":
            lines.append(f"  {s.scenario}: {c.name}: {c.message}")
    if s.error:
        lines.append(f"  {s.scenario}: the lab could not run: {s.error}")
    return lines


def summary_line(suites: list[junit.Suite]) -> str:
    tests = sum(s.counts["tests"] for s in suites)
    failures = sum(s.counts["failures"] for s in suites)
    errors = sum(s.counts["errors"] for s in suites)
    broken = sum(s.status == "error" for s in suites)
    verdict = (
        f"{broken} lab(s) could not run."
        if broken
        else f"{failures} expectation(s) FAILED."
        if failures
        else "All expectations held."
    )
    return (
        f"{len(suites)} scenario(s), {tests} expectation(s): {tests - failures - errors} held, {failures} failed, "
        f"{errors} error(s). {verdict}"
    )
