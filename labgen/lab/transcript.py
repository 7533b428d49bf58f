"""Per-hop SMTP transcripts: every lab SMTP server (smtpd.LabSMTP: fake EOP, sinks, built-in
gateway) records each session as an admin would capture it (banner, commands, replies, STARTTLS,
the TLS version, cipher and client certificate), into run/transcripts/<service>.jsonl.

A client is hostile: every line it sends is escaped and clipped (ledger.clip), a session keeps at
most MAX_LINES lines (the rest are only counted), message data is never kept (only its size), and
a service's file stops growing at FILE_MAX bytes. A session is written when a transaction ends,
on QUIT/RSET and when it closes (at most MAX_WRITES times; a lab may be stopped while a client
such as Postfix keeps a cached connection open): readers keep the last line of each session id.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ..results.contracts import (
    TranscriptCert,
    TranscriptDoc,
    TranscriptHop,
    TranscriptLine,
    TranscriptSession,
    TranscriptTls,
)
from .ledger import clip, safe_id

if TYPE_CHECKING:
    from ..model.plan import Plan

log = logging.getLogger("labgen.transcript")

DIRNAME = "transcripts"
LINE_MAX = 512  # characters of one recorded line (escaped)
MAX_LINES = 400  # lines kept per session; later ones are counted in omitted_lines
MAX_MSGIDS = 64  # message ids kept per session
MAX_WRITES = 16  # snapshots of one session before the final one
FILE_MAX = 32 << 20  # a service's transcript file stops growing here

_SEQ = itertools.count(1)
_warned: set[Path] = set()


def cert_facts(der: bytes) -> TranscriptCert:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return TranscriptCert(subject="(unparsable certificate)", issuer="", fingerprint_sha256="")
    return TranscriptCert(
        subject=clip(cert.subject.rfc4514_string()),
        issuer=clip(cert.issuer.rfc4514_string()),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
    )


class Recorder:
    """One connection's transcript, bounded (see the module's docstring)."""

    def __init__(self, run_dir: Path, service: str, peer: object, local: object) -> None:
        self.path = Path(run_dir) / DIRNAME / f"{service}.jsonl"
        self.started = time.time()
        client = peer if isinstance(peer, tuple) and len(peer) >= 2 else ("?", None)
        server = local if isinstance(local, tuple) and len(local) >= 2 else (None, None)
        self.session = TranscriptSession(
            session=f"{service}-{os.getpid()}-{next(_SEQ)}",
            service=service,
            started=round(self.started, 6),
            client_ip=str(client[0]),
            client_port=client[1] if isinstance(client[1], int) else None,
            server_ip=str(server[0]) if server[0] is not None else None,
            server_port=server[1] if isinstance(server[1], int) else None,
            msgids=[],
            steps=[],
        )
        self.kept = 0
        self.writes = 0

    def _add(self, side: Literal["server", "client", "tls", "note"], text: str, merge: bool = False) -> None:
        if self.kept >= MAX_LINES:
            self.session.omitted_lines += 1
            return
        self.kept += 1
        line = clip(text, LINE_MAX)
        steps = self.session.steps
        if merge and steps and steps[-1].side == side:
            steps[-1].lines.append(line)
            return
        steps.append(TranscriptLine(at=round(time.time() - self.started, 3), side=side, lines=[line]))

    def server(self, reply: str) -> None:
        """One reply line; the lines of a multi-line reply ("250-...") make one step."""
        steps = self.session.steps
        prev = steps[-1].lines[-1] if steps and steps[-1].side == "server" else ""
        self._add("server", reply, merge=len(prev) > 3 and prev[3] == "-")

    def client(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        self._add("client", text)
        verb, _, arg = text.partition(" ")
        if verb.upper() in ("EHLO", "HELO") and arg.strip():
            self.session.helo = clip(arg.strip(), 255)

    def note(self, text: str) -> None:
        self._add("note", text)

    def msgid(self, msgid: str | None) -> None:
        ids = self.session.msgids
        if safe_id(msgid) and msgid not in ids and len(ids) < MAX_MSGIDS:
            ids.append(msgid)  # type: ignore[arg-type]  # safe_id: a str

    def tls(self, version: str | None, cipher: tuple[str, int] | None, chain: list[bytes]) -> None:
        certs = [cert_facts(der) for der in chain[:10]]
        self.session.tls = TranscriptTls(
            version=version,
            cipher=cipher[0] if cipher else None,
            bits=cipher[1] if cipher else None,
            client_certificates=certs,
        )
        self._add("tls", f"TLS established: {version} {cipher[0] if cipher else '?'}")
        if not certs:
            self._add("tls", "client certificate: none presented")
        for i, c in enumerate(certs):
            what = "client certificate" if i == 0 else f"  chain[{i}]"
            self._add("tls", f"{what}: subject {c.subject}; issuer {c.issuer}; SHA-256 {c.fingerprint_sha256}")

    def write(self, final: bool = False) -> None:
        """Append the session so far (the last line per session id stands)."""
        if not final:
            if self.writes >= MAX_WRITES:
                return
            self.writes += 1
        else:
            self.session.ended = round(time.time(), 6)
        line = (self.session.model_dump_json() + "\n").encode()
        try:
            self.path.parent.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            try:
                if os.fstat(fd).st_size + len(line) > FILE_MAX:
                    if self.path not in _warned:
                        _warned.add(self.path)
                        log.warning("%s reached %d bytes: no more transcripts are recorded there", self.path, FILE_MAX)
                    return
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:
            # A transcript is no ground truth: a lab that cannot write one still runs, and a full
            # disk is the lab's fault already, said once by the ledger (ledger.note_fault).
            if self.path not in _warned:
                _warned.add(self.path)
                log.debug("cannot write transcripts to %s: %s", self.path, e.strerror or e)


# ---------------------------------------------------------------- reading them back


def read_sessions(run_dir: Path) -> list[TranscriptSession]:
    """Every recorded session of a run (the last line written for each), in the order they began."""
    last: dict[str, TranscriptSession] = {}
    for path in sorted((Path(run_dir) / DIRNAME).glob("*.jsonl")):
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    s = TranscriptSession.model_validate(json.loads(line))
                except ValueError:
                    continue  # a line being written right now
                last[s.session] = s
    return sorted(last.values(), key=lambda s: (s.started, s.session))


def _host_names(plan: Plan | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for host, addresses in (plan.hosts if plan else {}).items():
        for ip in addresses:
            names.setdefault(ip, host)
    return names


def transcript_doc(lab: str, msgid: str, sessions: Iterable[TranscriptSession], plan: Plan | None) -> TranscriptDoc:
    names = _host_names(plan)
    hops = []
    for s in sessions:
        if msgid in s.msgids:
            client = names.get(s.client_ip, s.client_ip)
            hops.append(TranscriptHop(**s.model_dump(), hop=f"{client} → {s.service}"))
    return TranscriptDoc(lab=lab, msgid=msgid, hops=hops)


def render(doc: TranscriptDoc) -> list[object]:
    """The document as rich Text lines for a terminal: every recorded string escaped again."""
    from rich.text import Text

    from ..errors import escape

    def t(value: object, style: str = "") -> Text:
        return Text(escape(value), style=style)

    out: list[object] = [t(f"SMTP transcripts of message {doc.msgid} in lab {doc.lab} (as each server recorded it):")]
    if not doc.hops:
        out.append(t("  (no recorded session carried this message id)"))
    prefix = {"server": "S: ", "client": "C: ", "tls": "   ", "note": "   "}
    style = {"server": "", "client": "bold", "tls": "cyan", "note": "dim"}
    for n, hop in enumerate(doc.hops, 1):
        out.append(Text(""))
        when = time.strftime("%H:%M:%S", time.gmtime(hop.started))
        out.append(
            t(
                f"hop {n}: {hop.hop}  ({hop.client_ip}:{hop.client_port} → {hop.server_ip}:{hop.server_port}, "
                f"{when} UTC, HELO {hop.helo or '-'})",
                "bold",
            )
        )
        if hop.tls is None:
            out.append(t("  TLS: none (plaintext session)", "yellow"))
        else:
            bits = f" ({hop.tls.bits} bits)" if hop.tls.bits else ""
            out.append(t(f"  TLS: {hop.tls.version} {hop.tls.cipher}{bits}", "cyan"))
            if not hop.tls.client_certificates:
                out.append(t("  client certificate: none presented", "cyan"))
            for i, c in enumerate(hop.tls.client_certificates):
                what = "client certificate" if i == 0 else f"  chain[{i}]"
                out.append(t(f"  {what}: subject {c.subject}", "cyan"))
                out.append(t(f"      issuer {c.issuer}", "cyan"))
                out.append(t(f"      SHA-256 {c.fingerprint_sha256}", "cyan"))
        for step in hop.steps:
            for line in step.lines:
                out.append(t(f"  {step.at:8.3f} {prefix[step.side]}{line}", style[step.side]))
        if hop.omitted_lines:
            out.append(t(f"  … {hop.omitted_lines} more lines not recorded (at most {MAX_LINES} per session)", "dim"))
        if hop.ended is None:
            out.append(t("  (the session was still open when last recorded)", "dim"))
    return out
