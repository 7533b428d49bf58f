"""Human output: a table that says in words what happened to each message, which hop said what,
and where mail was lost silently. JSON output is the result document itself (run.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import escape
from .contracts import CompareDoc, ResultDoc, dump

STYLE = {
    "delivered": "green",
    "silently_discarded": "bold red",
    "rejected": "yellow",
    "deferred": "magenta",
    "unaccounted": "bold white on red",
}
LABEL = {
    "delivered": "delivered",
    "silently_discarded": "SILENTLY DISCARDED",
    "rejected": "rejected",
    "deferred": "deferred",
    "unaccounted": "UNACCOUNTED",
}


def _text(value: object, style: str = "") -> Text:
    """Everything printed here holds untrusted text (scenario values, what lab services and
    clients said): never rich markup, control characters escaped."""
    return Text(escape(value), style=style)


def _short(reply: str | None, n: int = 60) -> str:
    reply = reply or ""
    return reply if len(reply) <= n else reply[: n - 1] + "…"


def hop_lines(m: dict[str, Any]) -> list[str]:
    lines = []
    for h in m["hops"]:
        svc, ev = h["service"], h["event"]
        if svc == "traffic":
            lines.append(f"submitted to {h.get('relay') or '?'}: {_short(h.get('reply'))}")
        elif svc == "gateway":
            tls = h.get("tls") or {}
            cert = f", cert {tls.get('client_certificate')}" if tls.get("client_certificate") else ""
            how = f" over {tls['version']}{cert}" if tls.get("version") else " without TLS"
            lines.append(
                f"gateway '{h.get('connector')}' connector → {h.get('relay') or '-'}{how}: "
                f"{ev} ({_short(h.get('reply'), 120)})"
            )
        elif svc == "eop" and ev == "rcpt":
            a = h.get("attribution") or {}
            conn = f" (connector '{a['connector']}')" if a.get("connector") else ""
            action = "defer" if (h.get("reply") or "").startswith("4") else h.get("action")
            who = f"attributed to {a.get('tenant') or 'no tenant'} by {a.get('by') or '-'}{conn}" if a else "answered"
            if not a and h.get("reason"):  # no rule decided it: an injected fault says why
                who += f" ({h['reason']})"
            lines.append(f"EOP: {who} → {action}: {_short(h.get('reply'), 50)}")
        elif svc == "eop" and ev in ("relayed", "relay_deferred", "relay_bounced"):
            conn = f" by outbound connector '{h['connector']}'" if h.get("connector") else ""
            tls = f" over {h['tls']}" if h.get("tls") else ""
            lines.append(f"EOP relayed it{conn} → {h.get('relay') or '-'}{tls}: {ev} ({_short(h.get('reply'), 120)})")
        elif ev == "delivered":
            spf = f" (spf={h['spf']})" if h.get("spf") else ""
            lines.append(f"{'EOP' if svc == 'eop' else 'internet sink'}: in mailbox {h.get('mailbox')}{spf}")
        elif ev == "discarded":
            lines.append("EOP: discarded after 250, no NDR")
        elif svc == "sink" and ev == "rcpt":
            lines.append(f"sink: {h.get('reply')}")
    return lines


# A report is for people: past this many recipients (a `count:` load run) it shows the ones that
# need a look first — not delivered, or not as expected — and says how many it left out.
SHOWN_MAX = 40


def _shown(messages: list[dict]) -> list[dict]:
    if len(messages) <= SHOWN_MAX:
        return messages
    notable = [m for m in messages if m["outcome"] != "delivered" or m["ok"] is False]
    rest = [m for m in messages if not (m["outcome"] != "delivered" or m["ok"] is False)]
    return (notable + rest)[:SHOWN_MAX]


def print_result(result: ResultDoc, console: Console) -> None:
    doc = dump(result)  # the document as --json prints it: what this report explains
    shown = _shown(doc["messages"])
    profile = f" · EOP profile {doc['profile']}" if doc.get("profile") else ""
    title = f"labgen · {doc['scenario']} · {doc['engine']} engine{profile} · {doc['duration_s']:.1f} s"
    table = Table(
        title=_text(title), caption=_text(doc["description"]) if doc.get("description") else None, show_lines=False
    )
    table.add_column("message", no_wrap=True)
    table.add_column("from → to")
    table.add_column("outcome", no_wrap=True)
    table.add_column("expected", no_wrap=True)
    for m in shown:
        stated = expectation_text(m)
        exp = "" if not stated else ("✓ " if m["ok"] else "✗ ") + stated
        table.add_row(
            _text(m["id"]),
            _text(f"{m['from']} → {m['to']}"),
            Text(LABEL[m["outcome"]], style=STYLE[m["outcome"]]),
            _text(exp, style="green" if m["ok"] else "red" if m["ok"] is False else ""),
        )
    console.print(table)
    if len(shown) < len(doc["messages"]):
        console.print(
            _text(
                f"… {len(doc['messages']) - len(shown)} more recipient(s) not shown, the ones that need a look "
                "first; every one is in --json and the lab's run/result.json",
                "dim",
            )
        )
    for m in shown:
        console.print(
            Text.assemble(_text(f"{m['id']} → {m['to']}: ", "bold"), (LABEL[m["outcome"]], STYLE[m["outcome"]]))
        )
        for line in hop_lines(m):
            console.print(_text(f"    {line}"))
        if m["outcome"] != "delivered":
            console.print(_text(f"    ⇒ {m['why']}"))
            if m.get("ndr"):
                console.print(
                    _text(f"    ⇒ the sender was told: a non-delivery report is in mailbox {m['ndr']['mailbox']}")
                )
            if not m["recipient_trace_visible"] and m.get("recipient_tenant"):
                console.print(_text(f"    ⇒ {m['recipient_tenant']}'s admin finds nothing in message trace"))
            for t in m.get("trace") or []:
                if t["tenant"] != m.get("recipient_tenant"):
                    console.print(_text(f"    ⇒ {t['tenant']}'s message trace shows it as {t['status']}"))
    for m in shown:
        if m["outcome"] == "silently_discarded":
            console.print(_text(silent_loss_line(m), "red"))
    s = doc["summary"]
    console.print(
        _text(
            f"{s['total']} recipient(s): {s['delivered']} delivered, {s['silently_discarded']} silently discarded, "
            f"{s['rejected']} rejected, {s['deferred']} deferred, {s['unaccounted']} unaccounted. "
            + (
                "No expectations to check."
                if all(m.get("expected") is None for m in doc["messages"])
                else "All expectations held."
                if s["expectations_failed"] == 0
                else f"{s['expectations_failed']} expectation(s) FAILED."
            )
        )
    )
    _expectation_failures(doc, console)
    console.print(_text(f"Lab directory: {doc['lab_dir']} (ledger in run/, mailboxes in run/mailboxes/)", "dim"))
    if doc["engine"] == "docker":
        console.print(
            _text(
                f"The lab stays up to explore: labgen status {doc['scenario']} · labgen logs gateway · "
                f"docker exec -it labgen-{doc['scenario']}-{'lab' if doc.get('topology') == 'pod' else 'traffic'} "
                f"swaks ... · labgen down {doc['scenario']}",
                "dim",
            )
        )


def expectation_text(m: dict[str, Any]) -> str:
    """What the scenario expected of one recipient: its outcome, a reply text, an SPF result."""
    extra = [f"reply '{m['expected_reply']}'"] if m.get("expected_reply") else []
    extra += [f"spf={m['expected_spf']}"] if m.get("expected_spf") else []
    return " ".join(filter(None, [m["expected"] or "", f"({', '.join(extra)})" if extra else ""]))


def print_expectation_failures(result: ResultDoc, console: Console) -> None:
    _expectation_failures(dump(result), console)


def _expectation_failures(doc: dict[str, Any], console: Console) -> None:
    failed = [m for m in doc["messages"] if m["ok"] is False]
    for m in failed[:SHOWN_MAX]:
        if m["ok"] is False:
            console.print(
                _text(
                    f"  expectation failed in {doc['scenario']}: {m['id']} → {m['to']}: expected "
                    f"{expectation_text(m)}, got {m['outcome']} ({m['why']})",
                    "red",
                )
            )
    if len(failed) > SHOWN_MAX:
        console.print(_text(f"  … and {len(failed) - SHOWN_MAX} more failed expectation(s): see --json", "red"))


def silent_loss_line(m: dict[str, Any]) -> str:
    d = m.get("dropped_by") or {}
    cert = d.get("certificate") or {}
    upstream = next((h for h in reversed(m["hops"]) if h["event"] in ("sent", "submitted")), None)
    said = f"{upstream['service']} logged '{_short(upstream.get('reply'), 70)}'" if upstream else "it was accepted"
    certtxt = ""
    if cert:
        certtxt = (
            f" The certificate it presented: CN={cert.get('subject')}, issuer {cert.get('issuer')}"
            f"{' (self-signed)' if cert.get('self_signed') else ''}, "
            f"SHA-256 {(cert.get('fingerprint_sha256') or '')[:23]}…."
        )
    return (
        f"SILENT LOSS: {m['id']} to {m['to']}: the {said}, yet no mailbox has it and no NDR went back. "
        f"Why: {d.get('reason')}.{certtxt}"
    )


def print_compare(compared: CompareDoc, console: Console) -> None:
    doc = dump(compared)
    a, b = doc["a"], doc["b"]
    profiles = {a.get("profile"), b.get("profile")} - {None}
    under = f" · EOP profile {'/'.join(sorted(profiles))}" if profiles else ""
    title = f"labgen compare · {a['scenario']} vs {b['scenario']}{under}"
    table = Table(title=_text(title), show_lines=True, expand=True)
    table.add_column("message", no_wrap=True)
    table.add_column("to")
    table.add_column(a["scenario"], no_wrap=True)
    table.add_column(b["scenario"], no_wrap=True)
    table.add_column("what changed", ratio=3)
    for c in doc["changes"]:
        oa, ob = c["a"], c["b"]
        table.add_row(
            _text(c["id"]),
            _text(c["to"]),
            _text(LABEL.get(oa, oa or "—"), STYLE.get(oa, "")),
            _text(LABEL.get(ob, ob or "—"), STYLE.get(ob, "")),
            _text(c["change"]),
        )
    console.print(table)
    n = sum(1 for c in doc["changes"] if c["changed"])
    console.print(
        _text(f"{n} of {len(doc['changes'])} recipient outcome(s) changed between {a['scenario']} and {b['scenario']}.")
    )
    if a["engine"] == "docker":
        # By name: `down --all` would take other people's labs too.
        console.print(
            _text(
                f"Both labs stay up to explore (labgen status); remove them with labgen down {a['scenario']} "
                f"and labgen down {b['scenario']}.",
                "dim",
            )
        )
