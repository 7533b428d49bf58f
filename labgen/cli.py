"""The labgen command line. Every command that loads a scenario reports bad input as one line
(exit 2); infrastructure failures exit 3; a run whose expectations fail exits 1 (DESIGN.md §3)."""

from __future__ import annotations

import signal
import sys
import threading

INTERRUPTED = "labgen: interrupted; nothing this command started is left running"


def _interrupted_while_loading(signum, frame):
    # Ctrl-C while the modules below load (a second or more on a slow machine): nothing has
    # started yet, so the one line, not an import traceback.
    sys.stderr.write(INTERRUPTED + "\n")
    raise SystemExit(130)


_previous_sigint = signal.getsignal(signal.SIGINT)
# Not when SIGINT is ignored (a background job), nor when imported off the main thread.
_guard = _previous_sigint is signal.default_int_handler and threading.current_thread() is threading.main_thread()
if _guard:
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

# Only what `--version` and `--help` need loads here (they take ~0.05 s, not 0.2-0.4): rich, pydantic,
# the scenario model and the engines load when a command runs (bench/bench_startup.py).
import click  # noqa: E402

from . import __version__  # noqa: E402
from .errors import InputError, LabgenError, escape, one_line  # noqa: E402

if _guard:
    signal.signal(signal.SIGINT, _previous_sigint)  # from here on LabgenGroup turns it into that line

# The consoles: made by `main` when a command runs (_make_consoles).
out: Console
err: Console


def _make_consoles() -> None:
    global out, err
    from rich.console import Console

    # Piped output is as wide as a log viewer, not 80 columns; no emoji codes (fingerprints hold ':cd:').
    out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
    err = Console(stderr=True, highlight=False, emoji=False)


def load_scenario(ref: str, profile: str | None = None) -> Scenario:
    from .model.scenario import load_scenario as load  # pydantic: only for commands that read a scenario
    from .model.scenario import with_profile

    s = load(ref)
    return with_profile(s, profile) if profile else s


PROFILE_OPTION = click.option(
    "--profile",
    type=click.Choice(["seed", "current"]),
    help=(
        "Run under this EOP behaviour set instead of the scenario's eop.profile (its expectations, written for "
        "its own profile, are then not checked)."
    ),
)


def _workdir(value: str | None) -> Path:
    return Path(value or os.environ.get("LABGEN_WORKDIR") or ".").resolve()


if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console
    from rich.text import Text

    from .model.scenario import Scenario
    from .results.contracts import ResultDoc


def _print_json(doc: BaseModel | dict[str, Any]) -> None:
    """A --json document: a contract model (results/contracts.py) as its schema says; a JSON Schema
    (a dict) as it is."""
    from pydantic import BaseModel

    data = doc.model_dump(mode="json", by_alias=True) if isinstance(doc, BaseModel) else doc
    click.echo(json.dumps(data, indent=2))


def _text(value: object, style: str = "") -> Text:
    """Untrusted text (scenario values, file names, what lab services said) for rich: never
    parsed as markup, control characters escaped."""
    from rich.text import Text

    return Text(escape(value), style=style)


def _error_lines(e: LabgenError) -> str:
    """The last guard before the terminal: bad input is one escaped line of at most 300
    characters; an infrastructure error may carry a log tail, each line escaped and capped."""
    if isinstance(e, InputError):
        return one_line(f"labgen: {e.message}")
    first, *rest = e.message.splitlines() or [""]
    return "\n".join([one_line(f"labgen: {first}"), *(one_line(line) for line in rest[-40:])])


class LabgenGroup(click.Group):
    """Turns LabgenError into one line and its exit code; --debug keeps the traceback."""

    def invoke(self, ctx):
        debug = ctx.params.get("debug") or os.environ.get("LABGEN_DEBUG")
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except LabgenError as e:
            if debug:
                raise
            click.echo(_error_lines(e), err=True)  # never wrapped
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            # run_lab has already removed what this command started (engine.abort).
            click.echo(INTERRUPTED, err=True)
            sys.exit(130)
        except Exception as e:  # a bug or an environment labgen did not foresee: still one line
            if debug:
                raise
            first = escape((str(e).splitlines() or [""])[0], 160)
            if type(e).__module__.startswith("requests") and "Timeout" in type(e).__name__:
                # labgen speaks HTTP only to the Docker engine (docker-py, 60 s timeout): the engine is in the way.
                click.echo(
                    one_line(
                        f"labgen: the Docker engine did not answer within 60 s ({first}); check `docker info`, "
                        "and restart the engine if it hangs"
                    ),
                    err=True,
                )
                sys.exit(3)
            click.echo(
                one_line(f"labgen: unexpected {type(e).__name__}: {first} (run with --debug for the traceback)"),
                err=True,
            )
            sys.exit(3)


def _setup_logging(verbose: int, quiet: bool) -> None:
    """Core code reports progress through `logging` (logger "labgen"): INFO by default, DEBUG
    with -v, warnings only with --quiet. A rich handler on a terminal, plain lines otherwise."""
    import logging

    handler: logging.Handler
    if err.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=err,
            show_time=False,
            show_path=False,
            show_level=verbose > 0,
            markup=False,
            highlighter=None,
            rich_tracebacks=False,
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("labgen")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _quiet_for_json(as_json: bool) -> None:
    """--json: stdout is the document, stderr keeps warnings only (unless -v asked for more)."""
    import logging

    logger = logging.getLogger("labgen")
    if as_json and logger.level == logging.INFO:
        logger.setLevel(logging.WARNING)


@click.group(cls=LabgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labgen")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (each step's output).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def main(debug, verbose, quiet):
    """labgen: mail-flow labs that reproduce Exchange Online / gateway misconfigurations.

    Start with `labgen up broken`, then `labgen up fixed`, or `labgen compare broken fixed`.
    """
    _make_consoles()
    _setup_logging(verbose, quiet)


# ---------------------------------------------------------------- scenarios, validate, schema, certs


def _catalogue_rows() -> list[dict[str, Any]]:
    from .model.scenario import catalogue_entries

    rows = []
    for name, fixed in catalogue_entries():
        s = load_scenario(name)
        about = s.about.model_dump() if s.about else {}
        rows.append(
            {
                "name": name,
                "fixed": fixed,
                "description": s.description,
                "messages": len(s.traffic),
                "profile": s.eop.profile,
                **about,
            }
        )
    return rows


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (labgen.scenarios/v1).")
def scenarios(as_json):
    """The catalogue: documented mail-flow failures, each a broken scenario and its fix
    (`labgen up NAME`, `labgen up NAME:fixed`, `labgen explain NAME`)."""
    rows = _catalogue_rows()
    if as_json:
        from .results.contracts import ScenariosDoc

        _print_json(ScenariosDoc.model_validate({"scenarios": rows}))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=True, expand=True)
    for col in ("scenario", "tags", "symptom", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        names = Text.assemble(_text(r["name"], "bold"), *(("\n", _text(r["fixed"])) if r["fixed"] else ()))
        table.add_row(
            names,
            _text(", ".join(r.get("tags") or [])),
            _text(r.get("symptom") or r["description"]),
            _text((r.get("sources") or [""])[0]),
        )
    out.print(table)
    out.print(_text("labgen explain NAME tells the story; labgen up NAME runs it, NAME:fixed its fix", "dim"))


@main.command()
@click.argument("name")
def explain(name):
    """The story of a catalogue scenario: what is configured, what each party sees, why, the fix."""
    from rich.text import Text

    s = load_scenario(name)
    if s.about is None:
        raise InputError(f"{escape(name, 80)}: not a catalogue scenario (no about:); `labgen scenarios` lists them")
    a = s.about
    lines: list[tuple[str, str]] = [(a.title, "bold"), ("", "")]
    lines += [("Symptom: " + a.symptom, ""), ("", "")]
    lines.append((f"What is configured (EOP profile {s.eop.profile}):", "bold"))
    for c in s.gateway.connectors:
        cert = s.certificates.get(c.certificate) if c.certificate else None
        who = f"certificate {cert.cn or c.certificate} ({cert.issuer})" if cert else "no certificate"
        route = c.smarthost or "MX"
        lines.append(
            (f"  gateway send connector '{c.name}': {', '.join(c.address_space)} -> {route}, TLS {c.tls}, {who}", "")
        )
    for tname, t in s.tenants.items():
        for ic in t.inbound_connectors:
            crit = ic.tls_sender_certificate_name or ", ".join(ic.sender_ip_addresses)
            lines.append((f"  {tname}: inbound connector '{ic.name}' ({ic.type}) for {crit}", ""))
        for oc in t.outbound(s.gateway.hostname):
            lines.append((f"  {tname}: outbound connector '{oc.name}' for {', '.join(oc.recipient_domains)}", ""))
    lines += [("", ""), ("What happens (the scenario's expectations):", "bold")]
    for m in s.traffic:
        for rcpt in m.to:
            lines.append((f"  {m.id}: {m.sender} -> {rcpt}: {m.expected_for(rcpt) or 'not stated'}", ""))
    lines += [("", ""), ("Why: " + a.cause, ""), ("Fix: " + a.fix, ""), ("", ""), ("Sources:", "bold")]
    lines += [("  " + u, "") for u in a.sources]
    for text, style in lines:
        out.print(Text.assemble(_text(text, style)))
    out.print(_text(f"Run it: labgen up {name}   (each hop's log: labgen logs, labgen trace TENANT)", "dim"))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (labgen.examples/v1).")
def examples(as_json: bool) -> None:
    """List the shipped example scenarios; run one with `labgen up example:NAME`."""
    from .model.scenario import EXAMPLE_PREFIX, OUTCOMES, example_names

    rows: list[dict[str, Any]] = []
    for name in example_names():
        s = load_scenario(EXAMPLE_PREFIX + name)
        named = {
            o for m in s.traffic for o in ((m.expect,) if isinstance(m.expect, str) else (m.expect or {}).values())
        }
        rows.append(
            {
                "name": name,
                "ref": EXAMPLE_PREFIX + name,
                "lab": s.name,
                "description": s.description,
                "messages": len(s.traffic),
                "expected": [o for o in OUTCOMES if o in named],
            }
        )
    if as_json:
        from .results.contracts import ExamplesDoc

        _print_json(ExamplesDoc.model_validate({"examples": rows}))
        return
    from rich.text import Text

    width = max((len(r["ref"]) for r in rows), default=0)
    for r in rows:
        out.print(
            Text.assemble(
                _text(f"{r['ref']:<{width}}", "bold"),
                "  ",
                _text(r["description"]),
                _text(f" (expects {', '.join(r['expected']) or 'nothing'})", "dim"),
            )
        )
    out.print(_text("run one: labgen up example:NAME [--engine local]", "dim"))


@main.command()
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True)
def validate(scenario, as_json):
    """Check a scenario file (or built-in name); errors name the file and YAML path."""
    s = load_scenario(scenario)
    from .model.plan import AsWritten, make_plan

    make_plan(s, AsWritten())  # address checks live in the planner
    if as_json:
        from .results.contracts import ValidateDoc

        _print_json(ValidateDoc(scenario=s.name, valid=True))
    else:
        out.print(
            _text(
                f"{scenario}: valid (lab '{s.name}', {len(s.tenants)} tenant(s), "
                f"{len(s.gateway.connectors)} send connector(s), {len(s.traffic)} message(s))"
            )
        )


SCHEMAS = (
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
)


@main.command()
@click.argument("name", type=click.Choice(SCHEMAS), default="scenario")
def schema(name):
    """Print a JSON Schema: scenario files (the default, for editors), a --json document
    (labgen.<name>/v1), or one ledger line (event)."""
    if name == "scenario":
        from .model.scenario import json_schema

        _print_json(json_schema())
        return
    from .results.contracts import json_schema as contract_schema

    _print_json(contract_schema(name))


@main.command()
@click.argument("scenario")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--json", "as_json", is_flag=True)
def certs(scenario, workdir, as_json):
    """Make (or reuse) the lab's PKI and list every certificate."""
    from .lab.pki import describe, make_pki
    from .model.plan import AsWritten, make_plan
    from .run import lab_dir, make_lab_dir

    s = load_scenario(scenario)
    plan = make_plan(s, AsWritten())
    labdir = lab_dir(_workdir(workdir), s.name)
    make_lab_dir(labdir)  # no symlink, labgen's own or empty; unwritable: exit 3 naming it
    make_pki(plan, labdir)
    rows = [
        {"name": "ca-root", "file": plan.ca_root, **describe(labdir / plan.ca_root)},
        {"name": "ca-intermediate", "file": plan.ca_intermediate, **describe(labdir / plan.ca_intermediate)},
    ]
    for name, files in plan.certs.items():
        rows.append({"name": name, "file": files.cert, "key": files.key, **describe(labdir / files.cert)})
    if as_json:
        from .results.contracts import CertsDoc

        _print_json(CertsDoc.model_validate({"lab_dir": str(labdir), "certificates": rows}))
        return
    from rich.table import Table

    t = Table(title=_text(f"certificates of lab {s.name} ({labdir})"))
    for col in ("name", "subject", "SANs", "issuer", "valid", "SHA-256"):
        t.add_column(col, overflow="fold")  # names in full: trainers type them
    for r in rows:
        t.add_row(
            *map(
                _text,
                (
                    r["name"],
                    r["subject"],
                    ", ".join(r["sans"]),
                    r["issuer"] + (" (self-signed)" if r["self_signed"] else ""),
                    f"{r['not_before'][:10]} → {r['not_after'][:10]}",
                    r["fingerprint_sha256"][:29] + "…",
                ),
            )
        )
    out.print(t)


# ---------------------------------------------------------------- up / compare

ENGINES = ("auto", "local", "docker")  # the facade's engines (labgen.engines.ENGINES), and auto


def topology_option(default: str, help: str):
    return click.option(
        "--topology", type=click.Choice(["network", "pod"]), default=default, show_default=True, help=help
    )


TOPOLOGY_OPTION = topology_option(
    "network",
    "Docker: each service its own container on a lab network, or a pod: two containers in one "
    "network namespace on loopback addresses, as a Kubernetes pod runs it.",
)


def pick_engine(name: str, keep: bool = False, topology: str = "network"):
    import logging

    from .engines import select

    engine, why = select(name, keep=keep, topology=topology)
    if name == "auto":
        logging.getLogger("labgen").info("engine: %s (%s)", engine.name, why)
    return engine


def run_one(
    scenario: str,
    engine_name: str,
    workdir,
    subnet,
    as_json: bool,
    force: bool = False,
    keep: bool = False,
    profile: str | None = None,
    topology: str = "network",
) -> ResultDoc:
    from .run import run_lab

    s = load_scenario(scenario, profile)
    _quiet_for_json(as_json)
    engine = pick_engine(engine_name, keep, topology)
    if as_json or not err.is_terminal:
        return run_lab(s, engine, _workdir(workdir), subnet, force=force)
    with err.status(f"{s.name}: starting") as status:
        return run_lab(
            s, engine, _workdir(workdir), subnet, on_phase=lambda p: status.update(f"{s.name}: {p}"), force=force
        )


def _exit_for(doc: ResultDoc) -> int:
    from .run import check_accounted

    check_accounted(doc)
    return 1 if doc.summary.expectations_failed else 0


@main.command()
@click.argument("scenario")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--subnet", help="Move the lab to another documentation-range subnet of the same size.")
@click.option("--json", "as_json", is_flag=True, help="Print the labgen.result/v1 document.")
@click.option("--force", is_flag=True, help="Use a non-empty labgen-<lab> directory labgen did not create.")
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the lab serving after the verdict until `labgen down LAB` (Docker labs always stay up).",
)
@PROFILE_OPTION
@TOPOLOGY_OPTION
def up(scenario, engine, workdir, subnet, as_json, force, keep, profile, topology):
    """Bring a lab up, send its traffic, and show what happened to every message."""
    doc = run_one(scenario, engine, workdir, subnet, as_json, force, keep, profile, topology)
    where = _write_report([doc], Path(doc.lab_dir) / "run" / "report.html", _workdir(workdir))
    if as_json:
        _print_json(doc)
    else:
        from .results.report import print_result

        print_result(doc, out)
        if where:
            out.print(_text(f"Report: {where}"))
    sys.exit(_exit_for(doc))


def _write_report(docs: list[ResultDoc], path: Path, workdir: Path) -> Path | None:
    """The HTML report of a run (or two) just made; a report that cannot be written is a warning,
    never another verdict (the run's result stands, in run/result.json)."""
    import logging

    from jinja2 import TemplateError

    from .results import html

    try:
        runs = []
        for doc in docs:
            run = html.Run(doc=doc, source=f"labgen up {doc.scenario}")
            html._attach_lab(run, Path(doc.lab_dir))
            runs.append(run)
        html.write(path, html.render(runs))
    except LabgenError as e:
        logging.getLogger("labgen").warning("no HTML report: %s", one_line(e.message))
        return None
    except (OSError, TemplateError) as e:  # an install without the report's template, a read that failed
        logging.getLogger("labgen").warning("no HTML report: %s", one_line(f"{type(e).__name__}: {e}"))
        return None
    return path


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--workdir")
@click.option("--json", "as_json", is_flag=True, help="Print the labgen.compare/v1 document.")
@PROFILE_OPTION
def compare(a, b, engine, workdir, as_json, profile):
    """Run two scenarios and show, per message, what changed."""
    from .results.compare import compare_docs

    load_scenario(a, profile), load_scenario(b, profile)  # bad input fails before anything starts
    doc_a = run_one(a, engine, workdir, None, as_json, profile=profile)
    doc_b = run_one(b, engine, workdir, None, True, profile=profile)
    doc = compare_docs(doc_a, doc_b)
    wd = _workdir(workdir)
    where = _write_report([doc_a, doc_b], wd / f"labgen-compare-{doc_a.scenario}-vs-{doc_b.scenario}.html", wd)
    if as_json:
        _print_json(doc)
    else:
        from .results.report import print_compare, print_expectation_failures

        print_compare(doc, out)
        print_expectation_failures(doc_a, out)
        print_expectation_failures(doc_b, out)
        if where:
            out.print(_text(f"Report: {where}"))
    codes = [_exit_for(doc_a), _exit_for(doc_b)]
    sys.exit(max(codes))


@main.command()
@click.argument("sources", nargs=-1, metavar="LAB|RESULT.json [LAB|RESULT.json]")
@click.option(
    "-o",
    "--output",
    help="File to write ('-': stdout; default: ./labgen-<lab>-report.html, "
    "./labgen-compare-<a>-vs-<b>.html for two runs).",
)
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
def report(sources, output, workdir):
    """One self-contained HTML report: a lab's last run (labgen-LAB here), a result file (up --json),
    or two runs side by side (two labs or results, or a compare --json file)."""
    from .results import html

    if not sources:
        raise InputError("report: name a lab (labgen-LAB in the work directory) or a result.json, or two of them")
    runs = html.load_runs(list(sources), _workdir(workdir))
    page = html.render(runs)
    if output == "-":
        sys.stdout.write(page)
        return
    path = Path(output or html.default_name(runs))
    html.write(path, page)
    out.print(_text(f"wrote {path}"))


@main.command()
@click.argument("tenant")
@click.option("--lab", help="Which lab (default: the most recent run in the work directory).")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--json", "as_json", is_flag=True)
def trace(tenant, lab, workdir, as_json):
    """A tenant's message trace from the last run: what that tenant's admin would see."""
    from .run import lab_dir

    wd = _workdir(workdir)
    if lab:
        path = lab_dir(wd, lab) / "run" / "trace.jsonl"
    else:
        runs = sorted(wd.glob("labgen-*/run"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise InputError(f"{wd}: no lab has run here; run `labgen up SCENARIO` first or pass --workdir")
        path = runs[-1] / "trace.jsonl"
    from .lab.ledger import read_events
    from .model.plan import Plan

    labdir = path.parent.parent
    lab = labdir.name.removeprefix("labgen-")
    if not (labdir / "plan.json").is_file():
        raise InputError(f"{labdir}: no lab '{lab}' has run here; run `labgen up {lab}` first or pass --workdir")
    tenants = sorted(Plan.load(labdir / "plan.json").scenario.tenants)
    if tenant not in tenants:
        raise InputError(f"{tenant}: not a tenant of lab {lab} (tenants: {', '.join(tenants)})")
    rows = [
        {k: e.get(k) for k in ("ts", "msgid", "sender", "rcpt", "status")}
        for e in read_events(labdir / "run")
        if e["service"] == "trace" and e.get("tenant") == tenant
    ]
    if as_json:
        from .results.contracts import TraceDoc

        _print_json(TraceDoc.model_validate({"lab": lab, "tenant": tenant, "entries": rows}))
        return
    out.print(_text(f"message trace of tenant {tenant} in lab {lab} (what its admin sees):"))
    for r in rows:
        out.print(_text(f"  {r['msgid']:<18} {r['sender']} → {r['rcpt']}: {r['status']}"))
    if not rows:
        out.print("  (nothing)")


@main.command()
@click.argument("source", metavar="SCENARIO|LAB")
@click.option("--result", "result_file", help="A labgen.result/v1 file (up --json) whose paths to draw over it.")
@click.option("--format", "fmt", type=click.Choice(["svg", "dot", "mermaid"]), default="svg", show_default=True)
@click.option("-o", "--output", help="File to write ('-': stdout; default: ./labgen-<lab>.svg, .dot or .mmd).")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
def graph(source, result_file, fmt, output, workdir):
    """Draw a lab's mail flow: a scenario's, or a lab's with its last run's paths (labgen-LAB here)."""
    from .results import graph as g

    plan, doc = g.load_source(source, _workdir(workdir), result_file)
    if fmt == "svg":
        g.dot_binary()  # missing: exit 3 naming it, before anything is drawn
    diagram = g.build(plan, doc)
    data = (
        g.render_svg(g.to_dot(diagram))
        if fmt == "svg"
        else (g.to_dot(diagram) if fmt == "dot" else g.to_mermaid(diagram)).encode()
    )
    if output == "-":
        sys.stdout.buffer.write(data)
        return
    suffix = {"svg": "svg", "dot": "dot", "mermaid": "mmd"}[fmt]
    path = Path(output or f"labgen-{plan.scenario.name}.{suffix}")
    try:
        path.write_bytes(data)
    except OSError as e:
        raise InputError(f"{escape(path, 100)}: cannot write the diagram ({escape(e.strerror or e, 80)})") from None
    out.print(_text(f"wrote {path}" + (f" (with the paths of run {doc.run_id})" if doc else "")))


@main.command()
@click.argument("message_id")
@click.option("--lab", help="Which lab (default: the most recent run in the work directory).")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--json", "as_json", is_flag=True)
def transcript(message_id, lab, workdir, as_json):
    """The SMTP conversation of every hop a message took, as each lab server recorded it: EHLO,
    STARTTLS, the TLS version and the client certificate, each command and reply."""
    from .errors import quote
    from .lab.ledger import safe_id
    from .lab.transcript import read_sessions, render, transcript_doc
    from .model.plan import Plan
    from .run import lab_dir
    from .textsafe import GRAMMARS

    if not safe_id(message_id):
        raise InputError(f"{quote(message_id)} is no message id (a traffic id such as to-fabrikam)")
    wd = _workdir(workdir)
    if lab:
        if not GRAMMARS["lab name"][1](lab):
            raise InputError(f"--lab {quote(lab)}: not a lab name (lower-case letters, digits, '-')")
        labdir = lab_dir(wd, lab)
    else:
        runs = sorted(wd.glob("labgen-*/run"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise InputError(f"{wd}: no lab has run here; run `labgen up SCENARIO` first or pass --workdir")
        labdir = runs[-1].parent
    lab = labdir.name.removeprefix("labgen-")
    if not (labdir / "plan.json").is_file():
        raise InputError(f"{labdir}: no lab '{lab}' has run here; run `labgen up {lab}` first or pass --workdir")
    doc = transcript_doc(lab, message_id, read_sessions(labdir / "run"), Plan.load(labdir / "plan.json"))
    if as_json:
        _print_json(doc)
    else:
        for line in render(doc):
            out.print(line)
    if not doc.hops:
        sys.exit(1)  # no recorded session carried it


# ---------------------------------------------------------------- labgen import exo (issue 10)


@main.group("import")
def import_group():
    """Make a scenario from what another system exports."""


@import_group.command("exo")
@click.option(
    "--inbound-connectors",
    "inbound",
    required=True,
    metavar="FILE",
    help="Get-InboundConnector | ConvertTo-Json -Depth 5",
)
@click.option(
    "--outbound-connectors", "outbound", metavar="FILE", help="Get-OutboundConnector | ConvertTo-Json -Depth 5"
)
@click.option("--accepted-domains", "domains", metavar="FILE", help="Get-AcceptedDomain | ConvertTo-Json -Depth 5")
@click.option("--certs", metavar="DIR", help="The gateway's certificates: NAME.crt (or .pem) with NAME.key.")
@click.option("--tenant", metavar="NAME", help="The tenant's name in the lab (default: from the onmicrosoft domain).")
@click.option("-o", "--output", required=True, metavar="FILE", help="The scenario file to write.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def import_exo_cmd(inbound, outbound, domains, certs, tenant, output, force):
    """A scenario from Exchange Online PowerShell exports (ConvertTo-Json): the tenant's connectors and
    accepted domains as they are, a skeleton gateway and traffic to complete; every value the lab
    cannot model is listed at the top of the file and on stderr."""
    from .files import write_whole
    from .model.exo_import import import_exo, stderr_lines

    out_path = Path(output)
    label = escape(output, 100)
    if out_path.exists() and not force:
        raise InputError(f"{label}: exists; pass --force to overwrite it")
    if not out_path.parent.is_dir():
        raise InputError(f"{label}: no such directory {escape(out_path.parent, 100)}")

    def opt(value: str | None) -> tuple[Path, str] | None:
        return None if value is None else (Path(value), escape(value, 100))

    result = import_exo(Path(inbound), escape(inbound, 100), opt(outbound), opt(domains), opt(certs), tenant, out_path)
    try:
        write_whole(out_path, result.text)
    except OSError as e:
        raise InputError(f"{label}: cannot write the scenario ({escape(e.strerror or e, 80)})") from None
    for line in stderr_lines(result.notes, label):
        click.echo(line, err=True)
    n = result.counts
    out.print(
        _text(
            f"wrote {output}: {n['inbound']} inbound and {n['outbound']} outbound connector(s), {n['domains']} "
            f"domain(s); complete its gateway and traffic, then `labgen validate {output}` and `labgen up {output}`"
        )
    )


# ---------------------------------------------------------------- lint (static checks of a scenario)


@main.command()
@click.argument("scenario")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "sarif"]),
    default="text",
    show_default=True,
    help="text; json: the labgen.lint/v1 document; sarif: SARIF 2.1.0, for code-scanning UIs.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", help="Write the json or sarif document to this file instead of stdout.")
@PROFILE_OPTION
def lint(scenario, fmt, as_json, output, profile):
    """Check a scenario's configuration against the sourced rules, before any lab runs: each
    finding has a stable id, severity, what it concerns, its source and the fix. Exit 1 when any
    finding is an error."""
    from .model import lint as lg

    fmt = "json" if as_json else fmt
    report = lg.lint(scenario, profile)
    if fmt in ("json", "sarif"):
        from .results.contracts import LintDoc

        data = (
            LintDoc.model_validate(lg.to_doc(report)).model_dump(mode="json", by_alias=True)
            if fmt == "json"
            else lg.to_sarif(report, __version__)
        )
        text = lg.dumps(data)
        if output and output != "-":
            from .files import write_whole

            try:
                write_whole(Path(output), text)
            except OSError as e:
                raise InputError(f"{escape(output, 100)}: cannot write ({escape(e.strerror or e, 80)})") from None
        else:
            click.echo(text, nl=False)
    else:
        from rich.text import Text

        styles = {"error": "bold red", "warning": "yellow", "note": "cyan"}
        for f in report.findings:
            rule = lg.RULE_BY_ID[f.rule]
            where = f"{scenario}:{f.line}" if f.line else scenario
            out.print(
                Text.assemble(
                    _text(f"{f.severity:<7}", styles[f.severity]),
                    " ",
                    _text(f"{f.rule} {rule.name}", "bold"),
                    "  ",
                    _text(f"{where} {f.path_text}", "dim"),
                )
            )
            out.print(Text.assemble("    ", _text(f.message)))
            out.print(Text.assemble("    fix: ", _text(rule.fix)))
            out.print(Text.assemble("    source: ", _text(", ".join(rule.sources), "dim")))
        counts = ", ".join(f"{report.count(sev)} {sev}(s)" for sev in lg.SEVERITIES)
        out.print(_text(f"{scenario} (lab '{report.scenario}', EOP profile {report.profile}): {counts}"))
    sys.exit(report.exit_code)


# ---------------------------------------------------------------- test (issue #10: scenarios as a CI test suite)


@main.command("test")
@click.argument("paths", nargs=-1, metavar="[PATH ...]")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--junit", "junit_file", help="Write JUnit XML here (a suite per scenario, a case per expectation).")
@click.option("--json", "as_json", is_flag=True, help="Print the labgen.test/v1 document.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Labs run at once.")
@click.option("-k", "pattern", help="Only the scenarios whose name or file contains this text.")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
def test_command(paths, engine, junit_file, as_json, jobs, pattern, workdir):
    """Run scenario files (or directories of them, or built-in names; default: the current
    directory) as a test suite: each message × recipient expectation a test case. Exit 0 when all
    hold, 1 when one fails, 2 bad input, 3 when a lab could not run."""
    from . import suite
    from .results import junit

    entries = suite.select_entries(suite.load_all(suite.find(list(paths))), pattern)  # all valid before any runs
    if junit_file:
        junit_path = Path(junit_file)
        if junit_path.is_dir() or not junit_path.parent.is_dir():
            raise InputError(f"--junit {escape(junit_file, 100)}: not a file in an existing directory")
    _quiet_for_json(as_json)
    engine_name = pick_engine(engine).name  # auto: chosen once, for every lab

    def shown(s) -> None:
        if as_json:
            return
        ok = s.status == "passed"
        out.print(_text(suite.suite_line(s), "green" if ok else "red"))

    suites = suite.run_all(entries, engine_name, _workdir(workdir), jobs, on_suite=shown)
    if junit_file:
        try:
            junit.write(junit_path, suites)
        except OSError as e:
            why = escape(e.strerror or e, 80)
            raise InputError(f"--junit {escape(junit_file, 100)}: cannot write ({why})") from None
    if as_json:
        _print_json(suite.document(suites, engine_name, jobs))
    else:
        for s in suites:
            for line in suite.failure_lines(s):
                out.print(_text(line, "red"))
        out.print(_text(suite.summary_line(suites)))
        if junit_file:
            out.print(_text(f"JUnit XML: {junit_file}", "dim"))
    sys.exit(suite.exit_code(suites))


# ---------------------------------------------------------------- a running lab's lifecycle (every engine)


@main.command()
@click.argument("scenario")
@click.option("-o", "--output", "output", help="Directory to write (default: ./labgen-<lab>).")
@click.option("--subnet", help="Move the lab to another documentation-range subnet of the same size.")
@click.option("--force", is_flag=True, help="Write into a non-empty directory labgen did not create.")
@click.option(
    "--engine",
    type=click.Choice(["docker"]),
    default="docker",
    show_default=True,
    help="The engine whose project to write (compose, for docker).",
)
@TOPOLOGY_OPTION
def render(scenario, output, subnet, force, engine, topology):
    """Write the lab as a self-contained project, to run by hand."""
    from .engines import named
    from .run import lab_dir, prepare_lab

    s = load_scenario(scenario)
    # abspath, not resolve(): a symlinked output directory is refused, never followed
    labdir = Path(os.path.abspath(output)) if output else lab_dir(_workdir(None), s.name)
    target = named(engine, topology=topology)
    if not target.can_render:
        raise InputError(
            f"--engine {engine}: has no project to render (it runs labs in this process); use --engine docker"
        )
    plan, labdir = prepare_lab(s, target, labdir.parent, subnet, labdir=labdir, force=force)
    how = target.render(plan, labdir)
    out.print(f"rendered lab {s.name} into {labdir}\n  run it: {how}", markup=False)


@main.command()
@click.argument("lab", required=False)
@click.option("--all", "all_labs", is_flag=True, help="Remove every labgen lab on this host.")
@click.option("-y", "--yes", is_flag=True, help="With --all: do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
def down(lab, all_labs, yes, as_json):
    """Stop a lab and remove what labgen started for it, on whichever engine runs it."""
    if all_labs and lab:
        raise InputError(f"down: name one lab ({lab}) or pass --all, not both")
    if all_labs and not yes and not sys.stdin.isatty():
        # As containerlab's `destroy --all`: every lab on the host, other users' included.
        raise InputError(
            "down --all removes every labgen lab on this host and there is no terminal to confirm "
            "on; pass --yes to confirm, or name one lab"
        )
    from . import engines

    if lab:
        labs = [engines.check_lab_name(lab)]
    else:
        labs = sorted({r.lab for r in engines.status()})
        if not all_labs and len(labs) > 1:
            raise InputError(f"several labs are up ({', '.join(labs)}); name one, or use --all")
        if not labs:
            out.print("no labgen lab is up")
            return
    if all_labs and not yes:
        click.confirm(f"remove {len(labs)} lab(s): {', '.join(labs)}?", abort=True, err=True)
    removed = [r for name in labs for r in engines.down(name)]
    if as_json:
        gone: dict[str, dict[str, list[str]]] = {}
        for r in removed:
            parts = gone.setdefault(r.lab, {"containers": [], "networks": [], "volumes": [], "processes": []})
            for kind, names in r.parts.items():
                parts.setdefault(kind, []).extend(names)
        from .results.contracts import DownDoc

        _print_json(DownDoc.model_validate({"removed": gone}))
        return
    if not removed:
        out.print(_text(f"no lab named {lab} is up" if lab else "no labgen lab is up"))
    for r in removed:
        what = ", ".join(f"{len(names)} {kind}" for kind, names in r.parts.items())
        out.print(_text(f"lab {r.lab} ({r.engine} engine): removed {what or 'nothing'}"))


@main.command()
@click.argument("lab", required=False)
@click.option("--json", "as_json", is_flag=True)
def status(lab, as_json):
    """List the running labs of every engine: services, addresses, state, lab directory."""
    from . import engines

    labs = engines.status(lab)
    if as_json:
        # `containers` as before (the services that run in containers); `labs` for every engine.
        containers = [
            {
                "lab": r.lab,
                "service": s.service,
                "container": s.container,
                "state": s.state,
                "health": s.health,
                "addresses": s.addresses,
                "image": s.image or "",
            }
            for r in labs
            for s in r.services
            if s.container
        ]
        from .results.contracts import StatusDoc

        _print_json(StatusDoc.model_validate({"containers": containers, "labs": [r.model_dump() for r in labs]}))
        return
    if not labs:
        out.print(_text("no labgen lab is up" + (f" named {lab}" if lab else "")))
        return
    from rich.table import Table

    t = Table(title="labgen labs")
    for col in ("lab", "engine", "service", "state", "addresses", "where"):
        t.add_column(col)
    for r in labs:  # names and states come from the labs: escaped
        for s in r.services:
            where = s.container or (f"pid {r.pid}" if r.pid else "")
            t.add_row(
                *map(
                    _text,
                    (
                        r.lab,
                        r.engine,
                        s.service,
                        s.state + (f" ({s.health})" if s.health else ""),
                        ", ".join(s.addresses),
                        where,
                    ),
                )
            )
    out.print(t)
    for r in labs:
        if r.lab_dir:
            out.print(_text(f"lab {r.lab}: {r.lab_dir}", "dim"))


@main.command()
@click.argument("service", type=click.Choice(["dns", "eop", "sink", "gateway", "traffic"]))
@click.option("--lab", help="Which lab (needed when several are up).")
@click.option("-n", "--tail", default=100, show_default=True, help="Lines to show.")
def logs(service, lab, tail):
    """Show a service's log (its ledger; the gateway's is Postfix's own maillog on Docker)."""
    from . import engines

    click.echo(engines.logs(service, lab, tail), nl=False)


@main.group()
def images():
    """Build and list the lab image."""


@images.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if the current image exists.")
@click.option(
    "--base",
    type=click.Choice(["auto", "registry", "offline"]),
    default="auto",
    show_default=True,
    help="auto: debian:bookworm if present or pullable within seconds, else offline; registry: "
    "FROM debian:bookworm; offline: a Debian rootfs made by mmdebstrap from the host's mirror.",
)
def images_build(force, base):
    """Build the lab image (offline from Debian packages when no registry answers)."""
    from .engines.images import ensure_image

    tag = ensure_image(force=force, from_registry={"auto": None, "registry": True, "offline": False}[base])
    out.print(f"lab image: {tag}")


@images.command("prune")
def images_prune():
    """Remove old lab images (every one but the current, unless a container uses it)."""
    from .engines.images import prune_images

    removed = prune_images()
    out.print(f"removed {len(removed)} old lab image(s)" + (f": {', '.join(removed)}" if removed else ""))


@images.command("ls")
@click.option("--json", "as_json", is_flag=True)
def images_ls(as_json):
    """List labgen's images."""
    from .engines.images import list_images

    rows = list_images()
    if as_json:
        from .results.contracts import ImagesDoc

        _print_json(ImagesDoc.model_validate({"images": rows}))
        return
    from rich.table import Table

    t = Table(title="labgen images")
    for col in ("tag", "id", "created", "size", "current"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["tag"] or "(untagged)",
            r["id"],
            r["created"][:19],
            f"{r['size'] / 1e6:.0f} MB",
            "✓" if r["current"] else "",
        )
    out.print(t)


# ---------------------------------------------------------------- workshops (issue #11): seats on one host


@main.group()
def workshop():
    """Workshops: N isolated seats of one scenario on this Docker host, each with its own subnet,
    names, labels and directory; `labgen check --seat SEAT` grades a trainee's change."""


def _seat_progress(seat: str, text: str) -> None:
    out.print(_text(f"{seat}: {text}"))


def _goal_lines(results) -> None:
    for r in results:
        mark, style = ("PASS", "green") if r.passed else ("FAIL", "red")
        out.print(
            _text(
                f"  {mark} {r.seat} goal {r.goal} ({r.says or r.message}): {r.message} to {r.to}: "
                f"{r.outcome}, wanted {r.expect} — {r.reason}",
                style,
            )
        )


@workshop.command("up")
@click.argument("scenario")
@click.option("--seats", type=int, required=True, help="How many seats (isolated labs).")
@click.option("--name", help="The workshop's name (default: the scenario's); seats are <name>-s01, ...")
@click.option("--workdir", help="Where the workshop directory labgen-<name> goes (default: current directory).")
@topology_option(
    "pod",
    "pod: each seat two containers in one loopback network namespace (the dense one, as on "
    "Kubernetes); network: a container per service on the seat's own /24 of 198.18.0.0/15.",
)
def workshop_up(scenario, seats, name, workdir, topology):
    """Start SEATS copies of SCENARIO at once, each isolated in its own network namespace (a pod)
    or on its own free /24 of 198.18.0.0/15; each seat's progress and verdict as it comes. Exit 0
    when every seat is up (its verdict is the exercise's starting state), 3 when one could not
    start (it is named; the others keep running)."""
    from . import workshop as ws

    w, runs = ws.up(scenario, seats, name, _workdir(workdir), _seat_progress, topology)
    failed = [r for r in runs if r.doc is None]
    out.print(_text(f"workshop {w.name}: {len(runs) - len(failed)} of {len(runs)} seat(s) up; directory {w.dir}"))
    for r in failed:
        out.print(_text(f"seat {r.seat} ({r.lab}) did not start: {r.error}", "red"))
    out.print(_text(f"trainees edit {w.dir}/sNN/overlay.yaml, then: labgen check --seat sNN {w.name}", "dim"))
    sys.exit(3 if failed else 0)


@workshop.command("handout")
@click.argument("name", required=False)
@click.option("--workdir", help="Where the workshop directory is when its seats do not run.")
def workshop_handout(name, workdir):
    """Write the hand-outs again: handout.md for the class (every seat) in the workshop directory
    and one in each seat's directory (the story, the lab drawn, the task, the seat's commands)."""
    from . import workshop as ws

    w = ws.find_workshop(ws.pick_workshop(name), _workdir(workdir))
    for path in ws.write_handouts(w):
        out.print(_text(f"wrote {path}"))


@workshop.command("render")
@click.argument("scenario")
@click.option("--kubernetes", is_flag=True, help="Write Kubernetes manifests (the only target for now).")
@click.option("--seats", type=int, required=True, help="How many seats (one pod each).")
@click.option("--name", help="The workshop's name (default: the scenario's); namespaces are labgen-<name>-s01, ...")
@click.option("--image", help="The lab image as the cluster pulls it (default: the local labgen-lab:<tag>).")
@click.option("-o", "--output", "output", required=True, help="Directory to write (new, empty, or rendered before).")
@click.option(
    "--no-default-route",
    "drop_route",
    is_flag=True,
    help="Add an init container with NET_ADMIN that removes each pod's default route, for clusters whose "
    "network plugin does not enforce NetworkPolicy (the baseline Pod Security Standard refuses it).",
)
def workshop_render(scenario, kubernetes, seats, name, image, output, drop_route):
    """Write SEATS seats of SCENARIO for a cluster: `kubectl apply -k DIR` runs them, one pod and
    namespace per seat, nothing in or out. Needs neither Docker nor a cluster (docs/kubernetes.md)."""
    if not kubernetes:
        raise InputError(
            "workshop render: pass --kubernetes (the only target so far); `workshop up` runs seats on Docker"
        )
    from .engines import kubernetes as k8s

    done = k8s.render_workshop(scenario, seats, name, Path(output), image=image, drop_route=drop_route)
    out.print(_text(f"workshop {done.workshop}: {len(done.seats)} seat(s) rendered into {done.out}"))
    out.print(_text(f"apply them: kubectl apply -k {done.out}   (the image and the rest: {done.out}/README.md)", "dim"))


@workshop.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
def workshop_status(name, as_json):
    """A row per seat: state, subnet, verdict, lab directory."""
    from . import workshop as ws

    rows = ws.status(ws.check_workshop_name(name) if name else None)
    if as_json:
        from .results.contracts import WorkshopStatusDoc

        _print_json(WorkshopStatusDoc.model_validate({"seats": rows}))
        return
    if not rows:
        out.print(_text("no workshop is up" + (f" named {name}" if name else "")))
        return
    from rich.table import Table

    t = Table(title="labgen workshops")
    for col in ("workshop", "seat", "state", "subnet", "verdict", "lab directory"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*map(_text, (r["workshop"], r["seat"], r["state"], r["subnet"], r["verdict"], r["lab_dir"] or "")))
    out.print(t)


@workshop.command("down")
@click.argument("name", required=False)
def workshop_down(name):
    """Remove every seat of the workshop (by its label io.labgen.workshop), nothing else."""
    from . import workshop as ws

    wname = ws.pick_workshop(name)
    gone = ws.down(wname)
    what = ", ".join(f"{len(v)} {k}" for k, v in gone.items())
    out.print(_text(f"workshop {wname}: removed {what}"))


@workshop.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", help="The workshop (default: the only one up).")
@click.argument("seat")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def workshop_exec(name, seat, cmd):
    """Run CMD in the seat's traffic container (e.g. -- swaks --server gw.contoso.example ...);
    its output and exit status are passed through."""
    from . import workshop as ws

    argv = list(cmd)[1:] if cmd and cmd[0] == "--" else list(cmd)
    if not argv:
        raise InputError("workshop exec: give the command after --, e.g. labgen workshop exec s01 -- swaks --help")
    wname = ws.pick_workshop(name)
    code, stdout, stderr = ws.exec_in_seat(wname, ws.check_seat(seat), argv)
    sys.stdout.buffer.write(stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(stderr)
    sys.stderr.flush()
    sys.exit(code)


@workshop.command("check")
@click.argument("name", required=False)
@click.option("--workdir", help="Where the workshop directory is when no seat of it runs.")
def workshop_check(name, workdir):
    """Apply every seat's overlay, grade each goal, and write class-report.json and .csv in the
    workshop directory. Exit 0 when every seat passes, 1 when one fails, 3 when one could not run."""
    from . import workshop as ws

    w = ws.find_workshop(ws.pick_workshop(name), _workdir(workdir))
    runs, results = ws.check_seats(w, w.seats, _seat_progress, tolerate=True)
    _goal_lines(results)
    jpath, cpath, hpath = ws.write_class_report(w, results)
    failed = sorted({r.seat for r in results if not r.passed})
    out.print(_text(f"workshop {w.name}: {len(w.seats) - len(failed)} of {len(w.seats)} seat(s) pass"))
    out.print(_text(f"class report: {hpath} (and {jpath.name}, {cpath.name} beside it)", "dim"))
    sys.exit(3 if any(r.doc is None for r in runs) else 1 if failed else 0)


@workshop.command("reset")
@click.argument("seat", required=False)
@click.option("--all", "all_seats", is_flag=True, help="Every seat.")
@click.option("--name", help="The workshop (default: the only one up).")
@click.option("--workdir", help="Where the workshop directory is when no seat of it runs.")
def workshop_reset(seat, all_seats, name, workdir):
    """Empty the seat's overlay and restart it as the exercise starts (no image build)."""
    from . import workshop as ws

    if bool(seat) == bool(all_seats):
        raise InputError("workshop reset: name one seat (s01, ...) or pass --all")
    w = ws.find_workshop(ws.pick_workshop(name), _workdir(workdir))
    seats = w.seats if all_seats else [w.seat(ws.check_seat(seat))]
    runs = ws.reset_seats(w, seats, _seat_progress)
    failed = [r for r in runs if r.doc is None]
    sys.exit(3 if failed else 0)


@main.command("check")
@click.argument("name", required=False, metavar="[WORKSHOP]")
@click.option("--seat", required=True, help="The seat to check (s01, ...).")
@click.option("--workdir", help="Where the workshop directory is when the seat does not run.")
@click.option("--json", "as_json", is_flag=True, help="Print the seat's goals as JSON.")
def check_command(name, seat, workdir, as_json):
    """Apply the trainee's overlay.yaml to the running seat (restarted from the existing image),
    send the traffic again and grade each goal with its reason. Exit 0 when every goal holds,
    1 when one does not, 2 when the overlay is refused, 3 when the seat could not run."""
    from . import workshop as ws

    _quiet_for_json(as_json)
    w = ws.find_workshop(ws.pick_workshop(name), _workdir(workdir))
    target = w.seat(ws.check_seat(seat))
    progress = (lambda _s, _t: None) if as_json else _seat_progress
    runs, results = ws.check_seats(w, [target], progress)
    if runs[0].doc is None:
        raise LabgenError(f"seat {target.name} could not run: {runs[0].error}") from None
    if as_json:
        from .results.contracts import CheckDoc

        goals = [r.row() for r in results]
        _print_json(CheckDoc.model_validate({"workshop": w.name, "seat": target.name, "goals": goals}))
    else:
        _goal_lines(results)
        ok = all(r.passed for r in results)
        out.print(_text(f"seat {target.name}: {'every goal holds' if ok else 'not there yet'}"))
    sys.exit(0 if all(r.passed for r in results) else 1)


def _interrupted_late(signum, frame):
    # Ctrl-C during interpreter shutdown (joining threads, atexit): the result is already printed,
    # so the one line and 130, not a KeyboardInterrupt traceback and death by signal (status -2).
    # os._exit: raising now would only be "ignored" with a traceback by the shutdown code.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass  # a closed pipe: the exit status still tells
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def entry() -> None:
    """The console script: `main`, and a Ctrl-C after main has handled everything else (while click
    exits, or during interpreter shutdown) ends as 130 with the one line as well."""
    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.exit(130)
    finally:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (background job)
            signal.signal(signal.SIGINT, _interrupted_late)


if __name__ == "__main__":
    entry()
