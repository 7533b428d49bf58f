#!/usr/bin/env bash
# The README's pictures, made by the test tooling (tests/test_report_html.py drives Debian's
# headless chromium over the DevTools protocol): docs/img/report.png, the report of
# `labgen compare broken fixed`, and docs/img/graph.png, `labgen graph broken` after a run.
#   scripts/screenshots.sh     (after scripts/setup.sh --test)
set -euo pipefail
cd "$(dirname "$0")/.."
LABGEN_SCREENSHOTS=1 .venv/bin/python -m pytest -q tests/test_report_html.py -k test_readme_screenshots -p no:cacheprovider
ls -l docs/img/report.png docs/img/graph.png
