"""Inside the gateway container: install a user's own Postfix configuration (gateway.postfix_config,
copied into the lab directory by the renderer) as /etc/postfix, with the lab's overrides and
nothing else, and write down what it changed and what it found (run/gateway-config.json).

The overrides are the short list docs/own-postfix.md gives: only what the lab must control for
Postfix to run in it and for labgen to read it. Everything else (restrictions, maps, transports,
TLS levels, certificates, HELO names) stays the user's. Postfix's own tools are the ground truth:
`postconf -n`, `-M`, `-P`, `-F` read the configuration, `postconf -e`/`-P`/`-F` change it,
`postmap` builds its tables, `postfix check` judges it."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CONFIG_DIR = Path("/etc/postfix")
REPORT = "gateway-config.json"
# Where the lab image's Postfix is installed (postconf -d): a configuration from another system
# names its own, which this one has not.
LAYOUT = (
    "daemon_directory",
    "command_directory",
    "meta_directory",
    "shlib_directory",
    "queue_directory",
    "data_directory",
    "mail_owner",
    "setgid_group",
    "sendmail_path",
    "newaliases_path",
    "mailq_path",
    "manpage_directory",
    "html_directory",
    "readme_directory",
    "sample_directory",
)
BUILD_TYPES = ("hash", "btree")  # tables postmap compiles; texthash, regexp, cidr are read as text
LAB_TIMING = {"queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s"}


def _postconf(*args: str) -> str:
    return subprocess.run(["postconf", *args], capture_output=True, text=True, check=True).stdout


def _settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, eq, value = line.partition(" = ")
        if eq:
            out[name.strip()] = value.strip()
        elif line.endswith(" ="):
            out[line[:-2].strip()] = ""
    return out


class Installer:
    def __init__(self, lab: Path, plan: dict[str, Any]):
        self.lab, self.plan = lab, plan
        self.gateway_ips: list[str] = plan["hosts"]["gateway"]
        self.overrides: list[dict[str, str | None]] = []
        self.main: dict[str, str] = {}  # the user's explicit main.cf settings (postconf -n)
        self.main_changes: dict[str, str] = {}
        self.services: dict[str, str] = {}
        self.service_changes: list[str] = []  # postconf -P arguments

    def note(self, param: str, was: str | None, now: str, why: str, service: str | None = None) -> None:
        self.overrides.append({"parameter": param, "service": service, "was": was, "now": now, "why": why})

    def set_main(self, param: str, now: str, why: str) -> None:
        was = self.main.get(param)
        if was != now:
            self.main_changes[param] = now
            self.note(param, was, now, why)

    def copy(self) -> None:
        src = self.lab / "gateway" / "postfix"
        # The image's own files that the user's directory does not replace stay (dynamicmaps.cf,
        # postfix-files): Postfix needs them.
        for path in sorted(src.rglob("*")):
            dst = CONFIG_DIR / path.relative_to(src)
            if path.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                shutil.copyfile(path, dst)
                # Postfix re-reads a file whose mtime is recent (it may still be written): final here.
                os.utime(dst, (0, 0))
                if "key" in dst.name or dst.suffix == ".key":
                    dst.chmod(0o600)

    def apply(self) -> None:
        self.main = _settings(_postconf("-n"))
        self.services = _settings(_postconf("-P"))  # master.cf's -o options, as the user wrote them
        defaults = _settings(_postconf("-d", *LAYOUT))
        for param in LAYOUT:
            if param in self.main and self.main[param] != defaults[param]:
                self.set_main(param, defaults[param], "where the lab image's Postfix is installed")
        self.set_main("inet_interfaces", "all", "the gateway's lab addresses (which the lab gives it)")
        self.set_main("inet_protocols", "ipv4", "the lab network is IPv4 only")
        self._addresses()
        self._trust()
        self._exchange_online()
        self.set_main("maillog_file", "/lab/run/postfix.log", "the log labgen reads the gateway's deliveries from")
        self.set_main(
            "maillog_file_prefixes", "/var, /dev/stdout, /lab/run", "lets maillog_file be in the run directory"
        )
        if int(self.main.get("smtp_tls_loglevel", "0") or 0) < 1:
            self.set_main("smtp_tls_loglevel", "1", "labgen reads each delivery's TLS version from the log")
        for param, value in LAB_TIMING.items():
            self.set_main(param, value, "a lab run lasts seconds: deferred mail is retried within them")
        if self.main_changes:
            _postconf("-e", *(f"{k}={v}" for k, v in self.main_changes.items()))
        if self.service_changes:
            _postconf("-P", *self.service_changes)
        self._services()
        self._aliases()
        self._tables()

    def _addresses(self) -> None:
        """Mail leaves from the gateway's lab addresses: a bind address the lab has not given
        the container would fail every delivery."""
        primary = self.gateway_ips[0]
        if self.main.get("smtp_bind_address") and self.main["smtp_bind_address"] not in self.gateway_ips:
            self.set_main("smtp_bind_address", primary, "not one of the gateway's lab addresses")
        if self.main.get("smtp_bind_address6"):
            self.set_main("smtp_bind_address6", "", "the lab network is IPv4 only")
        for key, value in self.services.items():
            service, _, param = key.rpartition("/")
            if param == "smtp_bind_address" and value not in self.gateway_ips:
                self.service_changes.append(f"{key}={primary}")
                self.note(param, value, primary, "not one of the gateway's lab addresses", service)

    def _trust(self) -> None:
        """EOP's and the sinks' certificates chain to the lab's root CA, which stands in for the
        public CAs a real gateway trusts."""
        ca = f"/lab/{self.plan['ca_root']}"
        why = "the lab's root CA stands in for the public CAs (EOP's certificate chains to it)"
        self.set_main("smtp_tls_CAfile", ca, why)
        if self.main.get("smtp_tls_CApath"):
            self.set_main("smtp_tls_CApath", "", why)
        for key, value in self.services.items():
            service, _, param = key.rpartition("/")
            if param in ("smtp_tls_CAfile", "smtp_tls_CApath") and value != (ca if param.endswith("file") else ""):
                now = ca if param.endswith("file") else ""
                self.service_changes.append(f"{key}={now}")
                self.note(param, value, now, why, service)

    def _exchange_online(self) -> None:
        """Exchange Online relays through the gateway from its lab address, which stands in for
        Microsoft's published ranges (the user's mynetworks lists those)."""
        exo = self.plan["hosts"]["traffic"][1]
        current = _postconf("-h", "mynetworks").strip()
        nets = []
        for token in current.replace(",", " ").split():
            try:
                nets.append(ipaddress.ip_network(token.strip("[]"), strict=False))
            except ValueError:
                continue  # a table or a $parameter: Postfix's business
        if not any(ipaddress.ip_address(exo) in n for n in nets):
            self.set_main("mynetworks", f"{current} {exo}/32".strip(), "Exchange Online's lab address")

    def _services(self) -> None:
        """The log service maillog_file needs. (Chrooted services stay chrooted: `postfix check`,
        run before the start, copies the lab's resolv.conf and hosts into the chroot, and the smtp
        client loads its certificates and CA file before it enters the chroot.)"""
        if not _postconf("-M", "postlog/unix-dgram").strip():
            _postconf("-M", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd")
            self.note(
                "postlog", None, "postlog unix-dgram n - n - 1 postlogd", "maillog_file's log service", "master.cf"
            )

    def _aliases(self) -> None:
        """A missing /etc/aliases (or any alias file outside the directory) is made empty: the
        lab image has none, and a relay delivers nothing locally."""
        for spec in _postconf("-h", "alias_database").replace(",", " ").split():
            kind, _, path = spec.rpartition(":")
            if kind in BUILD_TYPES and path.startswith("/") and not Path(path).exists():
                Path(path).write_text("")
                self.note("alias_database", spec, f"{path} (empty)", "the lab image has no such file")
            if kind in BUILD_TYPES and Path(path).exists():
                subprocess.run(["postalias", spec], capture_output=True, text=True, check=False)

    def _tables(self) -> None:
        """Compile every hash/btree table the configuration names (the directory ships none)."""
        text = _postconf("-n") + _postconf("-P")
        seen = set()
        for word in text.replace(",", " ").split():
            for kind in BUILD_TYPES:
                i = word.find(f"{kind}:/")
                if i >= 0:
                    spec = word[i:]
                    path = spec.split(":", 1)[1]
                    if spec not in seen and path.startswith(str(CONFIG_DIR) + "/") and Path(path).is_file():
                        seen.add(spec)
                        subprocess.run(["postmap", spec], capture_output=True, text=True, check=True)

    def transports(self) -> list[dict[str, Any]]:
        """The send transports Postfix will run: master.cf's smtp/lmtp services with their options."""
        options = _settings(_postconf("-P"))
        out = []
        for line in _postconf("-M").splitlines():
            words = line.split()
            if len(words) >= 8 and words[1] == "unix" and words[7] in ("smtp", "lmtp"):
                prefix = f"{words[0]}/unix/"
                out.append(
                    {
                        "service": words[0],
                        "command": words[7],
                        "options": {k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix)},
                    }
                )
        return out

    def check(self) -> list[str]:
        """`postfix check`'s complaints (it prints nothing when it has none)."""
        r = subprocess.run(["postfix", "check"], capture_output=True, text=True, check=False)
        return [line for line in (r.stdout + r.stderr).splitlines() if line.strip()][:50]

    def report(self, transports: list[dict[str, Any]], check: list[str]) -> None:
        main = _postconf("-n")
        doc = {
            "schema": "labgen.gateway-config/v1",
            "source": self.plan["scenario"]["gateway"].get("postfix_config"),
            "overrides": self.overrides,
            "transports": transports,
            "transport_maps": _postconf("-h", "transport_maps").strip(),
            "relayhost": _postconf("-h", "relayhost").strip(),
            "postfix_check": check,
            "postconf_n": main.splitlines(),
        }
        (self.lab / "run" / REPORT).write_text(json.dumps(doc, indent=2))


def install(lab: Path, plan: dict[str, Any]) -> None:
    inst = Installer(lab, plan)
    inst.copy()
    inst.apply()
    inst.report(inst.transports(), inst.check())
