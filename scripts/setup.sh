#!/usr/bin/env bash
# Set up labgen on this machine: a virtualenv in .venv with labgen installed, the Debian tools
# the lab image build and the tests use (mmdebstrap, swaks), a running Docker engine where one is
# installed, and the lab image. Safe to run again: every step is skipped when already done.
#   scripts/setup.sh          # for running labs
#   scripts/setup.sh --test   # also the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1
say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# Debian packages: mmdebstrap builds the lab image's base without any registry; swaks is the
# third-party SMTP client the tests use; python3-venv for the virtualenv on Debian's python.
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v swaks >/dev/null || need+=(swaks)
# graphviz draws `labgen graph`'s diagrams (dot); the tests also drive a real headless browser.
command -v dot >/dev/null || need+=(graphviz)
if [ "$want_test" = 1 ]; then command -v chromium >/dev/null || need+=(chromium); fi
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${need[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    say "please install: ${need[*]} (e.g. sudo apt-get install ${need[*]})"
  fi
fi

# The Python side, in its own virtualenv (works where the system Python is externally managed).
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
extras=""
[ $want_test = 1 ] && extras="[test]"
say "installing labgen$extras into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"

# Docker: start the engine if it is installed but not running; without it labgen uses its
# local engine.
if command -v docker >/dev/null; then
  if ! docker info >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "starting the Docker engine"
    (service docker start || (nohup dockerd >/var/log/dockerd.log 2>&1 &)) >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  if docker info >/dev/null 2>&1; then
    say "building the lab image if needed (offline when no registry answers; ~90 s the first time)"
    .venv/bin/labgen images build
  else
    say "no Docker engine answers: labs will run on the local engine"
  fi
fi
say "done: .venv/bin/labgen is ready"
