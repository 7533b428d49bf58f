"""Many messages a run (issue 7 §4), on labs of the benchmark's own (copies of `broken` under a
unique name whose four messages carry `count:`):
1. local engine: `labgen up LAB --engine local --json` with --count messages (target: 10,000
   with every one accounted for in ≤ 60 s), against the named baseline --baseline-count messages
   alternating in the same run (linear scaling reads as a ratio of count / baseline-count);
2. Docker engine (unless --no-docker; --no-local runs this part alone): messages per second
   through Postfix and the fake EOP (target ≥ 100 msg/s), from the ledgers: first submission
   to the last mailbox or discard record; baseline the same figure of the local engine's built-in gateway, alternating.
Every run must account for every message (0 unaccounted), or the benchmark fails."""

from __future__ import annotations

import argparse
import copy
import json
import secrets
import statistics
import subprocess
import tempfile
from pathlib import Path

import yaml
from bench_docker import free_subnet
from common import LABGEN, alternate, machine

REPO = Path(__file__).resolve().parent.parent
BROKEN = yaml.safe_load((REPO / "labgen" / "scenarios" / "broken.yaml").read_text())


def scenario(root: Path, count: int) -> tuple[str, Path]:
    data = copy.deepcopy(BROKEN)
    data["name"] = f"bench-scale-{secrets.token_hex(3)}"
    data["deadline_s"] = 600
    for m in data["traffic"]:
        m["count"] = count // len(data["traffic"])
    path = root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data["name"], path


def up(path: Path, root: Path, *extra: str) -> dict:
    p = subprocess.run([*LABGEN, "up", str(path), "--json", *extra], cwd=root, capture_output=True, text=True)
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"labgen up failed ({p.returncode}): {p.stderr[-2000:]}") from None
    s = doc["summary"]
    if p.returncode != 0 or s["unaccounted"] or s["deferred"]:
        raise SystemExit(f"not every message accounted for ({p.returncode}): {s}\n{p.stderr[-1000:]}")
    return doc


def msg_per_s(doc: dict) -> float:
    """Messages over the time from the first submission to the last final record (a mailbox or
    EOP's discard): the lab's throughput, without start-up and settle polling."""
    run = Path(doc["lab_dir"]) / "run"
    first = min(
        json.loads(line)["ts"] for line in (run / "traffic.jsonl").read_text().splitlines() if '"submitted"' in line
    )
    last = max(
        json.loads(line)["ts"]
        for f in ("eop.jsonl", "sink.jsonl")
        if (run / f).is_file()
        for line in (run / f).read_text().splitlines()
        if '"delivered"' in line or '"discarded"' in line
    )
    return doc["summary"]["total"] / (last - first)


def local_scaling(big: Path, small: Path, root: Path, a: argparse.Namespace) -> None:
    def timed(path: Path) -> float:
        return float(up(path, root, "--engine", "local")["duration_s"])

    s = alternate({"big": lambda: timed(big), "small": lambda: timed(small)}, a.runs)
    mb, ms = statistics.median(s["big"]), statistics.median(s["small"])
    print(
        f"local, {a.count} messages: median {mb:.1f} s ({', '.join(f'{x:.1f}' for x in s['big'])}), "
        f"0 unaccounted in every run; baseline {a.baseline_count} messages: median {ms:.1f} s; "
        f"ratio {mb / ms:.1f}× for {a.count / a.baseline_count:.0f}× the messages"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--baseline-count", type=int, default=1_000)
    ap.add_argument("--docker-count", type=int, default=2_000)
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--no-local", action="store_true", help="skip part 1 (the local engine's --count run)")
    a = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="labgen-bench-scale-") as tmp:
        root = Path(tmp)
        _, big = scenario(root, a.count)
        _, small = scenario(root, a.baseline_count)
        if not a.no_local:
            local_scaling(big, small, root, a)
        if a.no_docker:
            return
        name, dock = scenario(root, a.docker_count)
        _, loc = scenario(root, a.docker_count)
        subnet = free_subnet()
        try:
            r = alternate(
                {
                    "docker": lambda: msg_per_s(up(dock, root, "--engine", "docker", "--subnet", subnet)),
                    "local": lambda: msg_per_s(up(loc, root, "--engine", "local")),
                },
                a.runs,
            )
        finally:
            subprocess.run([*LABGEN, "down", name], cwd=root, capture_output=True)
        md, ml = statistics.median(r["docker"]), statistics.median(r["local"])
        print(
            f"docker, {a.docker_count} messages through Postfix and the fake EOP: median {md:.0f} msg/s "
            f"({', '.join(f'{x:.0f}' for x in r['docker'])}); baseline local engine (built-in gateway): "
            f"median {ml:.0f} msg/s; ratio {md / ml:.2f}"
        )


if __name__ == "__main__":
    main()
