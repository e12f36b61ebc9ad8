#!/usr/bin/env bash
# One idempotent install step for a fresh machine: system packages, the virtualenv with pinned
# dependencies, the local services (Kafka jars, Pub/Sub emulator) and the offline deploy-check tools.
# Downloads are cached outside the clone (~/.cache/pip, ~/.m2, ~/.cache/fashion-pipeline), so a second
# run, or a second clone, is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
}

# The official Fashion-MNIST files (/usr/share/datasets/fashion-mnist/).
apt_install dataset-fashion-mnist

if [ ! -x .venv/bin/python ]; then
  echo "install: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "install: pip install -e .[train,dev,tools] with constraints.txt"
  .venv/bin/pip install -q --upgrade "pip==26.3"
  .venv/bin/pip install -q -c constraints.txt -e ".[train,dev,tools]"
  echo "$want" > "$stamp"
fi

# Kafka broker jars (Maven Central), the Pub/Sub emulator component.
.venv/bin/python -m devservices install

# Offline Terraform checks (python-hcl2, checkov) live in their own virtualenv: their pins clash with ours.
if [ -f scripts/install-deploy-tools.sh ]; then
  bash scripts/install-deploy-tools.sh
fi
