"""How often does a strict-EOP run name the NDR? Runs examples/strict-eop-reject.yaml N times on
one engine and counts the runs whose rejected message has its NDR in alice's mailbox, both in the
host's verdict and in the lab's own run/result.json (Docker). The target is N/N: a verdict that
waits for every hop's own disposition does not depend on timing.

    .venv/bin/python bench/strict_eop_repeat.py [--runs 20] [--engine docker|local]

The lab runs under its own name (strict-bench-<random>, or $LABGEN_BENCH_PREFIX-...) on a free
subnet and is removed by that name at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import LABGEN, machine

REPO = Path(__file__).resolve().parent.parent


def ndr_named(doc: dict) -> bool:
    m = next(m for m in doc["messages"] if m["id"] == "to-fabrikam")
    bounced = any(h["service"] == "gateway" and h["event"] == "bounced" for h in m["hops"])
    return m["outcome"] == "rejected" and bounced and bool(m["ndr"]) and m["ndr"].get("mailbox") == m["from"]


def free_subnet() -> str:
    import ipaddress

    from labgen.engines.dockerapi import client

    taken = [
        ipaddress.ip_network(c["Subnet"], strict=False)
        for n in client().networks.list()
        for c in (n.attrs.get("IPAM") or {}).get("Config") or []
        if c.get("Subnet")
    ]
    for third in range(100, 256):
        net = ipaddress.ip_network(f"198.19.{third}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4):
            return str(net)
    raise SystemExit("no free /24 in 198.19.100.0-198.19.255.0")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--engine", choices=["docker", "local"], default="docker")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strict-bench-"))
    data = yaml.safe_load((REPO / "examples" / "strict-eop-reject.yaml").read_text())
    name = data["name"] = f"{os.environ.get('LABGEN_BENCH_PREFIX', 'strict-bench')}-{secrets.token_hex(3)}"
    scenario = work / f"{name}.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    extra = ["--subnet", free_subnet()] if a.engine == "docker" else []
    host_ok = lab_ok = 0
    durations = []
    try:
        for i in range(a.runs):
            p = subprocess.run(
                [*LABGEN, "up", str(scenario), "--engine", a.engine, "--json", *extra],
                cwd=work,
                capture_output=True,
                text=True,
            )
            if p.returncode not in (0, 1):
                print(f"run {i + 1}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
                continue
            doc = json.loads(p.stdout)
            durations.append(doc["duration_s"])
            host_ok += ndr_named(doc)
            if a.engine == "docker":
                result = Path(doc["lab_dir"]) / "run" / "result.json"
                until = time.monotonic() + 60  # upper bound for the traffic container's verdict
                while not result.exists() and time.monotonic() < until:
                    time.sleep(0.2)
                lab_ok += result.exists() and ndr_named(json.loads(result.read_text()))
    finally:
        if a.engine == "docker":
            subprocess.run([*LABGEN, "down", name], cwd=work, capture_output=True)
    print(f"strict-eop-reject on {a.engine}, {a.runs} runs ({machine()})")
    print(f"NDR named in the host's verdict: {host_ok}/{a.runs}")
    if a.engine == "docker":
        print(f"NDR named in the lab's run/result.json: {lab_ok}/{a.runs}")
    if durations:
        print(f"run duration: min {min(durations):.2f} s, max {max(durations):.2f} s")
    return 0 if host_ok == a.runs and (a.engine != "docker" or lab_ok == a.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
