"""Engines behind one interface (base.Engine): 'local' (in-process, loopback) and 'docker'."""

from __future__ import annotations

from .dockerapi import answers as docker_answers
from ..errors import InfraError


def select(name: str):
    """Returns (engine, why)."""
    if name == "local":
        from .local import LocalEngine
        return LocalEngine(), "asked for"
    if name == "docker":
        ok, why = docker_answers()
        if not ok:
            raise InfraError(f"the docker engine cannot run: {why}; start Docker or use --engine local")
        from .docker import DockerEngine
        return DockerEngine(), "asked for"
    ok, why = docker_answers()
    if ok:
        from .docker import DockerEngine
        return DockerEngine(), why
    from .local import LocalEngine
    return LocalEngine(), why + "; using the local engine"
