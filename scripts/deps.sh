#!/usr/bin/env bash
# deps.sh -- make sure the Debian packages mq needs are installed.
#
# Usage: bash scripts/deps.sh [build|test]     (default: build)
#   build  what building the library, the demo and the examples needs
#   test   that plus what the test suite needs: clang with its sanitizer and
#          libFuzzer runtime, libzmq and pyzmq (interop tests), sqlite3 CLI
#
# Packages are detected with dpkg.  Run as root, the missing ones are
# installed non-interactively (apt-get update only when the package lists
# cannot supply them).  Run as anyone else, nothing is changed: the exact
# `sudo apt-get install ...` line is printed and the exit status is 1.
# On a system without dpkg the check is skipped with a warning, so the
# build can still try with whatever is installed.
set -euo pipefail

set_name=${1:-build}
case "$set_name" in
  build|test) ;;
  *) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac

# make and libc6-dev are listed because --no-install-recommends would
# otherwise leave a compiler that cannot build anything; binutils gives nm.
pkgs=(cmake make gcc libc6-dev binutils pkg-config libsqlite3-dev zlib1g-dev)

if [ "$set_name" = test ]; then
  # The libFuzzer/ASan runtime package is versioned like clang itself.
  clang_major=""
  if command -v clang >/dev/null 2>&1; then
    clang_major=$(clang -dumpversion 2>/dev/null | cut -d. -f1 || true)
  fi
  if [ -z "$clang_major" ] && command -v apt-cache >/dev/null 2>&1; then
    clang_major=$(apt-cache depends clang 2>/dev/null |
                  sed -n 's/.*Depends: clang-\([0-9][0-9]*\)$/\1/p' | head -n1 || true)
  fi
  pkgs+=(clang "libclang-rt-${clang_major:-14}-dev" libzmq3-dev python3-zmq sqlite3)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps.sh: no dpkg here; not checking packages (needs: ${pkgs[*]})" >&2
  exit 0
fi

# Not `dpkg -s | grep -q`: grep stops reading at the match, dpkg dies of
# SIGPIPE on a long description and pipefail turns that into "missing".
installed() {
  local out
  out=$(dpkg -s "$1" 2>/dev/null) || return 1
  grep -qx 'Status: install ok installed' <<<"$out"
}

missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps.sh: all $set_name dependencies are installed"
  exit 0
fi

install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages: ${missing[*]}" >&2
  echo "deps.sh: install them with:" >&2
  echo "  sudo $install_cmd" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Update the package lists only if some missing package has no candidate
# (e.g. a fresh container with empty lists).
need_update=0
for p in "${missing[@]}"; do
  cand=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: //p')
  if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
    need_update=1
    break
  fi
done
echo "deps.sh: installing ${missing[*]}"
if [ $need_update -eq 1 ]; then
  apt-get update -q </dev/null
fi
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

still=()
for p in "${missing[@]}"; do
  installed "$p" || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
  echo "deps.sh: still missing after apt-get: ${still[*]}" >&2
  exit 1
fi
echo "deps.sh: installed ${missing[*]}"
