"""`labgen graph`: the mail-flow diagram as DOT (SVG by the real Graphviz `dot`) and Mermaid, a
run's paths drawn over it, and untrusted labels that cannot break out of either format."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from conftest import labgen, labgen_json
from test_render_safety import HOSTILE

from labgen.model.plan import AsWritten, make_plan
from labgen.model.scenario import load_scenario
from labgen.results import graph
from labgen.results.contracts import ResultDoc
from labgen.textsafe import one_line

SVG = "{http://www.w3.org/2000/svg}"

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot (scripts/setup.sh installs it)")


def broken_graph(doc: ResultDoc | None = None) -> graph.Graph:
    return graph.build(make_plan(load_scenario("broken"), AsWritten()), doc)


def dot_edges(dot: str) -> list[tuple[str, str, str]]:
    """(source, target, attributes) of every edge statement."""
    return re.findall(r'^\s*"(\w+)" -> "(\w+)" \[(.*)\];$', dot, re.M)


def svg_of(dot: str) -> ET.Element:
    return ET.fromstring(graph.render_svg(dot))  # render_svg fails on any warning of dot's


def svg_texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


# ---------------------------------------------------------------- structure


def test_broken_has_every_party_and_route():
    g = broken_graph()
    kinds = {nid: n.kind for nid, n in g.nodes.items()}
    assert kinds == {
        "internet": "source",
        "exo0": "source",
        "gw": "gateway",
        "sc0": "connector",
        "sc1": "connector",
        "eop": "eop",
        "t0_mbx": "tenant",
        "t0_in0": "inbound",
        "t0_out0": "outbound",
        "t1_mbx": "tenant",
        "dns": "dns",
        "sink0": "sink",
    }
    internet = dict(g.nodes["sc0"].rows)
    assert g.nodes["sc0"].title == "send connector Internet"
    assert internet["address space"] == "*" and internet["TLS"] == "may"
    assert internet["certificate"] == "CN=gw.contoso.example (self-signed)"
    assert internet["egress IP"] == "198.51.100.10"
    inbound = dict(g.nodes["t0_in0"].rows)
    assert inbound["ConnectorType"] == "OnPremises" and inbound["TlsSenderCertificateName"] == "gw.contoso.example"
    outbound = dict(g.nodes["t0_out0"].rows)
    assert outbound["RecipientDomains"] == "*" and outbound["SmartHosts"] == "gw.contoso.example"
    routes = {(e.src, e.dst): e.label for e in g.edges if e.kind == "route"}
    # The field report's story: the Internet connector takes fabrikam's domain to EOP with contoso's certificate.
    assert "fabrikam.example" in routes[("sc0", "eop")]
    assert routes[("sc0", "sink0")] == "northwind.example"
    assert "contoso.example" in routes[("sc1", "eop")]
    assert routes[("internet", "gw")] == "MX contoso.example" and routes[("internet", "eop")] == "MX fabrikam.example"
    for edge in [("exo0", "t0_out0"), ("t0_out0", "gw"), ("gw", "sc0"), ("gw", "sc1"), ("eop", "t0_in0")]:
        assert edge in routes
    assert ("eop", "dns") in {(e.src, e.dst) for e in g.edges if e.kind == "lookup"}


def test_dot_and_mermaid_carry_the_same_graph():
    g = broken_graph()
    dot = graph.to_dot(g)
    assert {(a, b) for a, b, _ in dot_edges(dot)} == {(e.src, e.dst) for e in g.edges}
    assert set(re.findall(r'^\s*"(\w+)" \[label=<', dot, re.M)) == set(g.nodes)
    mmd = graph.to_mermaid(g).splitlines()
    assert mmd[0] == "flowchart LR"
    edges = [re.fullmatch(r"  (\w+) [-=.>]+(?:\|.*\|)? (\w+)", x) for x in mmd if " -" in x or " =" in x]
    assert all(edges) and {e.groups() for e in edges if e} == {(e.src, e.dst) for e in g.edges}
    nodes = [re.match(r'\s*(\w+)\["', x) for x in mmd]
    assert {n.group(1) for n in nodes if n} == set(g.nodes)


def test_labgen_graph_broken_writes_valid_svg(tmp_path):
    p = labgen("graph", "broken", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    root = ET.parse(tmp_path / "labgen-broken.svg").getroot()
    assert root.tag == f"{SVG}svg"
    texts = svg_texts(root)
    assert "send connector Office 365" in texts and "Exchange Online Protection" in texts
    nodes = {
        "".join(t.itertext()) for g in root.iter(f"{SVG}g") if g.get("class") == "node" for t in g.iter(f"{SVG}title")
    }
    assert nodes == set(broken_graph().nodes)
    p = labgen("graph", "broken", "--format", "mermaid", "-o", "-", cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("flowchart LR\n"), p.stderr


def test_svg_without_dot_is_exit_3_naming_it(tmp_path):
    p = labgen("graph", "broken", cwd=tmp_path, env={"PATH": str(tmp_path)})
    assert p.returncode == 3
    assert p.stderr.strip().splitlines() == [
        "labgen: Graphviz's dot is not installed (install graphviz: apt-get install graphviz)"
    ]
    assert not (tmp_path / "labgen-broken.svg").exists()
    p = labgen("graph", "broken", "--format", "mermaid", "-o", "-", cwd=tmp_path, env={"PATH": str(tmp_path)})
    assert p.returncode == 0 and "flowchart" in p.stdout  # Mermaid needs nothing


# ---------------------------------------------------------------- hostile labels

# Beyond the renderer's list: what ends or re-opens a DOT HTML label or string, Graphviz's own
# escapes, and what means something in Mermaid.
HOSTILE_GRAPH = {
    **HOSTILE,
    "dot-quote": 'x" -> "gw" [label="pwned',
    "dot-html": "x</B></TD></TR></TABLE>> shape=none label=<<B>pwned</B>",
    "dot-escapes": r"\N \G \L \E \T \H \l \n \r \\",
    "dot-brace": "x } digraph y { z",
    "entities": "&amp; &#60; &lt;script&gt; &unknown; &",
    "mermaid-quote": 'x"] --> gw\n  click gw "javascript:alert(1)"',
    "mermaid-entity": "#quot; #35; #lt;b#gt;",
    "mermaid-markdown": "`**bold**` %% comment ;end",
    "mermaid-subgraph": "x\nend\nsubgraph evil",
}


def hostile_graph(text: str) -> graph.Graph:
    s = load_scenario("broken")
    # Past validation, as a bug or a hand-edited plan.json might bring them.
    s.gateway.connectors[0].name = text
    s.tenants["contoso"].inbound_connectors[0].name = text
    s.gateway.connectors[1].address_space = [text, "contoso.example"]
    s.tenants["contoso"].mailboxes = [text]
    s.certificates["gw-selfsigned"].cn = text
    return graph.build(make_plan(s, AsWritten()))


MERMAID_LINE = re.compile(
    r'flowchart LR|  classDef \w+ [\w#:,-]+|\s*\w+\["[^"]*"\]|\s*subgraph \w+\["[^"]*"\]|\s*end'
    r'|  \w+ (?:-->|==>|-\.->)(?:\|"[^"]*"\|)? \w+|  linkStyle \d+ [\w#:,-]+|  class \w+ \w+'
)


@pytest.mark.parametrize("case", HOSTILE_GRAPH)
def test_hostile_labels_stay_text_in_dot(case):
    text = HOSTILE_GRAPH[case]
    g = hostile_graph(text)
    dot = graph.to_dot(g)
    assert {(a, b) for a, b, _ in dot_edges(dot)} == {(e.src, e.dst) for e in broken_graph().edges}
    root = svg_of(dot)
    nodes = {
        "".join(t.itertext()) for e in root.iter(f"{SVG}g") if e.get("class") == "node" for t in e.iter(f"{SVG}title")
    }
    assert nodes == set(g.nodes)  # no node a label made
    # The label reads as the text itself (one line, cut), not as markup or an escape Graphviz expanded.
    # (Graphviz draws a backslash as a text piece of its own: the node's pieces are joined.)
    sc0 = next(e for e in root.iter(f"{SVG}g") if e.get("class") == "node" and e.findtext(f"{SVG}title") == "sc0")
    drawn = "".join(svg_texts(sc0))
    want = one_line(f"send connector {text}", graph.VALUE_LIMIT)
    assert drawn.startswith(want + "address space"), (want, drawn)


@pytest.mark.parametrize("case", HOSTILE_GRAPH)
def test_hostile_labels_stay_one_mermaid_statement(case):
    text = HOSTILE_GRAPH[case]
    g = hostile_graph(text)
    lines = graph.to_mermaid(g).splitlines()
    clean = graph.to_mermaid(broken_graph()).splitlines()
    assert len(lines) == len(clean)
    for line in lines:
        assert MERMAID_LINE.fullmatch(line), line
        for quoted in re.findall(r'"([^"]*)"', line):
            # Only labgen's own markup and Mermaid entities: nothing raw from the text.
            rest = re.sub(r"<b>|</b>|<br/>|#\w+;", "", quoted)
            assert not set(rest) & set('<>#`"&'), line
    assert f'sc0["<b>{graph.mermaid("send connector " + text)}</b><br/>' in "\n".join(lines)


# ---------------------------------------------------------------- a run drawn over it


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("graph")
    code, doc = labgen_json("up", "broken", "--engine", "local", cwd=wd)
    assert code == 0, doc
    return wd, doc


def test_result_marks_the_lost_hop_red_and_delivered_green(broken_run):
    _, data = broken_run
    g = broken_graph(ResultDoc.model_validate(data))
    lost = g.nodes["t0_in0"].lost
    assert len(lost) == 1 and lost[0].startswith("✗ to-fabrikam → carol@fabrikam.example: silently discarded")
    assert [n for n in g.nodes.values() if n.lost] == [g.nodes["t0_in0"]]
    paths = [e for e in g.edges if e.kind == "path"]
    # The lost message: EXO -> gateway -> Internet connector -> EOP -> contoso's inbound connector, ending red.
    into_lost = [e for e in paths if e.dst == "t0_in0" and e.color == graph.RED]
    assert len(into_lost) == 1 and into_lost[0].bold and "to-fabrikam" in into_lost[0].label
    assert any(e.src == "sc0" and e.dst == "eop" and e.color != graph.GREEN for e in paths)
    # Delivered: the internet mail into the sink and bob's into contoso's mailboxes, green.
    assert any(e.dst == "sink0" and e.color == graph.GREEN and "to-internet" in e.label for e in paths)
    assert any(e.dst == "t0_mbx" and e.color == graph.GREEN for e in paths)
    dot = graph.to_dot(g)
    assert any(b == "t0_in0" and graph.RED in attrs and "penwidth=3" in attrs for _, b, attrs in dot_edges(dot))
    svg_of(dot)
    mmd = graph.to_mermaid(g)
    assert "  class t0_in0 lost" in mmd.splitlines() and f"stroke:{graph.RED}" in mmd


def test_graph_lab_draws_the_last_run(broken_run, tmp_path):
    wd, data = broken_run
    # LAB: the lab directory labgen-broken has run here; its verdict is made again from its ledgers.
    p = labgen("graph", "broken", "--format", "dot", "-o", "-", cwd=wd)
    assert p.returncode == 0, p.stderr
    assert "✗ to-fabrikam → carol@fabrikam.example: silently discarded" in p.stdout
    # --result with a scenario: the same marks.
    (tmp_path / "r.json").write_text(json.dumps(data))
    p2 = labgen("graph", "broken", "--result", tmp_path / "r.json", "--format", "dot", "-o", "-", cwd=tmp_path)
    assert p2.returncode == 0, p2.stderr
    assert [x for x in dot_edges(p2.stdout) if graph.RED in x[2]] == [
        x for x in dot_edges(p.stdout) if graph.RED in x[2]
    ]
    p3 = labgen("graph", "broken", "-o", tmp_path / "run.svg", cwd=wd)
    assert p3.returncode == 0 and ET.parse(tmp_path / "run.svg").getroot().tag == f"{SVG}svg", p3.stderr


def test_hostile_result_text_stays_text(broken_run):
    _, data = broken_run
    doc = ResultDoc.model_validate(data)
    for m in doc.messages:
        if m.dropped_by:
            m.dropped_by.reason = HOSTILE_GRAPH["dot-html"] + HOSTILE_GRAPH["mermaid-quote"]
    g = broken_graph(doc)
    root = svg_of(graph.to_dot(g))
    assert any(t.startswith("✗ to-fabrikam") and "</TABLE>>" in t for t in svg_texts(root))
    for line in graph.to_mermaid(g).splitlines():
        assert MERMAID_LINE.fullmatch(line), line


def test_result_of_another_lab_and_bad_result_are_one_line(broken_run, tmp_path):
    _, data = broken_run
    (tmp_path / "other.json").write_text(json.dumps({**data, "scenario": "fixed"}))
    p = labgen("graph", "broken", "--result", tmp_path / "other.json", cwd=tmp_path)
    assert p.returncode == 2 and "the result of lab fixed, not of broken" in p.stderr
    (tmp_path / "bad.json").write_text('{"schema": "x"}')
    p = labgen("graph", "broken", "--result", tmp_path / "bad.json", cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "not a labgen.result/v1" in p.stderr
