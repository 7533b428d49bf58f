"""The engines facade (Kathará's manager): picks an engine for a run, and answers status, logs and
down across every engine, so that neither the CLI nor the planner ever names one. An engine is a
module with a class implementing base.Engine and a classmethod `available() -> (bool, why)`;
adding one (Kubernetes) is that module and one line in ENGINES."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from ..errors import InfraError, InputError
from ..results.contracts import LabRow
from .base import Engine, Removed
from .dockerapi import answers as docker_answers  # noqa: F401  (tests' Docker gate)
from .labels import LAB_NAME

log = logging.getLogger(__name__)

# name -> "module:Class", in the order `--engine auto` prefers them.
ENGINES: dict[str, str] = {"docker": "labgen.engines.docker:DockerEngine", "local": "labgen.engines.local:LocalEngine"}


def _cls(name: str) -> Any:
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def named(name: str, **options: Any) -> Engine:
    """An engine by name, without asking whether it can run (render, planning)."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return _cls(name)(**options)


def select(name: str, **options: Any) -> tuple[Engine, str]:
    """The engine to run a lab on, and why: `name`, or with "auto" the first that can run.
    options (e.g. keep=True) go to its constructor."""
    if name != "auto":
        engine = named(name, **options)
        ok, why = type(engine).available()
        if not ok:
            raise InfraError(f"the {name} engine cannot run: {why}; start it or choose another --engine")
        return engine, "asked for"
    reasons: list[str] = []
    for candidate in ENGINES:
        ok, why = _cls(candidate).available()
        if ok:
            return named(candidate, **options), "; ".join([*reasons, why])
        reasons.append(why)
    raise InfraError(f"no engine can run a lab here: {'; '.join(reasons)}")


def _answering() -> list[Engine]:
    """Every engine that answers now (a stopped Docker daemon runs no labs to list or remove)."""
    engines = []
    for name in ENGINES:
        ok, why = _cls(name).available()
        if ok:
            engines.append(named(name))
        else:
            log.debug("%s engine not asked: %s", name, why)
    return engines


def check_lab_name(lab: str) -> str:
    """A lab name from the command line names files and containers: only what a scenario allows."""
    if not LAB_NAME.fullmatch(lab):
        raise InputError(
            f"{lab!r} is not a lab name (lower-case letters, digits and '-', at most 31); "
            "run `labgen status` to see the labs"
        )
    return lab


def status(lab: str | None = None) -> list[LabRow]:
    if lab is not None:
        check_lab_name(lab)
    return sorted((row for e in _answering() for row in e.status(lab)), key=lambda r: (r.lab, r.engine))


def down(lab: str) -> list[Removed]:
    """Remove `lab` from whichever engine runs it (all of them, if several do)."""
    check_lab_name(lab)
    return [r for e in _answering() if (r := e.down(lab)) is not None]


def logs(service: str, lab: str | None, tail: int) -> str:
    """A service's log in the one lab that is up (or `lab`)."""
    rows = status(lab)
    labs = sorted({(r.lab, r.engine) for r in rows})
    if not labs:
        raise InputError("no labgen lab is up" + (f" named {lab}" if lab else "") + "; run `labgen status`")
    if len(labs) > 1:
        raise InputError(f"several labs are up ({', '.join(f'{n} ({e})' for n, e in labs)}); pick one with --lab")
    name, engine = labs[0]
    text = named(engine).logs(name, service, tail)
    if text is None:
        raise InputError(f"no {service} log in lab {name}; run `labgen status`")
    return text
