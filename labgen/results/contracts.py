"""labgen's data contracts, as pydantic models: the ledger's events (one vocabulary for every
service and both engines: the built-in gateway and Postfix's parsed log write the same gateway
events) and every document the CLI prints with --json (`labgen.<name>/v1`). `labgen schema NAME`
prints their JSON Schemas; docs/schemas/ holds the same files.

Versioning: a document's `schema` names its version. Additions (a new optional field, a new
event kind, a new outcome detail) keep `v1`; anything that breaks a reader of v1 (a field
removed, renamed, retyped or given a new meaning) makes `v2`. Field names and meanings of v1
never change.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_serializer
from pydantic_core.core_schema import SerializerFunctionWrapHandler

Service = Literal["traffic", "gateway", "eop", "sink", "dns", "trace"]
Outcome = Literal["delivered", "rejected", "silently_discarded", "deferred"]
Verdict = Literal["delivered", "rejected", "silently_discarded", "deferred", "unaccounted"]


class _Contract(BaseModel):
    # forbid: a field a writer adds without declaring it here fails at once (in the tests).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _OmitNone(_Contract):
    """Optional keys in OMIT_NONE are left out of the JSON when None (v1's documents never had them)."""

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.OMIT_NONE)}


# ---------------------------------------------------------------- parts of events


class Certificate(_Contract):
    """What EOP records about a client certificate (pki.cert_info)."""

    subject: str | None = None
    sans: list[str] | None = None
    issuer: str | None = None
    self_signed: bool | None = None
    fingerprint_sha256: str | None = None
    not_before: str | None = None
    not_after: str | None = None
    names: list[str] = []  # the names EOP compares with TlsSenderCertificateName
    trusted: bool | None = None  # the chain as presented leads to the lab's public root, all in date
    trust_detail: str | None = None
    problem: str | None = None  # why it is not trusted ("self-signed", "incomplete chain: ...", "expired on ...")
    chain_presented: int | None = None  # certificates the client presented, leaf included


class Attribution(_Contract):
    """EOP's tenant attribution of a message (eop.rules.Attribution)."""

    tenant: str | None
    by: Literal["certificate", "ip", "recipient"] | None
    connector: str | None
    detail: str = ""


class GatewayTls(_Contract):
    """The TLS of a gateway delivery: protocol version, the client certificate it presented, and
    (Postfix only) how Postfix judged the server's certificate."""

    version: str
    trust: str | None = None
    client_certificate: str | None
    client_certificate_cn: str | None


class PlannedMessage(_Contract):
    msgid: str
    sender: str = Field(alias="from")
    to: list[str]


# ---------------------------------------------------------------- events


class _Event(_Contract):
    # Stamped by the Ledger that writes the event (Postfix's parsed log sets both itself).
    ts: float = 0.0
    service: Service | None = None


class Ready(_Event):
    """A service listens (eop, sink, dns: ip and port; Postfix: its log's time)."""

    event: Literal["ready"]
    ip: str | None = None
    port: int | None = None
    time: str | None = None


class TrafficStart(_Event):
    event: Literal["start"]
    run_id: str
    messages: list[PlannedMessage]


class Injected(_Event):
    event: Literal["injected"]
    count: int


class Submitted(_Event):
    """The traffic generator's record of one recipient's answer where the message entered the lab."""

    event: Literal["submitted"]
    msgid: str
    rcpt: str
    entry: Literal["gateway", "mx"]
    relay: str | None  # host[ip]:port; None: no next hop was found
    relay_host: str | None = None
    code: int  # 0: no SMTP answer
    reply: str
    tls: str | None = None


class RcptDecision(_Event):
    """A server's answer to one RCPT, or to one recipient at end of DATA (gateway: hop count,
    queue full): EOP's with the attribution behind it, the sink's and the gateway's refusals."""

    event: Literal["rcpt"]
    msgid: str | None = None
    rcpt: str
    action: Literal["deliver", "discard", "reject", "defer", "relay"]
    reply: str
    reason: str | None = None
    client_ip: str | None = None
    mail_from: str | None = None
    tls: bool | None = None
    certificate: Certificate | None = None
    attribution: Attribution | None = None
    tenant: str | None = None


class Received(_Event):
    """The gateway queued a message."""

    event: Literal["received"]
    msgid: str | None
    queue_id: str
    mail_from: str | None = None
    rcpts: list[str] | None = None
    client_ip: str | None = None
    tls: str | None = None
    time: str | None = None


class DeliveryError(_Event):
    event: Literal["delivery_error"]
    msgid: str | None
    queue_id: str
    error: str


class NdrQueued(_Event):
    """The gateway queued a non-delivery report (queue_id) for a message it bounced."""

    event: Literal["ndr_queued"]
    queue_id: str
    original_queue_id: str
    to: str | None
    original_msgid: str | None
    time: str | None = None


class GatewayStatus(_Event):
    """One gateway delivery attempt's result for one recipient (Postfix's status= line)."""

    event: Literal["sent", "deferred", "bounced"]
    msgid: str | None  # None: the delivery of a non-delivery report
    queue_id: str
    rcpt: str
    connector: str | None
    relay: str | None
    relay_host: str | None = None
    relay_ip: str | None = None
    reply: str
    dsn: str | None = None
    source_ip: str | None = None
    tls: GatewayTls | None = None
    time: str | None = None
    postfix: str | None = None  # the log line it was read from


class TlsFailed(_Event):
    event: Literal["tls_failed"]
    client_ip: str
    helo: str | None
    reason: str


class FaultInjected(_Event):
    """A lab server did what a scenario fault says instead of answering normally (faults[index])."""

    event: Literal["fault"]
    index: int
    do: Literal["reply", "disconnect", "no-starttls", "tls-fail", "down", "delay"]
    client_ip: str
    msgid: str | None = None
    rcpts: list[str] | None = None
    reply: str | None = None  # what it answered ('disconnect': nothing)
    step: str | None = None  # delay: the reply held back
    seconds: float | None = None  # delay: for how long


class Session(_Event):
    """EOP: a client's facts, once per session that sends MAIL."""

    event: Literal["session"]
    client_ip: str
    helo: str | None
    local_ip: str | None = None
    tls: str | None
    certificate: Certificate | None


class Accepted(_Event):
    event: Literal["accepted"]
    msgid: str | None
    mail_from: str | None
    rcpts: list[str]
    reply: str
    size: int
    refused_id: str | None = None  # a client's id outside the ids' grammar, escaped


class Delivered(_Event):
    """A mailbox (EOP tenant or internet sink) holds it."""

    event: Literal["delivered"]
    msgid: str | None
    rcpt: str
    mailbox: str
    tenant: str | None = None
    file: str
    spf: str | None = None  # EOP: "fail (sender IP is 192.0.2.10)", for inbound mail it judged
    client_ip: str | None = None
    tls: str | None = None
    refused_id: str | None = None


class Discarded(_Event):
    event: Literal["discarded"]
    msgid: str | None
    rcpt: str
    reason: str
    attribution: Attribution
    certificate: Certificate | None
    client_ip: str


class EopRelay(_Event):
    """EOP sent a message on over SMTP for one recipient (relay through the attributed tenant, an
    outbound connector, an InternalRelay domain): the next hop's answer."""

    event: Literal["relayed", "relay_deferred", "relay_bounced"]
    msgid: str | None
    rcpt: str
    tenant: str | None  # whose outbound routing sent it
    connector: str | None  # the outbound connector, if one chose the route
    relay: str | None  # host[ip]:port; None: no next hop
    relay_host: str | None = None
    reply: str
    tls: str | None = None


class Ndr(_Event):
    """A mailbox service delivered a non-delivery report about message msgid."""

    event: Literal["ndr"]
    msgid: str
    to: str
    mailbox: str
    file: str


class TraceEntry(_Event):
    """One line of a tenant's message trace (trace.jsonl)."""

    event: Literal["trace"]
    tenant: str
    msgid: str | None
    sender: str
    rcpt: str
    status: str


class Query(_Event):
    event: Literal["query"]
    qname: str
    qtype: str
    client_ip: str
    rcode: str
    answers: list[str]


class BadQuery(_Event):
    event: Literal["bad_query"]
    client_ip: str
    why: str
    size: int
    head: str


AnyEvent = (
    Ready
    | TrafficStart
    | Injected
    | Submitted
    | RcptDecision
    | Received
    | DeliveryError
    | NdrQueued
    | GatewayStatus
    | TlsFailed
    | FaultInjected
    | Session
    | Accepted
    | Delivered
    | Discarded
    | EopRelay
    | Ndr
    | TraceEntry
    | Query
    | BadQuery
)
Event = Annotated[AnyEvent, Field(discriminator="event")]
EVENT: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(data: str | bytes | dict[str, Any]) -> AnyEvent:
    """One ledger line (or its dict) as its typed event; pydantic.ValidationError if it is none."""
    if isinstance(data, dict):
        return EVENT.validate_python(data)
    return EVENT.validate_json(data)


def dump_event(event: AnyEvent) -> str:
    """One ledger line: the fields the writer set (a None it set is written as null)."""
    return event.model_dump_json(exclude_unset=True, by_alias=True)


# ---------------------------------------------------------------- labgen.result/v1


class ResultAttribution(_Contract):
    tenant: str | None
    by: str | None
    connector: str | None


class Hop(_OmitNone):
    """One service's event about this recipient, in the order the message travelled."""

    OMIT_NONE = frozenset(
        {
            "relay",
            "connector",
            "action",
            "reason",
            "mailbox",
            "queue_id",
            "tls",
            "client_ip",
            "source_ip",
            "entry",
            "certificate",
            "attribution",
            "file",
            "spf",
        }
    )
    service: Service | None
    event: str
    reply: str | None
    relay: str | None = None
    connector: str | None = None
    action: str | None = None
    reason: str | None = None
    mailbox: str | None = None
    queue_id: str | None = None
    tls: GatewayTls | bool | str | None = None
    client_ip: str | None = None
    source_ip: str | None = None
    entry: str | None = None
    certificate: Certificate | None = None
    attribution: Attribution | None = None
    file: str | None = None
    spf: str | None = None


class NdrFound(_Contract):
    service: Service | None
    mailbox: str | None
    file: str | None


class DroppedBy(_Contract):
    service: Service
    reason: str | None
    attribution: Attribution | None
    certificate: Certificate | None
    client_ip: str | None


class TraceSeen(_Contract):
    """One tenant's message trace line for a recipient: what that tenant's admin sees."""

    tenant: str
    status: str


class MessageResult(_OmitNone):
    """One recipient of one message: its outcome and why."""

    OMIT_NONE = frozenset({"dropped_by", "expected_reply", "expected_spf"})
    id: str
    sender: str = Field(alias="from")
    to: str
    outcome: Verdict
    expected: Outcome | None
    expected_reply: str | None = None  # scenario's expect_reply: a text one of the hops' replies contains
    expected_spf: str | None = None  # scenario's expect_spf: the SPF result EOP recorded delivering it
    ok: bool | None  # None: no expectation
    hops: list[Hop]
    attribution: ResultAttribution | None
    recipient_trace_visible: bool
    trace: list[TraceSeen] = []  # every tenant whose message trace shows it (the sender's too)
    recipient_tenant: str | None  # None: an internet recipient
    ndr: NdrFound | None
    ndr_lost: str | None
    why: str
    dropped_by: DroppedBy | None = None  # silently_discarded: who dropped it


class Summary(_Contract):
    total: int = 0
    delivered: int = 0
    silently_discarded: int = 0
    rejected: int = 0
    deferred: int = 0
    unaccounted: int = 0
    expectations_failed: int = 0


class ResultDoc(_Contract):
    schema_: Literal["labgen.result/v1"] = Field("labgen.result/v1", alias="schema")
    scenario: str
    description: str
    engine: str
    # docker: a lab network with a container per service, or a pod (one namespace, loopback addresses)
    topology: Literal["network", "pod"] = "network"
    profile: Literal["seed", "current"] | None = None  # the EOP behaviour set that produced the verdict
    duration_s: float
    lab_dir: str
    run_id: str
    messages: list[MessageResult]
    summary: Summary


# ---------------------------------------------------------------- labgen.compare/v1


class Change(_Contract):
    id: str
    to: str
    a: Verdict | None  # None: the message is only in b
    b: Verdict | None
    changed: bool
    attribution_a: ResultAttribution | None
    attribution_b: ResultAttribution | None
    change: str


class CompareDoc(_Contract):
    schema_: Literal["labgen.compare/v1"] = Field("labgen.compare/v1", alias="schema")
    a: ResultDoc
    b: ResultDoc
    changes: list[Change]


# ---------------------------------------------------------------- the other --json documents


class ScenarioRow(_Contract):
    name: str  # what `labgen up` takes
    fixed: str | None = None  # the fixed variant's name (NAME:fixed), if the entry has one
    description: str
    messages: int
    profile: Literal["seed", "current"] | None = None
    title: str | None = None
    symptom: str | None = None
    cause: str | None = None
    fix: str | None = None
    sources: list[str] = []
    tags: list[str] = []


class ScenariosDoc(_Contract):
    schema_: Literal["labgen.scenarios/v1"] = Field("labgen.scenarios/v1", alias="schema")
    scenarios: list[ScenarioRow]


class ExampleRow(_Contract):
    name: str
    ref: str  # what `labgen up` takes: example:<name>
    lab: str  # the scenario's own name (its lab directory, labgen-<lab>)
    description: str
    messages: int
    expected: list[Outcome]  # the outcomes its expectations name: what it shows


class ExamplesDoc(_Contract):
    schema_: Literal["labgen.examples/v1"] = Field("labgen.examples/v1", alias="schema")
    examples: list[ExampleRow]


class ValidateDoc(_Contract):
    schema_: Literal["labgen.validate/v1"] = Field("labgen.validate/v1", alias="schema")
    scenario: str
    valid: bool


class CertRow(_Contract):
    name: str
    file: str
    key: str | None = None  # absent for the CAs (their keys are not the lab's to use)
    subject: str
    sans: list[str]
    issuer: str
    self_signed: bool
    fingerprint_sha256: str
    not_before: str
    not_after: str


class CertsDoc(_Contract):
    schema_: Literal["labgen.certs/v1"] = Field("labgen.certs/v1", alias="schema")
    lab_dir: str
    certificates: list[CertRow]


class TraceRow(_Contract):
    ts: float
    msgid: str | None
    sender: str
    rcpt: str
    status: str


class TraceDoc(_Contract):
    schema_: Literal["labgen.trace/v1"] = Field("labgen.trace/v1", alias="schema")
    lab: str
    tenant: str
    entries: list[TraceRow]


class TranscriptCert(_Contract):
    """A certificate the client presented during STARTTLS (leaf first, as it came)."""

    subject: str  # the full subject, RFC 4514 (e.g. "CN=gw.contoso.example")
    issuer: str
    fingerprint_sha256: str  # upper-case hex, colon-separated


class TranscriptTls(_Contract):
    version: str | None  # "TLSv1.3"
    cipher: str | None
    bits: int | None = None
    client_certificates: list[TranscriptCert]  # empty: the client presented none


class TranscriptLine(_Contract):
    """One step of a conversation: `at` seconds after connect; a server reply holds all its lines
    (a multi-line EHLO reply is one step); client text is escaped and clipped; message data is
    never recorded, only its size (a "note")."""

    at: float
    side: Literal["server", "client", "tls", "note"]
    lines: list[str]


class TranscriptSession(_Contract):
    """One SMTP session as a lab server recorded it (run/transcripts/<service>.jsonl; a session
    may be written more than once as it goes on: the last line with its `session` id stands)."""

    session: str  # unique within the run
    service: Service  # the server that recorded it
    started: float  # epoch seconds
    ended: float | None = None  # None while the session was still open when written
    client_ip: str
    client_port: int | None = None
    server_ip: str | None = None
    server_port: int | None = None
    helo: str | None = None
    msgids: list[str]  # traffic ids of the transactions in the session (X-Labgen-Id / ENVID)
    tls: TranscriptTls | None = None
    steps: list[TranscriptLine]
    omitted_lines: int = 0  # lines past the per-session cap, counted only


class TranscriptHop(TranscriptSession):
    hop: str  # "gateway → eop": the client (a lab host by its address, else the address) and the server


class TranscriptDoc(_Contract):
    schema_: Literal["labgen.transcript/v1"] = Field("labgen.transcript/v1", alias="schema")
    lab: str
    msgid: str
    hops: list[TranscriptHop]  # every recorded session carrying the message, in the order they began


class ContainerRow(_Contract):
    lab: str | None
    service: str | None
    container: str
    state: str
    health: str | None
    addresses: list[str]
    image: str


class ServiceRow(_Contract):
    service: str
    state: str  # the engine's own word: "running", "exited", ...
    addresses: list[str]
    container: str | None = None  # docker
    health: str | None = None  # docker healthcheck
    image: str | None = None


class LabRow(_Contract):
    lab: str
    engine: str
    state: str  # "running" when every service runs, else what is wrong
    services: list[ServiceRow]
    addresses: list[str]  # ip or ip:port where the lab's services answer
    lab_dir: str | None
    pid: int | None = None  # local engine: the process that serves the lab


class StatusDoc(_Contract):
    schema_: Literal["labgen.status/v1"] = Field("labgen.status/v1", alias="schema")
    containers: list[ContainerRow]  # the services that run in containers (v1's first field)
    labs: list[LabRow] = []  # every engine's labs


class Removed(_Contract):
    containers: list[str]
    networks: list[str]
    volumes: list[str]
    processes: list[str] = []  # local engine


class DownDoc(_Contract):
    schema_: Literal["labgen.down/v1"] = Field("labgen.down/v1", alias="schema")
    removed: dict[str, Removed]


class ImageRow(_Contract):
    tag: str | None  # None: replaced by a forced rebuild
    id: str
    created: str
    size: int
    current: bool


class ImagesDoc(_Contract):
    schema_: Literal["labgen.images/v1"] = Field("labgen.images/v1", alias="schema")
    images: list[ImageRow]


# ---------------------------------------------------------------- workshops (labgen/workshop.py)


class WorkshopSeatRow(_Contract):
    workshop: str
    seat: str  # s01 ...
    lab: str  # <workshop>-s01
    state: str  # running, exited, ... or "degraded" when its containers differ
    containers: int
    subnet: str
    verdict: str  # one line per message: "to-fabrikam silently_discarded, ..."
    summary: Summary | None
    lab_dir: str | None


class WorkshopStatusDoc(_Contract):
    schema_: Literal["labgen.workshop-status/v1"] = Field("labgen.workshop-status/v1", alias="schema")
    seats: list[WorkshopSeatRow]


class GoalRow(_Contract):
    seat: str
    goal: int  # its index in exercise.goals
    message: str
    to: str
    expect: str
    outcome: str
    passed: bool
    says: str  # the goal as the trainee reads it
    reason: str  # what happened: outcome, hop, reply, the certificate EOP saw


class CheckDoc(_Contract):
    """`labgen check --seat S --json`: one seat's goals."""

    schema_: Literal["labgen.check/v1"] = Field("labgen.check/v1", alias="schema")
    workshop: str
    seat: str
    goals: list[GoalRow]


class ClassReportDoc(_Contract):
    """class-report.json: every seat's goals (`labgen workshop check`)."""

    schema_: Literal["labgen.class-report/v1"] = Field("labgen.class-report/v1", alias="schema")
    workshop: str
    scenario: str
    seats: list[str]
    passed: list[str]  # the seats whose every goal holds
    rows: list[GoalRow]


DOCUMENTS: dict[str, type[BaseModel]] = {
    "result": ResultDoc,
    "compare": CompareDoc,
    "scenarios": ScenariosDoc,
    "examples": ExamplesDoc,
    "validate": ValidateDoc,
    "certs": CertsDoc,
    "trace": TraceDoc,
    "transcript": TranscriptDoc,
    "status": StatusDoc,
    "down": DownDoc,
    "images": ImagesDoc,
    "workshop-status": WorkshopStatusDoc,
    "check": CheckDoc,
    "class-report": ClassReportDoc,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a document (`labgen.<name>/v1`) or of one ledger line (`event`)."""
    if name == "event":
        schema = EVENT.json_schema(by_alias=True)
        schema["title"] = "labgen ledger event"
    else:
        schema = DOCUMENTS[name].model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://labgen.invalid/schemas/{name}.json"
    return schema


def dump(doc: BaseModel) -> Any:
    """A document as the JSON-ready value the CLI prints."""
    return doc.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------- labgen lint (model/lint.py)


class LintFinding(_Contract):
    rule: str  # a stable id, LG001 ...
    name: str  # the rule's name (the catalogue entry it comes from)
    severity: Literal["error", "warning", "note"]
    message: str
    subject: str  # the connector, certificate or domain it concerns
    path: str  # the YAML path of the setting to change
    line: int | None  # its line in the scenario file, when found
    sources: list[str]
    fix: str


class LintSummary(_Contract):
    error: int
    warning: int
    note: int


class LintDoc(_Contract):
    schema_: Literal["labgen.lint/v1"] = Field("labgen.lint/v1", alias="schema")
    scenario: str
    file: str
    profile: Literal["seed", "current"]
    findings: list[LintFinding]
    summary: LintSummary


DOCUMENTS["lint"] = LintDoc


# ---------------------------------------------------------------- labgen.test/v1 (labgen test)


class TestCaseRow(_Contract):
    """One message × recipient expectation of a scenario (`labgen test`)."""

    __test__ = False  # not a pytest class
    id: str
    to: str
    status: Literal["passed", "failed", "error"]
    expected: str  # what the scenario expected: outcome, reply text, SPF result
    outcome: Verdict | None  # None: the lab did not run
    message: str  # failed: outcome, expected, the hop where it went wrong, the reply, why; error: the cause


class TestSuiteRow(_Contract):
    """One scenario: its cases, or why its lab could not run."""

    __test__ = False
    scenario: str
    source: str  # the file (or built-in name) it came from
    status: Literal["passed", "failed", "error"]
    tests: int
    failures: int
    errors: int
    duration_s: float
    error: str | None  # the lab could not run (exit-3 kind)
    cases: list[TestCaseRow]
    result: ResultDoc | None  # the run's labgen.result/v1 document; None when the lab did not run


class TestSummary(_Contract):
    __test__ = False
    scenarios: int
    tests: int
    passed: int
    failures: int
    errors: int


class TestDoc(_Contract):
    """What `labgen test --json` prints: every scenario run, each expectation a case."""

    __test__ = False
    schema_: Literal["labgen.test/v1"] = Field("labgen.test/v1", alias="schema")
    engine: str
    jobs: int
    exit_code: int  # 0 all held, 1 an expectation failed, 3 a lab could not run
    suites: list[TestSuiteRow]
    summary: TestSummary


DOCUMENTS["test"] = TestDoc
