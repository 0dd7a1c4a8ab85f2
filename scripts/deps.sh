#!/usr/bin/env bash
# Installs the Debian packages moerun's build needs. Idempotent: prints
# nothing and changes nothing when they are all present.
set -euo pipefail

# ocl-icd-opencl-dev: only recommended by libdnnl-dev, but its CMake config
# requires OpenCL, so without it find_package(dnnl) fails on a bare machine.
pkgs=(build-essential cmake pkg-config libhwloc-dev libnuma-dev libdnnl-dev ocl-icd-opencl-dev)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "deps.sh: missing packages: ${missing[*]}; install them with your package manager" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
        echo "deps.sh: missing packages: ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
