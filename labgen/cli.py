"""The labgen command line. Every command that loads a scenario reports bad input as one line
(exit 2); infrastructure failures exit 3; a run whose expectations fail exits 1 (DESIGN.md §3)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from . import __version__
from .errors import InputError, LabgenError
from .scenario import builtin_names, json_schema, load_scenario

# Piped output is as wide as a log viewer, not 80 columns; no emoji codes (fingerprints hold ':cd:').
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, emoji=False)


def _workdir(value: str | None) -> Path:
    return Path(value or os.environ.get("LABGEN_WORKDIR") or ".").resolve()


def _print_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


class LabgenGroup(click.Group):
    """Turns LabgenError into one line and its exit code; --debug keeps the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LabgenError as e:
            if ctx.params.get("debug") or os.environ.get("LABGEN_DEBUG"):
                raise
            err.print(f"labgen: {e.message}", style="red", markup=False)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("labgen: interrupted; the lab was cleaned up", style="red")
            sys.exit(130)


@click.group(cls=LabgenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labgen")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug):
    """labgen: mail-flow labs that reproduce Exchange Online / gateway misconfigurations.

    Start with `labgen up broken`, then `labgen up fixed`, or `labgen compare broken fixed`.
    """


# ---------------------------------------------------------------- scenarios, validate, schema, certs

@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def scenarios(as_json):
    """List the built-in scenarios."""
    rows = []
    for name in builtin_names():
        s = load_scenario(name)
        rows.append({"name": name, "description": s.description, "messages": len(s.traffic)})
    if as_json:
        _print_json({"schema": "labgen.scenarios/v1", "scenarios": rows})
        return
    for r in rows:
        out.print(f"[bold]{r['name']:<10}[/] {r['description']}")


@main.command()
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True)
def validate(scenario, as_json):
    """Check a scenario file (or built-in name); errors name the file and YAML path."""
    s = load_scenario(scenario)
    from .plan import make_plan
    make_plan(s, "docker")  # address checks live in the planner
    if as_json:
        _print_json({"schema": "labgen.validate/v1", "scenario": s.name, "valid": True})
    else:
        out.print(f"{scenario}: valid (lab '{s.name}', {len(s.tenants)} tenant(s), "
                  f"{len(s.gateway.connectors)} send connector(s), {len(s.traffic)} message(s))")


@main.command()
def schema():
    """Print the JSON Schema of scenario files (for editors)."""
    _print_json(json_schema())


@main.command()
@click.argument("scenario")
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--json", "as_json", is_flag=True)
def certs(scenario, workdir, as_json):
    """Make (or reuse) the lab's PKI and list every certificate."""
    from .pki import describe, make_pki
    from .plan import make_plan
    from .run import lab_dir
    s = load_scenario(scenario)
    plan = make_plan(s, "docker")
    labdir = lab_dir(_workdir(workdir), s.name)
    labdir.mkdir(parents=True, exist_ok=True)
    make_pki(plan, labdir)
    rows = [{"name": "ca-root", "file": plan.ca_root, **describe(labdir / plan.ca_root)},
            {"name": "ca-intermediate", "file": plan.ca_intermediate, **describe(labdir / plan.ca_intermediate)}]
    for name, files in plan.certs.items():
        rows.append({"name": name, "file": files.cert, "key": files.key, **describe(labdir / files.cert)})
    if as_json:
        _print_json({"schema": "labgen.certs/v1", "lab_dir": str(labdir), "certificates": rows})
        return
    from rich.table import Table
    t = Table(title=f"certificates of lab {s.name} ({labdir})")
    for col in ("name", "subject", "SANs", "issuer", "valid", "SHA-256"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["subject"], ", ".join(r["sans"]),
                  r["issuer"] + (" (self-signed)" if r["self_signed"] else ""),
                  f"{r['not_before'][:10]} → {r['not_after'][:10]}", r["fingerprint_sha256"][:29] + "…")
    out.print(t)


# ---------------------------------------------------------------- up / compare

ENGINES = ("auto", "local", "docker")


def pick_engine(name: str, quiet: bool = False):
    from .engines import select
    engine, why = select(name)
    if not quiet and name == "auto":
        err.print(f"engine: {engine.name} ({why})", style="dim")
    return engine


def run_one(scenario: str, engine_name: str, workdir, subnet, as_json: bool) -> dict:
    from .run import run_lab
    s = load_scenario(scenario)
    engine = pick_engine(engine_name, quiet=as_json)
    if as_json or not err.is_terminal:
        return run_lab(s, engine, _workdir(workdir), subnet)
    with err.status(f"{s.name}: starting") as status:
        return run_lab(s, engine, _workdir(workdir), subnet, on_phase=lambda p: status.update(f"{s.name}: {p}"))


def _exit_for(doc: dict) -> int:
    from .run import check_accounted
    check_accounted(doc)
    return 1 if doc["summary"]["expectations_failed"] else 0


@main.command()
@click.argument("scenario")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--workdir", help="Where lab directories live (default: current directory or $LABGEN_WORKDIR).")
@click.option("--subnet", help="Move the lab to another documentation-range subnet of the same size.")
@click.option("--json", "as_json", is_flag=True, help="Print the labgen.result/v1 document.")
def up(scenario, engine, workdir, subnet, as_json):
    """Bring a lab up, send its traffic, and show what happened to every message."""
    doc = run_one(scenario, engine, workdir, subnet, as_json)
    if as_json:
        _print_json(doc)
    else:
        from .report import print_result
        print_result(doc, out)
    sys.exit(_exit_for(doc))


@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True)
@click.option("--workdir")
@click.option("--json", "as_json", is_flag=True, help="Print the labgen.compare/v1 document.")
def compare(a, b, engine, workdir, as_json):
    """Run two scenarios and show, per message, what changed."""
    from .compare import compare_docs
    load_scenario(a), load_scenario(b)  # bad input fails before anything starts
    doc_a = run_one(a, engine, workdir, None, as_json)
    doc_b = run_one(b, engine, workdir, None, True)
    doc = compare_docs(doc_a, doc_b)
    if as_json:
        _print_json(doc)
    else:
        from .report import print_compare
        print_compare(doc, out)
    codes = [_exit_for(doc_a), _exit_for(doc_b)]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
