#!/usr/bin/env bash
# Runs the whole test suite (sets the environment up first if needed; a no-op when it is current).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k fusion -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
# ROS 2 tests stay on this machine and on a domain of their own, so concurrent runs do not see each other.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@" tests
