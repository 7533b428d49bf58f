"""Fuzzing scenario files (labgen issue 6): mutate the built-in and example scenarios the way
hand-edited or hostile files go wrong, and hold labgen to its promises for bad input:

- `labgen validate` exits 0 or 2, never 3; on 2 it prints exactly one line on stderr of at
  most 300 characters with no control characters;
- whatever `validate` accepts, `labgen up --engine local` runs without an "unexpected" exit 3.

Reproducible: hypothesis runs derandomized with a bounded number of examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labgen.cli import main
from labgen.resources import resource_dir

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted(resource_dir("scenarios").glob("*.yaml")) + sorted((REPO / "examples").glob("*.yaml"))
SEED_TEXT = {p.name: p.read_text() for p in SEEDS}
SEED_DATA = {name: yaml.safe_load(text) for name, text in SEED_TEXT.items()}

HOSTILE_STRINGS = [
    "",
    " ",
    "x" * 5000,
    "a\x00b",
    "line1\nline2",
    "carol@fabrikam.example\r\nRCPT TO:<x@y>",
    "\x1b[31mred\x1b[0m",
    "[/]",
    "[bold]x[/bold]",
    "../../escape/pwned",
    "/etc/passwd",
    "..",
    "\u202egnp.exe",
    "caf\u00e9",
    "\ud800",
    "*",
    "*.",
    "-",
    "gw-selfsigned\n",
    "broken\n",
    "alice@contoso.example\n",
    "198.51.100.10\n",
    "0.0.0.0",
    "127.0.0.1",
    "10.0.0.1/8",
    "198.51.100.0/24",
    "::1",
    "%s%n{}",
    "$(touch /tmp/pwned)",
    "'; DROP",
    "null",
    "~",
]
HOSTILE_SCALARS = [0, -1, 1, 10**30, -(10**30), 2**63, 1.5, float("inf"), float("nan"), True, False, None]


class Dup(list):
    """A mapping written with a duplicated key: a list of (key, value) pairs."""


class Raw(str):
    """YAML text written as is (nesting too deep to build as Python objects)."""


def to_text(obj, indent: int = 0) -> str:
    """YAML text of obj (JSON flow style, which is YAML; one mapping entry a line), with Dup
    written as a mapping that repeats a key. Non-finite floats are written the YAML way."""
    if isinstance(obj, Raw):
        return str(obj)
    pad = "\n" + " " * (indent + 1)
    if isinstance(obj, (dict, Dup)):
        pairs = obj if isinstance(obj, Dup) else obj.items()
        return "{" + ",".join(f"{pad}{to_text(k)}: {to_text(v, indent + 1)}" for k, v in pairs) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(to_text(v, indent + 1) for v in obj) + "]"
    if isinstance(obj, float) and obj != obj:
        return ".nan"
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return ".inf" if obj > 0 else "-.inf"
    if isinstance(obj, str):
        return json.dumps(obj)  # \uXXXX escapes are YAML double-quoted escapes too
    return json.dumps(obj)


def paths(obj: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (container path, key or index) in obj. A step is a YAML key (any scalar) or a list index."""
    out: list[tuple[Any, ...]] = []
    items: Iterable[tuple[Any, Any]]
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return out
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(paths(v, prefix + (k,)))
    return out


def at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def nested(depth: int) -> Raw:
    return Raw("[" * depth + '"x"' + "]" * depth)


values = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(HOSTILE_SCALARS),
    st.text(max_size=30),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.builds(nested, st.sampled_from([1, 3, 49, 60])),
    st.just([]),
    st.just({}),
    st.lists(st.sampled_from(HOSTILE_STRINGS), max_size=3),
    st.dictionaries(st.sampled_from(HOSTILE_STRINGS), st.sampled_from(HOSTILE_STRINGS), max_size=2),
)


@st.composite
def mutated_files(draw) -> str:
    seed = draw(st.sampled_from(sorted(SEED_TEXT)))
    kind = draw(st.sampled_from(["drop", "replace", "hostile", "deep", "duplicate", "rename", "truncate", "combo"]))
    if kind == "truncate":
        text = SEED_TEXT[seed]
        return text[: draw(st.integers(min_value=0, max_value=len(text)))]
    data = json.loads(json.dumps(SEED_DATA[seed]))  # a deep copy
    for _ in range(draw(st.integers(min_value=2, max_value=4)) if kind == "combo" else 1):
        step = kind if kind != "combo" else draw(st.sampled_from(["drop", "replace", "hostile", "duplicate", "rename"]))
        where = draw(st.sampled_from(paths(data)))
        parent, key = at(data, where[:-1]), where[-1]
        if isinstance(parent, Dup) or not isinstance(parent, (dict, list)):
            continue
        if step == "drop":
            del parent[key]
        elif step == "replace":
            parent[key] = draw(values)
        elif step == "hostile":  # a hostile scalar where the file had one
            parent[key] = draw(st.sampled_from(HOSTILE_STRINGS + HOSTILE_SCALARS))
        elif step == "deep":
            # 600 overflowed the stack; hypothesis raises the recursion limit while it runs a test
            parent[key] = nested(draw(st.sampled_from([49, 60, 600, 5000])))
        elif step == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(HOSTILE_STRINGS))] = parent.pop(key)
        elif step == "duplicate" and isinstance(parent, dict):
            pairs = Dup(parent.items())
            pairs.append((key, draw(st.one_of(st.just(parent[key]), values))))
            container = at(data, where[:-2]) if len(where) >= 2 else None
            if container is None:
                return to_text(pairs)
            container[where[-2]] = pairs
    return to_text(data)


def check_validate(path: Path) -> bool:
    """Run `labgen validate`; assert the bad-input contract; True when accepted."""
    res = CliRunner().invoke(main, ["validate", str(path)])
    stderr = res.stderr
    assert res.exit_code in (0, 2), (res.exit_code, stderr, path.read_text()[:500])
    if res.exit_code == 2:
        assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
        line = stderr[:-1]
        assert len(line) <= 300, line
        assert line.isprintable(), repr(line)
        assert line.startswith(f"labgen: {path}: "), line
        return False
    return True


def test_fuzz_validate_then_up(tmp_path):
    accepted: list[str] = []
    counter = iter(range(10**6))

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(mutated_files())
    def validate_mutant(text):
        path = tmp_path / f"mutant-{next(counter)}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        if check_validate(path):
            accepted.append(text)

    validate_mutant()
    # Most mutants must be refused (the mutations are hostile), but some must pass, or the
    # `up` half below would test nothing.
    assert accepted, "no mutant was accepted"
    sample = accepted[:: max(1, len(accepted) // 25)][:25]
    assert run_up_on(sample, tmp_path) == len(sample)


def run_up_on(texts: list[str], tmp_path: Path) -> int:
    """`labgen up --engine local` on each accepted text, a few at a time; returns how many ran."""
    env = {k: v for k, v in os.environ.items() if k not in ("LABGEN_DEBUG", "LABGEN_WORKDIR")}

    def up(i_text):
        i, text = i_text
        data = yaml.safe_load(text)
        # A mutant may defer mail; a short deadline keeps a deferral from costing 15 s (the
        # deadline is its own validated field, so the file stays an accepted one).
        data["deadline_s"] = min(float(data.get("deadline_s", 15.0)), 2.0)
        data.setdefault("name", f"fuzz-{i}")
        work = tmp_path / f"up-{i}"
        work.mkdir()
        (work / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "labgen.cli",
                "up",
                "lab.yaml",
                "--engine",
                "local",
                "--workdir",
                str(work),
                "--json",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        return text, res

    ran = 0
    with ThreadPoolExecutor(max_workers=6) as pool:
        for text, res in pool.map(up, enumerate(texts)):
            # 0/1: ran (an expectation may fail after a mutation); 2 would mean validate and up
            # disagree; 3 with "unexpected" is a crash.
            assert res.returncode in (0, 1), (res.returncode, res.stderr[-2000:], text[:2000])
            doc = json.loads(res.stdout)
            assert doc["summary"]["unaccounted"] == 0
            ran += 1
    return ran


@pytest.mark.parametrize("seed", sorted(SEED_TEXT))
def test_seeds_are_valid(seed, tmp_path):
    """The seeds themselves validate, and round-trip through the mutator's writer."""
    path = tmp_path / seed
    path.write_text(to_text(SEED_DATA[seed]))
    assert check_validate(path)
