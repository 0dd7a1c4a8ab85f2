#!/usr/bin/env bash
# gpu-check.sh - the checks that need a GPU, in one go (docs/devices.md):
# builds with CUDA (or uses a build carried in BUILD), runs the GPU tests,
# measures a quick profile and runs the demo model on device cuda with it.
# Everything it prints also goes to $OUT (default /tmp/gpu-check), so a
# session on a borrowed GPU machine brings the figures back.
#   bash scripts/gpu-check.sh            build in build/gpu, then check
#   BUILD=build/gpu bash scripts/gpu-check.sh   use that build as it is
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
say() { echo "== $*" | tee -a "$log"; }
run() { # run NAME CMD...: its output into $out/NAME.txt and the log; its status noted
    say "$1: ${*:2}"
    "${@:2}" >"$out/$1.txt" 2>&1
    local rc=$?
    tail -n "${TAIL:-40}" "$out/$1.txt" | tee -a "$log"
    say "$1: exit $rc"
    return 0
}

say "host: $(nproc) cores; $(nvidia-smi -L 2>/dev/null | head -4 | tr '\n' ' ')"
command -v nvidia-smi >/dev/null || say "nvidia-smi not found: is there a GPU and a driver?"

build=${BUILD:-}
if [ -z "$build" ]; then
    build=build/gpu
    missing=()
    for p in cmake pkg-config nvcc; do command -v "$p" >/dev/null || missing+=("$p"); done
    for m in hwloc numa; do pkg-config --exists "$m" 2>/dev/null || missing+=("lib$m-dev"); done
    if [ ${#missing[@]} -ne 0 ]; then
        say "cannot build here, missing: ${missing[*]} (scripts/deps.sh installs the Debian packages; or carry a build and set BUILD)"
        exit 1
    fi
    run configure cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA=ON
    run build cmake --build "$build" -j "$(nproc)"
fi
[ -x "$build/moe-run" ] || { say "no $build/moe-run: the build failed (see $out/build.txt)"; exit 1; }

run test_cuda_measure "$build/tests/test_cuda_measure"
# The block-format decoders on the host first (no GPU needed: if this
# fails, the GPU cases below will too), then the conformance suite.
run test_cuda_quant "$build/tests/test_cuda_quant"
run test_device "$build/tests/test_device"
# Its block-format cases again, alone: their NMSE per format and token
# count, the bit-exact decoding and the speed figures, whole in the log.
TAIL=200 run test_device_blocks "$build/tests/test_device" cuda_decodes_every_format_bit_exactly \
    cuda_block_formats_on_both_paths cuda_down_in_its_own_dtype cuda_runtime_runs_block_formats cuda_block_formats_speed
run test_forward "$build/tests/test_forward"
run profile "$build/moe-profile" --quick -o "$out/profile.txt"
if [ -s "$out/profile.txt" ]; then
    run show "$build/moe-profile" --show "$out/profile.txt"
    run demo_cuda "$build/moe-run" --device cuda --profile "$out/profile.txt" -n 64
    run demo_cuda_json "$build/moe-run" --device cuda --profile "$out/profile.txt" -n 64 --stats json -q
    run demo_cpu_json "$build/moe-run" --device cpu --profile "$out/profile.txt" -n 64 --stats json -q
fi
say "done; figures in $out"
