"""Configuration injection through scenario strings (issue 6, security item 1).

Hostile strings are put in every scenario string the renderer touches (description, connector
name, certificate key, gateway hostname, lab name), bypassing scenario validation, and the
rendered project is read back the way its consumers read it: compose.yaml with yaml.safe_load,
main.cf/master.cf with Postfix's own line rules (and, in the Docker test, with the real
`postconf` of the lab image), README.md by its Markdown structure. A hostile string either
renders into comments/prose only, leaving every parsed value equal to the benign render's, or
the renderer refuses with an InfraError before writing any file.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from labgen.engines import postfix
from labgen.engines.compose import compose_data, render_project
from labgen.errors import InfraError, InputError
from labgen.lab.pki import make_pki
from labgen.model.plan import CERT_STEM, CertFiles, Plan, _cert_stems, make_plan
from labgen.model.scenario import load_scenario
from labgen.resources import resource_dir
from labgen.textsafe import md_inline, one_line

IMAGE = "labgen-lab:0123456789ab"

HOSTILE = {
    "newline-include": "x\ninclude:\n  - /etc/evil/compose.yaml\n",
    "crlf-option": "x\r\n  -o smtpd_client_restrictions=permit",
    "cr-param": "x\rmynetworks = 0.0.0.0/0",
    "lf-pipe-service": "x\npwn unix - n n - - pipe flags=F user=nobody argv=/bin/sh -c id",
    "lf-main-param": "x\nmynetworks = 0.0.0.0/0\n",
    "u2028": "x\u2028include: [evil.yaml]",
    "u2029": "x\u2029evil: 1",
    "nel-u0085": "x\x85services: {}",
    "vt-ff": "x\x0bevil: 1\x0cmore: 2",
    "nul": "x\x00y",
    "inline-option": "x -o smtpd_relay_restrictions=permit",
    "hash": "x # y",
    "braces": "{x} {{ y }} {% raw %}",
    "dollar": "$myhostname ${mail_owner} $(id)",
    "include": "include: [/etc/passwd]",
    "traversal": "../../x",
    "5kb": ("ab\n-o x=y " * 500)[:5000],
    "rich-markup": "[/] [bold red]x[/bold red]",
    "ansi": "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "markdown": "# head\n| a | b |\n```\n<script>alert(1)</script> [l](javascript:x)",
    "bidi": "abc\u202eevil\u2066",
}
# Where a hostile string may land: rendered into comments or prose only, or refused.
RENDERED = ("description", "connector name", "cert key")
REFUSED = ("gateway hostname", "lab name")

SERVICES = ["dns", "eop", "sink", "gateway", "traffic"]
SERVICE_KEYS = {
    "image",
    "init",
    "cap_add",
    "volumes",
    "container_name",
    "hostname",
    "command",
    "healthcheck",
    "labels",
    "networks",
}
CONNECTOR_OPTIONS = {
    "syslog_name",
    "smtp_bind_address",
    "smtp_helo_name",
    "smtp_tls_security_level",
    "smtp_tls_cert_file",
    "smtp_tls_key_file",
    "minimal_backoff_time",  # Postfix's default 300 s before a TLS failure is retried in plaintext
}
# The services Postfix's stock master.cf has, as the lab's template keeps them.
BUILTIN_SERVICES = [
    "smtp/inet",
    "pickup/unix",
    "cleanup/unix",
    "qmgr/unix",
    "tlsmgr/unix",
    "rewrite/unix",
    "bounce/unix",
    "defer/unix",
    "trace/unix",
    "verify/unix",
    "flush/unix",
    "proxymap/unix",
    "proxywrite/unix",
    "smtp/unix",
    "relay/unix",
    "showq/unix",
    "error/unix",
    "retry/unix",
    "discard/unix",
    "anvil/unix",
    "scache/unix",
    "postlog/unix-dgram",
]
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
CERT_OPTION = re.compile(r"/lab/certs/[a-z0-9][a-z0-9._-]*\.(chain\.pem|key)")


def plan_with(place: str | None = None, value: str = "") -> Plan:
    """The broken scenario's plan with `value` at `place`, never validated (model_copy/assignment)."""
    s = load_scenario("broken")
    s.certificates["gw-selfsigned"] = s.certificates["gw-selfsigned"].model_copy(update={"key": "ec256"})
    if place == "description":
        s = s.model_copy(update={"description": value})
    elif place == "connector name":
        s.gateway.connectors[0] = s.gateway.connectors[0].model_copy(update={"name": value})
    elif place == "cert key":
        s = s.model_copy(update={"certificates": {value: s.certificates["gw-selfsigned"]}})
        for i, c in enumerate(s.gateway.connectors):
            s.gateway.connectors[i] = c.model_copy(update={"certificate": value})
    plan = make_plan(s, "docker")
    plan.run_id = "00000000"
    if place == "gateway hostname":
        plan.scenario.gateway = plan.scenario.gateway.model_copy(update={"hostname": value})
    elif place == "lab name":
        plan = plan.model_copy(update={"lab": value})
    return plan


# ---------------------------------------------------------------- reading the files back


def postfix_lines(text: str) -> list[str]:
    """Postfix's logical lines (main.cf(5), master.cf(5)): only '\\n' ends a line; a line that
    starts with whitespace continues the previous one; blank and '#' lines are ignored."""
    out: list[str] = []
    for raw in text.split("\n"):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            assert out, f"continuation line before any logical line: {raw!r}"
            out[-1] += " " + raw.strip()
        else:
            out.append(raw.strip())
    return out


def main_cf(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for line in postfix_lines(text):
        m = re.fullmatch(r"([A-Za-z0-9_]+)\s*=\s*(.*)", line)
        assert m, f"main.cf line is not name = value: {line!r}"
        assert m.group(1) not in params, f"main.cf sets {m.group(1)} twice"
        params[m.group(1)] = m.group(2)
    return params


def master_cf(text: str) -> dict[str, dict]:
    """service/type -> {'fields': the 7 columns and command, 'options': {-o name: value}}."""
    services: dict[str, dict] = {}
    for line in postfix_lines(text):
        fields = line.split()
        assert len(fields) >= 8, f"master.cf line has too few fields: {line!r}"
        key = f"{fields[0]}/{fields[1]}"
        assert key not in services, f"master.cf defines {key} twice"
        args, options = fields[8:], {}
        while args:
            assert args[0] == "-o" and len(args) >= 2 and "=" in args[1], f"unexpected arguments in {line!r}"
            name, value = args[1].split("=", 1)
            assert name not in options and "{" not in value, line
            options[name] = value
            args = args[2:]
        services[key] = {"fields": fields[:8], "options": options}
    return services


def readme_shape(text: str) -> list[str]:
    """What Markdown structure hangs on: each line's kind and, for table rows, its cell count."""
    shape = []
    for line in text.split("\n"):
        if line.startswith("|"):
            shape.append(f"row{len(UNESCAPED_PIPE.findall(line))}")
        elif line.startswith("    "):
            shape.append("code")
        elif re.match(r"#{1,6} ", line):
            shape.append(line)  # headings are the template's own
        else:
            shape.append("text" if line else "")
    return shape


def md_markup(text: str) -> dict[str, int]:
    """How often each character that makes inline Markdown (code, HTML, links, emphasis, cells)
    occurs unescaped."""
    return {ch: len(re.findall(r"(?<!\\)" + re.escape(ch), text)) for ch in "`<>[]|*_!&~#"}


def connector_cert(plan: Plan) -> CertFiles:
    """The planned files of the first connector's certificate (the "cert key" place sets one)."""
    name = plan.scenario.gateway.connectors[0].certificate
    assert name is not None, "the first connector presents no certificate"
    return plan.certs[name]


def render(plan: Plan, labdir: Path) -> dict[str, str]:
    render_project(plan, labdir, IMAGE)
    return {
        rel: (labdir / rel).read_text()
        for rel in (
            "compose.yaml",
            "README.md",
            "gateway/postfix/main.cf",
            "gateway/postfix/master.cf",
            "gateway/postfix/transport",
        )
    }


@pytest.fixture(scope="module")
def benign(tmp_path_factory) -> dict[str, str]:
    return render(plan_with(), tmp_path_factory.mktemp("benign"))


def assert_safe_render(files: dict[str, str], benign: dict[str, str], plan: Plan, place: str) -> None:
    compose = yaml.safe_load(files["compose.yaml"])
    assert list(compose) == ["version", "services", "networks"]
    assert list(compose["services"]) == SERVICES
    for name, block in compose["services"].items():
        assert set(block) == SERVICE_KEYS | ({"depends_on"} if name == "traffic" else set()), name
    assert list(compose["networks"]) == ["lab"]
    assert compose == yaml.safe_load(benign["compose.yaml"])
    assert all(
        line.startswith("#") or not line or line[0] in " -" or re.match(r"[a-z]+:", line)
        for line in files["compose.yaml"].split("\n")
    )

    assert main_cf(files["gateway/postfix/main.cf"]) == main_cf(benign["gateway/postfix/main.cf"])
    assert files["gateway/postfix/transport"] == benign["gateway/postfix/transport"]
    master, expected = master_cf(files["gateway/postfix/master.cf"]), master_cf(benign["gateway/postfix/master.cf"])
    if place == "cert key":
        # Only the certificate's file names differ: safe stems, inside certs/, as planned.
        files_of = connector_cert(plan)
        for conn in ("conn0/unix", "conn1/unix"):
            opts = master[conn]["options"]
            assert opts["smtp_tls_cert_file"] == f"/lab/{files_of.chain}"
            assert opts["smtp_tls_key_file"] == f"/lab/{files_of.key}"
            assert CERT_OPTION.fullmatch(opts["smtp_tls_cert_file"]) and CERT_OPTION.fullmatch(
                opts["smtp_tls_key_file"]
            )
            for k in ("smtp_tls_cert_file", "smtp_tls_key_file"):
                opts[k] = expected[conn]["options"][k]
    assert master == expected

    readme = files["README.md"]
    assert readme_shape(readme) == readme_shape(benign["README.md"])
    assert all(line.isprintable() for line in readme.split("\n"))
    assert md_markup(readme) == md_markup(benign["README.md"])


# ---------------------------------------------------------------- the table


@pytest.mark.parametrize("place", RENDERED)
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_string_renders_only_as_text(place, case, benign, tmp_path):
    plan = plan_with(place, HOSTILE[case])
    assert_safe_render(render(plan, tmp_path), benign, plan, place)


@pytest.mark.parametrize("place", REFUSED)
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_identifier_is_refused_before_any_file_is_written(place, case, tmp_path):
    plan = plan_with(place, HOSTILE[case])
    with pytest.raises(InfraError) as exc:
        render_project(plan, tmp_path, IMAGE)
    assert exc.value.exit_code == 3
    message = exc.value.message
    assert message.isprintable() and len(message) < 400, repr(message)  # one line, names the value
    assert "refusing to write" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("place", RENDERED + REFUSED)
def test_hostile_scenario_file_is_refused_or_rendered_safely(place, case, benign, tmp_path):
    """From a YAML file, as a stranger would send it: InputError (exit 2), or a safe render."""
    data = yaml.safe_load((resource_dir("scenarios") / "broken.yaml").read_text())
    value = HOSTILE[case]
    data["certificates"]["gw-selfsigned"]["key"] = "ec256"
    if place == "description":
        data["description"] = value
    elif place == "connector name":
        data["gateway"]["connectors"][0]["name"] = value
    elif place == "cert key":
        data["certificates"] = {value: data["certificates"]["gw-selfsigned"]}
        for c in data["gateway"]["connectors"]:
            c["certificate"] = value
    elif place == "gateway hostname":
        data["gateway"]["hostname"] = value
    else:
        data["name"] = value
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=False))
    try:
        plan = make_plan(load_scenario(str(path)), "docker")
    except InputError as e:
        assert e.exit_code == 2 and "\n" not in e.message
        return
    plan.run_id = "00000000"
    assert place in RENDERED, f"{place} {value!r} passed validation"
    assert_safe_render(render(plan, tmp_path / "lab"), benign, plan, place)


# ---------------------------------------------------------------- certificate file names


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_certificate_key_writes_only_inside_certs(case, tmp_path):
    labdir = tmp_path / "a" / "b" / "lab"
    labdir.mkdir(parents=True)
    plan = plan_with("cert key", HOSTILE[case])
    make_pki(plan, labdir)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(p.parts[:4] == ("a", "b", "lab", "certs") for p in written), written
    files = plan.certs[HOSTILE[case]]
    assert (labdir / files.chain).is_file() and (labdir / files.key).is_file()


@pytest.mark.parametrize(
    "keys, expected",
    [
        (["gw-selfsigned", "gw-public", "eop-server"], ["gw-selfsigned", "gw-public", "eop-server"]),
        (["a.b_c-1", "x" * 64], ["a.b_c-1", "x" * 64]),
        (["../../x"], [r"x-[0-9a-f]{10}"]),
        ([".", "..", "...", ""], [r"cert-[0-9a-f]{10}"] * 4),
        (["GW-Public", "gw-public"], [r"gw-public-[0-9a-f]{10}", "gw-public"]),
        (
            ["ca-root", "ca-intermediate", "eop-accept", "spec"],  # the PKI's own files in certs/
            [
                r"ca-root-[0-9a-f]{10}",
                r"ca-intermediate-[0-9a-f]{10}",
                r"eop-accept-[0-9a-f]{10}",
                r"spec-[0-9a-f]{10}",
            ],
        ),
        (["x" * 65], [r"x{40}-[0-9a-f]{10}"]),
        (["a/b", "a\nb", "a b"], [r"a-b-[0-9a-f]{10}"] * 3),
    ],
)
def test_certificate_stems(keys, expected):
    stems = _cert_stems(keys)
    assert list(stems) == keys
    for key, pattern in zip(keys, expected, strict=False):
        assert re.fullmatch(pattern, stems[key]), (key, stems[key])
        assert CERT_STEM.fullmatch(stems[key])
    assert len(set(stems.values())) == len(keys)


def test_certificate_stems_stay_distinct_when_a_key_names_another_keys_stem():
    import hashlib

    taken = "a-" + hashlib.sha256(b"A").hexdigest()[:10]  # what 'A' would become
    stems = _cert_stems(["A", taken])
    assert stems[taken] == taken and stems["A"].startswith(taken) and stems["A"] != taken


# ---------------------------------------------------------------- the renderer's own checks


@pytest.mark.parametrize(
    "mutate, named",
    [
        (lambda p: setattr(p.scenario.gateway.connectors[0], "tls", "may -o smtpd_x=1"), "tls"),
        (lambda p: setattr(p.scenario.gateway.connectors[0], "source_ip", "198.51.100.10\nx = y"), "source_ip"),
        (lambda p: setattr(p.scenario.gateway.connectors[1].route, "smarthost", "a.example]\n* pwn:"), "smarthost"),
        (lambda p: p.scenario.gateway.connectors[0].address_space.append("evil.example x:y"), "address space"),
        (lambda p: p.scenario.gateway.connectors[0].address_space.append("*.\nevil"), "address space"),
        (lambda p: setattr(p.certs["gw-selfsigned"], "chain", "certs/../../etc/x.chain.pem"), "certificate"),
        (lambda p: setattr(p.certs["gw-selfsigned"], "key", "certs/k.key -o a=b"), "key"),
        (lambda p: setattr(p.certs["gateway-server"], "chain", "certs/x.chain.pem\nmynetworks = 0/0"), "server chain"),
        (lambda p: p.hosts["traffic"].__setitem__(1, "0.0.0.0/0"), "address '0.0.0.0/0'"),
        (lambda p: p.hosts["dns"].__setitem__(0, "198.51.100.53\nnameserver 8.8.8.8"), "address"),
        (lambda p: setattr(p, "subnet", "198.51.100.0/24\nx: y"), "subnet"),
    ],
)
def test_unvalidated_plan_values_are_refused(mutate, named, tmp_path):
    plan = plan_with()
    mutate(plan)
    with pytest.raises(InfraError) as exc:
        render_project(plan, tmp_path, IMAGE)
    assert named in exc.value.message and exc.value.message.isprintable()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "mailbox", ["a`id`@contoso.example", "a$(id)|b@contoso.example", "o'neil;x&@contoso.example", "-a@contoso.example"]
)
def test_readme_shell_commands_quote_every_argument(mailbox, tmp_path):
    plan = plan_with()
    plan.scenario.tenants["contoso"].mailboxes[0] = mailbox
    files = render(plan, tmp_path)
    line = next(ln for ln in files["README.md"].split("\n") if " swaks " in ln)
    assert shlex.split(line) == [
        "docker",
        "exec",
        "-it",
        "labgen-broken-traffic",
        "swaks",
        "--server",
        plan.hosts["eop"][0],
        "--to",
        mailbox,
        "--tls",
    ]


def test_readme_shell_command_never_spans_lines(tmp_path):
    plan = plan_with()
    plan.scenario.tenants["contoso"].mailboxes[0] = "a@contoso.example\nrm -rf ~"
    with pytest.raises(InfraError, match="README"):
        render_project(plan, tmp_path, IMAGE)
    assert list(tmp_path.iterdir()) == []


def test_image_reference_is_checked():
    with pytest.raises(InfraError, match="image"):
        compose_data(plan_with(), "labgen-lab:x\nservices: {}")


@pytest.mark.parametrize(
    "check, name, bad",
    [
        (postfix.check_master_cf, "master.cf", "pwn unix - n n - - pipe flags=F user=nobody argv=/bin/sh -c id"),
        (postfix.check_master_cf, "master.cf", "  -o smtpd_client_restrictions=permit"),  # after the last conn
        (postfix.check_master_cf, "master.cf", "conn0 unix -       -       n       -       -       smtp"),  # twice
        (postfix.check_main_cf, "main.cf", "mynetworks = 0.0.0.0/0"),  # a second setting overrides the first
        (postfix.check_main_cf, "main.cf", "content_filter = pipe:x"),  # a parameter labgen never writes
        (postfix.check_main_cf, "main.cf", "  continued"),
        (postfix.check_main_cf, "main.cf", "# comment\r"),
    ],
)
def test_final_guard_refuses_lines_labgen_does_not_write(check, name, bad, benign):
    template = (resource_dir("templates") / "postfix" / f"{name}.j2").read_text()
    good = benign[f"gateway/postfix/{name}"]
    assert check(good, template) == good
    with pytest.raises(InfraError, match=name):
        check(good + bad + "\n", template)


@pytest.mark.parametrize("bad", ["evil.example x", "* conn0: -o x", "* conn0:[a.example] extra", "*\tconn0:"])
def test_final_guard_refuses_transport_map_lines(bad, benign):
    good = benign["gateway/postfix/transport"]
    assert postfix.check_transport_map(good) == good
    with pytest.raises(InfraError, match="transport"):
        postfix.check_transport_map(good + bad + "\n")


def test_postfix_templates_print_only_checked_values():
    with pytest.raises(InfraError, match="unchecked"):
        postfix.only_checked("gw.contoso.example")
    assert postfix.only_checked(postfix.comment("a\nb", 10)) == "a b"


@pytest.mark.parametrize("case", HOSTILE)
def test_one_line_and_md_inline(case):
    for limit in (10, 200):
        line = one_line(HOSTILE[case], limit)
        assert line.isprintable() and len(line) <= limit and line == line.strip()
        md = md_inline(HOSTILE[case], limit)
        assert md.isprintable()
        assert not re.search(r"(?<!\\)[`<>|\[\]]", md), md


# ---------------------------------------------------------------- the real Postfix reads them back


def _postconf(image: str, root: Path) -> dict[str, dict[str, list[str]]]:
    """One container for every case directory under root: postconf -M, -P and -n of each."""
    script = (
        'for d in /cfg/*/; do n=$(basename "$d"); '
        'for o in M P n; do echo "@@@ $n $o"; postconf -c "$d" -$o 2>&1 || echo "@@@ FAILED"; done; done'
    )
    p = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{root}:/cfg:ro", image, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, dict[str, list[str]]] = {}
    current: list[str] = []
    for line in p.stdout.splitlines():
        if line.startswith("@@@ "):
            assert line != "@@@ FAILED", p.stdout[-2000:]
            case, opt = line.split()[1:]
            current = out.setdefault(case, {}).setdefault(opt, [])
        elif not line.startswith("config_directory = "):  # postconf adds it for -c
            current.append(line)
    return out


@pytest.mark.docker
def test_real_postconf_sees_only_labgen_services_and_parameters(docker_ready, tmp_path):
    root = tmp_path / "cfg"
    cases: dict[str, tuple[str, Plan]] = {"benign": ("", plan_with())}
    for place in RENDERED:
        for case, value in HOSTILE.items():
            cases[f"{place.replace(' ', '-')}--{case}"] = (place, plan_with(place, value))
    for name, (_, plan) in cases.items():
        render_project(plan, tmp_path / "labs" / name, docker_ready)
        (root / name).mkdir(parents=True)
        for f in ("main.cf", "master.cf"):
            (root / name / f).write_text((tmp_path / "labs" / name / "gateway" / "postfix" / f).read_text())
    seen = _postconf(docker_ready, root)
    assert set(seen) == set(cases)

    base = seen["benign"]
    services = [" ".join(line.split()[:2]).replace(" ", "/") for line in base["M"]]
    assert services == BUILTIN_SERVICES + ["conn0/unix", "conn1/unix"]
    # conn1 is the Office 365 connector, at tls: secure: it verifies against the lab root.
    assert {line.split(" = ")[0] for line in base["P"]} == {
        f"{conn}/unix/{o}" for conn in ("conn0", "conn1") for o in CONNECTOR_OPTIONS
    } | {"conn1/unix/smtp_tls_CAfile"}
    template = (resource_dir("templates") / "postfix" / "main.cf.j2").read_text()
    assert {line.split(" =")[0] for line in base["n"]} == set(re.findall(r"^([a-z][A-Za-z_0-9]*) =", template, re.M))
    assert not any("warning" in line for lines in base.values() for line in lines)

    cert_lines = re.compile(r"(conn[01]/unix/smtp_tls_(cert|key)_file = )/lab/certs/\S+")
    for name, (place, plan) in cases.items():
        got = seen[name]
        assert got["n"] == base["n"], name
        if place == "cert key":
            files_of = connector_cert(plan)
            assert f"conn0/unix/smtp_tls_cert_file = /lab/{files_of.chain}" in got["P"], name
            assert all(CERT_OPTION.fullmatch(line.split(" = ")[1]) for line in got["P"] if "_file = " in line), name
            got = {k: [cert_lines.sub(r"\1X", line) for line in v] for k, v in got.items()}
            expected = {k: [cert_lines.sub(r"\1X", line) for line in v] for k, v in base.items()}
            got["M"] = [re.sub(r"/lab/certs/\S+", "X", line) for line in got["M"]]
            expected["M"] = [re.sub(r"/lab/certs/\S+", "X", line) for line in base["M"]]
            assert got == expected, name
        else:
            assert got == base, name
