"""A real third-party client (swaks, Debian's package) against the fake EOP and the lab DNS
queried by a real resolver (dnspython): STARTTLS with a client certificate, attribution by the
rules, and what happens to a certificate the scenario does not declare (it reaches the rules)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time

import dns.resolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labgen.engines.local import LocalEngine
from labgen.model.scenario import load_scenario
from labgen.run import prepare_lab

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")


@pytest.fixture
def lab(tmp_path):
    """The broken lab's services running in this process (local engine), no traffic."""
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path)
    engine.start(plan, labdir, time.monotonic() + 30)
    yield plan, labdir
    engine.finish(plan, labdir)


def swaks(plan, labdir, *, to, source_ip, cert=None, key=None, header_id="swaks-1"):
    cmd = [
        "swaks",
        "--server",
        plan.ip("eop"),
        "--port",
        str(plan.smtp_port),
        "--local-interface",
        source_ip,
        "--from",
        "alice@contoso.example",
        "--to",
        to,
        "--ehlo",
        "gw.contoso.example",
        "--tls",
        "--header",
        f"X-Labgen-Id: {header_id}",
        "--timeout",
        "10",
    ]
    if cert:
        cmd += ["--tls-cert", str(cert), "--tls-key", str(key)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def eop_events(labdir, event):
    lines = (labdir / "run" / "eop.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def test_swaks_with_the_gateway_certificate_is_attributed_by_certificate(lab):
    plan, labdir = lab
    files = plan.certs["gw-selfsigned"]
    p = swaks(
        plan,
        labdir,
        to="bob@contoso.example",
        source_ip=plan.ip("gateway"),
        cert=labdir / files.chain,
        key=labdir / files.key,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "220 dm6nam12ft011.mail.protection.outlook.test Microsoft ESMTP MAIL Service ready at" in p.stdout
    for kw in (
        "SIZE 157286400",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
    ):
        assert kw in p.stdout
    assert "250 2.6.0" in p.stdout and "Queued mail for delivery" in p.stdout
    rcpt = eop_events(labdir, "rcpt")[-1]
    assert rcpt["attribution"]["by"] == "certificate" and rcpt["attribution"]["tenant"] == "contoso"
    assert rcpt["tls"] is True and rcpt["certificate"]["subject"] == "gw.contoso.example"
    assert eop_events(labdir, "delivered")[-1]["mailbox"] == "bob@contoso.example"


def test_swaks_to_another_tenant_with_that_certificate_is_discarded(lab):
    plan, labdir = lab
    files = plan.certs["gw-selfsigned"]
    p = swaks(
        plan,
        labdir,
        to="carol@fabrikam.example",
        source_ip=plan.ip("gateway"),
        cert=labdir / files.chain,
        key=labdir / files.key,
        header_id="swaks-2",
    )
    assert p.returncode == 0 and "250 2.6.0" in p.stdout  # the client sees success...
    discarded = eop_events(labdir, "discarded")
    assert discarded and discarded[-1]["rcpt"] == "carol@fabrikam.example"  # ...and it is gone
    assert not (labdir / "run" / "mailboxes" / "carol@fabrikam.example").exists()


def test_swaks_without_client_certificate_is_attributed_by_recipient(lab):
    plan, labdir = lab
    p = swaks(plan, labdir, to="carol@fabrikam.example", source_ip=plan.ip("sink"), header_id="swaks-3")
    assert p.returncode == 0, p.stdout
    rcpt = eop_events(labdir, "rcpt")[-1]
    assert rcpt["attribution"] == {
        "tenant": "fabrikam",
        "by": "recipient",
        "connector": None,
        "detail": rcpt["attribution"]["detail"],
    }
    assert rcpt["certificate"] is None


def _undeclared_cert(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.contoso.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=9))
        .sign(key, hashes.SHA256())
    )
    c, k = tmp_path / "stranger.crt", tmp_path / "stranger.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return c, k


def test_undeclared_certificate_passes_the_handshake_and_the_rules_judge_it(lab, tmp_path):
    """Real EOP takes any client certificate at the TLS layer and judges it afterwards: a
    certificate the scenario does not declare reaches the rules (no tls_failed), which see that
    it names the connector's certificate but is self-signed."""
    plan, labdir = lab
    cert, key = _undeclared_cert(tmp_path)
    p = swaks(plan, labdir, to="bob@contoso.example", source_ip=plan.ip("gateway"), cert=cert, key=key)
    assert "TLS started" in p.stdout, p.stdout + p.stderr
    assert not eop_events(labdir, "tls_failed")
    rcpt = eop_events(labdir, "rcpt")[-1]
    assert rcpt["tls"] is True and rcpt["attribution"]["by"] == "certificate"
    assert rcpt["certificate"]["names"] == ["gw.contoso.example"]
    assert (rcpt["certificate"]["trusted"], rcpt["certificate"]["problem"]) == (False, "self-signed")


def test_lab_dns_answers_lab_names_only(lab):
    plan, labdir = lab
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port = [plan.ip("dns")], plan.dns_port
    mx = r.resolve("fabrikam.example", "MX")
    assert [str(m.exchange).rstrip(".") for m in mx] == [
        "fabrikam-example.mail.protection.outlook.test"
    ]  # Microsoft's per-domain name
    assert [a.address for a in r.resolve("contoso.mail.protection.outlook.test", "A")] == [plan.ip("eop")]
    assert [str(m.exchange).rstrip(".") for m in r.resolve("contoso.example", "MX")] == ["gw.contoso.example"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("example.com", "A")
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nothing.fabrikam.example", "A")
    answer = r.resolve("fabrikam.example", "MX")
    assert not answer.response.flags & dns.flags.RA  # never recursive
    assert answer.response.flags & dns.flags.AA  # authoritative
