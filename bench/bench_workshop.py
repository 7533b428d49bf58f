"""Workshop density (issue #11): `labgen workshop up broken --seats N` on the Docker engine, wall
time until every seat has given its verdict (the command returns then), each seat's verdict
checked (the exercise's starting state: to-fabrikam silently discarded, the rest delivered), then
the memory at rest of every seat (cgroup memory of its containers, `docker stats`, 20 s after
the last verdict).

The design measured is the pod seat (`--topology pod`, the default: two containers in one
network namespace); the baseline, in the same run and alternating with it, is the seat as it was
(`--topology network`: five containers on the seat's own network), with fewer seats by default
(--baseline-seats), since memory at rest is per seat and 150 containers started at once are
what once deadlocked this machine's dockerd. Workshops are the benchmark's own (a unique name),
removed by label at the end."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import tempfile
import time

from common import LABGEN, machine

_UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "kB": 1 / 1024, "MiB": 1.0, "MB": 1.0, "GiB": 1024.0, "GB": 1024.0}


def mib(usage: str) -> float:
    m = re.match(r"([\d.]+)\s*([A-Za-z]+)", usage.split("/")[0].strip())
    if not m:
        raise ValueError(f"unreadable docker stats figure {usage!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def seat_memory(workshop: str) -> dict[str, float]:
    """MiB of cgroup memory per seat, summed over its containers."""
    names = subprocess.run(
        ["docker", "ps", "--filter", f"label=io.labgen.workshop={workshop}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seats: dict[str, float] = {}
    for line in out.splitlines():
        name, usage = line.split(" ", 1)
        seat = re.search(r"-(s\d\d)-", name)
        if seat:
            seats[seat.group(1)] = seats.get(seat.group(1), 0.0) + mib(usage)
    return seats


def peaks(workshop: str) -> dict[str, list[float]]:
    """MiB of peak cgroup memory per container kind (lab, gateway, ...), page cache included:
    cgroup v1's memory.max_usage_in_bytes or v2's memory.peak (the Kubernetes limits' basis)."""
    out = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", f"label=io.labgen.workshop={workshop}"]
        + ["--format", '{{.ID}} {{.Label "io.labgen.service"}}'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kinds: dict[str, list[float]] = {}
    for line in out.splitlines():
        cid, kind = line.split(" ", 1)
        for path in (
            f"/sys/fs/cgroup/memory/docker/{cid}/memory.max_usage_in_bytes",
            f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.peak",
            f"/sys/fs/cgroup/docker/{cid}/memory.peak",
        ):
            try:
                with open(path) as f:
                    kinds.setdefault(kind, []).append(int(f.read()) / 2**20)
                break
            except OSError:
                continue
    return kinds


def one(seats: int, rest_s: float, topology: str) -> tuple[float, dict[str, float], dict[str, list[float]]]:
    name = f"bench-ws-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.monotonic()
            p = subprocess.run(
                [*LABGEN, "workshop", "up", "broken", "--seats", str(seats), "--name", name, "--workdir", tmp]
                + ["--topology", topology],
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - t0
            if p.returncode != 0:
                raise SystemExit(f"workshop up failed ({p.returncode}): {p.stdout[-800:]} {p.stderr[-800:]}")
            status = json.loads(
                subprocess.run(
                    [*LABGEN, "workshop", "status", name, "--json"], capture_output=True, text=True, check=True
                ).stdout
            )
            wrong = [r["seat"] for r in status["seats"] if "to-fabrikam silently_discarded" not in r["verdict"]]
            if len(status["seats"]) != seats or wrong:
                raise SystemExit(f"wrong verdicts: seats {wrong} of {len(status['seats'])}")
            time.sleep(rest_s)
            return wall, seat_memory(name), peaks(name)
        finally:
            subprocess.run([*LABGEN, "workshop", "down", name], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seats", type=int, default=30, help="pod seats (the design)")
    ap.add_argument("--baseline-seats", type=int, default=5, help="network seats (the baseline)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rest", type=float, default=20.0, help="seconds after the verdicts before memory is read")
    a = ap.parse_args()
    base_t, base_m, many_t, many_m = [], [], [], []
    pod_peaks: dict[str, list[float]] = {}
    for _ in range(a.runs):  # alternating: the baseline, then the design
        t, mem, _ = one(a.baseline_seats, a.rest, "network")
        base_t.append(t)
        base_m.append(statistics.median(mem.values()))
        t, mem, peak = one(a.seats, a.rest, "pod")
        for kind, values in peak.items():
            pod_peaks.setdefault(kind, []).extend(values)
        many_t.append(t)
        many_m.append(statistics.median(mem.values()))
        baseline = f"network {a.baseline_seats} seats {base_t[-1]:.1f} s {base_m[-1]:.0f} MiB/seat"
        print(f"run: {baseline}; pod {a.seats} seats {t:.1f} s {many_m[-1]:.0f} MiB/seat", flush=True)
    print(machine())
    spread = f"{min(many_t):.1f}-{max(many_t):.1f}"
    print(f"pod, {a.seats} seats, all verdicts: median {statistics.median(many_t):.1f} s ({spread})")
    print(f"pod, memory at rest per seat (cgroup, median over seats): median {statistics.median(many_m):.0f} MiB")
    print(
        f"network (baseline), {a.baseline_seats} seats, same run: {statistics.median(base_t):.1f} s, "
        f"{statistics.median(base_m):.0f} MiB/seat"
    )
    print(f"ratio (memory per seat, pod / network): {statistics.median(many_m) / statistics.median(base_m):.2f}")
    for kind, values in sorted(pod_peaks.items()):
        med, top = statistics.median(values), max(values)
        print(
            f"pod {kind} container, peak cgroup memory (page cache included): median {med:.0f} MiB, max {top:.0f} MiB"
        )


if __name__ == "__main__":
    main()
