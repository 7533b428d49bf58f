"""A workshop's hand-out (issue #11), as Markdown (GitHub and GitLab render it, the diagram
included, and it prints): the story as the admin meets it, the lab drawn, the task, the goals,
what may be changed, how to reach your seat and the commands to try. One for the class (every
seat in a table) and one in each seat's directory. Never the cause or the fix: those are what the
trainee is there to find; the hints are the trainer's to give, in order.

Everything from the scenario reaches the page through md_inline (one line of literal Markdown)
or, in the diagram, through the graph module's Mermaid escaping."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..model.plan import Plan
from ..model.scenario import Scenario
from ..textsafe import md_inline, one_line
from .graph import build, to_mermaid


@dataclass(frozen=True)
class SeatAccess:
    seat: str
    lab: str
    subnet: str
    dir: Path


def _span(value: object, limit: int = 300) -> str:
    """One line as a Markdown code span (shown literally: no escaping needed inside), or as
    escaped text when it holds a backtick that would end the span."""
    text = one_line(value, limit)
    return f"`{text}`" if "`" not in text else md_inline(text, limit)


def _code(*argv: str) -> str:
    """A command line, its arguments quoted for the shell (shlex), in a Markdown code span."""
    return _span(shlex.join(argv))


def _story(s: Scenario) -> list[str]:
    out = [f"# {md_inline(s.about.title if s.about else s.description or s.name, 200)}", ""]
    if s.about:
        out += ["## What the admin sees", "", md_inline(s.about.symptom, 400), ""]
    elif s.description:
        out += [md_inline(s.description, 200), ""]
    return out


def _task(s: Scenario) -> list[str]:
    ex = s.exercise
    if ex is None:
        return []
    out = ["## Your task", "", md_inline(ex.task, 600), "", "Done when:", ""]
    for g in ex.goals:
        who = f" to {md_inline(g.to, 100)}" if g.to else ""
        says = f" — {md_inline(g.says, 200)}" if g.says else ""
        out.append(f"- message {_span(g.message, 41)}{who}: **{md_inline(g.expect, 40)}**{says}")
    out += ["", "You may change (in your seat's `overlay.yaml`):", ""]
    out += [f"- {_span(p, 120)}" for p in ex.may_change]
    return out + [""]


def _diagram(plan: Plan) -> list[str]:
    return ["## The lab", "", "```mermaid", to_mermaid(build(plan)).rstrip("\n"), "```", ""]


def _seat_commands(workshop: str, seat: SeatAccess, s: Scenario) -> list[str]:
    first = next((m for m in s.traffic if m.to), None)
    rcpt = first.to[0] if first else "someone@example"
    swaks = ("swaks", "--server", s.gateway.hostname, "--to", rcpt)
    return [
        f"- your seat's directory: {_span(seat.dir)}; edit `overlay.yaml` there",
        f"- grade your change (restarts your seat with it, sends the traffic again): "
        f"{_code('labgen', 'check', '--seat', seat.seat, workshop)}",
        f"- what happened to each message, hop by hop, as a page: "
        f"{_code('labgen', 'report', str(seat.dir / 'run' / 'result.json'), '-o', 'report.html')}",
        "- send one yourself from inside the seat: "
        + _code("labgen", "workshop", "exec", "--name", workshop, seat.seat, "--", *swaks),
        f"- start again: {_code('labgen', 'workshop', 'reset', seat.seat, '--name', workshop)}",
    ]


def seat_handout(workshop: str, seat: SeatAccess, s: Scenario, plan: Plan) -> str:
    lines = _story(s) + _task(s) + _diagram(plan)
    lines += [
        f"## Your seat: {md_inline(seat.seat, 8)}",
        "",
        f"Lab {_span(seat.lab, 40)} on {_span(seat.subnet, 40)}, workshop {_span(workshop, 40)}.",
        "",
    ]
    lines += _seat_commands(workshop, seat, s)
    return "\n".join(lines) + "\n"


def class_handout(workshop: str, seats: list[SeatAccess], s: Scenario, plan: Plan) -> str:
    lines = _story(s) + _task(s) + _diagram(plan)
    lines += ["## Seats", "", "| seat | lab | subnet | directory |", "| --- | --- | --- | --- |"]
    for st in seats:
        lines.append(
            f"| {md_inline(st.seat, 8)} | {md_inline(st.lab, 40)} | {md_inline(st.subnet, 40)} | "
            f"{md_inline(st.dir, 300)} |"
        )
    lines += [
        "",
        "Each seat's own hand-out, with its commands, is `handout.md` in its directory. Grade every "
        f"seat: {_code('labgen', 'workshop', 'check', workshop)} (class-report.json and .csv).",
    ]
    if s.exercise and s.exercise.hints:
        lines += ["", f"The exercise has {len(s.exercise.hints)} hint(s), for the trainer to give in order."]
    return "\n".join(lines) + "\n"
