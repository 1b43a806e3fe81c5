#!/usr/bin/env bash
# Build a copy of fusefs._pagecache with AddressSanitizer and
# UndefinedBehaviorSanitizer into a temporary directory and run the Python
# page-cache tests against it. The repository's own build is not touched.
#
#   csrc/sanitize.sh [extra pytest args]
#
# PYTHON picks the interpreter (default: python3 on PATH), CC the compiler.
# The sanitized package goes first on PYTHONPATH; the script checks that the
# tests really imported it. Python itself is not instrumented, so libasan is
# LD_PRELOADed. Leak checking is off here (CPython keeps memory at exit on
# purpose); the C driver checks leaks: `make -C csrc asan valgrind`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
py=${PYTHON:-python3}
cc=${CC:-cc}
work=$(mktemp -d "${TMPDIR:-/tmp}/tierfs-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT

san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
libasan=$("$cc" -print-file-name=libasan.so)
if [[ ! -e "$libasan" ]]; then
    echo "sanitize.sh: $cc has no libasan.so" >&2
    exit 2
fi

mkdir -p "$work/lib"
cp -r "$root/fusefs" "$work/lib/"
find "$work/lib" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

echo "== building the sanitized extension in $work"
(
    cd "$root"
    TIERFS_PAGECACHE_CFLAGS="$san -O1 -g" TIERFS_PAGECACHE_LDFLAGS="$san" \
        "$py" setup.py -q build_ext --build-lib "$work/lib" --build-temp "$work/tmp" \
        >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
)

export LD_PRELOAD="$libasan"
# alloc_dealloc_mismatch=0: libcachesim's C++ extension (used by the
# comparison test) frees with free() what it allocated with new. Our C code
# has no new/delete, so the check has nothing of ours to find.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:alloc_dealloc_mismatch=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$work/lib${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

cd "$work"
module=$("$py" -c 'import fusefs._pagecache as m; print(m.__file__)')
echo "== sanitized module: $module"
case "$module" in
    "$work"/*) ;;
    *) echo "sanitize.sh: imported $module, not the sanitized build" >&2; exit 1 ;;
esac

echo "== running the page-cache tests under ASan/UBSan"
# --capture=sys: a sanitizer writes its report to file descriptor 2 and then
# ends the process; fd-level capture would swallow the report.
"$py" -m pytest -p no:cacheprovider -q --capture=sys --rootdir "$root" \
    -c "$root/pyproject.toml" -m "not sanitize" "$root"/tests/test_pagecache*.py "$@"
