"""The lab's PKI: a stand-in "public" CA (root + intermediate), every scenario certificate (made
here, or the user's own files copied in), and the services' own server certificates; plus the
certificate facts and the trust verdict the fake EOP records.

Keys are written 0600 inside a 0700 directory. The PKI is kept between runs of the same lab as
long as the scenario's certificate definitions are unchanged (key generation is most of the
start-up time otherwise).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from ..errors import InfraError, InputError, quote
from ..model.plan import EOP_POOL_HOST, EXO_CLIENT_CERT, CertFiles, Plan, exo_client_access, sink_host
from ..model.scenario import PROTECTION_SUFFIX, Certificate

ROOT_CN = "Labgen Public Root CA"
INTERMEDIATE_CN = "Labgen Public TLS CA 2026"
MAX_USER_PEM = 256 * 1024  # a user's certificate chain or key file
MAX_USER_CHAIN = 10  # certificates in it


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
    if spec.cn is None:  # the scenario's validator: a certificate labgen makes has a CN
        raise ValueError("a certificate to make needs a CN")
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


def _spec_digest(specs: dict[str, Certificate], user: dict[str, UserCert]) -> str:
    # Validity is relative to the day the PKI is made: a new day makes it anew, so "expires in
    # 1 day" or "not yet valid" mean the same on every run. The user's own files count by content.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    blob = today + json.dumps({k: v.model_dump() for k, v in sorted(specs.items())}, sort_keys=True)
    blob += json.dumps({k: u.digest for k, u in sorted(user.items())})
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- the user's own certificates


class UserCert:
    """A scenario certificate given as the user's PEM files (cert_file: the leaf, then whatever
    chain it presents; key_file: its unencrypted key), parsed and checked."""

    def __init__(self, chain: list[x509.Certificate], key, digest: str):
        self.chain, self.key, self.digest = chain, key, digest


def _read_user_file(path: Path, what: str) -> bytes:
    """At most MAX_USER_PEM bytes of a regular file (never a FIFO or device: opened non-blocking
    and checked before reading). Raises ValueError with the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError(f"not a regular file; the {what} is a PEM file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_USER_PEM:
            raise ValueError(f"larger than {MAX_USER_PEM} bytes, too large for a PEM {what}")
        try:
            data = f.read(MAX_USER_PEM + 1)
        except OSError as e:
            raise ValueError(f"cannot read it ({e.strerror})") from None
    if len(data) > MAX_USER_PEM:
        raise ValueError(f"larger than {MAX_USER_PEM} bytes, too large for a PEM {what}")
    return data


def load_user_cert(spec: Certificate, key_name: str, base_dir: Path, source: str = "") -> UserCert:
    """Read and check a certificate's cert_file and key_file (relative to `base_dir`). Any
    problem is one InputError line naming the file (escaped) and its YAML path."""
    if spec.cert_file is None or spec.key_file is None:
        raise ValueError(f"certificate {key_name} names no files")
    where = f"{source}: " if source else ""
    files = {"cert_file": spec.cert_file, "key_file": spec.key_file}
    data: dict[str, bytes] = {}
    for field, name in files.items():
        try:
            data[field] = _read_user_file((base_dir / name).resolve(), "certificate" if field == "cert_file" else "key")
        except ValueError as e:
            raise InputError(f"{where}certificates.{key_name}.{field}: {quote(name)}: {e}") from None

    def refuse(field: str, why: str) -> InputError:
        return InputError(f"{where}certificates.{key_name}.{field}: {quote(files[field])}: {why}")

    if b"-----BEGIN CERTIFICATE-----" not in data["cert_file"]:
        raise refuse("cert_file", "not PEM: no '-----BEGIN CERTIFICATE-----' block")
    try:
        chain = x509.load_pem_x509_certificates(data["cert_file"])
    except ValueError:
        raise refuse("cert_file", "not a PEM certificate that can be parsed") from None
    if len(chain) > MAX_USER_CHAIN:
        raise refuse("cert_file", f"{len(chain)} certificates; a chain here has at most {MAX_USER_CHAIN}")
    try:
        key = serialization.load_pem_private_key(data["key_file"], password=None)
    except TypeError:
        raise refuse("key_file", "encrypted; give the key unencrypted (labgen asks for no passphrase)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise refuse("key_file", "not a PEM private key that can be parsed") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise refuse("key_file", "an RSA, EC or Ed25519 key is needed")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise refuse("key_file", f"does not match the certificate in {quote(files['cert_file'])} (its first one)")
    digest = hashlib.sha256(data["cert_file"] + b"\0" + data["key_file"]).hexdigest()
    return UserCert(chain, key, digest)


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
    user = {
        name: load_user_cert(spec, name, plan.scenario.base_dir, plan.scenario.source)
        for name, spec in plan.scenario.certificates.items()
        if spec.user_supplied
    }
    digest = _spec_digest(specs, user)
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
    for name, spec in specs.items():
        files = plan.certs[name]
        if name in user:  # the user's own: copied in as parsed (no stray text, key unencrypted)
            given = user[name]
            cert, chain, key = given.chain[0], b"".join(_pem(c) for c in given.chain), given.key
        elif spec.issuer == "self":
            key = _key(spec.key)
            cert = _leaf(spec, key, None, None, now)
            chain = _pem(cert)
        else:
            key = _key(spec.key)
            cert = _leaf(spec, key, inter, int_key, now)
            chain = _pem(cert) + _pem(inter)
        (labdir / files.cert).write_bytes(_pem(cert))
        (labdir / files.chain).write_bytes(chain)
        _write_key(labdir / files.key, key)
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


def cert_info(chain: list[bytes], trust: TrustStore) -> dict:
    """What EOP records about a client certificate chain as presented (DER, leaf first): the
    leaf's facts, the names it compares, the trust verdict and why, and how many came."""
    cert = x509.load_der_x509_certificate(chain[0])
    trusted, problem = trust.judge(chain, dt.datetime.now(dt.UTC))
    return {
        **_facts(cert),
        "names": cert_names(cert),
        "trusted": trusted,
        "trust_detail": problem or f"chains to {trust.root_names()}",
        "problem": problem,
        "chain_presented": len(chain),
    }


# OpenSSL's X509_V_ERR_* codes the judgement names.
_UNABLE_TO_GET_ISSUER_CERT = 2
_CERT_SIGNATURE_FAILURE = 7
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_SELF_SIGNED_CERT_IN_CHAIN = 19
_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21


def _when(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


class TrustStore:
    """The lab's "publicly trusted" roots (what stands in for the CAs Windows trusts) and the
    intermediates the lab knows of (to tell an incomplete chain from a stranger's CA)."""

    def __init__(self, root_pems: list[bytes], intermediate_pems: list[bytes]):
        self.roots = [x509.load_pem_x509_certificate(p) for p in root_pems]
        self.intermediates = [x509.load_pem_x509_certificate(p) for p in intermediate_pems]

    @classmethod
    def from_plan(cls, plan: Plan, labdir: Path) -> TrustStore:
        return cls([(labdir / plan.ca_root).read_bytes()], [(labdir / plan.ca_intermediate).read_bytes()])

    def root_names(self) -> str:
        return ", ".join(_cn(r.subject) for r in self.roots)

    def judge(self, chain: list[bytes], now: dt.datetime) -> tuple[bool, str | None]:
        """Does the chain as presented (DER, leaf first) lead to one of the roots, every
        certificate in date at `now`? Only what was presented counts (no AIA fetching): a missing
        intermediate is an incomplete chain. OpenSSL's verifier (pyOpenSSL's X509StoreContext,
        the presented intermediates as its untrusted chain) decides; its first error is turned
        into a problem an admin recognises. Returns (trusted, problem)."""
        try:
            certs = [x509.load_der_x509_certificate(d) for d in chain]
        except ValueError:
            return False, "a presented certificate cannot be parsed"
        if not certs:
            return False, "no certificate"
        store = crypto.X509Store()
        for root in self.roots:
            store.add_cert(crypto.X509.from_cryptography(root))
        store.set_time(now.astimezone(dt.UTC))
        ctx = crypto.X509StoreContext(
            store,
            crypto.X509.from_cryptography(certs[0]),
            chain=[crypto.X509.from_cryptography(c) for c in certs[1:]],
        )
        try:
            ctx.verify_certificate()
        except crypto.X509StoreContextError as e:
            return False, self._problem(e, certs[0])
        return True, None

    def _problem(self, e: crypto.X509StoreContextError, leaf: x509.Certificate) -> str:
        code, depth = int(e.errors[0]), int(e.errors[1])
        at = e.certificate.to_cryptography() if e.certificate is not None else leaf
        which = "" if depth == 0 else f" (the chain's {quote(_cn(at.subject))})"
        issuer = quote(_cn(at.issuer))
        if code == _DEPTH_ZERO_SELF_SIGNED_CERT:
            return "self-signed"
        if code == _SELF_SIGNED_CERT_IN_CHAIN:
            return f"not issued by a trusted CA: the chain ends at {quote(_cn(at.subject))}, not a trusted root"
        if code in (_UNABLE_TO_GET_ISSUER_CERT, _UNABLE_TO_GET_ISSUER_CERT_LOCALLY, _UNABLE_TO_VERIFY_LEAF_SIGNATURE):
            if any(i.subject == at.issuer for i in self.intermediates):
                return f"incomplete chain: the issuer {issuer} was not presented"
            return f"not issued by a trusted CA: the issuer {issuer}{which} is not a trusted CA"
        if code == _CERT_HAS_EXPIRED:
            return f"expired on {_when(at.not_valid_after_utc)}{which}"
        if code == _CERT_NOT_YET_VALID:
            return f"not valid before {_when(at.not_valid_before_utc)}{which}"
        if code == _CERT_SIGNATURE_FAILURE:
            return f"bad signature{which}"
        return f"not trusted: {quote(str(e.errors[2]), 120)}{which}"


def describe(path: Path) -> dict:
    """For `labgen certs`: one certificate file's facts (no trust verdict)."""
    return _facts(x509.load_pem_x509_certificate(Path(path).read_bytes()))
