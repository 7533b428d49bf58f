"""A user's own Postfix configuration as the gateway (gateway.postfix_config): the directory's
checks before anything starts, the parsing they rest on, and the seed's gateway written by hand
(examples/own-postfix) giving the seed's verdicts in real Postfix on Docker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, by_id, labgen, labgen_json

from labgen.model.postfix_dir import main_cf_parameters, master_cf_options

EXAMPLE = REPO / "examples" / "own-postfix"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "own-postfix"
    shutil.copytree(EXAMPLE, dst)
    return dst


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a = 1\nb = x\n  y\n# c = 3\n", {"a": "1", "b": "x y"}),
        ("a = 1\na = 2\n", {"a": "2"}),
        ("a =\n", {"a": ""}),
        ("  # indented comment\nk = v # not a comment in Postfix\n", {"k": "v # not a comment in Postfix"}),
    ],
)
def test_main_cf_parameters(text, expected):
    assert main_cf_parameters(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("o365 unix - - n - - smtp\n  -o a=1\n  -o b=2\n", [("o365/unix", "a", "1"), ("o365/unix", "b", "2")]),
        ("smtp inet n - y - - smtpd -o x=y\n", [("smtp/inet", "x", "y")]),
        ("# o365 unix - - n - - smtp\n#  -o a=1\n", []),
        (
            "relay unix - - n - - smtp\n  -o syslog_name=postfix/$service_name\n",
            [("relay/unix", "syslog_name", "postfix/$service_name")],
        ),
    ],
)
def test_master_cf_options(text, expected):
    assert master_cf_options(text) == expected


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / "postfix-broken" / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda r: None, None),
        (lambda r: (r / "postfix-broken" / "master.cf").unlink(), "has no master.cf"),
        (lambda r: shutil.rmtree(r / "postfix-broken"), "not a directory"),
        (lambda r: (r / "postfix-broken" / "tls" / "gw.pem").unlink(), "the directory has no 'tls/gw.pem'"),
        (lambda r: (r / "postfix-broken" / "link").symlink_to("/etc/passwd"), "'link' is a link or special file"),
        (lambda r: (r / "postfix-broken" / "bad name").write_text(""), "'bad name': rename it"),
        (
            lambda r: _edit(r, "main.cf", "/etc/postfix/tls/gw.key, ", "/etc/ssl/private/gw.key, "),
            "smtpd_tls_chain_files names '/etc/ssl/private/gw.key', outside /etc/postfix",
        ),
        (
            lambda r: _edit(r, "main.cf", "hash:/etc/postfix/transport", "lmdb:/etc/postfix/transport"),
            "uses table type lmdb, which the lab's Postfix does not have",
        ),
        (
            lambda r: _edit(r, "master.cf", "/etc/postfix/tls/gw.pem\n", "/etc/postfix/tls/other.pem\n"),
            "master.cf o365/unix: smtp_tls_chain_files names '/etc/postfix/tls/other.pem'",
        ),
        # $config_directory is where the directory is installed: the file is found there.
        (lambda r: _edit(r, "main.cf", "hash:/etc/postfix/transport", "hash:$config_directory/transport"), None),
        (
            lambda r: _edit(r, "main.cf", "hash:/etc/postfix/transport", "hash:${config_directory}/nowhere"),
            "the directory has no 'nowhere'",
        ),
    ],
)
def test_config_dir_checked_before_anything_starts(tmp_path, change, error):
    root = _copy(tmp_path)
    change(root)
    p = labgen("validate", str(root / "broken.yaml"), cwd=tmp_path)
    if error is None:
        assert p.returncode == 0, p.stderr
        return
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and "broken.yaml: gateway.postfix_config: 'postfix-broken'" in line, line
    assert error in line, line


def test_local_engine_refuses_it(tmp_path):
    p = labgen("up", str(EXAMPLE / "broken.yaml"), "--engine", "local", "--workdir", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "run it with --engine docker" in p.stderr, p.stderr
    assert not list(tmp_path.glob("labgen-*")), "nothing is created"


def test_render_copies_the_directory_as_it_is(tmp_path):
    out = tmp_path / "project"
    p = labgen("render", str(EXAMPLE / "broken.yaml"), "-o", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for rel in ("main.cf", "master.cf", "transport", "relay_recipients", "tls/gw.pem"):
        assert (out / "gateway" / "postfix" / rel).read_bytes() == (EXAMPLE / "postfix-broken" / rel).read_bytes()


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["broken", "fixed"])
def test_hand_written_config_reproduces_the_seed(tmp_path, test_labs, kind):
    """The seed's gateway as its admins would write it, run as it is (but for the documented
    overrides) in real Postfix: the seed's verdicts, and EOP saw the certificate it names."""
    root = _copy(tmp_path)
    lab = test_labs.new(str(root / f"{kind}.yaml"), f"own{kind[0]}", beside=True)
    code, doc = labgen_json("up", str(lab.scenario), "--engine", "docker", "--subnet", lab.subnet, cwd=tmp_path)
    assert code == 0, [m for m in doc["messages"] if m["ok"] is False]
    msgs = by_id(doc)
    fab = msgs[("to-fabrikam", "carol@fabrikam.example")]
    assert fab["outcome"] == ("silently_discarded" if kind == "broken" else "delivered"), fab["why"]
    assert all(m["outcome"] == "delivered" for k, m in msgs.items() if k[0] != "to-fabrikam")
    eop = next(h for h in fab["hops"] if h["service"] == "eop" and h.get("certificate"))
    cn = "gw.contoso.example" if kind == "broken" else "mta.contoso.example"
    assert eop["certificate"]["subject"] == cn and eop["certificate"]["sans"] == [cn], eop
    # The user's transports ran: contoso's own mail left through o365, other mail through smtp.
    inbound = msgs[("from-internet", "bob@contoso.example")]
    assert [h["connector"] for h in inbound["hops"] if h["service"] == "gateway" and h["event"] == "sent"] == ["o365"]
    assert next(h for h in fab["hops"] if h["service"] == "gateway")["tls"]["version"].startswith("TLSv1.")
    report = json.loads((Path(doc["lab_dir"]) / "run" / "gateway-config.json").read_text())
    changed = {o["parameter"]: o for o in report["overrides"]}
    assert changed["smtp_tls_CAfile"]["was"] == "/etc/ssl/certs/ca-certificates.crt"
    assert changed["mynetworks"]["now"].endswith(f"{lab.ip('198.18.86.40' if kind == 'broken' else '198.18.88.40')}/32")
    # Only the documented list: nothing else of the user's was touched.
    documented = (REPO / "docs" / "own-postfix.md").read_text()
    assert all(f"`{p}`" in documented for p in changed), sorted(changed)
    assert {t["service"] for t in report["transports"]} >= {"smtp", "o365"}
    assert report["postfix_check"] == [line for line in report["postfix_check"] if "warning" not in line]


def test_log_of_a_users_transports():
    """A user's configuration logs its default transport as postfix/smtp and others under their
    syslog names: each delivery names its transport and keeps the TLS its process negotiated."""
    from labgen.engines.postfix import parse_log
    from labgen.model.plan import make_plan
    from labgen.model.scenario import load_scenario

    plan = make_plan(load_scenario(str(EXAMPLE / "broken.yaml")), "docker").model_copy(update={"run_id": "0a1b2c3d"})
    log = [
        "Dec  7 14:00:01 gw postfix/cleanup[90]: 1A2B3C4D5E: message-id=<to-fabrikam.0a1b2c3d@traffic.labgen.test>",
        "Dec  7 14:00:01 gw postfix/smtp[91]: Untrusted TLS connection established to "
        "fabrikam-example.mail.protection.outlook.test[198.18.86.25]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384",
        "Dec  7 14:00:01 gw postfix/smtp[91]: 1A2B3C4D5E: to=<carol@fabrikam.example>, "
        "relay=fabrikam-example.mail.protection.outlook.test[198.18.86.25]:25, delay=0.1, delays=0/0/0/0, "
        "dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)",
        "Dec  7 14:00:02 gw postfix-gw/o365/smtp[92]: 1A2B3C4D5E: to=<bob@contoso.example>, "
        "relay=contoso.mail.protection.outlook.test[198.18.86.25]:25, delay=0.1, delays=0/0/0/0, "
        "dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)",
    ]
    sent = [e for e in parse_log(log, plan) if e.event == "sent"]
    assert [(e.connector, e.tls.version if e.tls else None) for e in sent] == [("smtp", "TLSv1.3"), ("o365", None)]
    assert all(e.tls is None or e.tls.client_certificate is None for e in sent)  # EOP says which it was


def _lint(path: Path, cwd: Path) -> dict:
    p = labgen("lint", str(path), "--json", cwd=cwd)
    assert p.returncode in (0, 1), p.stderr
    return json.loads(p.stdout)


def test_lint_reads_the_configuration_not_the_description(tmp_path):
    """lint judges the transports the Postfix configuration runs: the seed's defect in broken's
    configuration, none in fixed's; and says so when the scenario's connectors describe another."""
    broken = _lint(EXAMPLE / "broken.yaml", tmp_path)["findings"]
    assert [(f["rule"], f["path"]) for f in broken] == [("LG001", "gateway.postfix_config")], broken
    assert "'o365' (to contoso.mail.protection.outlook.test), 'smtp' (to MX)" in broken[0]["message"]
    assert _lint(EXAMPLE / "fixed.yaml", tmp_path)["findings"] == []

    root = _copy(tmp_path)
    # fixed's configuration, described as if the Internet connector still presented gw: LG016.
    text = (root / "fixed.yaml").read_text()
    (root / "fixed.yaml").write_text(text.replace("      certificate: mta\n", "      certificate: gw\n"))
    found = _lint(root / "fixed.yaml", tmp_path)["findings"]
    assert [f["rule"] for f in found] == ["LG016"], found
    assert "sends * to MX presenting mta.contoso.example" in found[0]["message"]

    # A transport table lint cannot read is a note, not a guess.
    _edit(
        root,
        "main.cf",
        "transport_maps = hash:/etc/postfix/transport",
        "transport_maps = regexp:/etc/postfix/transport",
    )
    notes = [f for f in _lint(root / "broken.yaml", tmp_path)["findings"] if f["rule"] == "LG017"]
    assert notes and "regexp:/etc/postfix/transport: not read" in notes[0]["message"], notes


def test_graph_draws_the_configurations_transports(tmp_path):
    out = tmp_path / "g.mmd"
    p = labgen("graph", str(EXAMPLE / "broken.yaml"), "--format", "mermaid", "-o", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert "send connector o365" in text and "send connector smtp" in text
    assert text.count("your file postfix-broken/tls/gw.pem") == 2  # both transports present it
    assert "Postfix configuration: yours: postfix-broken" in text
