"""The lab's SMTP servers (fake EOP, internet sink, built-in gateway) under hostile clients, on
the local engine exactly as `labgen up --engine local` runs them: path traversal through
recipients and message ids, oversized messages (SIZE, DATA, BDAT), malformed commands, a second
STARTTLS, connection floods, idle clients and a process out of file descriptors."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import tracemalloc
import urllib.parse
from pathlib import Path

import pytest

from labgen.engines.local import LocalEngine
from labgen.lab import smtpd
from labgen.lab.sink import SinkHandler
from labgen.lab.smtpd import LabSMTP, serve
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab

REPO = Path(__file__).resolve().parent.parent
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"
EOP_LIMIT = 157286400


@pytest.fixture
def lab(tmp_path):
    """The broken lab's services in this process (local engine), no traffic; a canary directory
    beside the lab that no client may write to."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("canary")
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path)
    engine.start(plan, labdir, time.monotonic() + 120)
    yield engine, plan, labdir, canary
    engine.finish(plan, labdir)


def tree(root: Path) -> set[str]:
    """Every path under root, symlinks not followed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def events(labdir: Path, service: str, event: str) -> list[dict]:
    path = labdir / "run" / f"{service}.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


class Raw:
    """A byte-exact SMTP client: every command as written, every reply read in full."""

    def __init__(self, ip: str, port: int, source: str | None = None):
        # The timeout is only an upper bound for a reply that never comes.
        self.sock = socket.create_connection((ip, port), timeout=60, source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()

    def reply(self) -> str:
        """The last line of the next reply (a multi-line reply's final line), without CRLF."""
        while True:
            line = self.file.readline()
            if not line:
                return ""  # the server closed the connection
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n").decode("utf-8", "replace")

    def cmd(self, line: str | bytes) -> str:
        self.sock.sendall((line.encode("utf-8") if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def bdat(self, data: bytes, last: bool = False) -> str:
        self.sock.sendall(f"BDAT {len(data)}{' LAST' if last else ''}\r\n".encode() + data)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def ehlo_mail_rcpt(c: Raw, rcpt: str, mail_from: str = "erin@northwind.example", mail_params: str = "") -> None:
    assert c.cmd("EHLO client.test").startswith("250 ")
    assert c.cmd(f"MAIL FROM:<{mail_from}>{mail_params}").startswith("250 ")
    assert c.cmd(f"RCPT TO:<{rcpt}>").startswith("250 ")


def message(header_id: str | None = "hostile-1", body: bytes = b"hello\r\n") -> bytes:
    head = b"From: erin@northwind.example\r\nSubject: t\r\n"
    if header_id is not None:
        head += b"X-Labgen-Id: " + header_id.encode("utf-8", "surrogateescape") + b"\r\n"
    return head + b"\r\n" + body


def send_data(c: Raw, data: bytes) -> str:
    assert c.cmd("DATA").startswith("354")
    c.sock.sendall(data + b".\r\n")
    return c.reply()


def server_addr(plan, service: str) -> tuple[str, int]:
    return plan.ip(service), plan.smtp_port


def assert_only_mailboxes_written(before: set[str], after: set[str]) -> None:
    """Everything new in the lab's work tree is a ledger, run/transcripts/<service>.jsonl or
    run/mailboxes/<one segment>/<file>."""
    for path in sorted(after - before):
        parts = Path(path).parts
        assert parts[:2] == ("labgen-broken", "run"), path
        if parts[2:3] == ("mailboxes",):  # the root, a mailbox, a message
            assert len(parts) <= 5 and not {".", ".."} & set(parts), path
        elif parts[2:3] == ("transcripts",):  # the directory, a service's file
            assert len(parts) == 3 or (len(parts) == 4 and parts[3] in {"eop.jsonl", "sink.jsonl", "gateway.jsonl"}), (
                path
            )
        else:
            assert len(parts) == 3 and parts[2].endswith(".jsonl"), path


# --- paths from client input -------------------------------------------------------------------

# Recipients in the sink's domain that name paths: each must land in exactly one mailbox directory
# whose name decodes back to the address, and nothing may appear outside the lab's run directory.
TRAVERSAL = [
    "a/../../../../canary/pwned@northwind.example",
    "{canary}/abs@northwind.example",
    '"../../../../canary/quoted"@northwind.example',
    '".."@northwind.example',
    '"."@northwind.example',
    "..x@northwind.example",
    "%2e%2e%2fcanary@northwind.example",
    "Ünï/../cødé@northwind.example",
    "a\\b@northwind.example",
    "x" * 300 + "@northwind.example",
]


@pytest.mark.parametrize("rcpt", TRAVERSAL, ids=range(len(TRAVERSAL)))
def test_sink_recipient_paths_stay_in_one_mailbox_directory(lab, tmp_path, rcpt):
    engine, plan, labdir, canary = lab
    rcpt = rcpt.replace("{canary}", str(canary))
    before, canary_before = tree(tmp_path), tree(canary)
    c = Raw(*server_addr(plan, "sink"))
    assert c.cmd("EHLO client.test").startswith("250 ")
    assert c.cmd("MAIL FROM:<erin@northwind.example>") == "250 OK"
    assert c.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
    assert send_data(c, message("trav-1")) == "250 2.0.0 Ok: queued"
    c.close()
    assert tree(canary) == canary_before
    assert_only_mailboxes_written(before, tree(tmp_path))
    delivered = events(labdir, "sink", "delivered")[-1]
    mailboxes, box, file = Path(delivered["file"]).parts  # relative to run/
    assert mailboxes == "mailboxes" and file.endswith("-trav-1.eml")
    assert (labdir / "run" / delivered["file"]).read_bytes() == message("trav-1")
    # The directory name is the address, reversibly encoded (a long one is cut and hashed).
    address = delivered["rcpt"]
    if len(box) < 180:
        assert urllib.parse.unquote(box, errors="surrogateescape") == address
    else:
        assert "~" in box and len(box) <= 200


@pytest.mark.parametrize("planted", ["symlink-to-dir", "dangling-symlink", "regular-file"])
def test_a_planted_mailbox_is_refused_without_leaking_a_path(lab, tmp_path, planted):
    """Defence in depth: a mailbox directory that is a symlink (or not a directory) is never
    written through, and the client is told 451 without any server path or exception text."""
    engine, plan, labdir, canary = lab
    box = labdir / "run" / "mailboxes" / "victim@northwind.example"
    box.parent.mkdir(parents=True, exist_ok=True)
    if planted == "symlink-to-dir":
        box.symlink_to(canary, target_is_directory=True)
    elif planted == "dangling-symlink":
        box.symlink_to(canary / "new")
    else:
        box.write_text("not a directory")
    canary_before = tree(canary)
    c = Raw(*server_addr(plan, "sink"))
    ehlo_mail_rcpt(c, "victim@northwind.example")
    reply = send_data(c, message("victim-1"))
    assert reply == "451 4.3.0 Local error in processing, try again later"
    assert c.cmd("NOOP") == "250 OK"  # the session goes on
    c.close()
    assert tree(canary) == canary_before
    assert not events(labdir, "sink", "delivered")


# Message ids a client chooses (X-Labgen-Id header, DSN ENVID): only the traffic's grammar names a
# file or joins events; anything else is no id, and the ledger shows it escaped and shortened.
BAD_IDS = [
    ("header", "../../../../canary/evil", "../../../../canary/evil"),
    ("header", "a/b", "a/b"),
    ("header", "x" * 60, "x" * 60),
    ("header", "\x1b[31mred", "\\x1b[31mred"),
    ("header", "a\rb", "a\\x0db"),
    ("header", "-leading-dash", "-leading-dash"),
    ("header", "z" * 200, "z" * 79 + "…"),
    ("envid", "..+2F..+2F..+2Fcanary+2Fenv", "../../../canary/env"),
    ("envid", "a+0D+0AX-Injected:+201", "a\\x0d\\x0aX-Injected: 1"),
    ("envid", "a+2Fb", "a/b"),
]


@pytest.mark.parametrize("service, rcpt", [("sink", "dave@northwind.example"), ("eop", "bob@contoso.example")])
@pytest.mark.parametrize("where, value, shown", BAD_IDS, ids=range(len(BAD_IDS)))
def test_bad_message_ids_name_no_file_and_are_shown_escaped(lab, tmp_path, service, rcpt, where, value, shown):
    engine, plan, labdir, canary = lab
    before = tree(tmp_path)
    c = Raw(*server_addr(plan, service), source=plan.ip("sink"))
    params = f" ENVID={value}" if where == "envid" else ""
    ehlo_mail_rcpt(c, rcpt, mail_params=params)
    reply = send_data(c, message(value if where == "header" else None))
    c.close()
    assert reply.startswith("250 2."), reply
    assert_only_mailboxes_written(before, tree(tmp_path))
    delivered = events(labdir, service, "delivered")[-1]
    assert delivered["msgid"] is None and Path(delivered["file"]).name.endswith("-unknown.eml")
    # The sink notes a refused id where it delivers, EOP where it accepts (before its rules).
    noted = delivered if service == "sink" else events(labdir, "eop", "accepted")[-1]
    assert noted["msgid"] is None and noted["refused_id"] == shown
    if service == "eop":
        assert events(labdir, "eop", "rcpt")[-1]["msgid"] is None


@pytest.mark.parametrize("service, rcpt", [("sink", "dave@northwind.example"), ("eop", "bob@contoso.example")])
def test_a_well_formed_id_still_names_the_file_and_joins(lab, service, rcpt):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, service), source=plan.ip("sink"))
    ehlo_mail_rcpt(c, rcpt, mail_params=" ENVID=env-ok.1")
    assert send_data(c, message(None)).startswith("250 2.")
    c.close()
    delivered = events(labdir, service, "delivered")[-1]
    assert delivered["msgid"] == "env-ok.1" and "refused_id" not in delivered
    assert delivered["file"].endswith("-env-ok.1.eml")


def test_eop_quotes_only_a_well_formed_message_id(lab):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, "eop"), source=plan.ip("sink"))
    ehlo_mail_rcpt(c, "bob@contoso.example")
    reply = send_data(c, b"Message-ID: <x\x1b[2J@evil> trailing\r\nX-Labgen-Id: mid-1\r\n\r\nhi\r\n")
    c.close()
    assert reply.startswith("250 2.6.0 <") and "\x1b" not in reply and "evil" not in reply
    assert "Queued mail for delivery" in reply


# --- commands with control characters, too many recipients -------------------------------------

CONTROL = [
    ("EHLO a\x1b[31mb", None, "501 5.5.2 Syntax: EHLO hostname"),
    ("HELO a\x00b", None, "501 5.5.2 Syntax: HELO hostname"),
    (b"MAIL FROM:<a\rb@northwind.example>", None, "501 5.1.7 Bad sender address syntax"),
    ("MAIL FROM:<erin@northwind.example> ENVID=a\x01", None, "501 5.1.7 Bad sender address syntax"),
    (
        'RCPT TO:<"a\x00b"@northwind.example>',
        "MAIL FROM:<erin@northwind.example>",
        "501 5.1.3 Bad recipient address syntax",
    ),
    (
        "RCPT TO:<a\u202eb@northwind.example>",
        "MAIL FROM:<erin@northwind.example>",
        "501 5.1.3 Bad recipient address syntax",
    ),
]


@pytest.mark.parametrize("service", ["eop", "sink", "gateway"])
@pytest.mark.parametrize("command, before, expected", CONTROL, ids=range(len(CONTROL)))
def test_control_characters_in_commands_are_refused(lab, service, command, before, expected):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, service), source=plan.ip("sink"))
    if not (isinstance(command, str) and command.startswith(("EHLO", "HELO"))):
        assert c.cmd("EHLO client.test").startswith("250 ")
    if before:
        assert c.cmd(before).startswith("250 ")
    assert c.cmd(command) == expected
    assert c.cmd("NOOP") == "250 OK"
    c.close()


def test_recipients_per_transaction_are_capped(lab):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, "sink"))
    assert c.cmd("EHLO client.test").startswith("250 ")
    assert c.cmd("MAIL FROM:<erin@northwind.example>") == "250 OK"
    c.sock.sendall(b"".join(b"RCPT TO:<u%d@northwind.example>\r\n" % i for i in range(smtpd.MAX_RCPTS + 1)))
    replies = [c.reply() for _ in range(smtpd.MAX_RCPTS + 1)]
    assert replies[:-1] == ["250 2.1.5 Ok"] * smtpd.MAX_RCPTS
    assert replies[-1] == "452 4.5.3 Too many recipients"
    c.close()


# --- sizes: SIZE, DATA, BDAT -------------------------------------------------------------------

SIZES = [
    ("eop", f" SIZE={EOP_LIMIT + 1}", SIZE_EXCEEDED),
    ("eop", f" SIZE={EOP_LIMIT}", "250 2.1.0 Sender OK"),
    ("eop", " SIZE=١٢", "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=<digits>]"),
    ("eop", " SIZE=1234567890123456", "501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=<digits>]"),
    ("sink", f" SIZE={2**25 + 1}", SIZE_EXCEEDED),
    ("gateway", f" SIZE={2**25 + 1}", SIZE_EXCEEDED),
]


@pytest.mark.parametrize("service, params, expected", SIZES, ids=range(len(SIZES)))
def test_mail_size_parameter(lab, service, params, expected):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, service), source=plan.ip("sink"))
    assert c.cmd("EHLO client.test").startswith("250 ")
    assert c.cmd(f"MAIL FROM:<erin@northwind.example>{params}") == expected
    c.close()


BDAT_SYNTAX = [
    "BDAT ١٢ LAST",
    "BDAT ١٢",
    "BDAT 12 LAST extra",
    "BDAT 1234567890123456",
    "BDAT -1",
    "BDAT 12 NOTLAST",
    "BDAT",
    "BDAT 0x10",
    "BDAT 1e3 LAST",
]


@pytest.mark.parametrize("command", BDAT_SYNTAX)
def test_bdat_size_must_be_ascii_digits(lab, command):
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, "eop"), source=plan.ip("sink"))
    ehlo_mail_rcpt(c, "bob@contoso.example")
    assert c.cmd(command) == "501 5.5.4 Syntax: BDAT <size> [LAST]"
    assert c.cmd("NOOP") == "250 OK"
    c.close()


def test_one_bdat_chunk_over_eop_limit_is_discarded_not_buffered(lab):
    """The real default path: 160 MiB in one `BDAT ... LAST` against EOP's 150 MB, streamed from
    the client in pieces; the server answers 552 and never holds the chunk."""
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, "eop"), source=plan.ip("sink"))
    ehlo_mail_rcpt(c, "bob@contoso.example")
    size, piece = 160 * 2**20, b"x" * 2**20
    tracemalloc.start()
    try:
        c.sock.sendall(f"BDAT {size} LAST\r\n".encode())
        for _ in range(size // len(piece)):
            c.sock.sendall(piece)
        reply = c.reply()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply == SIZE_EXCEEDED
    assert peak < 32 * 2**20, f"peak {peak} bytes while a 160 MiB chunk went by"
    assert not events(labdir, "eop", "accepted")
    # The session goes on: a message within the limit is accepted.
    assert c.cmd("MAIL FROM:<erin@northwind.example>") == "250 2.1.0 Sender OK"
    assert c.cmd("RCPT TO:<bob@contoso.example>") == "250 2.1.5 Recipient OK"
    assert c.bdat(message("bdat-ok"), last=True).startswith("250 2.6.0")
    c.close()


@pytest.fixture
def small(lab):
    """A sink-like server on the lab's loop with a 64 KiB size limit (the real factories'
    limits are 32 MiB and 150 MB): over-limit paths without sending hundreds of megabytes."""
    engine, plan, labdir, canary = lab
    handler = SinkHandler(plan, labdir / "run")

    async def start():
        return await serve(
            lambda: LabSMTP(handler, banner_host="small.test", data_size_limit=65536), plan.ip("sink"), 0
        )

    server = asyncio.run_coroutine_threadsafe(start(), engine.loop).result(30)
    engine.servers.append(server)  # closed with the lab
    return plan.ip("sink"), server.sockets[0].getsockname()[1], labdir


def test_bdat_chunks_over_the_limit_fail_the_transaction(small):
    ip, port, labdir = small
    c = Raw(ip, port)
    ehlo_mail_rcpt(c, "dave@northwind.example")
    # Pipelined, as RFC 3030 allows: the chunk after the failed one finds no transaction.
    c.sock.sendall(
        b"BDAT 40000\r\n" + b"a" * 40000 + b"BDAT 40000\r\n" + b"b" * 40000 + b"BDAT 10 LAST\r\n" + b"c" * 10
    )
    assert [c.reply() for _ in range(3)] == [
        "250 2.0.0 40000 octets received",
        SIZE_EXCEEDED,
        "503 5.5.1 Error: need RCPT command",
    ]
    ehlo_mail_rcpt(c, "dave@northwind.example")
    assert c.bdat(message("small-ok"), last=True) == "250 2.0.0 Ok: queued"
    c.close()
    assert events(labdir, "sink", "delivered")[-1]["msgid"] == "small-ok"


def test_bdat_exactly_at_the_limit_is_accepted(small):
    ip, port, labdir = small
    c = Raw(ip, port)
    ehlo_mail_rcpt(c, "dave@northwind.example")
    head = message("at-limit", b"")
    data = head + b"y" * (65536 - len(head))
    assert c.bdat(data[:30000]) == "250 2.0.0 30000 octets received"
    assert c.bdat(data[30000:], last=True) == "250 2.0.0 Ok: queued"
    assert c.cmd("NOOP") == "250 OK"
    c.close()
    assert (labdir / "run" / events(labdir, "sink", "delivered")[-1]["file"]).stat().st_size == 65536


def test_data_over_the_limit_gets_552_with_enhanced_code(small):
    ip, port, labdir = small
    c = Raw(ip, port)
    ehlo_mail_rcpt(c, "dave@northwind.example")
    assert send_data(c, message("big", b"z" * 998 + b"\r\n") * 70) == SIZE_EXCEEDED
    assert c.cmd("NOOP") == "250 OK"
    c.close()
    assert not events(labdir, "sink", "delivered")


# --- STARTTLS ----------------------------------------------------------------------------------


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


@pytest.mark.parametrize("service", ["eop", "sink", "gateway"])
def test_second_starttls_is_refused_and_the_session_goes_on(lab, service):
    engine, plan, labdir, canary = lab
    ip, port = server_addr(plan, service)
    with smtplib.SMTP(ip, port, timeout=60, source_address=(plan.ip("sink"), 0)) as s:
        s.ehlo("client.test")
        assert s.starttls(context=_no_verify())[0] == 220
        s.ehlo("client.test")
        assert s.docmd("STARTTLS") == (503, b"5.5.1 Already in TLS")
        assert s.noop()[0] == 250
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_second_starttls_with_openssl_s_client(lab):
    engine, plan, labdir, canary = lab
    ip, port = server_addr(plan, "sink")
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"{ip}:{port}", "-starttls", "smtp", "-quiet", "-crlf", "-ign_eof"],
        input="EHLO client.test\nSTARTTLS\nNOOP\nQUIT\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "503 5.5.1 Already in TLS" in p.stdout, p.stdout + p.stderr
    assert "221 2.0.0 Service closing transmission channel" in p.stdout


# --- connection cap, idle timeout, descriptors -------------------------------------------------


def test_connection_cap_answers_421_logs_once_and_recovers(lab, monkeypatch, caplog):
    """More idle clients than the cap: the surplus is told 421 and disconnected, the condition is
    logged once, and a normal client is served again once the flood is gone."""
    monkeypatch.setattr(smtpd, "IDLE_TIMEOUT_S", 3600.0)  # the flood must outlast its own opening
    caplog.set_level(logging.WARNING, logger="labgen.server")
    engine, plan, labdir, canary = lab
    ip, port = server_addr(plan, "eop")
    cap, extra = smtpd.connection_cap(), 60
    clients = []
    try:
        for _ in range(cap + extra):  # one by one, each greeted or refused before the next
            clients.append(Raw(ip, port, source=plan.ip("sink")))
        banners = [c.banner for c in clients]
        assert sum(b.startswith("220 ") for b in banners) == cap
        assert banners[cap:] == ["421 4.3.2 Too many connections, try again later"] * extra
        assert all(c.reply() == "" for c in clients[cap:])  # and disconnected
    finally:
        for c in clients:
            c.close()
    lines = [r for r in caplog.records if "connections open" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    # Served again once the server has seen the flood go (a bounded wait, no timing assumed).
    deadline = time.monotonic() + 60
    while True:
        c = Raw(ip, port, source=plan.ip("sink"))
        c.close()
        if c.banner.startswith("220 ") or time.monotonic() > deadline:
            break
    assert c.banner.startswith("220 ")
    files = plan.certs["gw-selfsigned"]
    p = subprocess.run(
        [
            "swaks",
            "--server",
            ip,
            "--port",
            str(port),
            "--local-interface",
            plan.ip("gateway"),
            "--from",
            "alice@contoso.example",
            "--to",
            "bob@contoso.example",
            "--ehlo",
            "gw.contoso.example",
            "--tls",
            "--tls-cert",
            str(labdir / files.chain),
            "--tls-key",
            str(labdir / files.key),
            "--header",
            "X-Labgen-Id: after-flood",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and "250 2.6.0" in p.stdout, p.stdout + p.stderr
    assert len([r for r in caplog.records if "connections open" in r.getMessage()]) == 1


def test_connection_cap_is_well_below_the_descriptor_limit():
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 8 <= smtpd.connection_cap() <= min(256, max(8, soft // 8))


@pytest.mark.parametrize("service", ["eop", "sink", "gateway"])
def test_idle_client_is_told_421_and_dropped(lab, monkeypatch, service):
    monkeypatch.setattr(smtpd, "IDLE_TIMEOUT_S", 0.2)
    engine, plan, labdir, canary = lab
    c = Raw(*server_addr(plan, service), source=plan.ip("sink"))
    assert c.banner.startswith("220 ")
    assert c.reply().startswith("421 4.4.2 ") and c.reply() == ""  # (the socket timeout is an upper bound)
    c.close()


EMFILE_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from labgen.engines.local import LocalEngine
    from labgen.run import prepare_lab
    from labgen.model.scenario import load_scenario

    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, Path(sys.argv[1]))
    engine.start(plan, labdir, time.monotonic() + 300)
    key = (plan.ip("eop"), plan.smtp_port)
    print("LISTENING", *key, flush=True)
    hog = []
    try:
        while True:  # every descriptor the process may have
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    print("FULL", flush=True)
    sys.stdin.readline()  # the parent has connected: accept() now fails, and is retried
    handler = engine.loop.get_exception_handler()
    deadline = time.monotonic() + 120  # an upper bound; asyncio retries once a second
    while handler.failing.get(key, 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    failures = handler.failing.get(key, 0)
    for fd in hog:
        os.close(fd)
    print("FAILED", failures, flush=True)
    sys.stdin.readline()  # the parent was served
    engine.finish(plan, labdir)
""")


def test_accept_failing_for_want_of_descriptors_is_logged_once(tmp_path):
    """A service process out of descriptors: accept() fails and asyncio retries every second.
    The log says so once for the whole episode, and the waiting client is served afterwards."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    child = subprocess.Popen(
        [sys.executable, "-c", EMFILE_CHILD, str(tmp_path)],
        cwd=REPO,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=low_limit,
    )
    assert child.stdin is not None and child.stdout is not None  # both are pipes
    try:
        _, ip, port = child.stdout.readline().split()
        assert child.stdout.readline().strip() == "FULL"
        s = socket.create_connection((ip, int(port)), timeout=120)  # the kernel completes it
        child.stdin.write("connected\n")
        child.stdin.flush()
        word, failures = child.stdout.readline().split()
        assert word == "FAILED" and int(failures) >= 3
        assert s.makefile("rb").readline().startswith(b"220 ")  # served once descriptors are free
        s.close()
        child.stdin.write("done\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([line for line in lines if "cannot accept connections" in line]) == 1, err
    assert "Too many open files" in err and "Traceback" not in err, err
    assert "socket.accept() out of system resource" not in err, err  # asyncio's per-retry report


# Mailbox names straight from write_mailbox's encoding: one segment, reversible, distinct.
MAILBOX_NAMES = [
    ("bob@contoso.example", "bob@contoso.example"),
    ("Bob@Contoso.EXAMPLE", "%42ob@contoso.example"),
    ("..@northwind.example", "%2E.@northwind.example"),
    (".@northwind.example", "%2E@northwind.example"),
    ("a/b@northwind.example", "a%2Fb@northwind.example"),
    ("a%2Fb@northwind.example", "a%252%46b@northwind.example"),
    ("\x00@northwind.example", "%00@northwind.example"),
    ("\udc80x@northwind.example", "%80x@northwind.example"),  # an undecodable byte, as aiosmtpd keeps it
    ("no-at-sign", "no-at-sign"),
    ("..", "%2E."),
]


@pytest.mark.parametrize("address, name", MAILBOX_NAMES)
def test_mailbox_names(address, name):
    from labgen.lab.ledger import mailbox_dir

    assert mailbox_dir(address) == name
    local, at, domain = address.rpartition("@")
    assert urllib.parse.unquote(name, errors="surrogateescape") == (local + at + domain.lower() if at else address)


def test_long_mailbox_names_are_cut_and_stay_distinct():
    from labgen.lab.ledger import mailbox_dir

    a, b = mailbox_dir("x" * 300 + "a@northwind.example"), mailbox_dir("x" * 300 + "b@northwind.example")
    assert a != b and len(a) <= 200 and len(b) <= 200 and "/" not in a + b


def test_empty_address_has_no_mailbox(tmp_path):
    from labgen.lab.ledger import write_mailbox

    with pytest.raises(ValueError):
        write_mailbox(tmp_path, "", None, b"x")
    assert tree(tmp_path) == set()
