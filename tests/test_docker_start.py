"""The Docker engine starts the rendered compose project itself (engines/docker.start_project):
each compose service block must become the same container `compose up` would make. No Docker
needed: these check the translation; tests/test_e2e_docker.py runs both ways for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labgen.engines.compose import SERVICES, compose_data, project_name
from labgen.engines.docker import container_kwargs
from labgen.errors import InfraError
from labgen.model.plan import Plan, make_plan
from labgen.model.scenario import load_scenario

IMAGE = "labgen-lab:0123456789ab"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return make_plan(load_scenario("broken"), "docker")


def kwargs_of(plan: Plan, service: str, labdir: Path, block: dict[str, Any] | None = None) -> dict[str, Any]:
    data = compose_data(plan, IMAGE)
    net = data["networks"]["lab"]["name"]
    return container_kwargs(project_name(plan.lab), service, block or data["services"][service], net, labdir)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_becomes_the_container_compose_makes(plan: Plan, service: str, tmp_path: Path) -> None:
    block = compose_data(plan, IMAGE)["services"][service]
    kw = kwargs_of(plan, service, tmp_path)
    assert (kw["image"], kw["command"], kw["name"], kw["hostname"]) == (
        IMAGE,
        ["python3", "-m", "labgen.lab.entrypoints", service],
        f"labgen-{plan.lab}-{service}",
        block["hostname"],
    )
    assert kw["init"] is True and kw["cap_add"] == ["NET_ADMIN"]
    # compose's relative sources are the project directory's
    assert kw["volumes"] == [
        f"{tmp_path.resolve()}:/lab:ro",
        f"{tmp_path.resolve() / 'run'}:/lab/run",
        f"{tmp_path.resolve() / 'resolv.conf'}:/etc/resolv.conf:ro",
    ]
    assert kw["labels"]["io.labgen.lab"] == plan.lab and kw["labels"]["io.labgen.service"] == service
    assert kw["labels"]["com.docker.compose.project"] == f"labgen-{plan.lab}"
    assert kw["labels"]["com.docker.compose.service"] == service
    assert kw["healthcheck"] == {
        "test": ["CMD", "python3", "-m", "labgen.lab.entrypoints", service, "--probe"],
        "interval": 30_000_000_000,
        "timeout": 5_000_000_000,
        "retries": 3,
        "start_period": 5_000_000_000,
    }
    assert kw["network"] == f"labgen-{plan.lab}-net"
    assert kw["networking_config"] == {kw["network"]: {"ipv4_address": plan.hosts[service][0], "aliases": [service]}}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"ports": ["25:25"]}, "not applied"),  # a compose key the engine would silently drop
        ({"volumes": ["/etc:/lab:ro"]}, "not relative"),
        (
            {
                "healthcheck": {
                    "test": ["CMD", "true"],
                    "interval": "1m",
                    "timeout": "5s",
                    "retries": 1,
                    "start_period": "5s",
                }
            },
            "whole seconds",
        ),
        ({"networks": {"lab": {"ipv4_address": "192.0.2.1"}, "other": {}}}, "more than one network"),
    ],
)
def test_what_it_cannot_apply_is_refused(plan: Plan, tmp_path: Path, change: dict[str, Any], words: str) -> None:
    block = {**compose_data(plan, IMAGE)["services"]["eop"], **change}
    with pytest.raises(InfraError, match=words):
        kwargs_of(plan, "eop", tmp_path, block)
