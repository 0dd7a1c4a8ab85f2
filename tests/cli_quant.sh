#!/bin/sh
# moe-run on a damaged quantized file: the load refuses a NaN block scale
# by tensor and block; with --lazy (no scale check) the run refuses the NaN
# logits it then gets instead of sampling from them.
# Usage: cli_quant.sh MOE_RUN MODELS_DIR
set -u
run=$1
src=$2/quant/qwen3_moe/Q4_K_M.gguf
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cp "$src" "$dir/nan.gguf" || fail "copy"
# output.weight (the LM head, q6_K) begins at byte 2464; block 0's f16 d is
# its bytes 208..209: 0x7e00, a NaN.
printf '\000\176' | dd of="$dir/nan.gguf" bs=1 seek=2672 conv=notrunc 2>/dev/null || fail "patch"
out=$("$run" "$dir/nan.gguf" --prompt-ids 1,2,3 -n 2 2>&1) && fail "the damaged file loaded: $out"
echo "$out" | grep -q 'tensor "output.weight": block 0 (row 0, elements 0..255) has a NaN or infinite scale' ||
    fail "load: $out"
out=$("$run" "$dir/nan.gguf" --prompt-ids 1,2,3 -n 2 --lazy 2>&1) && fail "--lazy sampled NaN logits: $out"
echo "$out" | grep -q "the logits at position 2 are not finite" || fail "--lazy: $out"
echo "$out" | grep -q "skipped the load-time check" || fail "--lazy's hint: $out"
"$run" "$src" --prompt-ids 1,2,3 -n 2 -q >/dev/null || fail "the undamaged file"
echo "cli_quant: all passed"
