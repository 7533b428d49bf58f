"""The engine interface: everything the runner and the CLI need from a place that can host a lab,
from address placement to removal (Kathará's manager interface). Engines never touch the model
or the rules; they start the same services somewhere. A new engine is one module implementing
Engine plus one line in engines/__init__.py's ENGINES."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..model.plan import Plan

# What status() reports is the published contract itself (labgen.status/v1 rows), not a copy.
from ..results.contracts import LabRow

# Where the planner puts one of the scenario's addresses (None from Engine.place: where it is).
Mover = Callable[[str], str]


@dataclass(frozen=True)
class Removed:
    lab: str
    engine: str
    parts: dict[str, list[str]] = field(default_factory=dict)  # kind -> names ("containers": [...])

    def as_dict(self) -> dict:
        return asdict(self)


class Engine(Protocol):
    name: str  # "local" | "docker"
    topology: Literal["network", "pod"]  # Plan.topology: how the lab's services share a network
    runs_gateway_images: bool  # can it run the user's own gateway image (gateway.image)?
    can_render: bool  # does `render` write a project to run by hand?
    real_postfix: bool  # is its gateway real Postfix (gateway.postfix_config can run)?
    writes_own_result: bool  # does the lab write its own verdict to run/result.json (Docker's traffic)?

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Can this engine run labs here, and why (or why not), in words."""
        ...

    def render(self, plan: Plan, labdir: Path) -> str:
        """Write the lab as a project to run by hand (can_render engines); returns how to run it."""
        ...

    def place(self, net: ipaddress.IPv4Network, subnet: str | None) -> Mover | None:
        """How this engine places the scenario's subnet `net` (moved to `subnet` when the user
        asked): a function from a scenario address to the lab's, or None to keep them. Bad
        `subnet` raises InputError."""
        ...

    def prepare(self, plan: Plan, labdir: Path) -> Plan:
        """Before the run directory is renewed: replace a lab of the same name this engine still
        runs, and fill in engine details (ports); returns the plan to save."""
        ...

    def start(self, plan: Plan, labdir: Path, deadline: float) -> None:
        """Start every service and wait until each answers (raise InfraError otherwise)."""
        ...

    def inject(self, plan: Plan, labdir: Path) -> None:
        """Run the traffic generators (return once every message was handed over)."""
        ...

    def check(self, plan: Plan, labdir: Path) -> None:
        """Raise InfraError when the running lab is broken (a stopped service, a lab fault): its
        verdict can no longer come."""
        ...

    def finish(self, plan: Plan, labdir: Path) -> bool:
        """After the verdict: stop what must not outlive the command; True if the lab stays up."""
        ...

    def abort(self, plan: Plan, labdir: Path) -> None:
        """On failure or Ctrl-C: remove everything the engine started."""
        ...

    def status(self, lab: str | None = None) -> list[LabRow]:
        """The labs this engine runs (one, when named)."""
        ...

    def logs(self, lab: str, service: str, tail: int) -> str | None:
        """The last `tail` lines of a service's log, or None when this engine does not run `lab`."""
        ...

    def down(self, lab: str) -> Removed | None:
        """Stop and remove what this engine started for `lab` (only that); None if nothing."""
        ...
