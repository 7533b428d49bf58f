"""The lab's PKI: a stand-in "public" CA (root + intermediate), every scenario certificate, and
the services' own server certificates; plus the certificate facts the fake EOP records.

Keys are written 0600 inside a 0700 directory. The PKI is kept between runs of the same lab as
long as the scenario's certificate definitions are unchanged (key generation is most of the
start-up time otherwise).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import InfraError, InputError
from ..model.plan import EOP_POOL_HOST, EXO_CLIENT_CERT, CertFiles, Plan, exo_client_access, sink_host
from ..model.scenario import PROTECTION_SUFFIX, Certificate

ROOT_CN = "Labgen Public Root CA"
INTERMEDIATE_CN = "Labgen Public TLS CA 2026"


def _key(kind: str):
    if kind == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=3072 if kind == "rsa3072" else 2048)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _ski(key) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _ca(cn: str, key, issuer_cert=None, issuer_key=None, now=None) -> x509.Certificate:
    now = now or dt.datetime.now(dt.UTC)
    subject = _name(cn, "Labgen Lab Trust Services")
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer_cert is None else 0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
    )
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _leaf(spec: Certificate, key, issuer_cert, issuer_key, now) -> x509.Certificate:
    subject = _name(spec.cn)
    sans = list(dict.fromkeys(spec.sans or [spec.cn]))
    self_signed = issuer_cert is None
    start = now + dt.timedelta(days=spec.not_before_days)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed else issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=spec.valid_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Both usages: a gateway's certificate serves it as SMTP server and as SMTP client.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(_ski(key), critical=False)
    )
    if not self_signed:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return b.sign(key if self_signed else issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def service_cert_specs(plan: Plan) -> dict[str, Certificate]:
    s = plan.scenario
    specs = {
        "eop-server": Certificate(
            cn=f"mail.{PROTECTION_SUFFIX}",
            sans=[f"mail.{PROTECTION_SUFFIX}", f"*.{PROTECTION_SUFFIX}", EOP_POOL_HOST],
            key="ec256",
        ),
        "sink-server": Certificate(
            cn=sink_host(s), sans=[f"mx.{d}" for d in s.internet.domains] or ["mx.internet.example"], key="ec256"
        ),
        # Exchange Online's client certificate (towards the gateway), from the lab's public CA.
        EXO_CLIENT_CERT: Certificate(cn=PROTECTION_SUFFIX, sans=[PROTECTION_SUFFIX], key="ec256"),
    }
    if "gateway-server" in plan.certs:
        specs["gateway-server"] = Certificate(cn=s.gateway.hostname, key="ec256")
    return specs


def _spec_digest(specs: dict[str, Certificate]) -> str:
    # Validity is relative to the day the PKI is made: a new day makes it anew, so "expires in
    # 1 day" or "not yet valid" mean the same on every run.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    blob = today + json.dumps({k: v.model_dump() for k, v in sorted(specs.items())}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _matches(key_path: Path, cert_path: Path, chain_path: Path | None = None) -> bool:
    """The key is the certificate's, and the chain file starts with that certificate."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        chain = x509.load_pem_x509_certificates(chain_path.read_bytes()) if chain_path else [cert]
    except (OSError, ValueError, TypeError):
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki) and chain[0] == cert


def _reusable(plan: Plan, labdir: Path, stamp: Path, digest: str) -> bool:
    """Same definitions, same day, and every key still matches its certificate: a replaced key
    would otherwise fail each later run with an opaque KEY_VALUES_MISMATCH."""
    certs = labdir / "certs"
    return (
        stamp.is_file()
        and stamp.read_text() == digest
        and _matches(certs / "ca-root.key", labdir / plan.ca_root)
        and _matches(certs / "ca-intermediate.key", labdir / plan.ca_intermediate)
        and all(_matches(labdir / f.key, labdir / f.cert, labdir / f.chain) for f in plan.certs.values())
    )


def make_pki(plan: Plan, labdir: Path) -> None:
    """Write the CA, every scenario certificate and the service certificates under labdir (which
    make_lab_dir accepted); certs/ is 0700 and never a symlink."""
    labdir = Path(labdir)
    certs = labdir / "certs"
    if certs.is_symlink():
        raise InputError(
            f"{certs} is a symbolic link; labgen does not follow links in lab directories: "
            "remove it or choose another directory"
        )
    try:
        _make_pki(plan, labdir, certs)
        _write_exo_client_access(plan, labdir)
    except OSError as e:
        raise InfraError(
            f"cannot write the lab's certificates in {certs}: {e.strerror}; choose a writable directory with --workdir"
        ) from None


def _make_pki(plan: Plan, labdir: Path, certs: Path) -> None:
    certs.mkdir(mode=0o700, exist_ok=True)
    os.chmod(certs, 0o700)
    specs = {**plan.scenario.certificates, **service_cert_specs(plan)}
    digest = _spec_digest(specs)
    stamp = certs / "spec.sha256"
    if _reusable(plan, labdir, stamp, digest):
        return
    stamp.unlink(missing_ok=True)  # a run interrupted below regenerates everything next time
    now = dt.datetime.now(dt.UTC)
    root_key, int_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca(ROOT_CN, root_key, now=now)
    inter = _ca(INTERMEDIATE_CN, int_key, root, root_key, now=now)
    (labdir / plan.ca_root).write_bytes(_pem(root))
    (labdir / plan.ca_intermediate).write_bytes(_pem(inter))
    _write_key(certs / "ca-root.key", root_key)
    _write_key(certs / "ca-intermediate.key", int_key)
    accept = [_pem(root), _pem(inter)]
    for name, spec in specs.items():
        files = plan.certs[name]
        key = _key(spec.key)
        if spec.issuer == "self":
            cert = _leaf(spec, key, None, None, now)
            chain = _pem(cert)
            accept.append(_pem(cert))
        else:
            cert = _leaf(spec, key, inter, int_key, now)
            chain = _pem(cert) + _pem(inter)
        (labdir / files.cert).write_bytes(_pem(cert))
        (labdir / files.chain).write_bytes(chain)
        _write_key(labdir / files.key, key)
    (labdir / plan.eop_accept_bundle).write_bytes(b"".join(accept))
    stamp.write_text(digest)


# ---------------------------------------------------------------- Exchange Online's client certificate


def exo_client_files(plan: Plan) -> CertFiles:
    """The certificate (chain and key, relative to the lab directory) Exchange Online presents when
    it relays to the gateway: the traffic's Exchange Online sender uses it, and so may the EOP."""
    return plan.certs[EXO_CLIENT_CERT]


def exo_client_fingerprint(plan: Plan, labdir: Path) -> str:
    """Its SHA-256 fingerprint as Postfix prints it (AB:CD:...), what the gateway pins."""
    cert = x509.load_pem_x509_certificate((Path(labdir) / exo_client_files(plan).cert).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _write_exo_client_access(plan: Plan, labdir: Path) -> None:
    """Postfix's check_ccert_access table for it (texthash: one `fingerprint OK` line)."""
    text = (
        "# Exchange Online's client certificate (CN " + PROTECTION_SUFFIX + "): the gateway relays for it.\n"
        f"{exo_client_fingerprint(plan, labdir)} OK\n"
    )
    (Path(labdir) / exo_client_access(plan)).write_text(text)


# ---------------------------------------------------------------- facts about a certificate


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n).lower() for n in ext.value.get_values_for_type(x509.DNSName)]


def cert_names(cert: x509.Certificate) -> list[str]:
    """CN and SANs: what EOP compares with a connector's TlsSenderCertificateName."""
    cns = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return list(dict.fromkeys(cns + _sans(cert)))


def _cn(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def _facts(cert: x509.Certificate) -> dict:
    return {
        "subject": _cn(cert.subject),
        "sans": _sans(cert),
        "issuer": _cn(cert.issuer),
        "self_signed": cert.issuer == cert.subject,
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def cert_info(der: bytes, trust: TrustStore) -> dict:
    """What EOP records about a client certificate: its facts, the names it compares, and trust."""
    cert = x509.load_der_x509_certificate(der)
    trusted, why = trust.check(cert, dt.datetime.now(dt.UTC))
    return {**_facts(cert), "names": cert_names(cert), "trusted": trusted, "trust_detail": why}


class TrustStore:
    """The lab's "publicly trusted" roots: does a certificate chain to them and is it in date?"""

    def __init__(self, root_pem: bytes, intermediate_pems: list[bytes]):
        self.root = x509.load_pem_x509_certificate(root_pem)
        self.intermediates = [x509.load_pem_x509_certificate(p) for p in intermediate_pems]

    @classmethod
    def from_plan(cls, plan: Plan, labdir: Path) -> TrustStore:
        return cls((labdir / plan.ca_root).read_bytes(), [(labdir / plan.ca_intermediate).read_bytes()])

    def check(self, cert: x509.Certificate, now: dt.datetime) -> tuple[bool, str]:
        if now < cert.not_valid_before_utc:
            return False, "not yet valid"
        if now > cert.not_valid_after_utc:
            return False, "expired"
        if cert.issuer == cert.subject:
            return False, "self-signed"
        for inter in self.intermediates:
            if cert.issuer == inter.subject and _signed_by(cert, inter) and _signed_by(inter, self.root):
                return True, f"chains to {_cn(self.root.subject)}"
        return False, "issuer not trusted"


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # InvalidSignature, ValueError, TypeError: not issued by it
        return False


def describe(path: Path) -> dict:
    """For `labgen certs`: one certificate file's facts (no trust verdict)."""
    return _facts(x509.load_pem_x509_certificate(Path(path).read_bytes()))
