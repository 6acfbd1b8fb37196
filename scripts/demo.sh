#!/usr/bin/env bash
# A short tour of umld's main job on its embedded defaults: unmodified
# programs run under the guest kernel, with the guest's own host name.
set -uo pipefail
cd "$(dirname "$0")/.."
UMLD=.venv/bin/umld
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "The host is called: $(hostname)"
say "umld run --hostname demo-guest -- sh -c 'hostname; uname -n'"
$UMLD run --hostname demo-guest -- sh -c 'hostname; uname -n'

say "sethostname inside the guest changes only the guest"
$UMLD run --hostname demo-guest -- sh -c 'hostname renamed-inside; echo "guest now: $(hostname)"'
echo "host still: $(hostname)"

say "Unmodified programs: a pipeline, python3 threads, gcc"
$UMLD run -- sh -c 'seq 1 100000 | sort -n | tail -n 1'
$UMLD run -- python3 -c 'import threading, os; ts=[threading.Thread(target=os.getpid) for _ in range(8)]; [t.start() for t in ts]; [t.join() for t in ts]; print("8 threads joined")'
tmp=$(mktemp -d)
printf '#include <stdio.h>\nint main(void){puts("compiled and run inside the guest");return 0;}\n' > "$tmp/hello.c"
$UMLD run -- sh -c "gcc -o '$tmp/hello' '$tmp/hello.c' && '$tmp/hello'"
rm -rf "$tmp"

say "Exit status passes through (128+N for a signal)"
$UMLD run -- sh -c 'exit 42'; echo "exit status: $?"
$UMLD run -- sh -c 'kill -TERM $$'; echo "exit status: $? (SIGTERM = 15)"

say "Full-trace mode shows every syscall (first lines of: umld run --trace -- hostname)"
$UMLD run --hostname traced --trace -- hostname 2>&1 | grep -E 'uname|write' | head -n 4

say "Which calls trap (everything else runs natively, with no stop):"
$UMLD syscalls --trapped 2>&1 | tail -n 30
