#!/usr/bin/env bash
# The whole test suite: install what it needs, lint, type-check, then pytest. pytest's fixtures start
# and stop the real services (Pub/Sub emulator, Cloud Storage emulator, Kafka broker) themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy common trainer devservices pipeline bench
# Each function is its own top-level module "main", so each is checked on its own.
for fn in functions/*/main.py; do .venv/bin/mypy "$fn"; done
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
