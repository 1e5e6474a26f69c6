#!/usr/bin/env bash
# Set-up and the two things a newcomer runs:
#   ./dev.sh main   set up, build MobileNetV2 1.0/224 for a generic aarch64 board, then run a small
#                   sweep on the emulated Cortex-A board (qemu-user) and print its report
#   ./dev.sh test   set up, then run the whole test suite
# Set-up is idempotent: Debian packages (apt-get, needs root or sudo) and a .venv with the project.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages. Cross linkers: aarch64 and armv7 boards. clang + lld: Android .so without the NDK.
# qemu-user: the emulated Cortex-A board. pocl + ocl-icd: a real OpenCL compiler for the GPU kernels.
# openssh-server: the SSH deployment path's tests. procps (pgrep) and binutils (readelf): test tools.
# g++-aarch64-linux-gnu, make, libstb-dev (stb_image.h): the C++ example app (examples/cpp) for the board.
# llvm-19: llvm-mca and llvm-mc, the simulated Cortex-A core's scheduling models (deploy/simulated_core).
APT_PACKAGES="python3-venv gcc g++ make gcc-aarch64-linux-gnu g++-aarch64-linux-gnu gcc-arm-linux-gnueabihf clang lld qemu-user \
pocl-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev openssh-server openssh-client procps binutils libstb-dev llvm-19"

setup() {
    local missing=""
    for pkg in $APT_PACKAGES; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "[setup] apt-get install$missing"
        local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
    fi
    local stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "[setup] Python packages into .venv"
        python3 -m venv .venv
        .venv/bin/pip install -q --upgrade pip
        .venv/bin/pip install -q -e ".[test]"
        touch "$stamp"
    fi
}

case "${1:-}" in
    main)
        setup
        .venv/bin/python compile/build.py --target arm_cpu --width 1.0
        .venv/bin/python deploy/bench.py --target arm_cpu --emulated-board --widths 0.35 --resolutions 96 \
            --dtype float32,int8 --number 1 --repeat 3 --estimate
        ;;
    test)
        setup
        shift
        .venv/bin/python -m pytest "$@"
        ;;
    setup)
        setup
        ;;
    *)
        echo "usage: ./dev.sh main | test [pytest args] | setup" >&2
        exit 2
        ;;
esac
