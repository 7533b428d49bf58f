"""EOP takes any client certificate at the TLS layer and judges the chain as presented (issue #8,
item 4): real clients (openssl s_client, swaks) with certificates the scenario never declared,
the trust judgement table-tested, and a scenario whose certificate is the user's own files."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labgen.engines.local import LocalEngine
from labgen.errors import InputError
from labgen.lab.pki import TrustStore, load_user_cert
from labgen.model.scenario import Certificate, load_scenario
from labgen.run import prepare_lab

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")


# ---------------------------------------------------------------- certificates


def _cert(cn: str, key, issuer: tuple[x509.Certificate, object] | None = None, *, ca=False, start=NOW - DAY, days=30):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + days * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())  # type: ignore[arg-type]


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _der(*certs: x509.Certificate) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


@pytest.fixture(scope="module")
def pki():
    """A stand-in public root and intermediate, and a stranger's own root and intermediate."""
    rk, ik, sk, sik = _key(), _key(), _key(), _key()
    root = _cert("Labgen Public Root CA", rk, ca=True, start=NOW - 100 * DAY, days=3650)
    inter = _cert("Labgen Public TLS CA 2026", ik, (root, rk), ca=True, start=NOW - 100 * DAY, days=3650)
    old_inter = _cert("Labgen Old TLS CA", ik, (root, rk), ca=True, start=NOW - 100 * DAY, days=10)
    sroot = _cert("Stranger Root", sk, ca=True, start=NOW - 100 * DAY, days=3650)
    sinter = _cert("Stranger Issuing CA", sik, (sroot, sk), ca=True, start=NOW - 100 * DAY, days=3650)
    pem = serialization.Encoding.PEM
    trust = TrustStore([root.public_bytes(pem)], [inter.public_bytes(pem)])
    return {"root": root, "inter": inter, "old_inter": old_inter, "ik": ik, "sroot": sroot, "sinter": sinter}, {
        "trust": trust,
        "sik": sik,
        "sk": sk,
    }


def _chain(case: str, p: dict, k: dict) -> list[bytes]:
    leaf_key = _key()
    by_lab = (p["inter"], p["ik"])
    if case == "self-signed":
        return _der(_cert("gw.contoso.example", leaf_key))
    if case == "lab-leaf-alone":
        return _der(_cert("gw.contoso.example", leaf_key, by_lab))
    if case == "lab-leaf-with-intermediate":
        return _der(_cert("gw.contoso.example", leaf_key, by_lab), p["inter"])
    if case == "lab-leaf-intermediate-and-root":
        return _der(_cert("gw.contoso.example", leaf_key, by_lab), p["inter"], p["root"])
    if case == "expired":
        return _der(_cert("gw.contoso.example", leaf_key, by_lab, start=NOW - 40 * DAY, days=30), p["inter"])
    if case == "not-yet-valid":
        return _der(_cert("gw.contoso.example", leaf_key, by_lab, start=NOW + 2 * DAY), p["inter"])
    if case == "expired-intermediate":
        return _der(_cert("gw.contoso.example", leaf_key, (p["old_inter"], p["ik"])), p["old_inter"])
    if case == "stranger-full-chain":
        return _der(_cert("gw.contoso.example", leaf_key, (p["sinter"], k["sik"])), p["sinter"], p["sroot"])
    if case == "stranger-leaf-and-intermediate":
        return _der(_cert("gw.contoso.example", leaf_key, (p["sinter"], k["sik"])), p["sinter"])
    if case == "stranger-leaf-alone":
        return _der(_cert("gw.contoso.example", leaf_key, (p["sinter"], k["sik"])))
    if case == "intermediate-presented-first":
        return _der(p["inter"], _cert("gw.contoso.example", leaf_key, by_lab))
    if case == "forged-lab-issuer-name":
        forged = _cert("Labgen Public TLS CA 2026", _key(), (p["root"], _key()), ca=True, start=NOW - 100 * DAY)
        return _der(_cert("gw.contoso.example", leaf_key, by_lab), forged)
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, trusted, problem",
    [
        ("self-signed", False, "self-signed"),
        ("lab-leaf-alone", False, "incomplete chain: the issuer 'Labgen Public TLS CA 2026' was not presented"),
        ("lab-leaf-with-intermediate", True, None),
        ("lab-leaf-intermediate-and-root", True, None),
        ("expired", False, "expired on 2026-05-22 12:00 UTC"),
        ("not-yet-valid", False, "not valid before 2026-06-03 12:00 UTC"),
        ("expired-intermediate", False, "expired on 2026-03-03 12:00 UTC (the chain's 'Labgen Old TLS CA')"),
        (
            "stranger-full-chain",
            False,
            "not issued by a trusted CA: the chain ends at 'Stranger Root', not a trusted root",
        ),
        (
            "stranger-leaf-and-intermediate",
            False,
            "not issued by a trusted CA: the issuer 'Stranger Root' (the chain's 'Stranger Issuing CA') "
            "is not a trusted CA",
        ),
        (
            "stranger-leaf-alone",
            False,
            "not issued by a trusted CA: the issuer 'Stranger Issuing CA' is not a trusted CA",
        ),
        # The leaf is what the client presented first; an intermediate there is the "leaf".
        ("intermediate-presented-first", True, None),
        # An intermediate with the lab CA's name but another key: its signature does not verify.
        ("forged-lab-issuer-name", False, "bad signature (the chain's 'Labgen Public TLS CA 2026')"),
    ],
)
def test_judge_the_chain_as_presented(pki, case, trusted, problem):
    p, k = pki
    assert k["trust"].judge(_chain(case, p, k), NOW) == (trusted, problem)


def test_judge_escapes_names_from_the_certificate(pki):
    p, k = pki
    leaf = _cert("evil\x1b[31m\nname", _key(), (p["sinter"], k["sik"]))
    trusted, problem = k["trust"].judge(_der(leaf), NOW)
    assert not trusted and problem is not None
    assert "\x1b" not in problem and "\n" not in problem and "\\x1b" not in problem  # issuer is the stranger CA
    evil_ca = _cert("CA\x1b]0;x\x07", k["sk"], ca=True)
    trusted, problem = k["trust"].judge(_der(_cert("a.example", _key(), (evil_ca, k["sk"])), evil_ca), NOW)
    assert problem == "not issued by a trusted CA: the chain ends at 'CA\\x1b]0;x\\x07', not a trusted root"


def test_judge_refuses_garbage(pki):
    _, k = pki
    assert k["trust"].judge([b"\x30\x03\x02\x01\x00"], NOW) == (False, "a presented certificate cannot be parsed")


# ---------------------------------------------------------------- real clients against a running EOP


def _openssl_selfsigned(tmp_path: Path, cn: str) -> tuple[Path, Path]:
    """A certificate no scenario declares, made the way a user makes one."""
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", f"/CN={cn}"]
        + ["-addext", f"subjectAltName=DNS:{cn}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _openssl_lab_leaf(tmp_path: Path, plan, labdir: Path, cn: str) -> tuple[Path, Path]:
    """A leaf issued by the lab's public intermediate (as a public CA would issue it)."""
    key, csr, cert, ext = (tmp_path / f"{cn}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName=DNS:{cn}\nextendedKeyUsage=clientAuth,serverAuth\n")
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        + ["-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(labdir / plan.ca_intermediate)]
        + ["-CAkey", str(labdir / "certs" / "ca-intermediate.key"), "-CAcreateserial", "-days", "30"]
        + ["-extfile", str(ext), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def lab(tmp_path):
    """The broken lab's services in this process (local engine), no traffic."""
    engine = LocalEngine()
    plan, labdir = prepare_lab(load_scenario("broken"), engine, tmp_path / "work")
    engine.start(plan, labdir, time.monotonic() + 30)
    yield plan, labdir
    engine.finish(plan, labdir)


def eop_events(labdir: Path, event: str) -> list[dict]:
    lines = (labdir / "run" / "eop.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def s_client(plan, cert: Path, key: Path, chain: Path | None = None, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{plan.ip('eop')}:{plan.smtp_port}"]
    cmd += ["-cert", str(cert), "-key", str(key), "-crlf", "-quiet", *extra]
    if chain is not None:
        cmd += ["-cert_chain", str(chain)]
    commands = "EHLO client.example\nMAIL FROM:<alice@contoso.example>\nRCPT TO:<bob@contoso.example>\nQUIT\n"
    return subprocess.run(cmd, input=commands, capture_output=True, text=True, timeout=30)


@needs_openssl
def test_s_client_with_an_undeclared_self_signed_certificate_is_judged_by_the_rules(lab, tmp_path):
    plan, labdir = lab
    cert, key = _openssl_selfsigned(tmp_path, "stranger.contoso.example")
    p = s_client(plan, cert, key)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "250 2.1.0 Sender OK" in p.stdout  # the handshake passed and SMTP went on over TLS
    assert not eop_events(labdir, "tls_failed")
    (session,) = eop_events(labdir, "session")
    assert session["tls"] in ("TLSv1.2", "TLSv1.3")
    c = session["certificate"]
    assert c["names"] == ["stranger.contoso.example"] and c["subject"] == "stranger.contoso.example"
    assert (c["trusted"], c["problem"], c["chain_presented"], c["self_signed"]) == (False, "self-signed", 1, True)
    (rcpt,) = eop_events(labdir, "rcpt")
    assert rcpt["tls"] is True and rcpt["certificate"] == c


@needs_openssl
@pytest.mark.parametrize("tls", ["-tls1_2", "-tls1_3"])
def test_s_client_lab_leaf_without_and_with_its_intermediate(lab, tmp_path, tls):
    plan, labdir = lab
    cert, key = _openssl_lab_leaf(tmp_path, plan, labdir, "mail.contoso.example")
    p = s_client(plan, cert, key, None, tls)
    assert p.returncode == 0 and "250 2.1.0 Sender OK" in p.stdout, p.stdout + p.stderr
    p = s_client(plan, cert, key, labdir / plan.ca_intermediate, tls)
    assert p.returncode == 0 and "250 2.1.0 Sender OK" in p.stdout, p.stdout + p.stderr
    alone, full = (s["certificate"] for s in eop_events(labdir, "session"))
    assert (alone["chain_presented"], alone["trusted"]) == (1, False)
    assert alone["problem"] == "incomplete chain: the issuer 'Labgen Public TLS CA 2026' was not presented"
    assert (full["chain_presented"], full["trusted"], full["problem"]) == (2, True, None)
    assert full["trust_detail"] == "chains to Labgen Public Root CA"
    versions = {s["tls"] for s in eop_events(labdir, "session")}
    assert versions == {"TLSv1.2" if tls == "-tls1_2" else "TLSv1.3"}


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")
@needs_openssl
def test_swaks_with_an_undeclared_certificate_gets_smtp_not_a_tls_failure(lab, tmp_path):
    plan, labdir = lab
    cert, key = _openssl_selfsigned(tmp_path, "gw.contoso.example")
    cmd = ["swaks", "--server", plan.ip("eop"), "--port", str(plan.smtp_port)]
    cmd += ["--local-interface", plan.ip("gateway"), "--from", "alice@contoso.example", "--to", "bob@contoso.example"]
    cmd += ["--ehlo", "gw.contoso.example", "--tls", "--tls-cert", str(cert), "--tls-key", str(key), "--timeout", "10"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert "TLS started" in p.stdout, p.stdout + p.stderr
    assert not eop_events(labdir, "tls_failed")
    (rcpt,) = eop_events(labdir, "rcpt")
    assert rcpt["tls"] is True
    assert rcpt["certificate"]["names"] == ["gw.contoso.example"]
    assert (rcpt["certificate"]["trusted"], rcpt["certificate"]["problem"]) == (False, "self-signed")
    # The rules judged it: it names the declared connector, which the undeclared certificate matches.
    assert rcpt["attribution"]["by"] == "certificate" and rcpt["attribution"]["tenant"] == "contoso"


@needs_openssl
def test_a_failed_handshake_is_recorded_and_eop_keeps_serving(lab, tmp_path):
    """What still fails the handshake (here: TLS 1.1, below EOP's floor) ends that session only,
    with a tls_failed event; the next client is served."""
    plan, labdir = lab
    cert, key = _openssl_selfsigned(tmp_path, "old.contoso.example")
    old = s_client(plan, cert, key, None, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "250 2.1.0 Sender OK" not in old.stdout
    (failed,) = eop_events(labdir, "tls_failed")
    assert failed["reason"]  # OpenSSL's reason, e.g. "unsupported protocol"
    assert not eop_events(labdir, "rcpt")
    again = s_client(plan, cert, key)
    assert again.returncode == 0 and "250 2.1.0 Sender OK" in again.stdout, again.stdout + again.stderr


# ---------------------------------------------------------------- the user's own certificate files


def _pem_pair(tmp_path: Path, cn: str = "gw.contoso.example") -> tuple[bytes, bytes, object]:
    key = _key()
    cert = _cert(cn, key, start=dt.datetime.now(dt.UTC) - DAY)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, key


def test_user_files_are_read_and_checked(tmp_path):
    cert_pem, key_pem, _ = _pem_pair(tmp_path)
    (tmp_path / "my.crt").write_bytes(cert_pem)
    (tmp_path / "my.key").write_bytes(key_pem)
    spec = Certificate(cert_file="my.crt", key_file="my.key")
    got = load_user_cert(spec, "mine", tmp_path, "s.yaml")
    assert [c.public_bytes(serialization.Encoding.PEM) for c in got.chain] == [cert_pem]


@pytest.mark.parametrize(
    "case, field, why",
    [
        ("missing", "cert_file", "cannot read it (No such file or directory)"),
        ("not-pem", "cert_file", "not PEM: no '-----BEGIN CERTIFICATE-----' block"),
        ("bad-pem", "cert_file", "not a PEM certificate that can be parsed"),
        ("too-large", "cert_file", "larger than 262144 bytes, too large for a PEM certificate"),
        ("directory", "cert_file", "not a regular file; the certificate is a PEM file"),
        ("key-mismatch", "key_file", "does not match the certificate in 'my.crt' (its first one)"),
        ("key-not-pem", "key_file", "not a PEM private key that can be parsed"),
        ("key-encrypted", "key_file", "encrypted; give the key unencrypted (labgen asks for no passphrase)"),
    ],
)
def test_user_files_refused_in_one_line(tmp_path, case, field, why):
    cert_pem, key_pem, key = _pem_pair(tmp_path)
    files = {"my.crt": cert_pem, "my.key": key_pem}
    if case == "not-pem":
        files["my.crt"] = b"hello\n"
    elif case == "bad-pem":
        files["my.crt"] = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    elif case == "too-large":
        files["my.crt"] = cert_pem + b"#" * (256 * 1024)
    elif case == "key-mismatch":
        files["my.key"] = _pem_pair(tmp_path)[1]
    elif case == "key-not-pem":
        files["my.key"] = b"not a key"
    elif case == "key-encrypted":
        files["my.key"] = key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    for name, data in files.items():
        if not (case == "missing" and name == "my.crt"):
            (tmp_path / name).write_bytes(data)
    if case == "directory":
        (tmp_path / "my.crt").unlink()
        (tmp_path / "my.crt").mkdir()
    with pytest.raises(InputError) as e:
        load_user_cert(Certificate(cert_file="my.crt", key_file="my.key"), "mine", tmp_path, "s.yaml")
    name = "my.crt" if field == "cert_file" else "my.key"
    assert e.value.message == f"s.yaml: certificates.mine.{field}: '{name}': {why}"


def test_a_hostile_file_name_is_refused_escaped_or_quoted_shortened(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as v:
        Certificate(cert_file="a\x1b[2Jb", key_file="k")
    assert "\x1b" not in str(v.value) and "'a\\x1b[2Jb'" in str(v.value)
    long = "x" * 900 + ".crt"
    with pytest.raises(InputError) as e:
        load_user_cert(Certificate(cert_file=long, key_file="k"), "mine", tmp_path, "s.yaml")
    assert len(e.value.message) < 200 and "…'" in e.value.message


@pytest.mark.parametrize(
    "spec, msg",
    [
        ({"cert_file": "a.crt"}, "cert_file and key_file go together"),
        ({}, "cn: required"),
        ({"cert_file": "a.crt", "key_file": "a.key", "cn": "x.example"}, "cn: only for a certificate labgen makes"),
    ],
)
def test_certificate_is_made_or_given(spec, msg):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        Certificate.model_validate(spec)
    assert msg in str(e.value)


def test_a_saved_plan_with_user_certificate_files_loads_again(tmp_path):
    """plan.json holds every field of a user-supplied certificate (defaults too); the services
    reload it in their containers, where only the scenario file's own keys are checked."""
    from labgen.model.plan import Plan, make_plan

    crt, key = tmp_path / "c.crt", tmp_path / "c.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj", "/CN=mail.contoso.example"]
        + ["-keyout", str(key), "-out", str(crt)],
        check=True,
        capture_output=True,
    )
    data = yaml.safe_load((REPO / "examples" / "recommended-topology.yaml").read_text())
    data["certificates"]["gw-public"] = {"cert_file": str(crt), "key_file": str(key)}
    src = tmp_path / "mine.yaml"
    src.write_text(yaml.safe_dump(data))
    make_plan(load_scenario(str(src)), "docker").save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json").scenario.certificates["gw-public"].cert_file == str(crt)
