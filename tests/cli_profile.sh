#!/bin/sh
# moe-profile end to end: measure a quick profile of one small shape, check
# it, show it, merge it with itself, and see bad files refused with their
# file:line and a non-zero exit. Usage: cli_profile.sh MOE_PROFILE MOE_RUN
set -u
prof=$1
run=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$prof" --quick -q --shape 256x128 --dtype bf16,f32 --m 1,4 -o "$dir/p.txt" || fail "measuring"
"$prof" --check "$dir/p.txt" | grep -q "a valid moerun profile" || fail "--check of a fresh profile"
"$prof" --show "$dir/p.txt" > "$dir/show.txt" || fail "--show"
grep -q "256x128 bf16 node0" "$dir/show.txt" || fail "--show lists the curve"
grep -q "This host: matches" "$dir/show.txt" || fail "--show says the profile is this host's"
"$prof" --merge "$dir/p.txt" "$dir/p.txt" -o "$dir/m.txt" || fail "--merge"
n1=$(grep -o '256x128.bf16.node0.m1.time_us = n=[0-9]*' "$dir/p.txt" | sed 's/.*n=//')
n2=$(grep -o '256x128.bf16.node0.m1.time_us = n=[0-9]*' "$dir/m.txt" | sed 's/.*n=//')
[ "$n2" -eq $((2 * n1)) ] || fail "--merge doubles the samples ($n1 -> $n2)"
"$run" -q -n 2 --stats json --profile "$dir/p.txt" | grep -q "\"profile\":\"$dir/p.txt\"" || fail "moe-run --profile"

sed 's/^threads = .*/threads = -2/' "$dir/p.txt" > "$dir/bad.txt"
line=$(grep -n '^threads' "$dir/bad.txt" | cut -d: -f1)
if "$prof" --check "$dir/bad.txt" 2> "$dir/err.txt"; then fail "--check accepted a bad file"; fi
grep -q "$dir/bad.txt:$line: threads" "$dir/err.txt" || fail "--check names file:line: $(cat "$dir/err.txt")"
if "$run" -q -n 1 --profile "$dir/bad.txt" 2> "$dir/err2.txt"; then fail "moe-run used a bad profile"; fi
grep -q "bad.txt:$line" "$dir/err2.txt" || fail "moe-run names file:line"
sed 's/^cpu_model = .*/cpu_model = Some Other CPU/' "$dir/p.txt" > "$dir/other.txt"
if "$run" -q -n 1 --profile "$dir/other.txt" 2> "$dir/err3.txt"; then fail "moe-run used another host's profile"; fi
grep -q "another host" "$dir/err3.txt" || fail "another host is named"
"$run" -q -n 1 --profile "$dir/other.txt" --any-host > /dev/null || fail "--any-host"
# --model: the shapes and formats of a model's experts (a Q4_K_M file: q4_K
# gate/up, whose 32-long down rows are q8_0, so q4_K is timed at 256x256)
data=$(cd "$(dirname "$0")" && pwd)/data/models
q4=$data/quant/qwen3_moe/Q4_K_M.gguf
"$prof" --quick -q --model "$q4" --m 1,4 -o "$dir/q.txt" 2> "$dir/qerr.txt" || fail "--model: $(cat "$dir/qerr.txt")"
"$prof" --show "$dir/q.txt" > "$dir/qshow.txt" || fail "--show of --model's profile"
grep -q "256x256 q4_K node0" "$dir/qshow.txt" || fail "--model times q4_K at whole blocks"
grep -q "256x32 q8_0 node0" "$dir/qshow.txt" || fail "--model times the q8_0 down matrices' format"
grep -q "timing 256x256 for its rates" "$dir/qerr.txt" || fail "--model says what it timed instead"
"$run" "$q4" --prompt-ids 1,2,3 -q -n 2 --stats json --profile "$dir/q.txt" | grep -q "\"profile\":\"$dir/q.txt\"" ||
    fail "moe-run on the model with --model's profile"
"$prof" --quick -q --model "$data/qwen3_moe" --m 1 -o "$dir/h.txt" 2> /dev/null || fail "--model on a directory"
"$prof" --show "$dir/h.txt" | grep -q "64x32 bf16 node0" || fail "--model on a directory: its bf16 experts"
if "$prof" --quick -q --model "$q4" --shape 256x128 -o "$dir/x.txt" 2> "$dir/err4.txt"; then fail "--model with --shape"; fi
grep -q "not with --shape or --dtype" "$dir/err4.txt" || fail "--model with --shape is refused: $(cat "$dir/err4.txt")"
if "$prof" --quick -q --model "$dir/none" -o "$dir/x.txt" 2> "$dir/err5.txt"; then fail "--model of nothing"; fi
grep -q -- "--model: $dir/none" "$dir/err5.txt" || fail "--model names the path: $(cat "$dir/err5.txt")"
echo "cli_profile: all passed"
