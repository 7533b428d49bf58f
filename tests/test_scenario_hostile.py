"""Hostile scenario files (labgen issue 6, "Bad input"): one row per defect a review found in
868 mutated files. Each row names the exact YAML path the error must name and a fragment of
its message; every error is one escaped line of at most 300 characters."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import set_path

from labgen.errors import InputError, escape, one_line, quote
from labgen.model.plan import make_plan
from labgen.model.scenario import load_scenario, parse_scenario
from labgen.resources import resource_dir

BROKEN_TEXT = (resource_dir("scenarios") / "broken.yaml").read_text()
BROKEN = yaml.safe_load(BROKEN_TEXT)


_set = set_path  # conftest: a patch that sets one value of a loaded scenario


def _do(*patches):
    def patch(d):
        for p in patches:
            p(d)

    return patch


def assert_clean_line(message: str) -> None:
    assert len(message) <= 300, len(message)
    assert message.isprintable(), repr(message)  # no newline, NUL, ESC, bidi control


def parse_error(patch) -> str:
    data = copy.deepcopy(BROKEN)
    patch(data)
    with pytest.raises(InputError) as exc:
        make_plan(parse_scenario(data, "lab.yaml"), "docker")
    assert exc.value.exit_code == 2
    assert_clean_line(exc.value.message)
    return exc.value.message


def file_error(tmp_path: Path, text: str | bytes, name: str = "lab.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    with pytest.raises(InputError) as exc:
        load_scenario(str(path))
    assert_clean_line(exc.value.message)
    assert exc.value.message.startswith(f"{path}: "), exc.value.message
    return exc.value.message.removeprefix(f"{path}: ")


# ---------------------------------------------------------------- the quoting function


@pytest.mark.parametrize(
    "value, expected",
    [
        ("plain", "'plain'"),
        ("a\nb", r"'a\x0ab'"),
        ("nul\x00", r"'nul\x00'"),
        ("\x1b[31mred", r"'\x1b[31mred'"),
        ("rtl\u202eexe", r"'rtl\u202eexe'"),
        ("lone\ud800", r"'lone\ud800'"),
        ("x" * 61, "'" + "x" * 59 + "…'"),
        ("x" * 60, "'" + "x" * 60 + "'"),
        ("\n" * 100, "'" + r"\x0a" * 14 + "…'"),
    ],
    ids=["plain", "newline", "nul", "ansi", "bidi", "surrogate", "long", "exactly-60", "many-escapes"],
)
def test_quote(value, expected):
    assert quote(value) == expected
    assert len(quote(value)) <= 62


def test_one_line_caps_and_escapes_megabytes():
    line = one_line("labgen: " + "\x1b\n" * 2_500_000)
    assert len(line) <= 300 and line.isprintable() and line.endswith("…")


# ---------------------------------------------------------------- 1, 2, 4: reading the file

DUP_TRAFFIC = BROKEN_TEXT + "traffic:\n  - {from: alice@contoso.example, to: [bob@contoso.example]}\n"
FILES = [
    # id, file text, fragment the error (after "<file>: ") must contain
    (
        "duplicate-top-level-key",
        DUP_TRAFFIC,
        f"line {DUP_TRAFFIC.count(chr(10)) - 1}, column 1: duplicate key 'traffic' "
        f"(lines {BROKEN_TEXT.splitlines().index('traffic:') + 1} and {DUP_TRAFFIC.count(chr(10)) - 1})",
    ),
    (
        "duplicate-tenant",
        "tenants:\n  contoso: {}\n  fabrikam: {}\n  contoso: {domains: []}\n",
        "line 4, column 3: duplicate key 'contoso' (lines 2 and 4)",
    ),
    (
        "duplicate-key-in-flow-mapping",
        "name: x\neop: {misattribution: discard, misattribution: reject}\n",
        "duplicate key 'misattribution' (lines 2 and 2)",
    ),
    ("duplicate-quoted-and-plain", 'name: x\n"name": y\n', "duplicate key 'name' (lines 1 and 2)"),
    ("deep-nesting-500-bytes", "a: " + "[" * 250 + "]" * 250, "nested deeper than 50 levels"),
    ("deep-nesting-block", "".join(f"{' ' * i}k{i}:\n" for i in range(60)), "nested deeper than 50 levels"),
    (
        "alias-bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=False)),
        "values with every alias expanded",
    ),
    ("recursive-alias", "a: &a [1, *a]\n", "an alias refers to a node that contains it"),
    ("huge-integer", "name: x\nn: " + "9" * 5000 + "\n", "cannot read this value"),
    ("impossible-date", "name: x\nwhen: 2024-02-31\n", "line 2, column 7: cannot read this value"),
    ("unsafe-tag", "name: !!python/object:os.system x\n", "malformed YAML"),
    ("not-utf8", b"name: caf\xe9\n", "not UTF-8 text (byte 9)"),
    ("raw-control-char", "name: a\x1bb\n", "malformed YAML"),
]


@pytest.mark.parametrize("text, fragment", [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_bad_file(tmp_path, text, fragment):
    assert fragment in file_error(tmp_path, text)


def test_duplicate_key_allowed_through_merge(tmp_path):
    """'<<' merges are meant to be overridden; that is no duplicate."""
    data = copy.deepcopy(BROKEN)
    text = yaml.safe_dump(data, sort_keys=False).replace(
        "certificates:\n", "base: &base {issuer: self}\ncertificates:\n", 1
    )
    text = text.replace("    issuer: self\n", "    <<: *base\n    issuer: self\n", 1)
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:  # the merge is fine; 'base' is an unknown key
        load_scenario(str(path))
    assert ": base: unknown key" in exc.value.message


@pytest.mark.parametrize(
    "env, size, fragment",
    [
        ({}, (1 << 20) + 1, "larger than 1048576 bytes"),
        ({"LABGEN_MAX_SCENARIO_BYTES": "1000"}, 1001, "larger than 1000 bytes"),
        (
            {"LABGEN_MAX_SCENARIO_BYTES": "lots"},
            10,
            "LABGEN_MAX_SCENARIO_BYTES='lots': expected a positive whole number",
        ),
    ],
    ids=["default-limit", "raised-limit", "bad-setting"],
)
def test_file_size_limit(tmp_path, monkeypatch, env, size, fragment):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "big.yaml"
    path.write_text("#" * (size - 1) + "\n")
    with pytest.raises(InputError) as exc:
        load_scenario(str(path))
    assert fragment in exc.value.message
    if "larger" in fragment:
        assert "LABGEN_MAX_SCENARIO_BYTES" in exc.value.message


def test_file_at_the_size_limit_is_read(tmp_path, monkeypatch):
    text = yaml.safe_dump(BROKEN)
    monkeypatch.setenv("LABGEN_MAX_SCENARIO_BYTES", str(len(text.encode())))
    path = tmp_path / "exact.yaml"
    path.write_text(text)
    assert load_scenario(str(path)).name == "broken"


def test_size_limit_reads_no_more_than_the_limit(tmp_path, monkeypatch):
    """A huge file is refused after reading limit + 1 bytes: a sparse 4 GiB file is instant."""
    path = tmp_path / "sparse.yaml"
    with path.open("wb") as f:
        f.truncate(4 << 30)
    with pytest.raises(InputError) as exc:
        load_scenario(str(path))
    assert "larger than 1048576 bytes" in exc.value.message


# ---------------------------------------------------------------- 3: values and file names in errors

HUGE = "x" * 5_000_000
ECHO = [
    # id, patch, YAML path, fragment
    (
        "5-MB-mailbox",
        _set(["tenants", "fabrikam", "mailboxes"], ["carol@fabrikam.example", HUGE]),
        "tenants.fabrikam.mailboxes[1]",
        "'" + "x" * 59 + "…' is not a valid e-mail address",
    ),
    (
        "nul-in-address",
        _set(["traffic", 0, "from"], "alice\x00@contoso.example"),
        "traffic[0].from",
        r"'alice\x00@contoso.example' is not a valid e-mail address",
    ),
    (
        "newline-in-address",
        _set(["traffic", 0, "to"], ["carol@fabrikam.example\nRCPT TO:<x@y.example>"]),
        "traffic[0].to[0]",
        r"\x0aRCPT TO",
    ),
    (
        "ansi-in-domain",
        _set(["internet", "domains"], ["\x1b[2Jnorthwind.example"]),
        "internet.domains[0]",
        r"'\x1b[2Jnorthwind.example' is not a valid domain name",
    ),
    ("ansi-in-unknown-key", _set(["gateway", "\x1b]0;pwned\x07"], 1), r"gateway['\x1b]0;pwned\x07']", "unknown key"),
    ("huge-unknown-key", _set(["x" * 100_000], 1), "['" + "x" * 59 + "…']", "unknown key"),
    (
        "bidi-in-tenant-name",
        lambda d: d["tenants"].update({"evil\u202e": d["tenants"].pop("fabrikam")}),
        r"tenants['evil\u202e']",
        r"tenant name 'evil\u202e'",
    ),
    ("huge-id", _set(["traffic", 0, "id"], HUGE), "traffic[0].id", "ids are letters"),
]


@pytest.mark.parametrize("patch, path, fragment", [c[1:] for c in ECHO], ids=[c[0] for c in ECHO])
def test_errors_quote_values_escaped_and_short(patch, path, fragment):
    message = parse_error(patch)
    assert message.startswith(f"lab.yaml: {path}: "), message
    assert fragment in message, message


@pytest.mark.parametrize(
    "name", ["bad\nname.yaml", "bad\x1b[31mname.yaml", "bad[b]name.yaml"], ids=["newline", "ansi", "markup"]
)
def test_file_name_is_escaped(tmp_path, name):
    path = tmp_path / name
    path.write_text("name: [unclosed\n")
    with pytest.raises(InputError) as exc:
        load_scenario(str(path))
    assert exc.value.message.startswith(escape(str(path), 100) + ": ")
    assert_clean_line(exc.value.message)


# ---------------------------------------------------------------- 5, 6, 7, 8: the model

CERT = {"cn": "gw.contoso.example"}
MODEL = [
    # id, patch, YAML path, fragment
    (
        "subject-crlf",
        _set(["traffic", 0, "subject"], "Hi\r\nBcc: eve@evil.example"),
        "traffic[0].subject",
        r"'Hi\x0d\x0aBcc: eve@evil.example' must be printable text on one line",
    ),
    ("subject-nul", _set(["traffic", 0, "subject"], "a\x00"), "traffic[0].subject", "must be printable"),
    (
        "subject-too-long",
        _set(["traffic", 0, "subject"], "s" * 201),
        "traffic[0].subject",
        "at most 200 characters (this one has 201)",
    ),
    (
        "cert-key-escapes-lab-dir",
        _set(["certificates", "../../escape/pwned"], CERT),
        "certificates['../../escape/pwned']",
        "certificate name '../../escape/pwned' must be lower-case",
    ),
    ("cert-key-dotdot", _set(["certificates", "a..b"], CERT), "certificates.a..b", "no '..'"),
    (
        "cert-key-absolute",
        _set(["certificates", "/etc/passwd"], CERT),
        "certificates['/etc/passwd']",
        "must be lower-case",
    ),
    ("cert-key-upper", _set(["certificates", "GW"], CERT), "certificates.GW", "must be lower-case"),
    (
        "cert-key-reserved",
        _set(["certificates", "ca-root"], CERT),
        "certificates.ca-root",
        "taken by the lab's own certificates",
    ),
    ("cert-key-newline", _set(["certificates", "gw\n"], CERT), r"certificates['gw\x0a']", "must be lower-case"),
    (
        "not-before-too-far-back",
        _set(["certificates", "gw-selfsigned", "not_before_days"], -36500),
        "certificates.gw-selfsigned.not_before_days",
        "greater than or equal to -18250",
    ),
    (
        "not-before-too-far-ahead",
        _set(["certificates", "gw-selfsigned", "not_before_days"], 10**30),
        "certificates.gw-selfsigned.not_before_days",
        "less than or equal to 18250",
    ),
    (
        "valid-days-zero",
        _set(["certificates", "gw-selfsigned", "valid_days"], 0),
        "certificates.gw-selfsigned.valid_days",
        "greater than or equal to 1",
    ),
    (
        "valid-days-huge",
        _set(["certificates", "gw-selfsigned", "valid_days"], 3_000_000),
        "certificates.gw-selfsigned.valid_days",
        "less than or equal to 36500",
    ),
    (
        "send-connector-name-newline",
        _set(["gateway", "connectors", 0, "name"], "Inter\nnet"),
        "gateway.connectors[0].name",
        r"a connector name 'Inter\x0anet' must be printable",
    ),
    (
        "send-connector-name-empty",
        _set(["gateway", "connectors", 0, "name"], " "),
        "gateway.connectors[0].name",
        "must not be empty",
    ),
    (
        "inbound-connector-name-long",
        _set(["tenants", "contoso", "inbound_connectors", 0, "Name"], "n" * 65),
        "tenants.contoso.inbound_connectors[0].Name",
        "at most 64 characters",
    ),
    ("description-multiline", _set(["description"], "one\ntwo"), "description", "printable text on one line"),
    ("description-ansi", _set(["description"], "\x1b[31mred"), "description", r"'\x1b[31mred'"),
    ("description-long", _set(["description"], "d" * 201), "description", "at most 200 characters"),
    ("lab-name-trailing-newline", _set(["name"], "broken\n"), "name", r"'broken\x0a': a lab name"),
    ("message-id-trailing-newline", _set(["traffic", 0, "id"], "m1\n"), "traffic[0].id", r"'m1\x0a': ids"),
    (
        "tenant-name-trailing-newline",
        lambda d: d["tenants"].update({"fabrikam\n": d["tenants"].pop("fabrikam")}),
        r"tenants['fabrikam\x0a']",
        "tenant name",
    ),
    (
        "tenant-name-trailing-hyphen",
        lambda d: d["tenants"].update({"fab-": d["tenants"].pop("fabrikam")}),
        "tenants.fab-",
        "tenant name 'fab-'",
    ),
    (
        "address-local-trailing-newline",
        _set(["tenants", "contoso", "mailboxes", 1], "bob\n@contoso.example"),
        "tenants.contoso.mailboxes[1]",
        "not a valid e-mail address",
    ),
    (
        "sender-domain-invalid",
        _set(
            ["tenants", "fabrikam", "inbound_connectors"],
            [{"name": "p", "type": "Partner", "sender_domains": ["*", "bad domain"]}],
        ),
        "tenants.fabrikam.inbound_connectors[0].sender_domains[1]",
        "'bad domain' is not a valid domain name",
    ),
    (
        "gateway-hostname-too-long-for-cn",
        _set(["gateway", "hostname"], "g" * 60 + ".contoso.example"),
        "gateway.hostname",
        "longer than 64 characters",
    ),
    (
        "internet-domain-too-long-for-sink-cn",
        _set(["internet", "domains"], ["n" * 55 + ".example"]),
        "internet.domains[0]",
        "longer than 61 characters",
    ),
    # 6: an empty certificate reference used to mean "no certificate"
    (
        "connector-certificate-empty",
        _set(["gateway", "connectors", 0, "certificate"], ""),
        "gateway.connectors[0].certificate",
        "certificate name '' must be",
    ),
    (
        "server-certificate-empty",
        _set(["gateway", "server_certificate"], ""),
        "gateway.server_certificate",
        "certificate name '' must be",
    ),
    # 7: limits
    (
        "recipients-per-message",
        _set(["traffic", 0, "to"], [f"u{i}@fabrikam.example" for i in range(101)]),
        "traffic[0].to",
        "too many items (101); labgen allows at most 100 here",
    ),
    (
        "recipient-pairs",
        _set(
            ["traffic"], [{"from": "alice@contoso.example", "to": [f"u{i}@fabrikam.example" for i in range(100)]}] * 501
        ),
        "traffic",
        "50100 message × recipient pairs (copies counted); labgen sends at most 50000 per scenario "
        "(raise it with LABGEN_MAX_RECIPIENTS=N)",
    ),
    (
        "tenants",
        lambda d: d["tenants"].update({f"t{i}": {"domains": [{"name": f"t{i}.example"}]} for i in range(60)}),
        "tenants",
        "too many items; labgen allows at most 50 here",
    ),
    (
        "mailboxes",
        _set(["tenants", "fabrikam", "mailboxes"], [f"u{i}@fabrikam.example" for i in range(1001)]),
        "tenants.fabrikam.mailboxes",
        "at most 1000 here",
    ),
    (
        "send-connectors",
        lambda d: d["gateway"]["connectors"].extend(
            [{"name": f"c{i}", "address_space": [f"d{i}.example"]} for i in range(60)]
        ),
        "gateway.connectors",
        "at most 50 here",
    ),
    ("certificates", _set(["certificates"], {f"c{i}": CERT for i in range(101)}), "certificates", "at most 100 here"),
    (
        "sans",
        _set(["certificates", "gw-selfsigned", "sans"], [f"h{i}.contoso.example" for i in range(101)]),
        "certificates.gw-selfsigned.sans",
        "at most 100 here",
    ),
    # 8: the exact item
    (
        "mailbox-second-item",
        _set(["tenants", "fabrikam", "mailboxes"], ["carol@fabrikam.example", "carol"]),
        "tenants.fabrikam.mailboxes[1]",
        "'carol' is not a valid e-mail address",
    ),
    (
        "lab-address-item",
        _set(["lab", "addresses"], {"dns": "10.0.0.53"}),
        "lab.addresses.dns",
        "'10.0.0.53' is outside the lab's documentation ranges",
    ),
    (
        "lab-address-unknown-host",
        _set(["lab", "addresses"], {"ntp": "198.51.100.123"}),
        "lab.addresses.ntp",
        "Input should be",
    ),
    (
        "san-item",
        _set(["certificates", "gw-selfsigned", "sans"], ["gw.contoso.example", "bad..name"]),
        "certificates.gw-selfsigned.sans[1]",
        "'bad..name' is not a valid domain name",
    ),
    (
        "address-space-item",
        _set(["gateway", "connectors", 1, "address_space"], ["contoso.example", "-x-"]),
        "gateway.connectors[1].address_space[1]",
        "'-x-' is not a valid domain name",
    ),
    (
        "sender-ip-item",
        _set(["tenants", "contoso", "inbound_connectors", 0, "SenderIPAddresses"], ["198.51.100.10", "10.0.0.0/8"]),
        "tenants.contoso.inbound_connectors[0].SenderIPAddresses[1]",
        "'10.0.0.0/8' is outside",
    ),
    (
        "expect-key",
        _set(["traffic", 0, "expect"], {"carol@fabrikam.example": "delivered", "x@y": "delivered"}),
        "traffic[0].expect.x@y",
        "'y' is not a valid domain name",
    ),
]


@pytest.mark.parametrize("patch, path, fragment", [c[1:] for c in MODEL], ids=[c[0] for c in MODEL])
def test_model_refuses(patch, path, fragment):
    message = parse_error(patch)
    assert message.startswith(f"lab.yaml: {path}: "), message
    assert fragment in message, message


def test_recipient_limit_can_be_raised(monkeypatch):
    patch = _set(
        ["traffic"], [{"from": "alice@contoso.example", "to": [f"u{i}@fabrikam.example" for i in range(100)]}] * 3
    )
    monkeypatch.setenv("LABGEN_MAX_RECIPIENTS", "299")
    assert "300 message × recipient pairs" in parse_error(patch)
    monkeypatch.setenv("LABGEN_MAX_RECIPIENTS", "300")
    data = copy.deepcopy(BROKEN)
    patch(data)
    assert sum(len(m.to) for m in parse_scenario(data, "x.yaml").traffic) == 300


@pytest.mark.parametrize("days", [(-18250, 1), (18250, 36500), (-18250, 36500)], ids=["oldest", "latest", "longest"])
def test_certificate_dates_at_the_bounds_are_made(tmp_path, days):
    """The bounds are ones cryptography's X.509 builder accepts."""
    from labgen.lab.pki import make_pki

    data = _do(
        _set(["certificates", "gw-selfsigned", "not_before_days"], days[0]),
        _set(["certificates", "gw-selfsigned", "valid_days"], days[1]),
    )
    d = copy.deepcopy(BROKEN)
    data(d)
    plan = make_plan(parse_scenario(d, "x.yaml"), "local")
    make_pki(plan, tmp_path)
    assert (tmp_path / plan.certs["gw-selfsigned"].cert).is_file()


def test_name_from_a_file_name_that_is_no_lab_name(tmp_path):
    data = copy.deepcopy(BROKEN)
    data.pop("name")
    path = tmp_path / "My Lab.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as exc:
        load_scenario(str(path))
    assert f"{path}: name: required key is missing, and the file name 'My Lab' is no lab name" in exc.value.message


# ---------------------------------------------------------------- through the command line


def run_cli(cwd: Path, *args: str):
    env = {k: v for k, v in os.environ.items() if k not in ("LABGEN_DEBUG", "LABGEN_WORKDIR", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-m", "labgen.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def text_file(text: str):
    def make(tmp_path: Path) -> str:
        (tmp_path / "lab.yaml").write_text(text)
        return "lab.yaml"

    return make


def write(tmp_path: Path, patch, name="lab.yaml") -> str:
    data = copy.deepcopy(BROKEN)
    patch(data)
    (tmp_path / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return name


CLI = [
    ("duplicate-key", text_file(DUP_TRAFFIC), "duplicate key 'traffic'"),
    ("deep-nesting", text_file("a: " + "[" * 600 + "]" * 600), "nested deeper than 50 levels"),
    (
        "escape-cert-key",
        lambda p: write(p, _set(["certificates", "../../escape/pwned"], CERT)),
        "certificates['../../escape/pwned']",
    ),
    (
        "empty-certificate",
        lambda p: write(p, _set(["gateway", "connectors", 0, "certificate"], "")),
        "gateway.connectors[0].certificate",
    ),
    ("subject-crlf", lambda p: write(p, _set(["traffic", 0, "subject"], "a\r\nb")), "traffic[0].subject"),
]


@pytest.mark.parametrize("command", [["validate"], ["up", "--engine", "local"]], ids=["validate", "up-local"])
@pytest.mark.parametrize("make, fragment", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_exit_2_one_line(tmp_path, command, make, fragment):
    arg = make(tmp_path)
    res = run_cli(tmp_path, *command, arg)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"labgen: {arg}: ") and fragment in lines[0], res.stderr
    assert_clean_line(lines[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("labgen-")]  # nothing half-started
    assert not (tmp_path.parent / "escape").exists()


def test_cli_guard_escapes_a_file_name(tmp_path):
    res = run_cli(tmp_path, "validate", "no\x1b[31msuch\n.yaml")
    assert res.returncode == 2
    assert res.stderr == "labgen: no\\x1b[31msuch\\x0a.yaml: no such scenario file; check the path\n"


MARKUP = _do(
    _set(["description"], "[/] closes nothing [bold]"),
    _set(["certificates", "gw-selfsigned", "cn"], "[/]"),
    _set(["gateway", "connectors", 0, "name"], "Internet [/]"),
    _set(["traffic", 0, "subject"], "[red]Quarterly[/red] numbers"),
)


def test_rich_markup_in_scenario_strings_is_printed_literally(tmp_path):
    """Markup in a description, a CN or a connector name used to crash the report after the
    lab ran (the result was lost) and `labgen certs`."""
    arg = write(tmp_path, MARKUP)
    res = run_cli(tmp_path, "up", arg, "--engine", "local", "--workdir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "[/] closes nothing [bold]" in res.stdout
    assert "gateway 'Internet [/]' connector" in res.stdout
    assert "\x1b" not in res.stdout  # piped: no colour codes, and nothing raw from the file
    certs = run_cli(tmp_path, "certs", arg, "--workdir", str(tmp_path))
    assert certs.returncode == 0, certs.stderr
    assert "[/]" in certs.stdout
    listing = run_cli(tmp_path, "validate", arg)
    assert listing.returncode == 0 and listing.stdout.startswith("lab.yaml: valid"), listing.stderr


def test_report_escapes_control_characters():
    """What lab services and clients said reaches the terminal escaped (report.py)."""
    from io import StringIO

    from rich.console import Console

    from labgen.results.contracts import ResultDoc
    from labgen.results.report import print_result

    doc = ResultDoc.model_validate(
        json.loads(
            json.dumps(
                {
                    "scenario": "x",
                    "engine": "local",
                    "duration_s": 0.1,
                    "description": "[/]\x1b[2J",
                    "run_id": "0badc0de",
                    "lab_dir": "/tmp/x\x1b]0;t\x07",
                    "summary": {
                        "total": 1,
                        "delivered": 0,
                        "silently_discarded": 1,
                        "rejected": 0,
                        "deferred": 0,
                        "unaccounted": 0,
                        "expectations_failed": 0,
                    },
                    "messages": [
                        {
                            "id": "m1",
                            "from": "a@b.example",
                            "to": "c@d.example",
                            "outcome": "silently_discarded",
                            "expected": None,
                            "ok": None,
                            "why": "because\x1b[31m [/]",
                            "recipient_trace_visible": True,
                            "attribution": None,
                            "recipient_tenant": None,
                            "ndr": None,
                            "ndr_lost": None,
                            "hops": [
                                {"service": "traffic", "event": "submitted", "relay": "r", "reply": "250 ok\x1b[0m"}
                            ],
                            "dropped_by": {
                                "service": "eop",
                                "reason": "[bold]x\x07",
                                "attribution": None,
                                "certificate": None,
                                "client_ip": None,
                            },
                        }
                    ],
                }
            )
        )
    )
    buf = StringIO()
    print_result(doc, Console(file=buf, width=200, force_terminal=False))
    text = buf.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert r"because\x1b[31m [/]" in text and r"250 ok\x1b[0m" in text and r"[bold]x\x07" in text
