#!/usr/bin/env bash
# Builds ferry against the UCX installed under PREFIX and runs the whole test
# suite, the two demos (both progress policies, shm and tcp) and a short
# ferry-bench sweep against it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: tests/with-ucx.sh PREFIX [options] [-- CTEST_ARGS...]

Builds ferry's tests, examples and benchmark against the UCX installed under
PREFIX (PREFIX/lib/cmake/ucx), then runs, with PREFIX/lib first on the
library path:
  - the whole ctest suite (sanitizer and fuzz sub-builds off),
  - ferry-demo over shm and tcp with --progress inline and thread,
  - ferry-bench over shm with both policies, WRITE and READ, on the
    automatic path (host_ipc) and on ucx, a short sweep.
ferry-gpu-demo and the CUDA rows run too where ferry::cuda is built and a
GPU is visible.

options:
  --build-dir DIR   where to build (default: build-ucx-<UCX version>)
  --build-type T    CMake build type (default: RelWithDebInfo)
  --jobs N          build and test jobs (default: nproc)
  --skip-suite      build, then run only the demos and the benchmark
  -h, --help        this text
Arguments after -- go to ctest (e.g. -- -R test_progress_thread).

Example, with a UCX built by shared/tools/build-ucx.sh into /opt/ucx-1.22:
  tests/with-ucx.sh /opt/ucx-1.22
EOF
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
case $1 in -h|--help) usage; exit 0 ;; esac
prefix=$(cd "$1" && pwd) || { echo "with-ucx.sh: no such directory: $1" >&2; exit 2; }
shift
[ -d "$prefix/lib/cmake/ucx" ] || {
    echo "with-ucx.sh: $prefix has no lib/cmake/ucx: not a UCX install prefix" >&2
    exit 2
}

build_dir="" build_type=RelWithDebInfo jobs=$(nproc) suite=1 ctest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
        --build-type) build_type=${2:?--build-type needs a CMake build type}; shift 2 ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
        --skip-suite) suite=0; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; ctest_args=("$@"); break ;;
        *) echo "with-ucx.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
    esac
done

export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
version=$("$prefix/bin/ucx_info" -v | sed -n 's/^# Library version: //p')
source_dir=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$build_dir" ] || build_dir="$source_dir/build-ucx-$version"
echo "== ferry against UCX $version ($prefix), in $build_dir"
"$prefix/bin/ucx_info" -b | grep -E 'ENABLE_(ASSERT|PARAMS_CHECK) ' || true

cmake -S "$source_dir" -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" -DCMAKE_PREFIX_PATH="$prefix" \
    -Ducx_DIR="$prefix/lib/cmake/ucx" >/dev/null
cmake --build "$build_dir" -j"$jobs"

failed=()
if [ $suite = 1 ]; then
    ctest --test-dir "$build_dir" -j"$jobs" --output-on-failure ${ctest_args[@]+"${ctest_args[@]}"} ||
        failed+=("the test suite")
fi

run() {
    echo "== $*"
    "$@" || failed+=("$*")
}
demo="$build_dir/examples/ferry-demo"
for progress in inline thread; do
    for tls in shm tcp; do run "$demo" --tls "$tls" --progress "$progress"; done
done
bench="$build_dir/benchmarks/ferry-bench"
for progress in inline thread; do
    for op in write read; do
        for path in auto ucx; do
            run "$bench" --tls shm --progress "$progress" --op "$op" --path "$path" --block-sizes 64,4K,64K \
                --batch 1,16,256 --time 0.01
        done
        run "$bench" --tls shm --progress "$progress" --op "$op" --mem alloc --block-sizes 64,4K,64K \
            --batch 1,16,1024 --time 0.01
    done
done
if [ -x "$build_dir/examples/ferry-gpu-demo" ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    for progress in inline thread; do run "$build_dir/examples/ferry-gpu-demo" --progress "$progress"; done
    run "$bench" --memory cuda --progress inline --block-sizes 4K,64K --batch 1,1024 --time 0.01
    run "$bench" --memory cuda,host --mem alloc --progress inline --block-sizes 4K,1M --batch 1,16 --time 0.01
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf 'with-ucx.sh: failed against UCX %s:\n' "$version" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "== all passed against UCX $version"
