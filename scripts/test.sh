#!/usr/bin/env bash
# test.sh -- THE test command: everything CI runs, runnable by anyone.
#
# Usage: bash scripts/test.sh          (from anywhere; CI runs .ci/run)
#
# Stages, each in its own build directory under build/ (MQ_BUILD_ROOT
# overrides "build"):
#   deps   scripts/deps.sh test: installs missing Debian packages as root,
#          otherwise prints the apt-get line and stops here.
#   gcc    gcc, -Werror, the modular library; ctest.
#   asan   clang, -Werror, AddressSanitizer + UndefinedBehaviorSanitizer,
#          the library built from the committed amalgamation mq.c; ctest.
#   fuzz   clang + libFuzzer: every fuzz/*.c target runs for
#          MQ_FUZZ_SECONDS (default 20) seconds.  SKIPPED, and says so, when
#          there is no fuzz/CMakeLists.txt or clang cannot link libFuzzer.
# A failing stage does not stop the later ones, so one run shows every
# problem; the exit status is non-zero if any stage failed, and the last
# line is a one-line summary.  Nothing reads stdin or asks a question, so
# it runs the same under CI=true, and it needs nothing but a fresh clone
# and the packages deps.sh names.  Two parallel jobs (-j2) throughout.
# shellcheck disable=SC2317  # the stage_* functions are called via stage()
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

B=${MQ_BUILD_ROOT:-build}
FUZZ_SECONDS=${MQ_FUZZ_SECONDS:-20}
t_start=$SECONDS
summary=()
failed=0

note() { printf '\n=== test.sh: %s\n' "$*"; }

# stage NAME COMMAND...: run it, time it, record the outcome.
stage() {
  local name=$1 t0=$SECONDS rc
  shift
  note "$name: start"
  "$@"
  rc=$?
  if [ $rc -eq 0 ]; then
    summary+=("$name ok $((SECONDS - t0))s")
  elif [ $rc -eq 77 ]; then
    summary+=("$name SKIPPED")
  else
    summary+=("$name FAILED $((SECONDS - t0))s")
    failed=1
  fi
  note "$name: ${summary[-1]}"
}

finish() {
  local verdict=PASS
  [ $failed -eq 0 ] || verdict=FAIL
  echo
  local list
  list=$(IFS=,; echo "${summary[*]}")
  echo "test.sh: $verdict -- ${list//,/, } -- total $((SECONDS - t_start))s"
  exit $failed
}

build_and_test() { # DIR CMAKE_ARGS...
  local dir=$1
  shift
  cmake -S . -B "$dir" "$@" </dev/null &&
    cmake --build "$dir" -j2 </dev/null &&
    ctest --test-dir "$dir" --output-on-failure -j2 </dev/null
}

stage_gcc() {
  build_and_test "$B/gcc" -DCMAKE_C_COMPILER=gcc -DMQ_WERROR=ON
}

stage_asan() {
  ASAN_OPTIONS=detect_leaks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build_and_test "$B/asan" -DCMAKE_C_COMPILER=clang -DMQ_WERROR=ON \
      -DMQ_SANITIZE=address,undefined -DMQ_USE_AMALGAMATION=ON
}

stage_fuzz() {
  local dir=$B/fuzz
  if [ ! -f fuzz/CMakeLists.txt ]; then
    echo "fuzz: SKIPPED (no fuzz/CMakeLists.txt in this tree)"
    return 77
  fi
  mkdir -p "$dir"
  printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
    >"$dir/probe.c"
  if ! clang -fsanitize=fuzzer,address "$dir/probe.c" -o "$dir/probe" >"$dir/probe.log" 2>&1; then
    cat "$dir/probe.log"
    echo "fuzz: SKIPPED (clang cannot link libFuzzer here)"
    return 77
  fi
  cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DMQ_WERROR=ON \
    -DMQ_BUILD_FUZZ=ON -DMQ_SANITIZE=address,undefined \
    -DMQ_BUILD_TESTS=OFF -DMQ_BUILD_EXAMPLES=OFF -DMQ_BUILD_BENCH=OFF </dev/null &&
    cmake --build "$dir" -j2 </dev/null || return 1

  local rc=0 ran=0 src name bin run
  for src in fuzz/*.c; do
    grep -q LLVMFuzzerTestOneInput "$src" || continue
    name=$(basename "$src" .c)
    bin=$(find "$dir" -type f -perm -u+x -name "$name" -print -quit)
    if [ -z "$bin" ]; then
      echo "fuzz: $name: no binary named $name was built in $dir"
      rc=1
      continue
    fi
    # New inputs go to a scratch corpus (listed first); the committed
    # corpus is only read.  Crashes land in the artifacts directory.
    run=$dir/run/$name
    rm -rf "$run"
    mkdir -p "$run/corpus" "$run/artifacts"
    local corpus=() dict=() d
    [ -d "fuzz/corpus/$name" ] && corpus=("fuzz/corpus/$name")
    # fuzz/<target>.dict, or fuzz/<x>.dict for every target named fuzz_<x>_*.
    for d in fuzz/*.dict; do
      [ -f "$d" ] || continue
      case "$name" in
        "$(basename "$d" .dict)" | fuzz_"$(basename "$d" .dict)"*) dict=(-dict="$d") ;;
      esac
    done
    echo "fuzz: $name for ${FUZZ_SECONDS}s"
    if UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
       timeout $((FUZZ_SECONDS + 120)) "$bin" -max_total_time="$FUZZ_SECONDS" \
         -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
         "${dict[@]}" -artifact_prefix="$run/artifacts/" "$run/corpus" "${corpus[@]}" \
         >"$run/log" 2>&1 </dev/null; then
      echo "fuzz: $name ok: $(grep -E '^stat::number_of_executed_units' "$run/log" | awk '{print $2}') runs"
    else
      echo "fuzz: $name FAILED (log $run/log, inputs in $run/artifacts):"
      tail -n 40 "$run/log"
      rc=1
    fi
    ran=$((ran + 1))
  done
  if [ "$ran" -eq 0 ] && [ "$rc" -eq 0 ]; then
    echo "fuzz: SKIPPED (no fuzz/*.c defines LLVMFuzzerTestOneInput)"
    return 77
  fi
  return "$rc"
}

note "deps"
if ! bash scripts/deps.sh test </dev/null; then
  summary+=("deps FAILED")
  failed=1
  finish
fi
stage gcc stage_gcc
stage asan stage_asan
stage fuzz stage_fuzz
finish
