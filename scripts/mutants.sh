#!/usr/bin/env bash
# The mutation score of the code the simulator exists to prove: tarn-core,
# tarn-kv and the storage engine (io/src/storage). Each mutant (a small
# deliberate bug cargo-mutants writes into the source) is judged by the
# crate's own tests plus the simulator's (regressions, seed sweeps, planted
# bugs): a mutant that survives both is either equivalent (no behaviour
# change) or a bug class the simulator cannot see yet.
#
# Usage: scripts/mutants.sh MINUTES [SHARDS] [OUT_DIR]
#   Runs shards 0..SHARDS-1 of each target one after another, at low
#   priority, until MINUTES of wall time are spent (a shard running then is
#   let finish). Results: OUT_DIR/<target>-shard-<k>/mutants.out/{caught,missed,timeout,unviable}.txt
#   and OUT_DIR/summary.txt (counts and the score per target).
#   Meant for the background: `nohup scripts/mutants.sh 600 32 mutants-out &`
#
# Needs cargo-mutants; installs it from crates.io if missing.
set -euo pipefail
set -f # the --file globs are cargo-mutants', not the shell's
cd "$(dirname "$0")/.."

minutes=${1:?usage: scripts/mutants.sh MINUTES [SHARDS] [OUT_DIR]}
shards=${2:-16}
out=${3:-mutants-out}
mkdir -p "$out"
deadline=$(( $(date +%s) + minutes * 60 ))

if ! command -v cargo-mutants >/dev/null 2>&1; then
  echo "installing cargo-mutants"
  cargo install --locked cargo-mutants
fi

# target name | cargo-mutants selection | packages whose tests judge it
targets=(
  "core|--package tarn-core|--test-package tarn-core --test-package tarn-sim"
  "kv|--package tarn-kv|--test-package tarn-kv --test-package tarn-sim"
  "storage|--package tarn-io --file io/src/storage/**|--test-package tarn-io --test-package tarn-sim"
)

run_shard() {
  local name=$1 select=$2 judges=$3 k=$4 dir="$out/$1-shard-$4"
  if [ -f "$dir/done" ]; then return 0; fi
  echo "== $name shard $k/$shards ($(date -u +%H:%M:%S))"
  # shellcheck disable=SC2086 # the selections are word lists on purpose
  nice -n 19 cargo mutants $select $judges --shard "$k/$shards" --timeout 600 \
    --output "$dir" --no-shuffle >"$dir.log" 2>&1 || true
  touch "$dir/done"
}

for k in $(seq 0 $((shards - 1))); do
  for t in "${targets[@]}"; do
    IFS='|' read -r name select judges <<<"$t"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "time is up"
      break 2
    fi
    mkdir -p "$out/$name-shard-$k"
    run_shard "$name" "$select" "$judges" "$k"
  done
done

count() { cat "$out"/"$1"-shard-*/mutants.out/"$2".txt 2>/dev/null | wc -l; }
{
  echo "mutation score ($(date -u +%Y-%m-%dT%H:%MZ), $shards shards, commit $(git rev-parse --short HEAD))"
  for t in "${targets[@]}"; do
    name=${t%%|*}
    caught=$(count "$name" caught); missed=$(count "$name" missed)
    timeout=$(count "$name" timeout); unviable=$(count "$name" unviable)
    judged=$((caught + missed + timeout))
    score="n/a"
    if [ "$judged" -gt 0 ]; then score="$(( 100 * (caught + timeout) / judged ))%"; fi
    echo "$name: caught=$caught missed=$missed timeout=$timeout unviable=$unviable score=$score"
  done
  echo "survivors (give each a verdict: equivalent, or a gap to close):"
  cat "$out"/*-shard-*/mutants.out/missed.txt 2>/dev/null || true
} | tee "$out/summary.txt"
