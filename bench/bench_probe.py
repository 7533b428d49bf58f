"""The health probe's cost: CPU seconds (user + system, of the probe process) of one
`python3 -m labgen.lab.entrypoints SERVICE --probe` against a running lab, the way Docker runs it
in every container every interval, against the probe as it was before (labgen's model imported,
the plan validated with pydantic, then the same check), alternating in the same run. CPU time, not
wall time: on a loaded machine (where probes matter: many labs, many seats) wall time is mostly
waiting. The lab is a local-engine copy of `broken` under a unique name, removed at the end."""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import LABGEN, alternate, machine

REPO = Path(__file__).resolve().parent.parent
OLD_PROBE = (
    "import sys; from pathlib import Path; from labgen.model.plan import Plan; "
    "from labgen.lab.entrypoints import answers; "
    "sys.exit(0 if answers(Plan.load(Path(sys.argv[1]) / 'plan.json'), sys.argv[2]) else 1)"
)


def cpu_of(cmd: list[str]) -> float:
    """CPU seconds of one child process (and its children), which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--service", default="eop", choices=["dns", "eop", "sink", "gateway"])
    a = ap.parse_args()
    lab = f"bench-probe-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / f"{lab}.yaml"
        scenario.write_text(
            (REPO / "labgen" / "scenarios" / "broken.yaml").read_text().replace("name: broken", f"name: {lab}")
        )
        env = {**os.environ}
        subprocess.run(
            [*LABGEN, "up", str(scenario), "--engine", "local", "--keep", "--workdir", tmp],
            check=True,
            capture_output=True,
            env=env,
        )
        labdir = str(Path(tmp) / f"labgen-{lab}")
        try:
            samples = alternate(
                {
                    "probe": lambda: cpu_of(
                        [sys.executable, "-m", "labgen.lab.entrypoints", a.service, "--probe", "--lab", labdir]
                    ),
                    "old probe": lambda: cpu_of([sys.executable, "-c", OLD_PROBE, labdir, a.service]),
                },
                a.runs,
            )
        finally:
            subprocess.run([*LABGEN, "down", lab], capture_output=True)
    new, old = statistics.median(samples["probe"]), statistics.median(samples["old probe"])
    print(machine())
    print(
        f"probe ({a.service}), CPU seconds: median {new:.3f} ({min(samples['probe']):.3f}-{max(samples['probe']):.3f})"
    )
    lo, hi = min(samples["old probe"]), max(samples["old probe"])
    print(f"old probe (model + pydantic), same run: median {old:.3f} ({lo:.3f}-{hi:.3f})")
    print(f"ratio {new / old:.2f}")


if __name__ == "__main__":
    main()
