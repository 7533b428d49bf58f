"""Bad input through the real command line: exit code 2, one line on stderr naming the file, no
traceback, nothing left behind (DESIGN.md §3). Every case runs `labgen validate` and
`labgen up --engine local` in a fresh directory."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

from labgen.resources import resource_dir

BROKEN = yaml.safe_load((resource_dir("scenarios") / "broken.yaml").read_text())


def _yaml(patch):
    def make(tmp_path, name):
        data = copy.deepcopy(BROKEN)
        patch(data)
        (tmp_path / name).write_text(yaml.safe_dump(data, sort_keys=False))
        return name

    return make


def _text(text):
    def make(tmp_path, name):
        (tmp_path / name).write_text(text)
        return name

    return make


def _name(ref):
    return lambda tmp_path, name: ref


def case(id, make, file, words, marks=()):
    """id, how to make the argument, the name the error must start with, words it must contain."""
    return pytest.param(make, file, words, id=id, marks=marks)


CASES = [
    case(
        "malformed-yaml",
        _text("name: bad\ntenants: [\n  contoso: x\n gateway: {\n"),
        "lab.yaml",
        ["line 4", "malformed YAML"],
    ),
    case("unknown-scenario-name", _name("nonesuch"), "nonesuch", ["unknown scenario"]),
    case("missing-scenario-file", _name("missing.yaml"), "missing.yaml", ["no such scenario file"]),
    case(
        "unknown-certificate",
        _yaml(lambda d: d["gateway"]["connectors"][0].update(certificate="gw-missing")),
        "lab.yaml",
        ["gateway.connectors[0].certificate", "unknown certificate"],
    ),
    case(
        "invalid-address",
        _yaml(lambda d: d["gateway"].update(address="10.0.0.5")),
        "lab.yaml",
        ["gateway.address", "10.0.0.5"],
    ),
    case(
        "invalid-email",
        _yaml(lambda d: d["traffic"][0].update({"from": "alice.contoso.example"})),
        "lab.yaml",
        ["traffic[0].from", "not a valid e-mail address"],
    ),
    case(
        "unknown-key", _yaml(lambda d: d["gateway"].update(colour="red")), "lab.yaml", ["gateway.colour", "unknown key"]
    ),
    case(
        "duplicate-host-address",
        _yaml(lambda d: d["gateway"].update(address="198.51.100.53")),
        "lab.yaml",
        ["gateway.address", "duplicate host address"],
    ),
]
COMMANDS = [pytest.param(["validate"], id="validate"), pytest.param(["up", "--engine", "local"], id="up-local")]


def run_cli(tmp_path, args):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "LABGEN_DEBUG", "LABGEN_WORKDIR")}
    return subprocess.run(
        [sys.executable, "-m", "labgen.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def assert_nothing_left(tmp_path):
    """No lab directory, and certainly no run directory with ledger files."""
    labs = [p for p in tmp_path.iterdir() if p.name.startswith("labgen-")]
    ledgers = [p for lab in labs for p in (lab / "run").glob("*.jsonl")] if labs else []
    assert not ledgers, ledgers
    assert not labs, labs


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("make, file, words", CASES)
def test_bad_input(tmp_path, command, make, file, words):
    arg = make(tmp_path, "lab.yaml")
    res = run_cli(tmp_path, [*command, arg])
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr  # one line, however long (never wrapped)
    message = lines[0]
    assert message.startswith(f"labgen: {file}: ") and message.strip() == message, res.stderr
    for word in words:
        assert word in message, res.stderr
    assert res.stdout == ""
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
def test_duplicate_host_address_fails_cleanly(tmp_path, command):
    """The planner's errors (found after validation) fail as cleanly as the validator's."""
    arg = _yaml(lambda d: d["gateway"].update(address="198.51.100.53"))(tmp_path, "lab.yaml")
    res = run_cli(tmp_path, [*command, arg])
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and "gateway.address: duplicate host address 198.51.100.53" in lines[0], res.stderr
    assert_nothing_left(tmp_path)


def test_debug_shows_the_traceback(tmp_path):
    res = run_cli(tmp_path, ["--debug", "validate", "nonesuch"])
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "InputError" in res.stderr


def test_valid_scenario_validates(tmp_path):
    res = run_cli(tmp_path, ["validate", "broken"])
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout
    assert_nothing_left(tmp_path)
