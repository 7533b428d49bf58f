"""The pipeline's driver: scenario -> plan -> PKI -> engine -> traffic -> ledger -> verdict.
Returns the `labgen.result/v1` document; the CLI prints it."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from .engines.base import Engine
from .errors import InfraError, InputError
from .files import write_whole
from .lab.ledger import cannot_write, clear_fault
from .lab.pki import make_pki
from .model.plan import Plan, make_plan
from .model.scenario import Scenario
from .results import verdict
from .results.collect import Collector
from .results.contracts import AnyEvent, MessageResult, ResultDoc
from .wait import poll

POLL_S = 0.05
# Below this much free space (or these many free inodes) on run/'s file system a run cannot keep
# its ledger and mailboxes: it stops at once instead of failing write by write (covers both
# engines, and writers that report no fault of their own, such as Postfix's log).
MIN_FREE_BYTES = 1 << 20
MIN_FREE_INODES = 64


MARKER = ".labgen-lab"  # written into every lab directory labgen creates: it may rewrite its run/
MARKER_TEXT = "written by labgen: this lab directory's run/ is rewritten on every run\n"


def lab_dir(workdir: Path, lab: str) -> Path:
    return Path(workdir) / f"labgen-{lab}"


def _is_lab_dir(labdir: Path) -> bool:
    """Marked by labgen, or a lab directory an earlier labgen wrote (plan and PKI stamp)."""
    return any((labdir / rel).is_file() and not (labdir / rel).is_symlink() for rel in (MARKER, "certs/spec.sha256"))


def _refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise InputError(
            f"{path} is a symbolic link; labgen does not follow links for lab directories: "
            "remove it or choose another directory (--workdir, -o)"
        )


def make_lab_dir(labdir: Path, force: bool = False) -> None:
    """The lab directory, never through a symlink: created 0700 (it holds private keys) and
    marked; an existing one only if labgen made it, it is empty, or `force` (then left as it is,
    the keys are in its 0700 certs/)."""
    _refuse_symlink(labdir)
    try:
        if not labdir.exists():
            labdir.parent.mkdir(parents=True, exist_ok=True)
            labdir.mkdir(mode=0o700)
            (labdir / MARKER).write_text(MARKER_TEXT)
            return
        if not labdir.is_dir():
            raise InputError(f"{labdir} exists and is not a directory; remove it or choose another directory")
        if _is_lab_dir(labdir) or not any(labdir.iterdir()):
            labdir.chmod(0o700)
        elif not force:
            raise InputError(
                f"{labdir} is not empty and labgen did not create it; pass --force to write the lab "
                "into it anyway, or choose another directory"
            )
        elif (labdir / "run").exists() or (labdir / "run").is_symlink():
            raise InputError(
                f"{labdir / 'run'} exists and labgen did not write it (it replaces run/ on every "
                "run); move it away or choose another directory"
            )
        (labdir / MARKER).write_text(MARKER_TEXT)
    except OSError as e:
        raise InfraError(
            f"cannot create or use the lab directory {labdir}: {e.strerror}; choose another with --workdir"
        ) from None


@contextmanager
def lab_lock(labdir: Path, force: bool = False):
    """One labgen command per lab directory at a time (a second `up` would wipe the first's run/)."""
    make_lab_dir(labdir, force)
    with open(labdir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InfraError(
                f"lab directory {labdir} is in use by another labgen command; wait for it "
                "to finish or use another --workdir"
            ) from None
        yield


def fresh_run_dir(labdir: Path) -> Path:
    """An empty run/ (0700) in a lab directory make_lab_dir accepted: the old one is labgen's."""
    run_dir = labdir / "run"
    _refuse_symlink(run_dir)
    try:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(mode=0o700)
    except OSError as e:
        raise InfraError(
            f"cannot make the run directory {run_dir}: {e.strerror}; free space or choose another --workdir"
        ) from None
    clear_fault(run_dir)  # a new run: the last one's fault is history
    return run_dir


def check_space(run_dir: Path) -> None:
    """InfraError when run/'s file system is (nearly) full: statvfs, cheap enough for every poll."""
    try:
        st = os.statvfs(run_dir)
    except OSError as e:
        raise InfraError(
            f"cannot check the lab's run directory {run_dir}: {e.strerror}; choose another --workdir"
        ) from None
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES or (st.f_files and st.f_favail < MIN_FREE_INODES):
        what = f"{free // 1024} KiB free" if free < MIN_FREE_BYTES else f"{st.f_favail} inodes free"
        raise InfraError(
            f"the lab's run directory {run_dir} is on a full file system ({what}, labgen needs "
            f"{MIN_FREE_BYTES >> 20} MiB): {os.strerror(errno.ENOSPC)}; free space there or choose "
            "another --workdir"
        )


def check_lab(engine: Engine, plan: Plan, labdir: Path) -> None:
    """InfraError when the running lab is broken (engine.check: a stopped service, a service that
    could not write), or run/'s file system is full."""
    engine.check(plan, labdir)
    check_space(labdir / "run")


def prepare_lab(
    s: Scenario,
    engine: Engine,
    workdir: Path,
    subnet: str | None = None,
    labdir: Path | None = None,
    plan: Plan | None = None,
    force: bool = False,
) -> tuple[Plan, Path]:
    """Plan (unless given), lab directory (0700), PKI, a fresh run directory and plan.json."""
    plan = plan or make_plan(s, engine, subnet)
    labdir = labdir or lab_dir(workdir, s.name)
    make_lab_dir(labdir, force)
    make_pki(plan, labdir)
    plan = engine.prepare(plan, labdir)
    fresh_run_dir(labdir)
    try:
        plan.save(labdir / "plan.json")
    except OSError as e:
        raise InfraError(cannot_write("the lab's plan", labdir / "plan.json", e)) from None
    return plan, labdir


def wait_settled(
    plan: Plan, new_events: Callable[[], Iterable[AnyEvent]], deadline: float, check: Callable[[], None] = lambda: None
) -> list[verdict.RcptResult]:
    """Poll until every message settled or the deadline; `new_events` returns the events that
    came since its last call (results.collect.Collector.poll), and only the recipients they
    concern are classified again, so a poll costs what is new, not the whole run. `check`
    raises (InfraError) as soon as the lab cannot go on, rather than waiting out the deadline."""
    v = verdict.Verdict(plan)

    def settled() -> bool:
        v.add(new_events())
        check()  # after reading: a verdict from a ledger with a hole in it is no verdict
        return v.settled()

    # At the deadline what is still on its way is the verdict's to name (deferred), not a failure.
    poll(settled, waiting_for="every message to settle", until=deadline, interval=POLL_S, expire=lambda _: True)
    return v.results()


def run_lab(
    s: Scenario,
    engine: Engine,
    workdir: Path,
    subnet: str | None = None,
    on_phase: Callable[[str], None] = lambda _: None,
    force: bool = False,
    labdir: Path | None = None,
    plan: Plan | None = None,
) -> ResultDoc:
    """`labdir`: the lab directory when it is not <workdir>/labgen-<lab> (a workshop seat's);
    `plan`: one already made (a workshop seat's, with its labels)."""
    t0 = time.monotonic()
    plan = plan or make_plan(s, engine, subnet)  # bad input fails before anything is created
    labdir = labdir or lab_dir(workdir, s.name)
    with lab_lock(labdir, force):
        return _run_locked(s, engine, workdir, plan, t0, on_phase, labdir)


def _run_locked(
    s: Scenario,
    engine: Engine,
    workdir: Path,
    plan: Plan,
    t0: float,
    on_phase: Callable[[str], None],
    labdir: Path | None = None,
) -> ResultDoc:
    on_phase("making certificates")
    plan, labdir = prepare_lab(s, engine, workdir, plan=plan, labdir=labdir)  # lab_lock has accepted (and marked) it
    run_dir = labdir / "run"
    check_space(run_dir)  # nothing started yet
    try:
        on_phase(f"starting the lab ({engine.name} engine)")
        engine.start(plan, labdir, time.monotonic() + s.deadline_s + 60)
        on_phase("sending traffic")
        engine.inject(plan, labdir)
        check_lab(engine, plan, labdir)
        # The deadline counts from the traffic: start-up time is not the messages' time.
        deadline = time.monotonic() + s.deadline_s
        on_phase("waiting for every message to settle")
        results = wait_settled(plan, Collector(labdir, plan).poll, deadline, lambda: check_lab(engine, plan, labdir))
    except BaseException:
        engine.abort(plan, labdir)  # nothing half-started is left behind (Ctrl-C included)
        raise
    engine.finish(plan, labdir)
    doc = result_document(plan, labdir, results, time.monotonic() - t0)
    # A Docker lab's traffic container writes its own verdict there (the lab's, checked against
    # this one by the tests); the host's fills in only where the lab wrote none.
    if not engine.writes_own_result or not (run_dir / RESULT_FILE).is_file():
        write_result(doc, run_dir)
    return doc


RESULT_FILE = "result.json"


def write_result(doc: ResultDoc, run_dir: Path) -> Path:
    """run/result.json: the document `up --json` prints, for `labgen report` and `labgen graph`.
    Written to a temporary file and renamed over it, so a reader never sees half of one."""
    path = run_dir / RESULT_FILE
    try:
        write_whole(path, doc.model_dump_json(indent=2, by_alias=True), mode=0o600)
    except OSError as e:
        raise InfraError(cannot_write("the run's result", path, e)) from None
    return path


def result_document(plan: Plan, labdir: Path, results: list[verdict.RcptResult], duration: float) -> ResultDoc:
    return ResultDoc(
        scenario=plan.lab,
        description=plan.scenario.description,
        engine=plan.engine,
        topology=plan.topology,
        profile=plan.scenario.eop.profile,
        duration_s=round(duration, 3),
        lab_dir=str(labdir),
        run_id=plan.run_id,
        messages=[r.as_model() for r in results],
        summary=verdict.summary(results),
    )


def check_accounted(doc: ResultDoc) -> None:
    missing: list[MessageResult] = [m for m in doc.messages if m.outcome == "unaccounted"]
    if missing:
        m = missing[0]
        raise InfraError(
            f"{len(missing)} message(s) unaccounted for in lab {doc.scenario}: "
            f"{m.id} to {m.to}: {m.why}; see {doc.lab_dir}/run/"
        )
