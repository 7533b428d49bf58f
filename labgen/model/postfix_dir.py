"""A user's own Postfix configuration directory (gateway.postfix_config), read and checked on the
host before any lab starts: regular files only (no links: the directory is copied into the lab as
it is), sane names, bounded sizes, main.cf and master.cf present, and every certificate or lookup
table the configuration names under /etc/postfix present in it. What the lab then changes is the
container's business (labgen.lab.postfix_install); this module never edits the user's files.

The directory comes from a stranger as much as a scenario does: its file names reach a path and
its contents reach Postfix, so both are bounded and checked here."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, quote

MAX_FILES = 256
MAX_FILE = 4 << 20  # one file: a big map is a few MB
MAX_TOTAL = 32 << 20
# Compiled tables are rebuilt in the lab from their source (postmap): they are binary, and bound
# to the Berkeley DB / LMDB build that wrote them.
COMPILED = (".db", ".lmdb", ".cdb", ".dir", ".pag")
_NAME = re.compile(r"[A-Za-z0-9_+@=%][A-Za-z0-9._+@=%-]{0,127}")
# Where Postfix looks for the files that configuration names: /etc/postfix, which this directory becomes.
CONFIG_DIR = "/etc/postfix"
# Parameters naming files Postfix reads when it sends or receives with TLS.
_TLS_FILE = re.compile(
    r"(?:smtpd?|lmtp|tlsproxy)_tls_(?:\w+_)?(?:cert|key|chain|dcert|dkey|eccert|eckey|dh\d*)_files?$"
)
_TABLE = re.compile(r"(?<![\w/])(hash|btree|lmdb|cdb|dbm|sdbm|texthash|regexp|pcre|cidr|inline)?:?(/[^\s,{}]+)")
_FILE_TYPES = {"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash", "regexp", "pcre", "cidr"}
# What the lab image's Postfix (Debian's postfix, without the -lmdb/-pcre/-cdb plug-ins) can read.
LAB_TABLE_TYPES = ("hash", "btree", "texthash", "regexp", "cidr")
# Local aliases name /etc/aliases on most systems; the lab's Postfix makes an empty one (a relay
# delivers nothing locally), so these may name a file outside the directory.
_ALIAS_PARAMS = {"alias_maps", "alias_database"}


@dataclass(frozen=True)
class ConfigDir:
    """The directory's files, relative name -> content, as they will be installed."""

    path: Path
    files: dict[str, bytes]


def _refuse(source: str, name: str, why: str) -> InputError:
    return InputError(f"{source}: gateway.postfix_config: {quote(name)}: {why}")


def read_config_dir(base_dir: Path, name: str, source: str) -> ConfigDir:
    """The directory `name` (relative to `base_dir`) read whole, or one InputError line."""
    root = (base_dir / name).resolve()
    if not root.is_dir():
        raise _refuse(source, name, "not a directory; give the directory that holds your main.cf and master.cf")
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for entry in sorted(dirnames) + sorted(filenames):
            rel = (here / entry).relative_to(root).as_posix()
            if not all(_NAME.fullmatch(part) for part in rel.split("/")):
                raise _refuse(source, name, f"{quote(rel)}: rename it (letters, digits and ._+@=%- only)")
            st = os.lstat(here / entry)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(
                    source, name, f"{quote(rel)} is a link or special file; copy the file it stands for in its place"
                )
            if rel.endswith(COMPILED):
                continue
            if len(files) >= MAX_FILES:
                raise _refuse(source, name, f"more than {MAX_FILES} files; give only the gateway's configuration")
            if st.st_size > MAX_FILE:
                raise _refuse(source, name, f"{quote(rel)} is larger than {MAX_FILE >> 20} MiB")
            total += st.st_size
            if total > MAX_TOTAL:
                raise _refuse(source, name, f"more than {MAX_TOTAL >> 20} MiB in all")
            try:
                files[rel] = (here / entry).read_bytes()[: MAX_FILE + 1]
            except OSError as e:
                raise _refuse(source, name, f"{quote(rel)}: cannot read it ({e.strerror})") from None
    for required in ("main.cf", "master.cf"):
        if required not in files:
            raise _refuse(source, name, f"has no {required}; labgen runs your Postfix from both")
    config = ConfigDir(root, files)
    _check_references(config, name, source)
    return config


# ---------------------------------------------------------------- what the configuration names


def main_cf_parameters(text: str) -> dict[str, str]:
    """main.cf as Postfix reads it: `name = value`, continued on lines that start with white
    space, '#' lines ignored; the last setting of a name wins."""
    params: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and last:
            params[last] += " " + line.strip()
            continue
        name, eq, value = line.partition("=")
        if eq:
            last = name.strip()
            params[last] = value.strip()
    return params


def master_cf_options(text: str) -> list[tuple[str, str, str]]:
    """master.cf's `-o name=value` options: (service/type, name, value)."""
    out: list[tuple[str, str, str]] = []
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1] += line.split()
        else:
            entries.append(line.split())
    for words in entries:
        service = "/".join(words[:2])
        args = words[8:]
        for i, word in enumerate(args):
            option = args[i + 1] if word == "-o" and i + 1 < len(args) else word[2:] if word.startswith("-o") else None
            if option and "=" in option:
                k, v = option.split("=", 1)
                out.append((service, k, v))
    return out


def _expand(value: str) -> str:
    return value.replace("${config_directory}", CONFIG_DIR).replace("$config_directory", CONFIG_DIR)


def _check_references(config: ConfigDir, name: str, source: str) -> None:
    """Each certificate file and lookup table the configuration names must be in the directory
    (named as /etc/postfix/...): the lab has none of the machine it came from."""
    try:
        main = main_cf_parameters(config.files["main.cf"].decode())
        master = master_cf_options(config.files["master.cf"].decode())
    except UnicodeDecodeError:
        raise _refuse(source, name, "main.cf or master.cf is not UTF-8 text") from None
    settings = [("main.cf", k, v) for k, v in main.items()] + [(f"master.cf {s}", k, v) for s, k, v in master]
    for where, param, value in settings:
        tls_file = bool(_TLS_FILE.search(param))
        for m in _TABLE.finditer(_expand(value)):
            kind, path = m.group(1), m.group(2)
            if not (tls_file or kind in _FILE_TYPES):
                continue
            if kind and kind not in LAB_TABLE_TYPES:
                raise _refuse(
                    source,
                    name,
                    f"{where}: {param} uses table type {kind}, which the lab's Postfix does not have; "
                    f"use one of {', '.join(LAB_TABLE_TYPES)}",
                )
            if param in _ALIAS_PARAMS and not path.startswith(CONFIG_DIR + "/"):
                continue
            if not path.startswith(CONFIG_DIR + "/"):
                raise _refuse(
                    source,
                    name,
                    f"{where}: {param} names {quote(path)}, outside {CONFIG_DIR}; copy the file into the directory "
                    f"and name it {CONFIG_DIR}/... (the directory is installed as {CONFIG_DIR})",
                )
            rel = path[len(CONFIG_DIR) + 1 :]
            if rel not in config.files:
                raise _refuse(
                    source, name, f"{where}: {param} names {quote(path)}, but the directory has no {quote(rel)}"
                )
