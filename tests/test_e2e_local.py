"""End to end on the local engine: real SMTP, TLS and DNS on loopback, no Docker."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES, by_id, labgen, labgen_json


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    code, doc = labgen_json("up", "broken", "--engine", "local", cwd=tmp_path_factory.mktemp("b"))
    assert code == 0, doc
    return doc


def test_broken_reproduces_the_silent_loss(broken):
    assert broken["schema"] == "labgen.result/v1" and broken["engine"] == "local"
    msgs = by_id(broken)
    lost = msgs[("to-fabrikam", "carol@fabrikam.example")]
    assert lost["outcome"] == "silently_discarded" and lost["ok"] is True
    # The gateway was told 250 by EOP...
    sent = [h for h in lost["hops"] if h["service"] == "gateway" and h["event"] == "sent"]
    assert sent and sent[-1]["reply"].startswith("250 2.6.0") and "Queued mail for delivery" in sent[-1]["reply"]
    assert sent[-1]["connector"] == "Internet"
    # ...the recipient's admin sees nothing...
    assert lost["recipient_trace_visible"] is False
    # ...and the ground truth names the connector and the certificate that caused it.
    assert lost["attribution"] == {"tenant": "contoso", "by": "certificate", "connector": "Inbound from gateway"}
    cert = lost["dropped_by"]["certificate"]
    assert cert["subject"] == "gw.contoso.example" and cert["self_signed"] is True and cert["trusted"] is False
    assert len(cert["fingerprint_sha256"]) == 95
    others = [m for k, m in msgs.items() if k[0] != "to-fabrikam"]
    assert others and all(m["outcome"] == "delivered" for m in others)
    s = broken["summary"]
    assert s["unaccounted"] == 0 and s["silently_discarded"] == 1 and s["expectations_failed"] == 0
    assert s["total"] == s["delivered"] + s["silently_discarded"]


def test_broken_mailboxes_and_ledger_on_disk(broken, tmp_path):
    from pathlib import Path

    run = Path(broken["lab_dir"]) / "run"
    assert not (run / "mailboxes" / "carol@fabrikam.example").exists()
    bob = list((run / "mailboxes" / "bob@contoso.example").glob("*.eml"))
    assert len(bob) == 2  # from-internet and internal-routing
    assert b"X-EOPTenantAttributedMessage:" in bob[0].read_bytes()
    assert (run / "eop.jsonl").is_file() and (run / "dns.jsonl").is_file()
    # Keys are private: 0600 in a 0700 lab directory.
    labdir = Path(broken["lab_dir"])
    assert labdir.stat().st_mode & 0o777 == 0o700
    assert (labdir / "certs" / "gw-selfsigned.key").stat().st_mode & 0o777 == 0o600


def test_fixed_delivers_everything(tmp_path):
    code, doc = labgen_json("up", "fixed", "--engine", "local", cwd=tmp_path)
    assert code == 0
    assert {m["outcome"] for m in doc["messages"]} == {"delivered"}
    fab = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert fab["attribution"]["by"] == "recipient" and fab["attribution"]["tenant"] == "fabrikam"
    assert fab["recipient_trace_visible"] is True
    assert doc["summary"]["unaccounted"] == 0


def test_compare_shows_exactly_the_fix(tmp_path):
    code, doc = labgen_json("compare", "broken", "fixed", "--engine", "local", cwd=tmp_path)
    assert code == 0 and doc["schema"] == "labgen.compare/v1"
    changed = [c for c in doc["changes"] if c["changed"]]
    assert [(c["id"], c["a"], c["b"]) for c in changed] == [("to-fabrikam", "silently_discarded", "delivered")]
    assert len(doc["changes"]) == 4


def test_compare_human_output_names_the_change(tmp_path):
    p = labgen("compare", "broken", "fixed", "--engine", "local", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "silently_discarded → delivered" in p.stdout
    assert "1 of 4 recipient outcome(s) changed" in p.stdout


def test_broken_human_output_says_where_the_loss_is(tmp_path):
    p = labgen("up", "broken", "--engine", "local", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "SILENT LOSS: to-fabrikam" in p.stdout
    assert "fabrikam's admin finds nothing in message trace" in p.stdout
    assert "All expectations held." in p.stdout


@pytest.mark.parametrize(
    "example,expected",
    [
        ("shared-egress-ip.yaml", {"to-fabrikam": ("silently_discarded", "ip")}),
        ("dedicated-egress-ip.yaml", {"to-fabrikam": ("delivered", "recipient")}),
        ("wildcard-connector-name.yaml", {"to-fabrikam": ("silently_discarded", "certificate")}),
        ("strict-eop-reject.yaml", {"to-fabrikam": ("rejected", "certificate")}),
        ("partner-requires-tls.yaml", {"to-fabrikam": ("deferred", "recipient")}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_user_written_scenarios(tmp_path, example, expected):
    code, doc = labgen_json("up", EXAMPLES / example, "--engine", "local", cwd=tmp_path)
    assert code == 0, doc["summary"]
    msgs = {m["id"]: m for m in doc["messages"]}
    for mid, (outcome, by) in expected.items():
        assert msgs[mid]["outcome"] == outcome
        assert msgs[mid]["attribution"]["by"] == by
    assert doc["summary"]["unaccounted"] == 0


def test_strict_eop_rejection_reaches_the_gateway_as_550(tmp_path):
    code, doc = labgen_json("up", EXAMPLES / "strict-eop-reject.yaml", "--engine", "local", cwd=tmp_path)
    m = {m["id"]: m for m in doc["messages"]}["to-fabrikam"]
    bounced = [h for h in m["hops"] if h["service"] == "gateway" and h["event"] == "bounced"]
    assert bounced and bounced[-1]["reply"].startswith("550 5.7.64 TenantAttribution; Relay Access Denied")


def test_wrong_expectation_exits_1_and_says_which(tmp_path):
    text = (EXAMPLES / "shared-egress-ip.yaml").read_text().replace("expect: silently_discarded", "expect: delivered")
    f = tmp_path / "wrong.yaml"
    f.write_text(text)
    p = labgen("up", f, "--engine", "local", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert (
        "expectation failed in shared-ip: to-fabrikam → carol@fabrikam.example: expected delivered, "
        "got silently_discarded" in p.stdout
    )


def test_certs_lists_every_certificate(tmp_path):
    code, doc = labgen_json("certs", "fixed", cwd=tmp_path)
    assert code == 0
    certs = {c["name"]: c for c in doc["certificates"]}
    assert certs["gw-public"]["issuer"] == "Labgen Public TLS CA 2026" and not certs["gw-public"]["self_signed"]
    assert certs["gw-selfsigned"]["self_signed"] and certs["gw-selfsigned"]["subject"] == "gw.contoso.example"
    assert certs["ca-intermediate"]["issuer"] == "Labgen Public Root CA"
    assert all(len(c["fingerprint_sha256"]) == 95 for c in certs.values())


def test_schema_and_scenarios(tmp_path):
    code, doc = labgen_json("scenarios", cwd=tmp_path)
    rows = {s["name"]: s for s in doc["scenarios"]}  # catalogue entries; the field report's pair first
    assert "broken" in rows and rows["broken"]["fixed"] == "fixed"
    p = labgen("schema", cwd=tmp_path)
    assert p.returncode == 0 and '"gateway"' in p.stdout and '"tenants"' in p.stdout


def _variant(tmp_path, name, edit):
    import yaml
    from conftest import REPO

    d = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())
    d["name"] = name
    edit(d)
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    return f


def test_expired_certificate_is_accepted_at_tls_and_recorded(tmp_path):
    """A declared but expired certificate still reaches EOP's rules; EOP records it as expired."""

    def edit(d):
        d["certificates"]["gw-selfsigned"].update(issuer="public", not_before_days=-400, valid_days=30)

    code, doc = labgen_json("up", _variant(tmp_path, "expired", edit), "--engine", "local", cwd=tmp_path)
    lost = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert lost["outcome"] == "silently_discarded"
    cert = lost["dropped_by"]["certificate"]
    assert cert["trusted"] is False and cert["self_signed"] is False
    assert cert["problem"].startswith("expired on ") and cert["trust_detail"] == cert["problem"]
    assert cert["chain_presented"] == 2  # the leaf and the lab's intermediate, as the gateway sends them


def test_untrusted_certificate_rejected_by_a_strict_eop(tmp_path):
    """eop.require_trusted_certificate (KB 3212877): the self-signed certificate gets 550 5.7.64."""

    def edit(d):
        d["eop"]["require_trusted_certificate"] = True
        for m in d["traffic"]:
            m["expect"] = (
                "rejected"
                if m["to"][0].endswith(("contoso.example", "onmicrosoft.test", "fabrikam.example"))
                else "delivered"
            )

    code, doc = labgen_json("up", _variant(tmp_path, "kb3212877", edit), "--engine", "local", cwd=tmp_path)
    assert code == 0, [(m["id"], m["outcome"], m["why"]) for m in doc["messages"]]
    m = by_id(doc)[("from-internet", "bob@contoso.example")]
    assert "550 5.7.64" in m["why"] and "KB 3212877" in m["why"]


def test_tls_required_but_not_used_is_deferred_until_the_deadline(tmp_path):
    """The Office 365 connector sends contoso's own mail without TLS to a RequireTls connector: 451,
    retried, deferred. (An internet sender's mail is attributed by recipient: no connector applies.)"""

    def edit(d):
        d["deadline_s"] = 2
        d["tenants"]["contoso"]["inbound_connectors"] = [
            {
                "name": "Inbound from gateway (IP)",
                "type": "OnPremises",
                "sender_ip_addresses": ["198.51.100.10/32"],
                "require_tls": True,
            }
        ]
        d["gateway"]["connectors"][1].update(tls="none")
        for m in d["traffic"]:
            m.pop("expect", None)

    code, doc = labgen_json("up", _variant(tmp_path, "notls", edit), "--engine", "local", cwd=tmp_path)
    assert code == 0
    m = by_id(doc)[("internal-routing", "bob@contoso.mail.onmicrosoft.test")]
    assert m["outcome"] == "deferred" and "451 5.7.3" in m["why"]
    deferred = [h for h in m["hops"] if h["event"] == "deferred"]
    assert len(deferred) >= 2  # the gateway retried
    assert by_id(doc)[("from-internet", "bob@contoso.example")]["outcome"] == "delivered"
    assert doc["summary"]["deferred"] == 1 and doc["summary"]["unaccounted"] == 0


def test_trace_shows_what_each_admin_sees(broken):
    from pathlib import Path

    wd = Path(broken["lab_dir"]).parent
    code, doc = labgen_json("trace", "fabrikam", "--lab", "broken", cwd=wd)
    assert code == 0 and doc["entries"] == []  # fabrikam's admin finds nothing
    code, doc = labgen_json("trace", "contoso", "--lab", "broken", cwd=wd)
    # The misattributed message is in the attributed tenant's trace (docs/fidelity.md: unsourced
    # for the seed, whose report speaks only of the recipient's).
    assert {(e["msgid"], e["status"]) for e in doc["entries"]} == {
        ("from-internet", "Delivered"),
        ("internal-routing", "Delivered"),
        ("to-fabrikam", "Failed"),
    }


def test_rejected_message_brings_an_ndr_to_the_sender(tmp_path):
    code, doc = labgen_json("up", EXAMPLES / "strict-eop-reject.yaml", "--engine", "local", cwd=tmp_path)
    m = by_id(doc)[("to-fabrikam", "carol@fabrikam.example")]
    assert m["outcome"] == "rejected" and m["ndr"]["mailbox"] == "alice@contoso.example"
    assert all(x["ndr"] is None for x in doc["messages"] if x["outcome"] == "delivered")
