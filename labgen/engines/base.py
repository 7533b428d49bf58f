"""The engine interface: what the runner needs from a place that can host a lab. Engines never
touch the model or the rules; they start the same services somewhere and hand back events."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..model.plan import Plan


class Engine(Protocol):
    name: str  # "local" | "docker"

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        """Engine-specific plan details (ports); returns the plan to save."""

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        """Start every service and wait until each answers (raise InfraError otherwise)."""

    def inject(self, plan: Plan, labdir: Path) -> None:
        """Run the traffic generators."""

    def events(self, plan: Plan, labdir: Path) -> list[dict]:
        """Every ledger event so far."""

    def finish(self, plan: Plan, labdir: Path) -> None:
        """After the verdict: stop what must not outlive the command."""

    def abort(self, plan: Plan, labdir: Path) -> None:
        """On failure or Ctrl-C: remove everything the engine started."""
