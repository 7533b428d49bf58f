"""`labgen report`: one self-contained HTML file for a run (or two runs side by side).

Everything is inline: the CSS, the diagram (graph.py's SVG), one small script (details expanded
before printing) whose hash the page's Content-Security-Policy names, so nothing else can run and
nothing is fetched (`default-src 'none'`). Every value comes from a scenario, a lab service or a
client and is untrusted: the template is rendered with Jinja's autoescape, and the one piece of
markup inserted as it is, the SVG, comes from labgen's own DOT (labels escaped by graph.html) as
Graphviz wrote it, and is refused if it holds anything active.

Sources: a lab directory labgen-<lab> in the work directory (run/result.json, plan.json, the
transcripts in run/transcripts/), a labgen.result/v1 file (with its lab directory's plan and
transcripts when the file sits in one and is of the same run), or a labgen.compare/v1 file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .. import __version__
from ..errors import InfraError, InputError, escape
from ..files import write_whole
from ..model.plan import Plan
from ..resources import resource_dir
from .compare import compare_docs
from .contracts import CompareDoc, MessageResult, ResultDoc, TranscriptHop, dump
from .documents import read_json, validated
from .report import LABEL

SHOWN_MAX = 60  # recipients shown in full (hops, transcripts); a `count:` load run lists the ones needing a look
TRANSCRIPT_LINES = 200  # lines of one session shown
_LAB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")

# The only script: open every <details> before printing (and close what was closed after).
PRINT_SCRIPT = (
    "(function(){var opened=[];"
    "addEventListener('beforeprint',function(){document.querySelectorAll('details:not([open])')"
    ".forEach(function(d){d.open=true;opened.push(d);});});"
    "addEventListener('afterprint',function(){opened.forEach(function(d){d.open=false;});opened=[];});"
    "})();"
)

OUTCOME_CLASS = {
    "delivered": "ok",
    "silently_discarded": "lost",
    "rejected": "rejected",
    "deferred": "deferred",
    "unaccounted": "lost",
}


@dataclass
class Run:
    """One run as the report shows it: its result and, when found, its lab's plan and run/."""

    doc: ResultDoc
    plan: Plan | None = None
    run_dir: Path | None = None  # run/ of the same run: transcripts, ledger
    source: str = ""  # what the user named, for the page
    notes: list[str] = field(default_factory=list)  # what is missing and why


# ---------------------------------------------------------------- reading sources


def _plan(labdir: Path) -> Plan | None:
    path = labdir / "plan.json"
    if labdir.is_symlink() or not path.is_file():
        return None
    try:
        return Plan.load(path)
    except (OSError, ValueError):
        return None  # a plan labgen cannot read: the report says there is no diagram


def _attach_lab(run: Run, labdir: Path) -> None:
    """The lab's plan (diagram, catalogue entry) and run/ (transcripts), if they are this run's."""
    plan = _plan(labdir)
    if plan is None:
        run.notes.append("no plan.json of this lab was found: no diagram, no transcripts")
        return
    if plan.lab != run.doc.scenario:
        run.notes.append(f"{labdir} holds lab {plan.lab}, not {run.doc.scenario}: no diagram, no transcripts")
        return
    run.plan = plan
    if plan.run_id == run.doc.run_id and (labdir / "run").is_dir():
        run.run_dir = labdir / "run"
    else:
        run.notes.append(
            f"the lab directory holds run {plan.run_id}, not {run.doc.run_id}: no transcripts "
            "(the diagram is the lab's as it is now)"
        )


def write_lab_report(labdir: Path, source: str) -> Path:
    """run/report.html of a lab directory's last run (run/result.json), beside it."""
    path = labdir / "run" / "result.json"
    doc = validated(ResultDoc, read_json(path, escape(path, 120)), escape(path, 120))
    run = Run(doc=doc, source=source)
    _attach_lab(run, labdir)
    write(labdir / "run" / "report.html", render([run]))
    return labdir / "run" / "report.html"


def lab_run(lab: str, workdir: Path) -> Run:
    """A lab directory's last run: run/result.json (written by `labgen up`)."""
    labdir = workdir / f"labgen-{lab}"
    if not _LAB_NAME.fullmatch(lab) or labdir.is_symlink() or not (labdir / "plan.json").is_file():
        raise InputError(
            f"{escape(lab, 60)}: no lab of that name has run in {escape(workdir, 100)} (and it is no result file); "
            "run `labgen up SCENARIO` first, or pass --workdir or a result.json"
        )
    path = labdir / "run" / "result.json"
    if not path.is_file():
        raise InputError(f"{escape(path, 120)}: missing; run `labgen up {lab}` again to write it")
    doc = validated(ResultDoc, read_json(path, escape(path, 120)), escape(path, 120))
    run = Run(doc=doc, source=f"lab {lab}")
    _attach_lab(run, labdir)
    return run


def file_runs(path: Path, label: str, workdir: Path) -> list[Run]:
    """A result file (one run) or a compare file (two)."""
    data = read_json(path, label)
    schema = data.get("schema") if isinstance(data, dict) else None
    docs: list[ResultDoc]
    if schema == "labgen.compare/v1":
        cmp = validated(CompareDoc, data, label)
        docs = [cmp.a, cmp.b]
    else:
        docs = [validated(ResultDoc, data, label)]
    runs = []
    for doc in docs:
        run = Run(doc=doc, source=label)
        here = path.resolve().parent.parent  # labgen-<lab>/run/result.json
        labdir = here if (here / "plan.json").is_file() else workdir / f"labgen-{doc.scenario}"
        _attach_lab(run, labdir)
        runs.append(run)
    return runs


def load_runs(sources: list[str], workdir: Path) -> list[Run]:
    """`labgen report`'s arguments: one run, or two to set side by side."""
    runs: list[Run] = []
    for src in sources:
        path = Path(src)
        if src.endswith(".json") or path.is_file() or "/" in src:
            runs += file_runs(path, escape(src, 100), workdir)
        else:
            runs.append(lab_run(src, workdir))
    if not runs:
        raise InputError("report: name a lab or a result file")
    if len(runs) > 2:
        raise InputError(f"report: {len(runs)} runs named; a report shows one run, or two side by side")
    return runs


# ---------------------------------------------------------------- what the page shows


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else ""


def _started(run: Run) -> float | None:
    """When the traffic started: the first line of run/traffic.jsonl (the traffic's start event)."""
    if run.run_dir is None:
        return None
    try:
        with (run.run_dir / "traffic.jsonl").open(encoding="utf-8", errors="replace") as f:
            first = json.loads(f.readline(1 << 20) or "{}")
        return float(first.get("ts") or 0) or None if first.get("event") == "start" else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _cert_text(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    issuer = " (self-signed)" if c.get("self_signed") else f", issuer {c.get('issuer')}"
    return f"CN={c.get('subject')}{issuer}"


def _hop(h: dict[str, Any]) -> dict[str, str]:
    """One hop as a timeline row: who, what happened, the reply, the TLS, the certificate."""
    svc, ev = h.get("service") or "?", h.get("event") or "?"
    who, what, tls, cert = svc, ev, "", ""
    t = h.get("tls")
    if isinstance(t, dict):
        tls = t.get("version") or ""
        if t.get("trust"):
            tls += f" (server certificate {t['trust']})"
        if t.get("client_certificate"):
            cert = f"{t['client_certificate']}" + (
                f" (CN={t['client_certificate_cn']})" if t.get("client_certificate_cn") else ""
            )
    elif t is True:
        tls = "TLS"
    elif isinstance(t, str):
        tls = t
    if h.get("certificate"):
        cert = _cert_text(h["certificate"])
        c = h["certificate"]
        if c.get("trusted") is True:
            cert += " — trusted"
        elif c.get("trusted") is False:
            cert += f" — not trusted ({c.get('problem') or c.get('trust_detail') or 'untrusted'})"
    if svc == "traffic":
        who = "traffic generator"
        what = f"submitted via {h.get('entry') or '?'} to {h.get('relay') or '?'}"
    elif svc == "gateway":
        who = "gateway" + (f" · connector '{h['connector']}'" if h.get("connector") else "")
        what = f"{ev} → {h.get('relay') or '-'}" + (f" from {h['source_ip']}" if h.get("source_ip") else "")
        if not tls and ev in ("sent", "deferred", "bounced"):
            tls = "none (plaintext)"
    elif svc == "eop":
        who = "EOP"
        a = h.get("attribution") or {}
        if ev == "rcpt":
            conn = f", connector '{a['connector']}'" if a.get("connector") else ""
            what = f"attributed to {a.get('tenant') or 'no tenant'} by {a.get('by') or '-'}{conn}" if a else "answered"
            if not a and h.get("reason"):  # no rule decided it: an injected fault says why
                what += f" ({h['reason']})"
            what += f" → {h.get('action') or '?'}"
        elif ev in ("relayed", "relay_deferred", "relay_bounced"):
            what = f"{ev}" + (f" by outbound connector '{h['connector']}'" if h.get("connector") else "")
            what += f" → {h.get('relay') or '-'}"
        elif ev == "delivered":
            what = f"in mailbox {h.get('mailbox')}" + (f" (spf={h['spf']})" if h.get("spf") else "")
        elif ev == "discarded":
            what = "discarded after 250, no NDR"
        if h.get("client_ip"):
            who += f" (client {h['client_ip']})"
    elif svc == "sink":
        who = "internet sink"
        what = f"in mailbox {h.get('mailbox')}" if ev == "delivered" else ev
    reason = h.get("reason") or ""
    return {"who": who, "what": what, "reply": h.get("reply") or "", "tls": tls, "cert": cert, "reason": reason}


def _transcripts(run: Run) -> dict[str, list[TranscriptHop]]:
    if run.run_dir is None:
        return {}
    from ..lab.transcript import read_sessions, transcript_doc

    try:
        sessions = read_sessions(run.run_dir)
    except OSError:
        run.notes.append("the SMTP transcripts could not be read")
        return {}
    wanted = {m.id for m in run.doc.messages}
    out: dict[str, list[TranscriptHop]] = {}
    for msgid in wanted:
        hops = transcript_doc(run.doc.scenario, msgid, sessions, run.plan).hops
        if hops:
            out[msgid] = hops
    return out


def _transcript_view(hop: TranscriptHop) -> dict[str, Any]:
    prefix = {"server": "S:", "client": "C:", "tls": "  ", "note": "  "}
    lines: list[dict[str, str]] = []
    for step in hop.steps:
        for line in step.lines:
            lines.append({"at": f"{step.at:8.3f}", "side": step.side, "prefix": prefix[step.side], "text": line})
    cut = max(0, len(lines) - TRANSCRIPT_LINES)
    tls = None
    if hop.tls is not None:
        tls = {
            "version": hop.tls.version or "?",
            "cipher": (hop.tls.cipher or "?") + (f" ({hop.tls.bits} bits)" if hop.tls.bits else ""),
            "certs": [c.model_dump() for c in hop.tls.client_certificates],
        }
    return {
        "hop": hop.hop,
        "endpoints": f"{hop.client_ip}:{hop.client_port} → {hop.server_ip}:{hop.server_port}",
        "when": _when(hop.started),
        "helo": hop.helo or "-",
        "tls": tls,
        "lines": lines[:TRANSCRIPT_LINES],
        "cut": cut + hop.omitted_lines,
        "open": hop.ended is None,
    }


def _shown(messages: list[MessageResult]) -> list[MessageResult]:
    if len(messages) <= SHOWN_MAX:
        return messages
    notable = [m for m in messages if m.outcome != "delivered" or m.ok is False]
    rest = [m for m in messages if not (m.outcome != "delivered" or m.ok is False)]
    return (notable + rest)[:SHOWN_MAX]


def _certificates(doc: dict[str, Any], transcripts: dict[str, list[TranscriptHop]]) -> list[dict[str, Any]]:
    """Every client certificate presented in the run: EOP's judgement where EOP saw it, the
    transcripts' record elsewhere; one row per SHA-256."""
    rows: dict[str, dict[str, Any]] = {}

    def row(fp: str, subject: str, issuer: str) -> dict[str, Any]:
        return rows.setdefault(
            fp or f"(no fingerprint) {subject}",
            {
                "subject": subject,
                "issuer": issuer,
                "sha256": fp,
                "judged": "not judged (the server that saw it does not judge certificates)",
                "trusted": None,
                "where": [],
                "messages": [],
            },
        )

    for m in doc["messages"]:
        for h in m["hops"]:
            c = h.get("certificate")
            if not c:
                continue
            r = row(c.get("fingerprint_sha256") or "", f"CN={c.get('subject')}", c.get("issuer") or "")
            if c.get("self_signed"):
                r["issuer"] = f"{c.get('issuer')} (self-signed)"
            if c.get("trusted") is True:
                r["judged"], r["trusted"] = "trusted: the chain leads to the lab's public root", True
            elif c.get("trusted") is False:
                r["judged"] = f"not trusted: {c.get('problem') or c.get('trust_detail') or 'untrusted'}"
                r["trusted"] = False
            if f"{h.get('client_ip') or '?'} → EOP" not in r["where"]:
                r["where"].append(f"{h.get('client_ip') or '?'} → EOP")
            if m["id"] not in r["messages"]:
                r["messages"].append(m["id"])
    for msgid, hops in transcripts.items():
        for hop in hops:
            if hop.tls is None or not hop.tls.client_certificates:
                continue
            leaf = hop.tls.client_certificates[0]
            r = row(leaf.fingerprint_sha256, leaf.subject, leaf.issuer)
            if hop.hop not in r["where"]:
                r["where"].append(hop.hop)
            if msgid not in r["messages"]:
                r["messages"].append(msgid)
    return list(rows.values())


def _tenant_traces(run: Run, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each tenant's message trace next to what really happened to each message it concerns."""
    tenants: list[str] = sorted(run.plan.scenario.tenants) if run.plan else []
    domains: dict[str, str] = {}
    if run.plan:
        for name, t in run.plan.scenario.tenants.items():
            for d in t.domains:
                domains[str(getattr(d, "name", d)).lower()] = name
    for m in doc["messages"]:
        for t in m.get("trace") or []:
            if t["tenant"] not in tenants:
                tenants.append(t["tenant"])
        if m.get("recipient_tenant") and m["recipient_tenant"] not in tenants:
            tenants.append(m["recipient_tenant"])
    out = []
    for tenant in tenants:
        rows = []
        for m in doc["messages"][:SHOWN_MAX]:
            seen = [t["status"] for t in m.get("trace") or [] if t["tenant"] == tenant]
            sender_tenant = domains.get(m["from"].rpartition("@")[2].lower())
            if not seen and m.get("recipient_tenant") != tenant and sender_tenant != tenant:
                continue
            silent = not seen and m.get("recipient_tenant") == tenant
            rows.append(
                {
                    "id": m["id"],
                    "route": f"{m['from']} → {m['to']}",
                    "trace": ", ".join(seen) if seen else "— nothing in this tenant's trace",
                    "truth": LABEL[m["outcome"]],
                    "cls": OUTCOME_CLASS[m["outcome"]],
                    "silent": silent,
                    "mismatch": silent or (bool(seen) and m["outcome"] != "delivered" and "Delivered" in seen),
                }
            )
        out.append({"tenant": tenant, "rows": rows})
    return out


def _diagram(run: Run, shown: list[MessageResult], id_prefix: str) -> tuple[str | None, str]:
    """The inline SVG (or None) and a sentence for the page when there is none."""
    if run.plan is None:
        return None, "No diagram: this run's lab plan (plan.json) was not found."
    from . import graph

    try:
        doc = run.doc if len(shown) == len(run.doc.messages) else run.doc.model_copy(update={"messages": shown})
        svg = graph.render_svg(graph.to_dot(graph.build(run.plan, doc))).decode("utf-8", "replace")
    except InfraError as e:
        return None, f"No diagram: {e.message}"
    start = svg.find("<svg")
    svg = svg[start:] if start >= 0 else ""
    if not svg or re.search(r"<script|<foreignObject|\son[a-z]+\s*=|javascript:|<iframe|<a\s", svg, re.I):
        return None, "No diagram: Graphviz's SVG held something a report does not inline."
    svg = re.sub(r'\bid="', f'id="{id_prefix}', svg)
    return svg, ""


def run_view(run: Run, side: str, changed: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    doc = dump(run.doc)
    shown = _shown(run.doc.messages)
    shown_keys = {(m.id, m.to) for m in shown}
    transcripts = _transcripts(run)
    s = doc["summary"]
    expectations = any(m.get("expected") is not None for m in doc["messages"])
    if not expectations:
        held, held_cls = "No expectations to check", "neutral"
    elif s["expectations_failed"] == 0:
        held, held_cls = "All expectations held", "ok"
    else:
        held, held_cls = f"{s['expectations_failed']} expectation(s) FAILED", "lost"
    messages: list[dict[str, Any]] = []
    seen_transcripts: set[str] = set()
    for m in doc["messages"]:
        if (m["id"], m["to"]) not in shown_keys:
            continue
        tx = []
        if m["id"] not in seen_transcripts:
            seen_transcripts.add(m["id"])
            tx = [_transcript_view(h) for h in transcripts.get(m["id"], [])]
        trace_lines = [f"{t['tenant']}'s message trace: {t['status']}" for t in m.get("trace") or []]
        if not m["recipient_trace_visible"] and m.get("recipient_tenant"):
            trace_lines.append(f"{m['recipient_tenant']}'s admin finds nothing in message trace")
        messages.append(
            {
                "id": m["id"],
                "anchor": f"{side}-m{len(messages)}",
                "sender": m["from"],
                "to": m["to"],
                "outcome": LABEL[m["outcome"]],
                "cls": OUTCOME_CLASS[m["outcome"]],
                "expected": m["expected"] or "",
                "ok": m["ok"],
                "why": m["why"],
                "hops": [_hop(h) for h in m["hops"]],
                "ndr": (m.get("ndr") or {}).get("mailbox"),
                "ndr_lost": m.get("ndr_lost"),
                "trace": trace_lines,
                "transcripts": tx,
                "transcripts_missing": run.run_dir is None,
                "changed": changed is not None and (m["id"], m["to"]) in changed,
            }
        )
    svg, no_svg = _diagram(run, shown, f"{side}-")
    about = None
    if run.plan is not None and run.plan.scenario.about is not None:
        about = run.plan.scenario.about.model_dump()
    return {
        "side": side,
        "source": run.source,
        "scenario": doc["scenario"],
        "description": doc["description"],
        "engine": doc["engine"],
        "profile": doc.get("profile") or "",
        "run_id": doc["run_id"],
        "started": _when(_started(run)),
        "duration": f"{doc['duration_s']:.1f} s",
        "lab_dir": doc["lab_dir"],
        "summary": s,
        "held": held,
        "held_cls": held_cls,
        "messages": messages,
        "hidden": len(doc["messages"]) - len(messages),
        "svg": svg,
        "no_svg": no_svg,
        "certificates": _certificates(
            {"messages": [m for m in doc["messages"] if (m["id"], m["to"]) in shown_keys]}, transcripts
        ),
        "tenants": _tenant_traces(run, doc),
        "about": about,
        "notes": run.notes,
    }


# ---------------------------------------------------------------- rendering


def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(resource_dir("templates"))),
        autoescape=True,  # every value is untrusted; the SVG alone is marked safe (see _diagram)
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(PRINT_SCRIPT.encode()).digest()).decode()
    return f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'"


def render(runs: list[Run], generated: float | None = None) -> str:
    """The page: one run, or two side by side with what changed."""
    compare = None
    changed: set[tuple[str, str]] = set()
    if len(runs) == 2:
        cmp = compare_docs(runs[0].doc, runs[1].doc)
        changed = {(c.id, c.to) for c in cmp.changes if c.changed}
        compare = {
            "a": runs[0].doc.scenario,
            "b": runs[1].doc.scenario,
            "changes": [
                {
                    "id": c.id,
                    "to": c.to,
                    "a": LABEL.get(c.a or "", "—"),
                    "b": LABEL.get(c.b or "", "—"),
                    "a_cls": OUTCOME_CLASS.get(c.a or "", ""),
                    "b_cls": OUTCOME_CLASS.get(c.b or "", ""),
                    "changed": c.changed,
                    "change": c.change,
                }
                for c in cmp.changes
            ],
            "n_changed": len(changed),
        }
    views = [run_view(r, side, changed if compare else None) for r, side in zip(runs, ("a", "b"), strict=False)]
    title = (
        f"labgen compare · {views[0]['scenario']} vs {views[1]['scenario']}"
        if compare
        else f"labgen report · {views[0]['scenario']}"
    )
    return (
        _env()
        .get_template("report/report.html.j2")
        .render(
            title=title,
            runs=views,
            compare=compare,
            csp=_csp(),
            script=PRINT_SCRIPT,
            version=__version__,
            generated=_when(generated if generated is not None else time.time()),
        )
    )


def default_name(runs: list[Run]) -> str:
    """The report's file name when none is given: from the lab names, when they are lab names (a
    result file's `scenario` is anyone's text and never becomes a path)."""
    names = [r.doc.scenario if _LAB_NAME.fullmatch(r.doc.scenario) else "" for r in runs]
    if len(names) == 2 and all(names):
        return f"labgen-compare-{names[0]}-vs-{names[1]}.html"
    if len(names) == 1 and names[0]:
        return f"labgen-{names[0]}-report.html"
    return "labgen-report.html"


def write(path: Path, page: str) -> None:
    """Write the page whole (a reader never sees half a report)."""
    path = Path(path)
    try:
        write_whole(path, page)
    except OSError as e:
        raise InputError(f"{escape(path, 120)}: cannot write the report ({escape(e.strerror or e, 80)})") from None


# ---------------------------------------------------------------- a workshop's class report


def render_class_report(doc: dict[str, Any], reports: dict[str, str], generated: float | None = None) -> str:
    """The class report page (labgen.class-report/v1 as `doc`): a row per seat (pass or fail, the
    goals held, the first that was not, a link to the seat's own run report, `reports`: seat ->
    relative link) and each seat's goals with why."""
    by_seat: dict[str, list[dict[str, Any]]] = {}
    for row in doc["rows"]:
        by_seat.setdefault(str(row["seat"]), []).append(row)
    seats = []
    for seat in doc["seats"]:
        goals = sorted(by_seat.get(seat, []), key=lambda r: int(r["goal"]))
        failed = [g for g in goals if not g["passed"]]
        seats.append(
            {
                "seat": seat,
                "goals": goals,
                "held": len(goals) - len(failed),
                "passed": seat in doc["passed"],
                "first_failed": failed[0] if failed else None,
                "report": reports.get(seat),
            }
        )
    return (
        _env()
        .get_template("report/class-report.html.j2")
        .render(
            workshop=doc["workshop"],
            scenario=doc["scenario"],
            seats=seats,
            passed=len(doc["passed"]),
            version=__version__,
            generated=_when(generated if generated is not None else time.time()),
        )
    )
