"""Scenario strings on their way into generated files (compose.yaml, Postfix's configuration,
README.md), in two kinds:

- human text (descriptions, connector names) is only ever shown, in comments or prose: made one
  line of printable characters (`one_line`, `md_inline`), so it can never end a comment, start a
  config line or add YAML, Postfix or Markdown structure;
- identifiers that configuration *uses* (hostnames, addresses, file names, transport names) are
  never rewritten: each must match the grammar of its place whole (`checked`), or the renderer
  refuses to write the file (InfraError: validation should have stopped it, so it is a bug).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from .errors import InfraError

ELLIPSIS = "…"
# A traffic message id (scenario `traffic[].id`): the only ids that name a file or join events,
# whether they come from a scenario or from a lab client's X-Labgen-Id header or DSN ENVID.
MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}")


def one_line(value: object, limit: int = 200) -> str:
    """`value` as a single line of at most `limit` printable characters.

    Every character Python does not call printable becomes a space: CR, LF, VT, FF, NUL, ESC and
    the other controls, NEL (U+0085), the line/paragraph separators U+2028/2029 (YAML 1.1 and
    some editors break lines at these), format characters such as bidi overrides, lone
    surrogates and non-ASCII spaces. Runs of spaces collapse; a longer text is cut with '…'.
    """
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    text = re.sub(" {2,}", " ", text).strip()
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + ELLIPSIS
    return text


# Characters that can start inline Markdown structure (code spans, emphasis, links, images, raw
# HTML, entities, table cells); a backslash before any ASCII punctuation makes it literal.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|#!&~{}$])")
# Structure that only counts at the start of a line: quotes, setext and thematic breaks, list
# items ('-', '+', '1.', '1)' then a space).
_MD_LINE_START = re.compile(r"[-=>]|\+(?= |$)|\d{1,9}(?=[.)](?: |$))")


def md_inline(value: object, limit: int = 200) -> str:
    """`value` as one line of literal Markdown text, wherever it lands: a paragraph, the start of
    a line, a table cell."""
    text = _MD_INLINE.sub(r"\\\1", one_line(value, limit))
    m = _MD_LINE_START.match(text)
    if not m:
        return text
    at = m.end() if text[0].isdigit() else 0  # '1.' -> '1\.', '-' -> '\-'
    return text[:at] + "\\" + text[at:]


# ---------------------------------------------------------------- identifiers


class Checked(str):
    """A string that matched the grammar of the place it is written to (see `checked`)."""


def _ipv4(value: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(value)) == value
    except ValueError:
        return False


def _ipv4_network(value: str) -> bool:
    try:
        return str(ipaddress.IPv4Network(value)) == value
    except ValueError:
        return False


# Each grammar matches the whole string (fullmatch: no trailing newline slips through '$').
# Docker's image reference grammar (github.com/distribution/reference, regexp.go): an optional
# registry host[:port], path components of lower-case alphanumerics joined by '.', '_', '__' or
# dashes, an optional tag and an optional digest. IPv6 registry hosts are not accepted.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOCKER_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?",
    re.ASCII,
)
MAX_REFERENCE_NAME = 255  # Docker's NameTotalLengthMax


def docker_reference(value: str) -> re.Match[str] | None:
    """The match of a Docker image reference (name[:tag][@digest]), else None."""
    m = _DOCKER_REFERENCE.fullmatch(value) if isinstance(value, str) else None
    return m if m and len(m.group("name")) <= MAX_REFERENCE_NAME else None


GRAMMARS: dict[str, tuple[str, Callable[[str], object]]] = {
    # As scenario.check_domain accepts them after normalising: lower case, at least two labels.
    "hostname": (
        "a lower-case DNS name",
        re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}").fullmatch,
    ),
    "ipv4": ("an IPv4 address", _ipv4),
    "ipv4 network": ("an IPv4 network in CIDR form", _ipv4_network),
    # plan._cert_files: one safe path component under certs/, never '.' or '..'.
    "cert path": (
        "a certs/ file name",
        re.compile(r"certs/[a-z0-9][a-z0-9._-]{0,127}\.(?:crt|key|chain\.pem)").fullmatch,
    ),
    "transport": ("a transport name connN", re.compile(r"conn[0-9]{1,4}").fullmatch),
    # smtp_tls_security_level's documented values.
    "tls level": (
        "a Postfix TLS security level",
        frozenset({"none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure"}).__contains__,
    ),
    # smtp_tls_protocols / smtp_tls_mandatory_protocols, as SendConnector.tls_protocols writes them.
    "tls protocols": (
        "a Postfix TLS protocol range",
        re.compile(r">=TLSv1(?:\.[123])?(?::<=TLSv1(?:\.[123])?)?|<=TLSv1(?:\.[123])?").fullmatch,
    ),
    # Compose project, container and network names are built from it.
    "lab name": ("a lab name (lower-case letters, digits, '-')", re.compile(r"[a-z0-9][a-z0-9-]{0,62}").fullmatch),
    "image": ("a Docker image reference", lambda v: docker_reference(v) is not None),
}


def shown(value: object, limit: int = 80) -> str:
    """A value quoted for an error message: repr escapes every control character."""
    r = repr(str(value))
    return r if len(r) <= limit else r[: limit - 1] + ELLIPSIS


def checked(kind: str, value: object, what: str, where: str) -> Checked:
    """`value` as Checked if it matches GRAMMARS[kind]; else InfraError naming it and `where`."""
    grammar, matches = GRAMMARS[kind]
    if isinstance(value, str) and matches(value):
        return Checked(value)
    raise InfraError(
        f"refusing to write {what} {shown(value)} into {where}: it is not {grammar} "
        "(a labgen bug: scenario validation should have refused it)"
    )
