#!/usr/bin/env bash
# A short tour of umld's main job on its embedded defaults: unmodified
# programs run under the guest kernel, with the guest's own host name.
set -uo pipefail
cd "$(dirname "$0")/.."
UMLD="$PWD/.venv/bin/umld"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "The host is called: $(hostname)"
say "umld run --hostname demo-guest -- sh -c 'hostname; uname -n'"
$UMLD run --hostname demo-guest -- sh -c 'hostname; uname -n'

say "sethostname inside the guest changes only the guest"
$UMLD run --uid 0 --hostname demo-guest -- sh -c 'hostname renamed-inside; echo "guest now: $(hostname)"'
echo "host still: $(hostname)"

say "The guest's root is root of the machine only (its ids on the host: /proc/self/uid_map)"
$UMLD run --uid 0 -- sh -c 'id; cat /proc/self/uid_map; echo 1 > /proc/sys/kernel/printk'

say "Unmodified programs: a pipeline, python3 threads, gcc"
$UMLD run -- sh -c 'seq 1 100000 | sort -n | tail -n 1'
$UMLD run -- python3 -c 'import threading, os; ts=[threading.Thread(target=os.getpid) for _ in range(8)]; [t.start() for t in ts]; [t.join() for t in ts]; print("8 threads joined")'
tmp=$(mktemp -d)
printf '#include <stdio.h>\nint main(void){puts("compiled and run inside the guest");return 0;}\n' > "$tmp/hello.c"
$UMLD run --bind "$tmp" -- sh -c "gcc -o '$tmp/hello' '$tmp/hello.c' && '$tmp/hello'"

say "The host's tree, copy-on-write: the guest writes anywhere, the host never changes"
mnt="$tmp/cow"
mkdir "$tmp/project" && echo "a host file" > "$tmp/project/old.txt"
(cd "$tmp/project" && $UMLD run --mount "$mnt" -- sh -c 'echo "written in the guest" > new.txt; rm old.txt; ls; sleep 2') &
for _ in $(seq 50); do [ -r "$mnt/diff" ] && grep -q new.txt "$mnt/diff" && break; sleep 0.1; done
echo "umld diff --mount $mnt (what the guest changed):"
$UMLD diff --mount "$mnt"
echo "on the host: $(ls "$tmp/project")"
wait

say "Its own /proc, a private ramdisk, CPUs and memory of its own"
$UMLD run --tmpfs /scratch:size=1M -- sh -c 'df -h /scratch | tail -n 1; ps ax; cat /proc/uptime'
$UMLD run --vcpus 3 --memory 512M --kernel-release 9.9-umld -- sh -c 'nproc; grep MemTotal /proc/meminfo; uname -r'

say "Everything inside, live on the host through one FUSE mount"
mnt="$tmp/mnt"
$UMLD run --mount "$mnt" --hostname before -- sh -c 'for i in 1 2 3 4 5 6; do echo "guest says: $(hostname)"; sleep 0.5; done' &
for _ in $(seq 50); do [ -r "$mnt/status" ] && break; sleep 0.1; done
ls "$mnt"
cat "$mnt/status" | head -n 5
echo "pid 2: $(tr '\0' ' ' < "$mnt/proc/2/cmdline")"
echo after > "$mnt/config/hostname"; echo "(host wrote 'after' to config/hostname)"
echo bogus > "$mnt/config/vcpus" 2>/dev/null || echo "(config/vcpus refused 'bogus': EINVAL, old value kept: $(cat "$mnt/config/vcpus"))"
wait

say "A program's terminal as files: ui/screen, ui/keys (umld attach connects a real one)"
mnt="$tmp/ui"
$UMLD run --tty --mount "$mnt" -- env PS1='guest$ ' bash --norc --noprofile -i &
for _ in $(seq 50); do [ -r "$mnt/ui/screen" ] && grep -q 'guest\$' "$mnt/ui/screen" && break; sleep 0.1; done
echo 'echo Space typed Space from Space the Space host Enter' > "$mnt/ui/keys"
for _ in $(seq 50); do [ "$(grep -c 'typed from the host' "$mnt/ui/screen")" = 2 ] && break; sleep 0.1; done
echo "cat $mnt/ui/screen:"
sed '/^$/d' "$mnt/ui/screen"
echo 'exit Enter' > "$mnt/ui/keys"
wait
rm -rf "$tmp"

say "Exit status passes through (128+N for a signal)"
$UMLD run -- sh -c 'exit 42'; echo "exit status: $?"
$UMLD run -- sh -c 'kill -TERM $$'; echo "exit status: $? (SIGTERM = 15)"

say "Full-trace mode shows every syscall (first lines of: umld run --trace -- hostname)"
$UMLD run --hostname traced --trace -- hostname 2>&1 | grep -E 'uname|write' | head -n 4

say "Which calls trap (everything else runs natively, with no stop):"
$UMLD syscalls --trapped 2>&1 | tail -n 30
