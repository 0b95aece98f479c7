#!/usr/bin/env bash
# faults.sh -- the fault suite in one command: builds the tests twice
# (gcc Release, and clang with AddressSanitizer + UndefinedBehaviorSanitizer)
# and runs every fault test in both builds, then prints each test's figure
# line.  doc/durability.md says which guarantee each of these tests proves.
#
# Usage: bash scripts/faults.sh                 (from anywhere)
#        MQ_FAULT_SCALE=10 bash scripts/faults.sh   (10x the work: nightly)
#
# Environment:
#   MQ_FAULT_SCALE     multiplies the work of the tests that scale (corpus
#                      size, fill cycles, run time, crash points); default 1,
#                      which is what the ordinary ctest run (CI) does.
#   MQ_FAULTS_BUILDS   which builds to use, default "release asan".
#   MQ_BUILD_ROOT      parent of the build directories (default build), as
#                      for scripts/test.sh; the directories are
#                      $MQ_BUILD_ROOT/faults-release and .../faults-asan,
#                      or MQ_FAULTS_RELEASE_DIR / MQ_FAULTS_ASAN_DIR.
# The tests run one after the other (several are multi-process and time-
# bounded; two at once would only starve each other on a small machine).
# A test whose source is not in tests/ yet is listed as absent, not failed.
# test_diskfull needs root for its mounts (it says SKIPPED otherwise).
# Exit status: 0 when every test that ran passed in every build.
set -uo pipefail
cd "$(dirname "$0")/.."

B=${MQ_BUILD_ROOT:-build}
REL_DIR=${MQ_FAULTS_RELEASE_DIR:-$B/faults-release}
ASAN_DIR=${MQ_FAULTS_ASAN_DIR:-$B/faults-asan}
SCALE=${MQ_FAULT_SCALE:-1}
BUILDS=${MQ_FAULTS_BUILDS:-release asan}
case $SCALE in '' | *[!0-9]* | 0)
  echo "faults.sh: MQ_FAULT_SCALE must be a positive whole number, not '$SCALE'" >&2
  exit 2 ;;
esac
export MQ_FAULT_SCALE=$SCALE

ALL_TESTS=(test_diskfull test_corrupt test_stress test_powerloss test_oom
           test_crash test_ioerr test_clock test_gate test_topic_crash)
TESTS=()
ABSENT=()
for t in "${ALL_TESTS[@]}"; do
  if [ -f "tests/$t.c" ]; then TESTS+=("$t"); else ABSENT+=("$t"); fi
done

t_start=$SECONDS
failed=0
results=() # "build test status seconds"
declare -A figure

note() { printf '\n=== faults.sh: %s\n' "$*"; }

# The figure line of a log: the last line with the "·" separator the fault
# tests use, else the last line that counts something lost, else the
# harness's "N checks, M failed" line.
figure_of() {
  local log=$1 line
  line=$(grep -a ' · ' "$log" | tail -n 1)
  [ -n "$line" ] || line=$(grep -a -E '(^| )lost[ :]' "$log" | grep -a -v '^  *lost:' | tail -n 1)
  [ -n "$line" ] || line=$(grep -a -E '^[0-9]+ checks, [0-9]+ failed' "$log" | tail -n 1)
  printf '%s' "${line#"${line%%[![:space:]]*}"}"
}

build() { # NAME DIR CMAKE_ARGS...
  local name=$1 dir=$2
  shift 2
  note "build $name in $dir"
  mkdir -p "$(dirname "$dir")"
  cmake -S . -B "$dir" -DMQ_WERROR=ON -DMQ_BUILD_BENCH=OFF -DMQ_BUILD_EXAMPLES=OFF \
    -DMQ_BUILD_FUZZ=OFF "$@" </dev/null >"$dir.configure.log" 2>&1 || {
    mkdir -p "$dir"
    cat "$dir.configure.log"
    return 1
  }
  rm -f "$dir.configure.log"
  local targets=("${TESTS[@]}")
  # `mq check` is part of the corruption test when the CLI is built.
  if cmake --build "$dir" --target help 2>/dev/null | grep -q '\bmq_cli\b'; then
    targets+=(mq_cli)
  fi
  cmake --build "$dir" -j2 --target "${targets[@]}" </dev/null
}

run_tests() { # NAME DIR
  local name=$1 dir=$2 t rc t0 log status
  mkdir -p "$dir/tests/tmp" "$dir/faults-logs"
  for t in "${TESTS[@]}"; do
    log=$dir/faults-logs/$t.log
    note "$name: $t (MQ_FAULT_SCALE=$SCALE)"
    t0=$SECONDS
    MQ_TEST_TMPDIR=$PWD/$dir/tests/tmp \
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
      timeout $((900 * SCALE)) "$dir/tests/$t" </dev/null >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
      status=ok
    elif [ $rc -eq 124 ]; then
      status=TIMEOUT
      failed=1
    else
      status="FAIL($rc)"
      failed=1
    fi
    if [ "$status" != ok ]; then
      echo "--- last lines of $log:"
      tail -n 25 "$log"
    else
      grep -a -E '^SKIPPED|SKIPPED:' "$log" || true
    fi
    echo "$t: $status in $((SECONDS - t0))s: $(figure_of "$log")"
    results+=("$name $t $status $((SECONDS - t0))")
    figure[$name/$t]=$(figure_of "$log")
  done
}

for b in $BUILDS; do
  case $b in
    release)
      if build release "$REL_DIR" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Release; then
        run_tests release "$REL_DIR"
      else
        results+=("release (build) FAILED 0")
        failed=1
      fi
      ;;
    asan)
      if build asan "$ASAN_DIR" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DMQ_SANITIZE=address,undefined; then
        run_tests asan "$ASAN_DIR"
      else
        results+=("asan (build) FAILED 0")
        failed=1
      fi
      ;;
    *)
      echo "faults.sh: unknown build '$b' in MQ_FAULTS_BUILDS (release, asan)" >&2
      exit 2
      ;;
  esac
done

echo
echo "=== faults.sh summary (MQ_FAULT_SCALE=$SCALE; logs in <build>/faults-logs/)"
for r in "${results[@]}"; do
  read -r name t status secs <<<"$r"
  printf '%-8s %-17s %-9s %4ss  %s\n' "$name" "$t" "$status" "$secs" "${figure[$name/$t]:-}"
done
[ ${#ABSENT[@]} -eq 0 ] || echo "absent (no tests/NAME.c yet): ${ABSENT[*]}"
verdict=PASS
[ $failed -eq 0 ] || verdict=FAIL
echo "faults.sh: $verdict -- total $((SECONDS - t_start))s"
exit $failed
