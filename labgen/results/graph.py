"""`labgen graph`: a lab's mail flow as a diagram, in Graphviz DOT (rendered to SVG by Debian's
`dot`) and as Mermaid flowchart text (which GitHub and GitLab render in Markdown).

The diagram is built once, as plain nodes, clusters and edges (`build`), from a plan (addresses
and DNS records as the lab has them) and, optionally, a `labgen.result/v1` document whose
messages are drawn over it: each recipient's path from its hops, green when delivered, the hop
where it was lost or rejected in red with the reply. `to_dot` and `to_mermaid` only write it out.

Every label is untrusted text (scenario strings, a result file's replies): each is made one
printable line and cut (`textsafe.one_line`), then escaped for where it lands — HTML-like labels
in DOT (entities for '<', '>', '"', '&', and each backslash in a text span of its own: Graphviz
expands `\\N`, `\\G`, ... in HTML-like labels too, even a backslash written as an entity),
Mermaid's quoted strings as Mermaid's own `#code;` entities (no '"', '#', '<', '>', '&' or
backtick survives). Node and cluster ids are labgen's own ASCII names.

Why no DOT library: the `graphviz` package on PyPI only assembles DOT source (rendering still
runs `dot`), and an HTML-like label passes through it unescaped, so the escaping here would be
needed anyway; the DOT written below is a few lines of fixed syntax.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InfraError, InputError, escape
from ..lab.routing import pick_connector
from ..model.plan import Plan
from ..model.scenario import (
    PROTECTION_SUFFIX,
    Message,
    OutboundConnector,
    domain_of,
    message_via,
    routing_domain,
)
from ..textsafe import one_line
from .contracts import Hop, MessageResult, ResultDoc
from .documents import read_json, validated

VALUE_LIMIT = 90  # characters of one value in a label
LIST_LIMIT = 6  # items of a list shown in a label before "(+N more)"
DOT_TIMEOUT_S = 60

Kind = Literal["source", "gateway", "connector", "eop", "inbound", "outbound", "tenant", "dns", "sink"]

GREEN, RED, GREY, AMBER = "#1a7f37", "#cf222e", "#57606a", "#bf8700"
FILL = {
    "source": "#ddf4ff",
    "gateway": "#fff8c5",
    "connector": "#fff8c5",
    "eop": "#e6e6fa",
    "inbound": "#f0f0ff",
    "outbound": "#f0f0ff",
    "tenant": "#dafbe1",
    "dns": "#f6f8fa",
    "sink": "#f6f8fa",
}


@dataclass
class Node:
    id: str  # labgen's own ASCII id, never scenario text
    kind: Kind
    title: str  # untrusted
    rows: list[tuple[str, str]] = field(default_factory=list)  # (labgen's key, untrusted value)
    cluster: str | None = None
    lost: list[str] = field(default_factory=list)  # untrusted: what was lost here, and why


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""  # untrusted
    kind: Literal["route", "lookup", "path"] = "route"
    color: str = GREY
    bold: bool = False


@dataclass
class Cluster:
    id: str
    title: str  # untrusted
    parent: str | None = None


@dataclass
class Graph:
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        return node

    def edge(self, src: str, dst: str, label: str = "", **kw) -> None:
        if not any(e.src == src and e.dst == dst and e.kind == kw.get("kind", "route") for e in self.edges):
            self.edges.append(Edge(src, dst, label, **kw))
        elif label:
            e = next(e for e in self.edges if e.src == src and e.dst == dst and e.kind == kw.get("kind", "route"))
            if label not in e.label.split(", "):
                e.label = f"{e.label}, {label}" if e.label else label


def _items(values: list[str]) -> str:
    shown = values[:LIST_LIMIT]
    more = f" (+{len(values) - LIST_LIMIT} more)" if len(values) > LIST_LIMIT else ""
    return ", ".join(shown) + more if values else "(none)"


# ---------------------------------------------------------------- the diagram


class _Builder:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.s = plan.scenario
        self.g = Graph(title=f"labgen lab {self.s.name}")
        self.tenant_ids = {name: f"t{i}" for i, name in enumerate(self.s.tenants)}
        self.sink_ids = {d: f"sink{i}" for i, d in enumerate(self.s.internet.domains)}
        self.other_ids: dict[str, str] = {}

    def host_node(self, host: str) -> str:
        """The node a hostname (an SMTP next hop) stands for."""
        host = host.lower().rstrip(".")
        if host == self.s.gateway.hostname:
            return "gw"
        if host.endswith("." + PROTECTION_SUFFIX):
            return "eop"
        for d, nid in self.sink_ids.items():
            if host in (d, f"mx.{d}"):
                return nid
        if host not in self.other_ids:
            nid = f"other{len(self.other_ids)}"
            self.other_ids[host] = nid
            self.g.add(Node(nid, "sink", host, [("host", "not a lab host")], cluster="c_internet"))
        return self.other_ids[host]

    def mx_node(self, domain: str) -> str:
        """Where the lab DNS sends mail for a domain (its MX record's node)."""
        for r in self.plan.records:
            if r.type == "MX" and r.name == domain:
                return self.host_node(r.value)
        return self.host_node(domain)

    def build(self) -> Graph:
        s, g = self.s, self.g
        g.clusters["c_sources"] = Cluster("c_sources", "traffic sources")
        g.clusters["c_gw"] = Cluster("c_gw", f"gateway {s.gateway.hostname}")
        g.clusters["c_eop"] = Cluster("c_eop", "Exchange Online Protection")
        g.clusters["c_internet"] = Cluster("c_internet", "internet")
        senders = sorted({domain_of(m.sender) for m in s.traffic if message_via(s, m) == "internet"})
        ips = sorted({m.source_ip for m in s.traffic if m.source_ip})
        g.add(
            Node(
                "internet",
                "source",
                "internet senders",
                [("from", _items(senders)), ("address", _items([self.plan.hosts["traffic"][0], *ips]))],
                cluster="c_sources",
            )
        )
        gw_ips = self.plan.hosts["gateway"]
        server = s.gateway.server_certificate
        g.add(
            Node(
                "gw",
                "gateway",
                s.gateway.hostname,
                [
                    ("address", gw_ips[0]),
                    ("server certificate", self._cert(server) if server else "the lab's (public CA)"),
                    ("relay for Exchange Online by", s.gateway.exchange_online_relay),
                    ("recipient validation", "on" if s.gateway.recipient_validation else "off"),
                ]
                if not s.gateway.postfix_config
                else [  # the rest is the configuration's own: its transports are the connectors drawn
                    ("address", gw_ips[0]),
                    ("Postfix configuration", f"yours: {s.gateway.postfix_config}"),
                ],
                cluster="c_gw",
            )
        )
        for i, c in enumerate(s.gateway.connectors):
            route = f"smart host {c.smarthost}" if c.smarthost else "MX"
            g.add(
                Node(
                    f"sc{i}",
                    "connector",
                    f"send connector {c.name}",
                    [
                        ("address space", _items(c.address_space)),
                        ("route", route),
                        ("TLS", c.tls),
                        ("certificate", self._cert(c.certificate) if c.certificate else "none"),
                        ("egress IP", c.source_ip or gw_ips[0]),
                        ("HELO", c.helo or s.gateway.hostname),
                    ],
                    cluster="c_gw",
                )
            )
        g.add(
            Node(
                "eop",
                "eop",
                "EOP front door",
                [
                    ("address", self.plan.hosts["eop"][0]),
                    ("profile", s.eop.profile),
                    ("misattributed mail", s.eop.misattribution_policy),
                    ("CA-signed certificate required", "yes" if s.eop.trusted_certificate_required else "no"),
                ],
                cluster="c_eop",
            )
        )
        for tname, tenant in s.tenants.items():
            tid = self.tenant_ids[tname]
            g.clusters[f"c_{tid}"] = Cluster(f"c_{tid}", f"tenant {tname}", parent="c_eop")
            domains = [f"{d.name} (MX {d.mx}, {d.domain_type})" for d in tenant.domains]
            g.add(
                Node(
                    f"{tid}_mbx",
                    "tenant",
                    f"{tname} mailboxes",
                    [
                        ("domains", _items([*domains, routing_domain(tname)])),
                        ("mailboxes", _items(tenant.mailboxes)),
                        ("RejectDirectSend", str(tenant.reject_direct_send)),
                    ],
                    cluster=f"c_{tid}",
                )
            )
            for j, ic in enumerate(tenant.inbound_connectors):
                rows = [
                    ("ConnectorType", ic.type),
                    ("TlsSenderCertificateName", ic.tls_sender_certificate_name or "(none)"),
                    ("SenderIPAddresses", _items(ic.sender_ip_addresses)),
                ]
                if ic.type == "Partner":
                    rows.append(("SenderDomains", _items(ic.sender_domains)))
                rows += [("RequireTls", str(ic.require_tls)), ("Enabled", str(ic.enabled))]
                g.add(Node(f"{tid}_in{j}", "inbound", f"inbound connector {ic.name}", rows, cluster=f"c_{tid}"))
                g.edge(
                    "eop",
                    f"{tid}_in{j}",
                    "attributes by " + ("certificate" if ic.tls_sender_certificate_name else "IP"),
                )
                g.edge(f"{tid}_in{j}", f"{tid}_mbx", "delivers")
            g.edge("eop", f"{tid}_mbx", "recipient's tenant")
            outbound = tenant.outbound(s.gateway.hostname)
            if outbound or any(message_via(s, m) == "exchange-online" for m in self._sent_by(tname)):
                g.add(
                    Node(
                        f"exo{tid[1:]}",
                        "source",
                        f"Exchange Online outbound ({tname})",
                        [("address", self.plan.hosts["traffic"][1])],
                        cluster="c_sources",
                    )
                )
            for j, oc in enumerate(outbound):
                nid = f"{tid}_out{j}"
                g.add(
                    Node(
                        nid,
                        "outbound",
                        f"outbound connector {oc.name}",
                        [
                            ("RecipientDomains", _items(oc.recipient_domains)),
                            ("SmartHosts", "(MX record)" if oc.use_mx_record else _items(oc.smart_hosts)),
                            ("TlsSettings", oc.tls_settings or "(opportunistic)"),
                            ("RouteAllMessagesViaOnPremises", str(oc.route_all_messages_via_on_premises)),
                            ("Enabled", str(oc.enabled)),
                        ],
                        cluster=f"c_{tid}",
                    )
                )
                g.edge(f"exo{tid[1:]}", nid, "sends by")
                g.edge(f"{tid}_mbx", nid, "relays by", kind="route")
                for target in self._outbound_targets(oc):
                    g.edge(nid, target)
        dns_rows = [(f"MX {r.name}", r.value) for r in self.plan.records if r.type == "MX"]
        g.add(Node("dns", "dns", "lab DNS", [("address", self.plan.hosts["dns"][0]), *dns_rows[:12]]))
        if len(dns_rows) > 12:
            g.nodes["dns"].rows.append(("more", f"{len(dns_rows) - 12} MX records"))
        for d, nid in self.sink_ids.items():
            g.add(
                Node(
                    nid,
                    "sink",
                    f"mx.{d}",
                    [("accepts", f"any @{d}"), ("address", self.plan.hosts["sink"][0])],
                    cluster="c_internet",
                )
            )
        self._routes()
        return g

    def _sent_by(self, tname: str) -> list[Message]:
        return [m for m in self.s.traffic if self.s.tenant_of_domain(domain_of(m.sender)) == tname]

    def _cert(self, key: str) -> str:
        c = self.s.certificates.get(key)
        if c is None:
            return f"{key} (unknown)"
        if c.user_supplied:
            return f"{key}: your file {c.cert_file}"
        issuer = "self-signed" if c.issuer == "self" else "public CA"
        return f"CN={c.cn} ({issuer})"

    def _all_domains(self) -> list[str]:
        out = [d.name for t in self.s.tenants.values() for d in t.domains]
        return out + [routing_domain(t) for t in self.s.tenants] + list(self.s.internet.domains)

    def _outbound_targets(self, oc: OutboundConnector) -> list[str]:
        if not oc.use_mx_record:
            return [self.host_node(h) for h in oc.smart_hosts]
        return sorted({self.mx_node(d) for d in self.s.internet.domains}) or ["dns"]

    def _routes(self) -> None:
        s, g = self.s, self.g
        # Internet senders deliver by MX: to the gateway or to EOP, per tenant domain; and to the sinks.
        for tenant in s.tenants.values():
            for dom in tenant.domains:
                g.edge("internet", "gw" if dom.mx == "gateway" else "eop", f"MX {dom.name}")
        # The gateway hands each domain to its most specific send connector, which delivers by MX or smart host.
        for d in self._all_domains():
            c = pick_connector(d, s.gateway.connectors)
            if c is None:
                continue
            i = s.gateway.connectors.index(c)
            g.edge("gw", f"sc{i}", "")
            target = self.host_node(c.smarthost) if c.smarthost else self.mx_node(d)
            if target != "gw":
                g.edge(f"sc{i}", target, d)
        # Exchange Online's outbound servers without a connector deliver by MX.
        for m in s.traffic:
            tname = s.tenant_of_domain(domain_of(m.sender))
            if tname is None or message_via(s, m) != "exchange-online":
                continue
            for r in m.to:
                oc = s.tenants[tname].outbound_for(domain_of(r), s.gateway.hostname)
                if oc is None or oc.use_mx_record:
                    g.edge(f"exo{self.tenant_ids[tname][1:]}", self.mx_node(domain_of(r)), "by MX")
        g.edge("gw", "dns", "MX lookups", kind="lookup")
        g.edge("eop", "dns", "MX lookups", kind="lookup")

    # ------------------------------------------------------------ a run drawn over it

    def overlay(self, doc: ResultDoc) -> None:
        for m in doc.messages:
            path = self.path(m)
            if len(path) < 2:
                continue
            delivered = m.outcome == "delivered"
            color = GREEN if delivered else RED
            label = f"{m.id} → {m.to}"
            steps = list(zip(path, path[1:], strict=False))
            drawn: set[tuple[str, str]] = set()  # a retried hop (a deferral) is drawn once
            for i, (a, b) in enumerate(steps):
                last = i == len(steps) - 1
                if (a, b) in drawn and not last:
                    continue
                drawn.add((a, b))
                self.g.edges.append(
                    Edge(
                        a,
                        b,
                        label if (last or i == 0) else "",
                        kind="path",
                        color=color if (delivered or last) else AMBER,
                        bold=last,
                    )
                )
            if not delivered:
                why = self._lost_why(m)
                self.g.nodes[path[-1]].lost.append(f"✗ {m.id} → {m.to}: {m.outcome.replace('_', ' ')}{why}")

    def _lost_why(self, m: MessageResult) -> str:
        for h in reversed(m.hops):
            if h.reply and h.reply[:1] in "45":
                return f": {h.reply}"
        if m.dropped_by and m.dropped_by.reason:
            return f": {m.dropped_by.reason}"
        return f": {m.why}" if m.why else ""

    def path(self, m: MessageResult) -> list[str]:
        """The nodes a recipient's hops passed through, in order, each once in a row."""
        s = self.s
        nodes: list[str] = []

        def go(nid: str | None) -> None:
            if nid and nid in self.g.nodes and (not nodes or nodes[-1] != nid):
                nodes.append(nid)

        tenant_of_sender = s.tenant_of_domain(domain_of(m.sender))
        eop_side = {nid for nid, n in self.g.nodes.items() if n.cluster and _under(self.g, n.cluster, "c_eop")}
        attributed: str | None = None
        for h in m.hops:
            if h.service == "traffic":
                exo = f"exo{self.tenant_ids[tenant_of_sender][1:]}" if tenant_of_sender else None
                go(exo if h.entry == "gateway" or (exo in self.g.nodes and self._via_exo(m)) else "internet")
                if h.relay:
                    go(self.host_node(_relay_host(h)))
            elif h.service == "gateway":
                go("gw")
                if h.connector:
                    go(self._send_connector(h.connector))
                if h.relay:
                    go(self.host_node(_relay_host(h)))
            elif h.service == "eop":
                if not nodes or nodes[-1] not in eop_side:  # EOP's later events about it: still inside
                    go("eop")
                a = h.attribution
                if a and a.tenant in self.tenant_ids:
                    attributed = a.tenant
                    go(self._inbound(a.tenant, a.connector))
                if h.event == "delivered" and h.mailbox:
                    t = s.tenant_of_domain(domain_of(h.mailbox))
                    go(f"{self.tenant_ids[t]}_mbx" if t else None)
                if h.event.startswith("relay"):
                    go(self._outbound(attributed, h.connector))
                    if h.relay:
                        go(self.host_node(_relay_host(h)))
            elif h.service == "sink":
                go(self.mx_node(domain_of(h.mailbox or m.to)))
        return nodes

    def _via_exo(self, m: MessageResult) -> bool:
        msg = next((x for x in self.s.traffic if x.id == m.id), None)
        return msg is not None and message_via(self.s, msg) == "exchange-online"

    def _send_connector(self, name: str) -> str | None:
        for i, c in enumerate(self.s.gateway.connectors):
            if c.name == name:
                return f"sc{i}"
        return None

    def _inbound(self, tenant: str, name: str | None) -> str | None:
        for j, c in enumerate(self.s.tenants[tenant].inbound_connectors):
            if c.name == name:
                return f"{self.tenant_ids[tenant]}_in{j}"
        return None

    def _outbound(self, tenant: str | None, name: str | None) -> str | None:
        for tname in [tenant] if tenant else list(self.s.tenants):
            if tname not in self.s.tenants:
                continue
            for j, c in enumerate(self.s.tenants[tname].outbound(self.s.gateway.hostname)):
                if c.name == name:
                    return f"{self.tenant_ids[tname]}_out{j}"
        return None


def _relay_host(h: Hop) -> str:
    return (h.relay or "").partition("[")[0]


def build(plan: Plan, doc: ResultDoc | None = None) -> Graph:
    """The lab's diagram; with a result document, each recipient's path drawn over it."""
    b = _Builder(plan)
    g = b.build()
    if doc is not None:
        b.overlay(doc)
    return g


# ---------------------------------------------------------------- DOT


def html(value: object, limit: int = VALUE_LIMIT) -> str:
    """Untrusted text as the content of a Graphviz HTML-like label: one line, markup characters
    as entities, and each backslash in a text span of its own: Graphviz expands its escapes
    (\\N, \\G, \\E, \\\\ ...) in HTML-like labels too, even a backslash written as &#92;."""
    text = one_line(value, limit)
    text = (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )
    return text.replace("\\", "<FONT>\\</FONT>")


def _dot_label(n: Node) -> str:
    rows = [f'<TR><TD COLSPAN="2"><B>{html(n.title)}</B></TD></TR>']
    rows += [f'<TR><TD ALIGN="LEFT">{html(k, 40)}</TD><TD ALIGN="LEFT">{html(v)}</TD></TR>' for k, v in n.rows]
    rows += [f'<TR><TD COLSPAN="2" ALIGN="LEFT"><FONT COLOR="{RED}">{html(x, 160)}</FONT></TD></TR>' for x in n.lost]
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">' + "".join(rows) + "</TABLE>>"


def to_dot(g: Graph) -> str:
    out = [
        "digraph labgen {",
        f"  graph [rankdir=TB, fontname=Helvetica, fontsize=11, compound=true, label=<{html(g.title)}>, labelloc=t];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
        "  edge [fontname=Helvetica, fontsize=9];",
    ]

    def cluster(cid: str | None, indent: str) -> None:
        for n in g.nodes.values():
            if n.cluster == cid:
                color = f', color="{RED}", penwidth=2' if n.lost else ""
                out.append(f'{indent}"{n.id}" [label={_dot_label(n)}, fillcolor="{FILL[n.kind]}"{color}];')
        for c in g.clusters.values():
            if c.parent == cid and any(_in_cluster(g, n, c.id) for n in g.nodes.values()):
                out.append(f'{indent}subgraph "cluster_{c.id}" {{')
                out.append(f'{indent}  label=<{html(c.title)}>; style="rounded,dashed"; color="{GREY}";')
                cluster(c.id, indent + "  ")
                out.append(f"{indent}}}")

    cluster(None, "  ")
    for e in g.edges:
        attrs = [f'color="{e.color}"']
        if e.label:
            attrs.append(f"label=<{html(e.label, 60)}>")
            if e.kind == "path":
                attrs.append(f'fontcolor="{e.color}"')
        if e.kind == "lookup":
            attrs.append("style=dotted")
        if e.kind == "path":
            attrs.append("penwidth=3" if e.bold else "penwidth=2")
            attrs.append("constraint=false")
        out.append(f'  "{e.src}" -> "{e.dst}" [{", ".join(attrs)}];')
    out.append("}")
    return "\n".join(out) + "\n"


def _in_cluster(g: Graph, n: Node, cid: str) -> bool:
    return n.cluster is not None and _under(g, n.cluster, cid)


def _under(g: Graph, cluster: str, cid: str) -> bool:
    c: str | None = cluster
    while c is not None:
        if c == cid:
            return True
        c = g.clusters[c].parent if c in g.clusters else None
    return False


def dot_binary() -> str:
    path = shutil.which("dot")
    if path is None:
        raise InfraError("Graphviz's dot is not installed (install graphviz: apt-get install graphviz)")
    return path


def render_svg(dot_text: str) -> bytes:
    """`dot -Tsvg`, the DOT on stdin: no shell, a timeout; any warning is an error (a label
    labgen wrote that Graphviz had to repair is a bug worth seeing)."""
    try:
        p = subprocess.run(
            [dot_binary(), "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise InfraError(f"Graphviz's dot took longer than {DOT_TIMEOUT_S} s to draw the diagram") from None
    if p.returncode != 0 or p.stderr.strip():
        raise InfraError(f"Graphviz's dot failed ({p.returncode}): {escape(p.stderr.decode(errors='replace'), 300)}")
    return p.stdout


# ---------------------------------------------------------------- Mermaid

_MERMAID_ENTITIES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;"}


def mermaid(value: object, limit: int = VALUE_LIMIT) -> str:
    """Untrusted text inside a Mermaid quoted string: one line, Mermaid's entity codes for every
    character that could end the string, start an entity, HTML or a Markdown string."""
    return "".join(_MERMAID_ENTITIES.get(ch, ch) for ch in one_line(value, limit))


def to_mermaid(g: Graph) -> str:
    out = ["flowchart LR"]
    for kind, fill in FILL.items():
        out.append(f"  classDef {kind} fill:{fill},stroke:{GREY}")
    out.append(f"  classDef lost fill:#ffebe9,stroke:{RED},stroke-width:2px")

    def label(n: Node) -> str:
        lines = [f"<b>{mermaid(n.title)}</b>"] + [f"{mermaid(k, 40)}: {mermaid(v)}" for k, v in n.rows]
        lines += [mermaid(x, 160) for x in n.lost]
        return "<br/>".join(lines)

    def cluster(cid: str | None, indent: str) -> None:
        for n in g.nodes.values():
            if n.cluster == cid:
                out.append(f'{indent}{n.id}["{label(n)}"]')
        for c in g.clusters.values():
            if c.parent == cid and any(_in_cluster(g, n, c.id) for n in g.nodes.values()):
                out.append(f'{indent}subgraph {c.id}["{mermaid(c.title)}"]')
                cluster(c.id, indent + "  ")
                out.append(f"{indent}end")

    cluster(None, "  ")
    styles: list[str] = []
    for i, e in enumerate(g.edges):
        arrow = "-.->" if e.kind == "lookup" else "==>" if e.kind == "path" else "-->"
        text = f'|"{mermaid(e.label, 60)}"|' if e.label else ""
        out.append(f"  {e.src} {arrow}{text} {e.dst}")
        if e.kind == "path":
            styles.append(f"  linkStyle {i} stroke:{e.color},stroke-width:{3 if e.bold else 2}px")
    out += styles
    for n in g.nodes.values():
        out.append(f"  class {n.id} {'lost' if n.lost else n.kind}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- what to draw

_LAB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")


def read_result(path: Path, label: str) -> ResultDoc:
    """A labgen.result/v1 file; anything else is one InputError line naming it."""
    return validated(ResultDoc, read_json(path, label), label)


def last_run(labdir: Path, plan: Plan) -> ResultDoc | None:
    """The lab's last run: run/result.json (a Docker lab's own verdict), else the verdict made
    again from run/'s ledgers (what `labgen up` printed); None when nothing ran."""
    run = labdir / "run"
    if (run / "result.json").is_file():
        return read_result(run / "result.json", str(run / "result.json"))
    if not any(run.glob("*.jsonl")):
        return None
    from ..run import result_document
    from .collect import Collector
    from .verdict import Verdict

    v = Verdict(plan)
    v.add(Collector(labdir, plan).poll())
    return result_document(plan, labdir, v.results(), 0.0)


def load_source(source: str, workdir: Path, result_file: str | None = None) -> tuple[Plan, ResultDoc | None]:
    """`labgen graph`'s SCENARIO|LAB: a lab directory labgen-<name> in the work directory that has
    run (its plan, its last run drawn over it), else a scenario as `labgen up` reads it."""
    from ..model.plan import AsWritten, make_plan
    from ..model.scenario import load_scenario

    labdir = workdir / f"labgen-{source}"
    doc: ResultDoc | None = None
    if _LAB_NAME.fullmatch(source) and (labdir / "plan.json").is_file() and not labdir.is_symlink():
        plan = Plan.load(labdir / "plan.json")
        doc = last_run(labdir, plan)
        if plan.scenario.gateway.postfix_config:  # the copy of the user's configuration the lab ran
            s = plan.scenario.model_copy(deep=True)
            s.gateway.postfix_config, s._base_dir = "postfix", labdir / "gateway"
            plan = plan.model_copy(update={"scenario": s})
    else:
        plan = make_plan(load_scenario(source), AsWritten())
    if plan.scenario.gateway.postfix_config:
        from ..model.postfix_transports import as_run

        # Drawn as it runs: the send connectors are the configuration's smtp transports.
        plan = plan.model_copy(update={"scenario": as_run(plan.scenario)[0]})
    if result_file is not None:
        doc = read_result(Path(result_file), escape(result_file, 100))
        if doc.scenario != plan.lab:
            raise InputError(
                f"{escape(result_file, 100)}: the result of lab {escape(doc.scenario, 40)}, not of {plan.lab}; "
                "draw it over its own scenario"
            )
    return plan, doc
