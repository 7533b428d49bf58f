"""Render a lab as a self-contained docker-compose project (the artifact users keep and run by
hand): compose.yaml, the Postfix configuration, the lab's resolv.conf, plan.json, the
certificates and a README, all under the lab directory with relative paths only."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from . import __version__, postfix
from .plan import Plan
from .resources import resource_dir

SERVICES = ("dns", "eop", "sink", "gateway", "traffic")
HOSTNAMES = {"dns": "ns.lab.test", "sink": "mx-sink.lab.test", "traffic": "traffic.lab.test"}


def project_name(lab: str) -> str:
    return f"labgen-{lab}"


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(resource_dir("templates"))), undefined=StrictUndefined,
                       keep_trailing_newline=True, trim_blocks=False)


def _services(plan: Plan) -> list[dict]:
    from .plan import EOP_POOL_HOST
    names = {**HOSTNAMES, "eop": EOP_POOL_HOST, "gateway": plan.scenario.gateway.hostname}
    out = []
    for svc in SERVICES:
        ips = plan.hosts[svc]
        out.append({"name": svc, "ip": ips[0], "extra_ips": ips[1:], "hostname": names[svc],
                    "depends_on": [s for s in SERVICES if s != "traffic"] if svc == "traffic" else
                    (["dns"] if svc != "dns" else [])})
    return out


def render_project(plan: Plan, labdir: Path, image: str) -> list[Path]:
    """Write the compose project for `plan` into labdir (which already holds certs/ and plan.json)."""
    env = _env()
    project = project_name(plan.lab)
    ctx = {"plan": plan, "s": plan.scenario, "project": project, "image": image, "version": __version__,
           "services": _services(plan)}
    files = {
        "compose.yaml": env.get_template("compose/compose.yaml.j2").render(ctx),
        "README.md": env.get_template("compose/README.md.j2").render(ctx),
        "resolv.conf": f"# The lab DNS only: no recursion, no internet.\nnameserver {plan.ip('dns')}\n"
                       "options timeout:1 attempts:2\n",
        "gateway/postfix/main.cf": env.get_template("postfix/main.cf.j2").render(postfix.render_context(plan)),
        "gateway/postfix/master.cf": env.get_template("postfix/master.cf.j2").render(postfix.render_context(plan)),
        "gateway/postfix/transport": postfix.transport_map(plan),
    }
    written = []
    for rel, text in files.items():
        path = labdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
