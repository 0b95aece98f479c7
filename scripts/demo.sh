#!/usr/bin/env bash
# demo.sh -- the README's first command: build and run examples/demo.
#
# Usage: bash scripts/demo.sh          (from any directory)
#
# Checks the build dependencies (scripts/deps.sh build: installs missing
# Debian packages as root, otherwise prints the apt-get line and stops),
# builds the library and the demo in Release mode in build/demo
# (MQ_BUILD_ROOT overrides "build"), then runs the demo on demo.db in the
# directory you ran this from, removing any earlier demo.db first.  The demo
# takes a few seconds: it waits, in real time, for the 2-second lease of a
# killed worker to run out.  Exit status: the demo's (0 = every job was
# acked exactly once).
set -euo pipefail

here=$PWD
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/${MQ_BUILD_ROOT:-build}/demo

bash "$root/scripts/deps.sh" build </dev/null
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DMQ_BUILD_TESTS=OFF -DMQ_BUILD_BENCH=OFF -DMQ_BUILD_FUZZ=OFF </dev/null >/dev/null
cmake --build "$build" -j2 --target example_demo </dev/null

cd "$here"
rm -f demo.db demo.db-wal demo.db-shm
echo
exec "$build/examples/demo" demo.db
