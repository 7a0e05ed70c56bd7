#!/usr/bin/env bash
# Build the ov3d_interfaces package (its .srv and .msg files) with plain cmake into a Python venv that holds
# ROS 2 from pip wheels, for machines without a ROS distro or colcon. On a real ROS 2 install use colcon instead
# (see README: "Building in a colcon workspace").
#
#   scripts/build_interfaces.sh [VENV]      (default: .venv in the repository root)
#
# Idempotent: the build tree lives in build/ov3d_interfaces (git-ignored); when the installed package is newer
# than every interface source, nothing is rebuilt. Pass --force as 2nd argument to rebuild anyway.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
FORCE="${2:-}"
SRC="$ROOT/ov3d_interfaces"
BUILD="$ROOT/build/ov3d_interfaces"
STAMP="$BUILD/.installed-stamp"
log() { printf '\033[1m[build_interfaces]\033[0m %s\n' "$*"; }

[[ -x "$VENV/bin/python" ]] || { echo "build_interfaces: no python in venv '$VENV'" >&2; exit 2; }
command -v cmake >/dev/null || { echo "build_interfaces: cmake not found (apt-get install cmake g++)" >&2; exit 2; }

newest_source="$(find "$SRC/CMakeLists.txt" "$SRC/package.xml" "$SRC/srv" "$SRC/msg" -type f -newer "$STAMP" 2>/dev/null | head -1 || true)"
if [[ -f "$STAMP" && -z "$newest_source" && "$FORCE" != "--force" ]] \
   && "$VENV/bin/python" -c 'import ov3d_interfaces.srv' 2>/dev/null; then
  log "ov3d_interfaces up to date in $VENV"; exit 0
fi

# The wheels install their CMake configs and ament index under the venv prefix.
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
export PYTHONNOUSERSITE=1

mkdir -p "$BUILD"
log "configuring ($BUILD)"
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$VENV/bin/python" \
  -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release >"$BUILD.configure.log" 2>&1 \
  || { mkdir -p "$BUILD"; tail -40 "$BUILD.configure.log" >&2; echo "build_interfaces: cmake configure failed (full log: $BUILD.configure.log)" >&2; exit 1; }
log "building"
cmake --build "$BUILD" -j2 >"$BUILD.build.log" 2>&1 \
  || { tail -40 "$BUILD.build.log" >&2; echo "build_interfaces: build failed (full log: $BUILD.build.log)" >&2; exit 1; }
cmake --install "$BUILD" >"$BUILD.install.log" 2>&1 \
  || { tail -20 "$BUILD.install.log" >&2; echo "build_interfaces: install failed" >&2; exit 1; }

# Installed into the venv prefix, the generated Python package lands in lib/pythonX.Y/site-packages and its C
# libraries in lib/, which the venv's rclpy finds at run time without sourcing anything. Check it.
"$VENV/bin/python" -c 'from ov3d_interfaces.msg import ObjectInstance; from ov3d_interfaces.srv import LoadMap, QueryObjects, SaveMap; ObjectInstance(); QueryObjects.Request(); SaveMap.Request(); LoadMap.Request()' \
  || { echo "build_interfaces: installed, but 'from ov3d_interfaces.srv import QueryObjects' fails" >&2; exit 1; }
touch "$STAMP"
log "ov3d_interfaces installed into $VENV"
