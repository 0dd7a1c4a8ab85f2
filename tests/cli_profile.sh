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
echo "cli_profile: all passed"
