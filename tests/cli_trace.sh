#!/bin/sh
# moe-run --record-trace, then moe-sim on what it wrote: the runtime records
# the format the simulator reads. Usage: cli_trace.sh MOE_RUN MOE_SIM
set -u
run=$1
sim=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$run" -q -n 5 -p "hello" --layers 3 --experts 8 --top-k 2 --record-trace "$dir/r.trace" || fail "moe-run"
head -1 "$dir/r.trace" | grep -q "^# moe-trace 1$" || fail "first line"
grep -q "^layers 3$" "$dir/r.trace" && grep -q "^experts 8$" "$dir/r.trace" && grep -q "^top_k 2$" "$dir/r.trace" || fail "header"
# 5 prompt tokens in one pass, then 4 decode steps of one token: 9 tokens.
grep -q "^seq run 9$" "$dir/r.trace" || fail "seq line: $(grep '^seq' "$dir/r.trace")"
"$sim" --cache-only --cache-per-layer 4 --policy lru --json --trace "$dir/r.trace" > "$dir/out.json" || fail "moe-sim"
grep -q '"needed":54' "$dir/out.json" || fail "9 tokens x 3 layers x 2 experts: $(cat "$dir/out.json")"
echo "cli_trace: all passed"
