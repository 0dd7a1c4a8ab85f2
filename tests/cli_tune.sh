#!/bin/sh
# moe-profile --tune: a reference profile tuned on a recorded-style trace
# gets a [tuning] section that the profile reader accepts and --show prints;
# the source file is left alone when -o names another; bad input is
# refused. Usage: cli_tune.sh MOE_PROFILE PROFILE TRACE
set -u
prof=$1
src=$2
trace=$3
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cp "$src" "$dir/p.txt"
"$prof" --tune "$dir/p.txt" --trace "$trace" --shape 2048x1408 --gpu-budget 0.5 -o "$dir/tuned.txt" > "$dir/out" 2>&1 \
    || fail "tune: $(cat "$dir/out")"
grep -q "<- best" "$dir/out" || fail "no best candidate: $(cat "$dir/out")"
cmp -s "$src" "$dir/p.txt" || fail "the source profile changed"
"$prof" --check "$dir/tuned.txt" > /dev/null || fail "tuned profile invalid"
grep -q "^policy = " "$dir/tuned.txt" || fail "no policy in [tuning]"
grep -q "^gpu_budget_fraction = 0.5" "$dir/tuned.txt" || fail "no budget in [tuning]"
"$prof" --show "$dir/tuned.txt" | grep -q "policy = " || fail "--show does not print the tuning"
# Without -o the profile itself is rewritten.
"$prof" --tune "$dir/p.txt" --trace "$trace" --shape 2048x1408 > /dev/null 2>&1 || fail "tune in place"
grep -q "^policy = " "$dir/p.txt" || fail "in place: no policy"
# --model gives the shape; a model the trace does not fit is refused.
model=$(dirname "$trace")/toy-config.json
"$prof" --tune "$dir/p.txt" --trace "$trace" --model "$model" -o "$dir/m.txt" > "$dir/out" 2>&1 \
    || fail "tune --model: $(cat "$dir/out")"
grep -q "<- best" "$dir/out" || fail "--model: no best candidate: $(cat "$dir/out")"
sed 's/"num_experts_per_tok": 1/"num_experts_per_tok": 2/' "$model" > "$dir/top2.json"
"$prof" --tune "$dir/p.txt" --trace "$trace" --model "$dir/top2.json" > "$dir/e0" 2>&1 && fail "a top-2 model accepted"
grep -q "but the model (mixtral) has 2 MoE layers x 4 experts, top-2" "$dir/e0" || fail "mismatch message: $(cat "$dir/e0")"
# Refusals.
"$prof" --tune "$dir/p.txt" --shape 2048x1408 > "$dir/e1" 2>&1 && fail "no trace accepted"
grep -q "give the routing" "$dir/e1" || fail "no-trace message: $(cat "$dir/e1")"
"$prof" --tune "$dir/p.txt" --trace "$src" --shape 2048x1408 > "$dir/e2" 2>&1 && fail "a profile taken as a trace"
grep -q "p.txt:1: not a moe-trace\|:1: not a moe-trace" "$dir/e2" || fail "bad trace message: $(cat "$dir/e2")"
echo "cli_tune: all passed"
