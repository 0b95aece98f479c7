#!/bin/sh
# bench.sh -- build the benchmarks (Release) and run them all.
#
# usage: scripts/bench.sh [REPS] [options passed to every benchmark]
#   REPS        runs per configuration, interleaved with the baselines;
#               the median is reported (default 5)
#   options     e.g. --dir /mnt/disk/tmp (scratch files; default under the
#               build dir, on the real disk: fsync cost is the point),
#               --secs S (seconds per run), --quick (smaller matrix)
# environment:
#   MQ_BENCH_BUILD  build directory (default build/bench)
#
# With the defaults the whole run takes about three minutes.  Numbers from
# a shared or virtual machine are noisy: read the ratios, not the rates.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
reps=5
case "${1:-}" in
  ''|-*) ;;
  *[!0-9]*) echo "usage: $0 [REPS] [benchmark options]" >&2; exit 2 ;;
  *) reps=$1; shift ;;
esac
build=${MQ_BENCH_BUILD:-$root/build/bench}

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DMQ_BUILD_BENCH=ON -DMQ_BUILD_TESTS=OFF -DMQ_BUILD_EXAMPLES=OFF \
  -DMQ_BUILD_FUZZ=OFF >/dev/null
progs=""
for src in "$root"/bench/bench_*.c; do
  progs="$progs $(basename "$src" .c)"
done
# shellcheck disable=SC2086 # progs is a list of target names
cmake --build "$build" -j2 --target $progs >/dev/null

echo "mq benchmarks: $(uname -srm), $(nproc 2>/dev/null || echo '?') CPUs," \
  "$reps reps, $(date -u '+%Y-%m-%d %H:%M UTC')"
status=0
for p in $progs; do
  "$build/bench/$p" --reps "$reps" "$@" || status=$?
done
exit $status
