#!/usr/bin/env bash
# umld as a user gets it: an sdist and a wheel built from it (python -m
# build, the way a release is made), the wheel installed into a fresh venv
# outside the checkout, then run from a directory where the source tree is
# not importable:
#   * real runs, as root and as an ordinary user: `umld run -- true`, a
#     bind of a host directory, `umld syscalls --check`;
#   * the tracer backends' contract suite and the kernel's run and sandbox
#     tests, from a copy of tests/ that has no umld/ beside it (so every
#     `import umld` is the installed one: the script checks that).
# Needs `make install` first (the checkout's venv has `build`).
# Usage: scripts/test-wheel.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-/usr/bin/python3}
ORDINARY=umld-tester

# /tmp/umld-wheel.*: searchable by the ordinary user (mktemp makes 0700).
work=$(mktemp -d /tmp/umld-wheel.XXXXXX)
chmod 0755 "$work"
# The warm umlds the real runs start (umld/_warm.py) live in $work and end
# with it.
export UMLD_WARM_DIR=$work/warm
cleanup() {
    for lock in "$work"/warm*/*.lock; do
        [ -s "$lock" ] && kill "$(cat "$lock")" 2>/dev/null
    done
    rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "build: sdist, then a wheel from the sdist"
start=$(date +%s%N)
.venv/bin/python -m build -q --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
    cat "$work/build.log"
    exit 1
}
echo "built in $((($(date +%s%N) - start) / 1000000)) ms:" "$(cd "$work/dist" && echo *)"
wheel=$(echo "$work"/dist/umld-*.whl)

step "install the wheel into a fresh venv ($PYTHON)"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel[test,export]" >"$work/pip.log" 2>&1 || {
    cat "$work/pip.log"
    exit 1
}
VPY=$work/venv/bin/python
UMLD=$work/venv/bin/umld
# Everything below runs from here: no umld/ in it or above it.
mkdir "$work/run"
cd "$work/run"
where=$("$VPY" -c 'import umld, umld.core.sandbox as s, umld.tracer._c_tracer as c; print(umld.__file__, s.SANDBOX, c.__file__)')
echo "$where"
case "$where" in
*"$ROOT"*)
    echo "test-wheel: umld was imported from the source tree" >&2
    exit 1
    ;;
esac
for f in $where; do
    case "$f" in "$work/venv/"*) ;; *)
        echo "test-wheel: $f is not in the installed package" >&2
        exit 1
        ;;
    esac
done

# Real runs: as root, and as the ordinary user when we are root.
as_user=()
if [ "$(id -u)" -eq 0 ]; then
    id "$ORDINARY" >/dev/null 2>&1 ||
        useradd --create-home --shell /bin/sh --user-group "$ORDINARY"
    install -d -m 0700 -o "$ORDINARY" -g "$ORDINARY" "$work/warm-user"
    as_user=(setpriv --reuid="$ORDINARY" --regid="$ORDINARY" --init-groups --reset-env
        env HOME=/tmp PATH=/usr/bin:/bin UMLD_WARM_DIR="$work/warm-user")
fi
mkdir -m 0755 "$work/shared"
echo "from the host" >"$work/shared/file"
real_runs() {
    local who=$1
    shift
    step "real runs as $who"
    "$@" "$UMLD" run -- /bin/true
    "$@" "$UMLD" syscalls --check
    out=$("$@" "$UMLD" run --bind "$work/shared:/mnt:ro" -- /bin/cat /mnt/file)
    [ "$out" = "from the host" ] || {
        echo "test-wheel: the bind showed '$out'" >&2
        exit 1
    }
    # The guest's exit status comes back.
    set +e
    "$@" "$UMLD" run -- /bin/sh -c 'exit 7'
    rc=$?
    set -e
    [ "$rc" -eq 7 ] || {
        echo "test-wheel: exit status $rc, expected 7" >&2
        exit 1
    }
    # The installed front end starts runs warm (the first run started a
    # warm umld in the background): UMLD_WARM=1 fails unless served so.
    for _ in $(seq 100); do
        set +e
        "$@" env UMLD_WARM=1 "$UMLD" run -- /bin/sh -c 'exit 7' 2>/dev/null
        rc=$?
        set -e
        [ "$rc" -eq 7 ] && break
        sleep 0.1
    done
    [ "$rc" -eq 7 ] || {
        echo "test-wheel: no warm run (status $rc)" >&2
        exit 1
    }
    echo "ok: run, syscalls --check, bind, exit status, a warm run"
}
real_runs "$(id -un)"
if [ ${#as_user[@]} -gt 0 ]; then
    real_runs "$ORDINARY" "${as_user[@]}"
fi

step "tests on the installed package"
mkdir "$work/t"
cp -r "$ROOT/tests" "$ROOT/pyproject.toml" "$work/t/"
# The header: test_c_backend checks the installed binding against it.
mkdir "$work/t/c_tracer"
cp "$ROOT"/c_tracer/*.h "$work/t/c_tracer/"
cd "$work/t"
"$VPY" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/tracer tests/kernel/test_run.py tests/kernel/test_sandbox.py "$@"
