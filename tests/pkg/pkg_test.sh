#!/usr/bin/env bash
# pkg_test.sh -- the packaging tests: what a user gets from `cmake --install`,
# from pkg-config, from the two files mq.c + mq.h, and from libmq.so.
#
# Usage: pkg_test.sh STEP   with STEP one of
#   install       install the build tree into $PREFIX (emptied first) and
#                 check every file the install promises is there
#   find_package  build tests/pkg/ as a separate CMake project against
#                 $PREFIX with find_package(mq); run its shared and static
#                 consumers
#   pkg_config    build consumer.c with `cc $(pkg-config --cflags --libs mq)`
#                 (shared) and with --static against libmq.a; run both.
#                 Exit 77 (skipped) when there is no pkg-config.
#   amalgamation  build consumer.c with mq.c and mq.h alone, the way the
#                 README tells users to, and run it
#   symbols       libmq.so exports mq_* names only, each declared in mq.h,
#                 and every function mq.h declares
#   version       `mq --version` prints MQ_VERSION from mq.h for the tool
#                 and for mq_libversion(), and SQLite's version; libmq.so's
#                 SONAME and file name carry the same version
#
# Settings come from the environment, set by tests/CMakeLists.txt:
#   SRC (repo root), BUILD (the build tree), CONFIG (build type), WORK
#   (scratch directory, under the build tree), PREFIX (install prefix),
#   LIBDIR (CMAKE_INSTALL_LIBDIR), CMAKE, CC, SAN_FLAGS (the sanitizer
#   flags of the build, so consumers link with the same runtime), LIBSO
#   (the built libmq.so), NM, MQ_CLI (the built mq tool, may be empty),
#   SQLITE_VERSION (the SQLite version CMake found), WITH_ZMTP (ON/OFF).
#
# Every step is bounded: no loop waits on anything, builds and runs are
# each given a `timeout`.  A failure prints what was expected and what was
# found, and exits 1.
set -uo pipefail

# The soname's version: major.minor before 1.0 (a minor release may change
# the ABI then), the major alone after (CMakeLists.txt, MQ_SOVERSION).
soversion() {
  local major=${1%%.*} rest=${1#*.}
  if [ "$major" = 0 ]; then echo "0.${rest%%.*}"; else echo "$major"; fi
}

step=${1:-}
fail() { echo "pkg_test $step: FAIL: $*" >&2; exit 1; }
run() { # run COMMAND...: echo it, run it with a time limit, fail on error
  echo "+ $*"
  timeout 240 "$@" || fail "command failed (status $?): $*"
}
# The MQ_VERSION string of mq.h: the single source of truth.
header_version() {
  sed -n 's/^#define MQ_VERSION "\([0-9.]*\)".*/\1/p' "$SRC/mq.h"
}
read -r -a san <<<"${SAN_FLAGS:-}"

case "$step" in
install)
  rm -rf "$PREFIX"
  run "$CMAKE" --install "$BUILD" --prefix "$PREFIX" --config "$CONFIG"
  v=$(header_version)
  major=$(soversion "$v")
  for f in include/mq.h "$LIBDIR/libmq.a" "$LIBDIR/libmq.so" "$LIBDIR/libmq.so.$major" \
           "$LIBDIR/libmq.so.$v" "$LIBDIR/cmake/mq/mqConfig.cmake" \
           "$LIBDIR/cmake/mq/mqConfigVersion.cmake" "$LIBDIR/cmake/mq/mqTargets.cmake" \
           "$LIBDIR/pkgconfig/mq.pc"; do
    [ -e "$PREFIX/$f" ] || fail "$PREFIX/$f was not installed"
  done
  if [ -n "${MQ_CLI:-}" ]; then
    [ -x "$PREFIX/bin/mq" ] || fail "$PREFIX/bin/mq was not installed"
  fi
  cmp -s "$SRC/mq.h" "$PREFIX/include/mq.h" || fail "the installed mq.h differs from $SRC/mq.h"
  grep -Fqx "prefix=$PREFIX" "$PREFIX/$LIBDIR/pkgconfig/mq.pc" ||
    fail "mq.pc does not name the prefix it was installed into ($PREFIX)"
  echo "installed into $PREFIX"
  ;;

find_package)
  dir=$WORK/find_package
  rm -rf "$dir"
  run "$CMAKE" -S "$SRC/tests/pkg" -B "$dir" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DMQ_PREFIX="$PREFIX" -DMQ_EXPECTED_VERSION="$(header_version)" \
    -DCMAKE_C_COMPILER="$CC" -DCMAKE_C_FLAGS="${SAN_FLAGS:-}" \
    -DCMAKE_EXE_LINKER_FLAGS="${SAN_FLAGS:-}"
  run "$CMAKE" --build "$dir"
  for exe in consumer consumer_static; do
    rm -f "$dir/$exe.db"*
    out=$(timeout 60 "$dir/$exe" "$dir/$exe.db") || fail "$exe failed"
    [ "$out" = ok ] || fail "$exe printed '$out', not 'ok'"
    echo "$exe: $out"
  done
  ;;

pkg_config)
  if ! command -v pkg-config >/dev/null 2>&1; then
    echo "pkg_test pkg_config: SKIPPED: no pkg-config (scripts/deps.sh installs it)"
    exit 77
  fi
  dir=$WORK/pkg_config
  rm -rf "$dir"
  mkdir -p "$dir"
  export PKG_CONFIG_PATH=$PREFIX/$LIBDIR/pkgconfig
  v=$(pkg-config --modversion mq) || fail "pkg-config does not find mq in $PKG_CONFIG_PATH"
  [ "$v" = "$(header_version)" ] || fail "mq.pc says version $v, mq.h $(header_version)"
  read -r -a flags <<<"$(pkg-config --cflags --libs mq)" || fail "pkg-config --cflags --libs mq"
  # The shared library is found at run time through the rpath, not through
  # any system directory, so a stale system libmq cannot stand in for it.
  run "$CC" "${san[@]}" "$SRC/tests/pkg/consumer.c" "${flags[@]}" \
    -Wl,-rpath,"$PREFIX/$LIBDIR" -o "$dir/consumer"
  # Static: libmq.a in place of -lmq, and what Requires.private and
  # Libs.private add for it (SQLite, zlib, threads) must be enough.
  read -r -a sflags <<<"$(pkg-config --static --cflags --libs mq)" || fail "pkg-config --static"
  for i in "${!sflags[@]}"; do
    [ "${sflags[$i]}" = -lmq ] && sflags[$i]=$PREFIX/$LIBDIR/libmq.a
  done
  run "$CC" "${san[@]}" "$SRC/tests/pkg/consumer.c" "${sflags[@]}" -o "$dir/consumer_static"
  for exe in consumer consumer_static; do
    out=$(timeout 60 "$dir/$exe" "$dir/$exe.db") || fail "$exe failed"
    [ "$out" = ok ] || fail "$exe printed '$out', not 'ok'"
    echo "$exe: $out"
  done
  if command -v readelf >/dev/null 2>&1; then
    readelf -d "$dir/consumer" | grep -q 'NEEDED.*\[libmq\.so' ||
      fail "the pkg-config consumer is not linked to libmq.so"
    if readelf -d "$dir/consumer_static" | grep -q 'NEEDED.*\[libmq\.so'; then
      fail "the --static consumer still needs libmq.so"
    fi
  fi
  ;;

amalgamation)
  # Copy the two files next to the program, as a user drops them into a
  # project, and compile exactly the README's command.
  dir=$WORK/amalgamation
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$SRC/mq.c" "$SRC/mq.h" "$SRC/tests/pkg/consumer.c" "$dir/" || fail "copy"
  cd "$dir" || fail "cd $dir"
  run "$CC" -std=c11 "${san[@]}" consumer.c mq.c -lsqlite3 -lz -lpthread -o consumer
  out=$(timeout 60 ./consumer consumer.db) || fail "consumer failed"
  [ "$out" = ok ] || fail "consumer printed '$out', not 'ok'"
  echo "consumer: $out"
  ;;

symbols)
  syms=$("$NM" -D --defined-only "$LIBSO") || fail "$NM -D --defined-only $LIBSO"
  count=0
  bad=()
  declare -A exported=()
  while read -r line; do
    name=${line##* }
    type=$(awk '{print $(NF-1)}' <<<"$line")
    # Only the global text and data symbols are the library's names; the
    # version/absolute markers some linkers add (type A) are not.
    case "$type" in A) continue ;; esac
    count=$((count + 1))
    exported[$name]=1
    if [[ $name != mq_* ]]; then
      bad+=("$name (type $type): not an mq_* name")
    elif ! grep -Eq "[^A-Za-z0-9_]$name[[:space:]]*\(" "$SRC/mq.h"; then
      bad+=("$name: exported but not declared in mq.h")
    fi
  done <<<"$syms"
  [ "$count" -gt 0 ] || fail "libmq.so exports nothing; nm said: $syms"
  # The other way round: every function mq.h declares is in libmq.so
  # (mq_server_* only when the network code is compiled in).
  while read -r name; do
    [[ $name == mq_server_* && ${WITH_ZMTP:-ON} != ON ]] && continue
    [ -n "${exported[$name]:-}" ] || bad+=("$name: declared in mq.h but not exported")
  done < <(sed -n 's/^MQ_API[^(]*[ *]\(mq_[A-Za-z0-9_]*\)(.*/\1/p' "$SRC/mq.h")
  if [ ${#bad[@]} -ne 0 ]; then
    printf '  %s\n' "${bad[@]}" >&2
    fail "libmq.so exports the wrong names (above)"
  fi
  echo "libmq.so exports $count symbols, all mq_* and declared in mq.h"
  ;;

version)
  v=$(header_version)
  [ -n "$v" ] || fail "no MQ_VERSION in $SRC/mq.h"
  if [ -n "${MQ_CLI:-}" ]; then
    out=$(timeout 60 "$MQ_CLI" --version) || fail "mq --version failed"
    want="mq $v (library $v, SQLite $SQLITE_VERSION)"
    [ "$out" = "$want" ] || fail "mq --version printed '$out', expected '$want'"
    echo "$out"
  fi
  # Follow the symlinks to the real file; its name and SONAME carry the
  # version CMake took from mq.h.
  real=$(readlink -f "$LIBSO")
  [ "$(basename "$real")" = "libmq.so.$v" ] ||
    fail "the shared library is $(basename "$real"), expected libmq.so.$v"
  soname=$(readelf -d "$real" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  [ "$soname" = "libmq.so.$(soversion "$v")" ] ||
    fail "SONAME is '$soname', expected libmq.so.$(soversion "$v")"
  echo "libmq.so.$v, SONAME $soname"
  ;;

*)
  echo "usage: $0 install|find_package|pkg_config|amalgamation|symbols|version" >&2
  exit 2
  ;;
esac
