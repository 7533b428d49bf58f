"""`labgen report`: one self-contained HTML file per run (or two side by side), and the result
and report files `labgen up` / `labgen compare` leave behind.

The page is loaded in a real headless browser, Debian's `chromium`, driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`: no port, no websocket library): it must load with no
console error, no exception and no blocked resource (the page's Content-Security-Policy allows no
fetch at all, so a request for anything outside the file is a console error too), with its key
elements present, and a screenshot is taken. In CI (CI or LABGEN_REQUIRE_DOCKER set) a missing
chromium fails these tests; elsewhere they skip, saying why.

`LABGEN_SCREENSHOTS=1` (scripts/screenshots.sh) makes test_readme_screenshots write the README's
pictures into docs/img/ instead of a temporary directory.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, labgen, labgen_json

HOSTILE = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
README_PNG_MAX = 400 * 1024
GRAPH_WIDTH = 1600


# ---------------------------------------------------------------- runs the tests share


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """broken and fixed run once on the local engine (via `labgen compare`, which runs both)."""
    wd = tmp_path_factory.mktemp("runs")
    p = labgen("compare", "broken", "fixed", "--engine", "local", cwd=wd)
    assert p.returncode == 0, p.stdout + p.stderr
    return wd


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """broken with markup in every free-text field that reaches the page."""
    wd = tmp_path_factory.mktemp("hostile")
    data = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    data["name"] = "hostile"
    data["description"] = f"description {HOSTILE}"
    data["about"]["title"] = f"title {HOSTILE}"
    data["about"]["symptom"] = f"symptom {HOSTILE}"
    data["about"]["fix"] = f"fix {HOSTILE} & \"quotes\" 'too'"
    for ic in data["tenants"]["contoso"]["inbound_connectors"]:
        ic["Name"] = f"in {HOSTILE}"
    data["gateway"]["connectors"][0]["name"] = f"gw {HOSTILE}"
    (wd / "hostile.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    p = labgen("up", "./hostile.yaml", "--engine", "local", cwd=wd)
    assert p.returncode == 0, p.stdout + p.stderr
    return wd


# ---------------------------------------------------------------- what up and compare leave behind


def test_up_writes_result_json_and_report(tmp_path):
    code, doc = labgen_json("up", "broken", "--engine", "local", cwd=tmp_path)  # stdout: the document alone
    assert code == 0
    run = tmp_path / "labgen-broken" / "run"
    assert json.loads((run / "result.json").read_text()) == doc
    page = (run / "report.html").read_text()
    assert "to-fabrikam" in page and "SILENTLY DISCARDED" in page
    p = labgen("up", "broken", "--engine", "local", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"Report: {run / 'report.html'}" in p.stdout.splitlines()
    assert json.loads((run / "result.json").read_text())["run_id"] != doc["run_id"]  # the new run's


def test_compare_writes_a_comparison_report(runs):
    p = labgen("compare", "broken", "fixed", "--engine", "local", cwd=runs)
    assert p.returncode == 0, p.stderr
    path = runs / "labgen-compare-broken-vs-fixed.html"
    assert f"Report: {path}" in p.stdout.splitlines()
    page = path.read_text()
    assert 'id="run-a"' in page and 'id="run-b"' in page and 'id="changes"' in page
    changed = re.findall(r'<tr class="changed" data-change="([^"]*)"', page)
    assert changed == ["to-fabrikam"]  # the changes table: the one message whose outcome changed


# ---------------------------------------------------------------- the page itself


def test_report_of_a_lab_has_every_part(runs, tmp_path):
    out = tmp_path / "r.html"
    p = labgen("report", "broken", "-o", out, "--workdir", runs, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"wrote {out}"
    page = out.read_text()
    for part in (
        'id="summary-a"',
        'id="held-a"',
        "All expectations held",
        'id="verdicts-a"',
        'id="diagram-a"',
        "<svg",
        'id="tenant-traces-a"',
        'id="certificates-a"',
        'id="about-a"',
        'class="transcripts"',
        "ehlo gw.contoso.example",
        "STARTTLS",
        "— nothing in this tenant&#39;s trace",  # fabrikam's admin sees nothing of to-fabrikam
        "not trusted: self-signed",
        "SILENTLY DISCARDED",
        "✓ silently_discarded",
    ):
        assert part in page, part
    # self-contained: nothing to fetch (anchors within the page and data: URLs only)
    refs = re.findall(r"""\b(?:src|href|xlink:href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert refs and all(r.startswith("#") or r.startswith("data:") for r in refs), refs
    assert "default-src &#39;none&#39;" in page  # the CSP (attribute-escaped): no fetch of any kind
    assert "@media print" in page


def test_report_of_result_files_alone_and_side_by_side(runs, tmp_path):
    a = tmp_path / "a.json"
    shutil.copy(runs / "labgen-broken" / "run" / "result.json", a)
    p = labgen("report", a, "-o", tmp_path / "one.html", cwd=tmp_path)  # no lab directory next to it
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "one.html").read_text()
    assert 'id="verdicts-a"' in page and 'id="run-b"' not in page
    assert "No diagram" in page and "No SMTP transcripts" in page  # said, not failed
    two = labgen(
        "report",
        runs / "labgen-broken" / "run" / "result.json",
        runs / "labgen-fixed" / "run" / "result.json",
        cwd=tmp_path,
    )
    assert two.returncode == 0, two.stderr
    page = (tmp_path / "labgen-compare-broken-vs-fixed.html").read_text()
    assert 'id="run-b"' in page and page.count("<svg") == 2
    code, cmp = labgen_json("compare", "broken", "fixed", "--engine", "local", cwd=runs)
    assert code == 0
    (tmp_path / "cmp.json").write_text(json.dumps(cmp))
    p = labgen("report", tmp_path / "cmp.json", "-o", "c.html", "--workdir", runs, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert re.findall(r'<tr class="changed" data-change="([^"]*)"', (tmp_path / "c.html").read_text()) == [
        "to-fabrikam"
    ]


def test_hostile_strings_are_escaped(hostile_run, tmp_path):
    p = labgen("report", "hostile", "-o", tmp_path / "h.html", "--workdir", hostile_run, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "h.html").read_text()
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for where in ("description", "title", "symptom", "in", "gw"):  # each field arrived, escaped
        assert f"{where} &lt;script&gt;" in page, where
    assert page.count("<script>") == 1  # labgen's own (the CSP names its hash)
    assert "fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34; &#39;too&#39;" in page


def test_diagram_missing_dot_is_said_not_fatal(runs, tmp_path):
    env = {"PATH": str(Path(os.__file__).parent)}  # no `dot` on it (python itself is run by path)
    p = labgen("report", "broken", "-o", tmp_path / "r.html", "--workdir", runs, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "r.html").read_text()
    assert "No diagram: Graphviz&#39;s dot is not installed" in page and "<svg" not in page


@pytest.mark.parametrize(
    "args, says",
    [
        ([], "name a lab"),
        (["nosuchlab"], "no lab of that name has run"),
        (["missing.json"], "missing.json: cannot read it"),
        (["bad.json"], "bad.json: not JSON"),
        (["other.json"], "other.json: not a labgen.result/v1 document"),
        (["broken", "fixed", "broken"], "3 runs named"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, args, says):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"schema": "labgen.trace/v1"}')
    p = labgen("report", *args, "--workdir", runs, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, p.stderr
    assert not list(tmp_path.glob("*.html"))


# ---------------------------------------------------------------- a real browser


def chromium_binary() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        why = "Debian's chromium is not installed (scripts/setup.sh --test installs it)"
        if os.environ.get("CI") or os.environ.get("LABGEN_REQUIRE_DOCKER"):
            pytest.fail(f"the browser tests must run here but {why}")
        pytest.skip(f"the browser tests need a headless browser: {why}")
    return path


class Browser:
    """Headless chromium over the DevTools protocol on a pipe (fds 3 and 4, NUL-terminated JSON)."""

    TIMEOUT_S = 60  # a hang guard only; no assertion depends on time

    def __init__(self, binary: str, profile: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: its fd 3 reads our commands, fd 4 writes its answers
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            pass_fds=(3, 4),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.TIMEOUT_S
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._from_child, 1 << 20) if ready else b""
            if not chunk:
                raise AssertionError(f"chromium stopped answering (exit {self.proc.poll()})")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._read()
            self.events.append(e)
            if e.get("method") == method:
                return e

    def open(self, url: str, width: int = 1400, height: int = 1000) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")
        self.eval("1")  # a round trip: every event of the load is in before its answer

    def eval(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, dialogs (alert), failed loads."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Page.javascriptDialogOpening":
                out.append(f"dialog: {p.get('message')}")
        return out

    def screenshot(self, path: Path, full_page: bool = True, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", params, session=True)["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@pytest.fixture
def browser(tmp_path):
    b = Browser(chromium_binary(), tmp_path / "chromium-profile")
    try:
        yield b
    finally:
        b.close()


COUNTS = """JSON.stringify({
  verdictRows: document.querySelectorAll('#verdicts-a tbody tr').length,
  svg: document.querySelectorAll('#diagram-a svg').length,
  svgWidth: (document.querySelector('#diagram-a svg') || {getBoundingClientRect: () => ({width: 0})})
    .getBoundingClientRect().width,
  held: (document.querySelector('#held-a') || {}).textContent,
  certificates: document.querySelectorAll('#certificates-a tbody tr').length,
  tenants: document.querySelectorAll('#tenant-traces-a table').length,
  transcripts: document.querySelectorAll('details.transcripts').length,
  lost: [...document.querySelectorAll('#verdicts-a tr[data-outcome=lost]')].map(r => r.dataset.message),
  scripts: document.scripts.length,
})"""


def test_browser_loads_report_without_errors(runs, browser, tmp_path):
    out = tmp_path / "r.html"
    assert labgen("report", "broken", "-o", out, "--workdir", runs, cwd=tmp_path).returncode == 0
    browser.open(out.as_uri())
    assert browser.problems() == []
    got = json.loads(browser.eval(COUNTS))
    assert got["verdictRows"] == 4 and got["svg"] == 1 and got["svgWidth"] > 200, got
    assert got["held"].strip() == "✓ All expectations held"
    assert got["lost"] == ["to-fabrikam"]
    assert got["certificates"] >= 2 and got["tenants"] == 2 and got["transcripts"] == 4, got
    # Printed, every transcript shows: the print style alone, and the script (which the CSP let run) opens them.
    visible = "[...document.querySelectorAll('pre.transcript')].filter(p => p.checkVisibility()).length"
    assert browser.eval(visible) == 0  # closed on screen
    browser.call("Emulation.setEmulatedMedia", {"media": "print"}, session=True)
    assert browser.eval(visible) == got["transcripts"] * 2  # two hops each
    assert browser.eval("getComputedStyle(document.querySelector('.runs')).display") == "block"
    browser.call("Emulation.setEmulatedMedia", {"media": "screen"}, session=True)
    assert browser.eval("document.querySelectorAll('details[open]').length") == 0
    browser.eval("dispatchEvent(new Event('beforeprint'))")
    assert browser.eval("document.querySelectorAll('details:not([open])').length") == 0
    assert browser.eval(visible) == got["transcripts"] * 2
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.startswith(PNG_MAGIC) and len(shot) > 10_000
    assert browser.problems() == []


def test_browser_runs_no_hostile_script(hostile_run, browser, tmp_path):
    out = tmp_path / "h.html"
    assert labgen("report", "hostile", "-o", out, "--workdir", hostile_run, cwd=tmp_path).returncode == 0
    browser.open(out.as_uri())
    assert browser.problems() == []  # no dialog: alert(1) never ran
    assert browser.eval("document.scripts.length") == 1
    title = browser.eval("document.querySelector('#about-a h3').textContent")
    assert title == f"title {HOSTILE}"  # shown as text, exactly as written
    browser.screenshot(tmp_path / "hostile.png")


def test_browser_compare_side_by_side(runs, browser, tmp_path):
    page = runs / "labgen-compare-broken-vs-fixed.html"
    browser.open(page.as_uri(), width=1600)
    assert browser.problems() == []
    geo = json.loads(
        browser.eval(
            """JSON.stringify([...document.querySelectorAll('section.run')].map(s => {
                const r = s.getBoundingClientRect(); return {left: r.left, top: r.top, width: r.width}; }))"""
        )
    )
    assert len(geo) == 2 and geo[0]["top"] == geo[1]["top"] and geo[1]["left"] >= geo[0]["left"] + geo[0]["width"]
    changed = json.loads(
        browser.eval(
            """JSON.stringify({
              table: [...document.querySelectorAll('#changes tr.changed')].map(r => r.dataset.change),
              a: [...document.querySelectorAll('#run-a .message.changed b')].map(b => b.textContent),
              b: [...document.querySelectorAll('#run-b .message.changed b')].map(b => b.textContent),
              colour: getComputedStyle(document.querySelector('#changes tr.changed td')).backgroundColor,
            })"""
        )
    )
    assert changed["table"] == ["to-fabrikam"] and changed["a"] == ["to-fabrikam"] and changed["b"] == ["to-fabrikam"]
    assert changed["colour"] not in ("rgba(0, 0, 0, 0)", "transparent")
    browser.screenshot(tmp_path / "compare.png")


def test_readme_screenshots(runs, browser, tmp_path):
    """docs/img/report.png (the comparison report) and docs/img/graph.png (`labgen graph broken`
    after a run: the paths drawn), with LABGEN_SCREENSHOTS=1; else into a temporary directory."""
    dest = REPO / "docs" / "img" if os.environ.get("LABGEN_SCREENSHOTS") == "1" else tmp_path
    dest.mkdir(parents=True, exist_ok=True)
    browser.open((runs / "labgen-compare-broken-vs-fixed.html").as_uri(), width=1280, height=1500)
    assert browser.problems() == []
    shot = browser.screenshot(dest / "report.png", full_page=False)
    assert shot.startswith(PNG_MAGIC) and 10_000 < len(shot) < README_PNG_MAX

    svg = tmp_path / "graph.svg"
    p = labgen("graph", "broken", "-o", svg, "--workdir", runs, cwd=runs)
    assert p.returncode == 0 and "with the paths of run" in p.stdout, p.stdout + p.stderr
    holder = tmp_path / "graph.html"
    data = base64.b64encode(svg.read_bytes()).decode()
    holder.write_text(
        '<!DOCTYPE html><meta charset="utf-8"><title>graph</title>'
        "<style>body{margin:0;background:#fff}img{display:block;width:100%}</style>"
        f'<img id="g" alt="labgen graph broken" src="data:image/svg+xml;base64,{data}">'
    )
    browser.open(holder.as_uri(), width=GRAPH_WIDTH, height=900)
    assert browser.problems() == []
    box = json.loads(browser.eval("JSON.stringify(document.getElementById('g').getBoundingClientRect())"))
    assert box["width"] == GRAPH_WIDTH and box["height"] > 200, box
    shot = browser.screenshot(dest / "graph.png", clip={"x": 0, "y": 0, "width": box["width"], "height": box["height"]})
    assert shot.startswith(PNG_MAGIC) and 10_000 < len(shot) < README_PNG_MAX
