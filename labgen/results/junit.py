"""JUnit XML for `labgen test` (labgen/suite.py): the Ant/Jenkins format that GitLab, Jenkins and
GitHub's report actions display. One <testsuite> per scenario, one <testcase> per
message × recipient expectation; a failed expectation is a <failure> that names the outcome, the
expected outcome, the hop where it went wrong and the reply; a lab that could not run (or a
recipient it lost track of) is an <error>.

The layout follows the common JUnit schema (windyroad/JUnit-Schema's JUnit.xsd, the Ant JUnit
task's format; tests/data/junit.xsd restates its rules and the tests validate against it): every
<testsuite> in <testsuites> carries package, id, name, timestamp (no time zone), hostname, tests,
failures, errors, time and holds <properties>, its cases, <system-out> and <system-err>; a case holds
at most one of <failure>, <error>, each with a `type`.

Everything in the file may come from an untrusted scenario or lab client (descriptions, replies,
the verdict's `why`): written through xml.etree (which escapes markup, `]]>` included) after
`xml_text`, which removes what XML 1.0 cannot carry at all (most control characters, even escaped).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ..errors import escape
from .report import expectation_text, hop_lines

# Characters XML 1.0 does not allow in a document at all (not even as &#N;): C0 controls but tab,
# LF and CR, surrogates, U+FFFE/U+FFFF. escape() writes them as \xNN; this catches what is left.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: object, limit: int | None = None) -> str:
    """One line of untrusted text as an attribute or element may hold it: every non-printable
    character written as \\xNN (labgen.errors.escape), nothing XML 1.0 forbids left."""
    return _NOT_XML.sub("?", escape(value, limit))


def xml_lines(lines: list[str]) -> str:
    """Several lines of untrusted text as element content: each line escaped on its own."""
    return "\n".join(xml_text(line) for line in lines)


@dataclass
class Case:
    """One message × recipient expectation and how it went."""

    msgid: str
    rcpt: str
    status: str  # "passed" | "failed" | "error"
    expected: str  # expectation_text: outcome, reply, SPF
    outcome: str | None  # None: the lab did not run
    message: str = ""  # one line: what failed, or the error
    details: list[str] = field(default_factory=list)  # the hops, the verdict's why
    at: str = ""  # failed: the hop where it went wrong and its reply
    why: str = ""  # the verdict's why

    @property
    def name(self) -> str:
        return f"{self.msgid} → {self.rcpt}"


@dataclass
class Suite:
    """One scenario's run: its cases, or the reason its lab could not run."""

    scenario: str
    source: str  # the file or name it came from, as found
    engine: str
    started: str  # UTC, ISO 8601 without a time zone (what the schema's timestamp allows)
    duration_s: float
    cases: list[Case]
    description: str = ""
    error: str | None = None  # the lab could not run (exit-3 kind): every case is an error
    lab_dir: str | None = None
    run_id: str | None = None
    profile: str | None = None
    result: dict[str, Any] | None = None  # the labgen.result/v1 document, dumped

    @property
    def counts(self) -> dict[str, int]:
        return {
            "tests": len(self.cases),
            "failures": sum(c.status == "failed" for c in self.cases),
            "errors": sum(c.status == "error" for c in self.cases),
        }

    @property
    def status(self) -> str:
        c = self.counts
        return "error" if self.error or c["errors"] else "failed" if c["failures"] else "passed"


# ---------------------------------------------------------------- cases from a result


def _deciding_hop(m: dict[str, Any]) -> dict[str, Any] | None:
    """The hop where the recipient's fate was decided: the discard, the last refusal (4xx/5xx),
    the mailbox; else the last hop recorded."""
    hops = m.get("hops") or []
    if m["outcome"] == "silently_discarded":
        found = next((h for h in reversed(hops) if h.get("event") == "discarded"), None)
        # The discarding service's RCPT answer: the 250 the sender's side took for delivery.
        rcpt = next((h for h in reversed(hops) if h.get("service") == "eop" and h.get("event") == "rcpt"), None)
        return rcpt or found or (hops[-1] if hops else None)
    if m["outcome"] in ("rejected", "deferred"):
        refused = [h for h in hops if (h.get("reply") or "")[:1] in ("4", "5")]
        if refused:
            return refused[-1]
    if m["outcome"] == "delivered":
        found = next((h for h in reversed(hops) if h.get("event") == "delivered"), None)
        if found:
            return found
    return hops[-1] if hops else None


def _hop_name(h: dict[str, Any]) -> str:
    lines = hop_lines({"hops": [h]})
    return lines[0] if lines else f"{h.get('service')} {h.get('event')}"


def _reply(m: dict[str, Any], hop: dict[str, Any] | None) -> str:
    if hop and hop.get("reply"):
        return str(hop["reply"])
    said = [h.get("reply") for h in m.get("hops") or [] if h.get("reply")]
    return str(said[-1]) if said else "(no reply recorded)"


def where_it_went_wrong(m: dict[str, Any]) -> str:
    """The hop that decided the recipient's fate, and the reply there."""
    hop = _deciding_hop(m)
    where = _hop_name(hop) if hop else "no hop recorded"
    return f"at hop: {where}; reply: {_reply(m, hop)}"


def failure_message(m: dict[str, Any]) -> str:
    """One line: outcome, expected outcome, the hop where it went wrong, the reply, and why."""
    return f"outcome {m['outcome']}, expected {expectation_text(m)}; {where_it_went_wrong(m)}; why: {m['why']}"


def cases_from_result(doc: dict[str, Any]) -> list[Case]:
    """A result document's (results.contracts.ResultDoc, dumped) expectations as cases; a
    recipient without any expectation (ok is None) is not a case, unless the lab lost track of it
    (unaccounted: an error, as it is exit 3 for `labgen up`)."""
    cases = []
    for m in doc["messages"]:
        if m["ok"] is None and m["outcome"] != "unaccounted":
            continue
        details = [*hop_lines(m), f"⇒ {m['why']}"]
        if m["outcome"] == "unaccounted":
            status, message = "error", f"unaccounted for: {m['why']}"
        elif m["ok"]:
            status, message = "passed", ""
        else:
            status, message = "failed", failure_message(m)
        cases.append(
            Case(
                msgid=m["id"],
                rcpt=m["to"],
                status=status,
                expected=expectation_text(m),
                outcome=m["outcome"],
                message=message,
                details=details,
                at=where_it_went_wrong(m) if status == "failed" else "",
                why=m["why"],
            )
        )
    return cases


def cases_not_run(expectations: list[tuple[str, str, str]], error: str) -> list[Case]:
    """A lab that could not run: each of its expectations (msgid, rcpt, expected) an error; one
    case for the lab itself when it states none, so the error is shown."""
    rows = expectations or [("(lab)", "every recipient", "")]
    return [Case(msgid=i, rcpt=r, status="error", expected=e, outcome=None, message=error) for i, r, e in rows]


# ---------------------------------------------------------------- the XML


def _hostname() -> str:
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    return xml_text(name, 200).strip() or "localhost"


def build(suites: list[Suite]) -> ET.ElementTree:
    root = ET.Element("testsuites")
    host = _hostname()
    for i, s in enumerate(suites):
        c = s.counts
        el = ET.SubElement(
            root,
            "testsuite",
            {
                "name": xml_text(s.scenario),
                "package": f"labgen.{xml_text(s.scenario)}",
                "id": str(i),
                "timestamp": s.started,
                "hostname": host,
                "tests": str(c["tests"]),
                "failures": str(c["failures"]),
                "errors": str(c["errors"]),
                "time": f"{s.duration_s:.3f}",
            },
        )
        props = ET.SubElement(el, "properties")
        for key, value in (
            ("source", s.source),
            ("engine", s.engine),
            ("profile", s.profile),
            ("description", s.description),
            ("run_id", s.run_id),
            ("lab_dir", s.lab_dir),
        ):
            if value:
                ET.SubElement(props, "property", {"name": key, "value": xml_text(value, 500)})
        for case in s.cases:
            tc = ET.SubElement(
                el,
                "testcase",
                {"classname": f"labgen.{xml_text(s.scenario)}", "name": xml_text(case.name), "time": "0"},
            )
            if case.status == "failed":
                f = ET.SubElement(tc, "failure", {"type": "expectation", "message": xml_text(case.message, 2000)})
                f.text = xml_lines([case.message, *case.details])
            elif case.status == "error":
                kind = "unaccounted" if case.outcome == "unaccounted" else "infrastructure"
                e = ET.SubElement(tc, "error", {"type": kind, "message": xml_text(case.message, 2000)})
                e.text = xml_lines([case.message, *case.details])
        out = ET.SubElement(el, "system-out")
        out.text = xml_lines(
            [f"labgen test: {s.scenario} ({s.source}): {s.status}"]
            + (
                [f"{c.name}: expected {c.expected}, got {c.outcome}" for c in s.cases if c.outcome]
                if not s.error
                else []
            )
        )
        err = ET.SubElement(el, "system-err")
        err.text = xml_lines([s.error]) if s.error else ""
    ET.indent(root)
    return ET.ElementTree(root)


def to_bytes(suites: list[Suite]) -> bytes:
    root = build(suites).getroot()
    assert root is not None
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write(path: Path, suites: list[Suite]) -> None:
    from ..files import write_whole

    write_whole(path, to_bytes(suites).decode("utf-8") + "\n", mode=0o644)
