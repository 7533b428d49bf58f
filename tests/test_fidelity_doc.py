"""docs/fidelity.md pins each behaviour to the tests that hold it: every test it names must
exist (collected by pytest, parameters included), so a renamed test cannot leave a row unpinned."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

_REF = re.compile(r"`(tests/[\w/]+\.py)::([\w\[\]\-.]+)`")


def test_every_test_the_fidelity_table_names_exists():
    text = (REPO / "docs" / "fidelity.md").read_text()
    # The legend's placeholder (`tests/file.py::test_name[id]`) is no reference.
    refs = sorted(r for r in set(_REF.findall(text)) if r[0] != "tests/file.py")
    gone = sorted({f for f, _ in refs if not (REPO / f).is_file()})
    assert not gone, f"docs/fidelity.md names test files that do not exist: {gone}"
    assert len(refs) > 50, "the table pins its rows to tests"
    files = sorted({f for f, _ in refs})
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    collected = {line.strip() for line in out.splitlines() if "::" in line}
    names = {c.split("[")[0] for c in collected}
    missing = [f"{f}::{t}" for f, t in refs if f"{f}::{t}" not in collected and f"{f}::{t}" not in names]
    assert not missing, f"docs/fidelity.md names tests that do not exist: {missing}"
