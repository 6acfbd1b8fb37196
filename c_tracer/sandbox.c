/*
 * umld-sandbox: realizes a guest's mount table, identity and /proc view
 * with Linux namespaces, then execs the guest's first process.
 *
 * The guest kernel (umld/core/sandbox.py) keeps the mount table as data
 * and passes it here as a list of operations.  This program runs as the
 * guest's first traced process, before the guest's first instruction:
 *
 *   S (this program, host pid namespace)
 *     unshare(NEWUSER) when not root (user_namespaces(7)), unshare(NEWNS),
 *     make every mount private, pivot into a staging tmpfs with the host
 *     tree at /oldroot, build the guest tree at /newroot (binds, ramdisks,
 *     loop-mounted disk images), unshare(NEWTIME) with the machine's
 *     boot time, then clone(NEWUSER|NEWNS|NEWPID) → I and write I's id
 *     maps.  The mounts S made are *locked* in I's namespace
 *     (mount_namespaces(7), "Restrictions on mount namespaces"): the guest
 *     cannot unmount them to see what is below, nor make a read-only bind
 *     writable.
 *   I (pid 1 of the guest's pid namespace)
 *     mounts a fresh /proc (it shows only the guest's processes), binds
 *     the machine's generated /proc and /sys files over it, pivot_root(2)s
 *     into /newroot and detaches the host tree, forks G, and re-execs as
 *     "umld-init": a reaper that exits with G's status.
 *   G (pid 2, the guest's first process)
 *     takes the guest's uid/gid, restores the signal mask, chdirs and
 *     execs the command (searching PATH as a shell does).
 *
 * Failures print one line "umld: ..." and exit 125, as env(1) does for its
 * own errors; a command that cannot be found or run exits 127 or 126.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

#define EXIT_SETUP 125
#define STAGING "/tmp"

extern char **environ;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
	int err = errno;
	va_list ap;
	fputs("umld: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s", strerror(err));
	fputc('\n', stderr);
	_exit(EXIT_SETUP);
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("cannot open %s", path);
	size_t n = strlen(text);
	if (write(fd, text, n) != (ssize_t)n)
		die("cannot write %s", path);
	close(fd);
}

/* "/newroot" + guest path, or "/oldroot" + host path. */
static char *join(const char *prefix, const char *path)
{
	size_t a = strlen(prefix), b = strlen(path);
	char *out = malloc(a + b + 2);
	if (!out)
		die("out of memory");
	memcpy(out, prefix, a);
	if (path[0] != '/')
		out[a++] = '/';
	memcpy(out + a, path, b + 1);
	return out;
}

/* mkdir -p; a missing mount point is created where the tree is writable
 * (a ramdisk, a root the guest was given); on a read-only tree the error
 * says which mount point is missing. */
static int mkdirs(char *path, mode_t mode)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int r = mkdir(path, mode);
		*p = '/';
		if (r < 0 && errno != EEXIST)
			return -1;
	}
	if (mkdir(path, mode) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

static void ensure_target(const char *guest, char *target, int want_dir)
{
	struct stat st;
	if (stat(target, &st) == 0) {
		if (want_dir && !S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			die("mount point %s in the guest", guest);
		}
		if (!want_dir && S_ISDIR(st.st_mode)) {
			errno = EISDIR;
			die("cannot bind a file over the directory %s", guest);
		}
		return;
	}
	if (want_dir) {
		if (mkdirs(target, 0755) < 0)
			die("cannot create the mount point %s in the guest", guest);
		return;
	}
	char *slash = strrchr(target, '/');
	*slash = '\0';
	int r = mkdirs(target, 0755);
	*slash = '/';
	int fd = r < 0 ? -1 : open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		die("cannot create the mount point %s in the guest", guest);
	close(fd);
}

static void set_readonly(const char *target, const char *guest, int recursive)
{
	struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY};
	if (syscall(SYS_mount_setattr, AT_FDCWD, target, recursive ? AT_RECURSIVE : 0, &attr,
		    sizeof attr) < 0)
		die("cannot make %s read-only", guest);
}

static int has_flag(const char *flags, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = flags; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && memcmp(p, name, n) == 0)
			return 1;
		p += len + (end != NULL);
	}
	return 0;
}

static void op_bind(const char *src, const char *dst, const char *flags)
{
	char *from = join("/oldroot", src);
	char *to = join("/newroot", dst);
	struct stat st;
	if (stat(from, &st) < 0) {
		if (has_flag(flags, "optional"))
			return;
		die("cannot bind %s", src);
	}
	ensure_target(dst, to, S_ISDIR(st.st_mode));
	if (mount(from, to, NULL, MS_BIND | MS_REC, NULL) < 0)
		die("cannot bind %s at %s", src, dst);
	if (has_flag(flags, "ro"))
		set_readonly(to, dst, 1);
	free(from);
	free(to);
}

static void op_tmpfs(const char *dst, const char *options)
{
	char *to = join("/newroot", dst);
	ensure_target(dst, to, 1);
	if (mount("tmpfs", to, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0)
		die("cannot mount a ramdisk at %s (%s)", dst, options);
	free(to);
}

/* Attach IMAGE to a free loop device with autoclear (loop(4)): the device
 * detaches itself when the filesystem is unmounted, which happens when the
 * last process of the machine's mount namespace is gone, even if umld is
 * killed. */
static void op_disk(const char *image, const char *dst, const char *fstype)
{
	char *from = join("/oldroot", image);
	char *to = join("/newroot", dst);
	ensure_target(dst, to, 1);
	int img = open(from, O_RDWR | O_CLOEXEC);
	if (img < 0)
		die("cannot open the disk image %s", image);
	int ctl = open("/oldroot/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		die("cannot open /dev/loop-control");
	for (int attempt = 0;; attempt++) {
		int n = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (n < 0)
			die("no free loop device");
		char dev[64];
		snprintf(dev, sizeof dev, "/oldroot/dev/loop%d", n);
		int lfd = open(dev, O_RDWR | O_CLOEXEC);
		if (lfd < 0)
			die("cannot open %s", dev + 8);
		struct loop_config cfg;
		memset(&cfg, 0, sizeof cfg);
		cfg.fd = (uint32_t)img;
		cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) < 0) {
			close(lfd);
			/* Another process took it between GET_FREE and here. */
			if (errno == EBUSY && attempt < 16)
				continue;
			die("cannot attach %s to a loop device", image);
		}
		if (mount(dev, to, fstype, MS_NOSUID | MS_NODEV, NULL) < 0)
			die("cannot mount the disk image %s at %s (%s)", image, dst, fstype);
		close(lfd);
		break;
	}
	close(ctl);
	close(img);
	free(from);
	free(to);
}

/* A /dev of its own (the way bubblewrap's --dev does it): a ramdisk with
 * the harmless character devices bound from the host, a new devpts
 * instance and the usual links.  The host's /dev would give the guest's
 * root every disk and terminal of the host. */
static void op_dev(void)
{
	static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
	ensure_target("/dev", (char[]){"/newroot/dev"}, 1);
	if (mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") < 0)
		die("cannot mount the guest's /dev");
	for (size_t k = 0; k < sizeof nodes / sizeof nodes[0]; k++) {
		char from[64], to[64];
		snprintf(from, sizeof from, "/oldroot/dev/%s", nodes[k]);
		snprintf(to, sizeof to, "/newroot/dev/%s", nodes[k]);
		int fd = open(to, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
		if (fd < 0)
			die("cannot create /dev/%s in the guest", nodes[k]);
		close(fd);
		if (mount(from, to, NULL, MS_BIND, NULL) < 0)
			die("cannot bind /dev/%s", nodes[k]);
	}
	if (mkdir("/newroot/dev/pts", 0755) < 0 || mkdir("/newroot/dev/shm", 01777) < 0)
		die("cannot create /dev/pts");
	if (mount("devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		  "newinstance,ptmxmode=0666,mode=0620") < 0)
		die("cannot mount the guest's /dev/pts");
	static const char *const links[][2] = {
	    {"pts/ptmx", "/newroot/dev/ptmx"},	  {"/proc/self/fd", "/newroot/dev/fd"},
	    {"/proc/self/fd/0", "/newroot/dev/stdin"}, {"/proc/self/fd/1", "/newroot/dev/stdout"},
	    {"/proc/self/fd/2", "/newroot/dev/stderr"}, {"/proc/kcore", "/newroot/dev/core"},
	};
	for (size_t k = 0; k < sizeof links / sizeof links[0]; k++)
		if (symlink(links[k][0], links[k][1]) < 0)
			die("cannot create %s", links[k][1] + 8);
}

struct spec {
	char **argv;	  /* the guest command */
	const char *cwd;  /* guest path */
	int cwd_strict;
	const char *hostname; /* of the guest's own UTS namespace */
	const char *domainname;
	uid_t uid;
	gid_t gid;
	int proc;	  /* mount a fresh /proc */
	int subreaper;
	int boottime;	  /* the guest's uptime starts at 0 */
	char **files;	  /* pairs: host file, guest path, bound after /proc */
	int nfiles;
	int was_root;
};

static void sync_read(int fd)
{
	char c;
	if (read(fd, &c, 1) != 1)
		_exit(EXIT_SETUP);
}

/* Search PATH as execvp(3) does, with bash's exit statuses. */
static void exec_command(char **argv)
{
	const char *name = argv[0];
	if (strchr(name, '/')) {
		execve(name, argv, environ);
		int err = errno;
		struct stat st;
		if (err == EACCES && stat(name, &st) == 0 && S_ISDIR(st.st_mode))
			err = EISDIR; /* as bash says it */
		fprintf(stderr, "umld: %s: %s\n", name, strerror(err));
		_exit(err == ENOENT ? 127 : 126);
	}
	const char *path = getenv("PATH");
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	int denied = 0;
	size_t nlen = strlen(name);
	while (*path) {
		const char *end = strchr(path, ':');
		size_t len = end ? (size_t)(end - path) : strlen(path);
		char buf[4096];
		if (len + nlen + 2 <= sizeof buf) {
			if (len == 0)
				buf[0] = '.', len = 1;
			else
				memcpy(buf, path, len);
			buf[len] = '/';
			memcpy(buf + len + 1, name, nlen + 1);
			execve(buf, argv, environ);
			if (errno == EACCES || errno == EISDIR) {
				struct stat st;
				if (stat(buf, &st) == 0 && !S_ISDIR(st.st_mode))
					denied = 1;
			} else if (errno != ENOENT && errno != ENOTDIR) {
				fprintf(stderr, "umld: %s: %s\n", name, strerror(errno));
				_exit(126);
			}
		}
		path += len + (end != NULL);
		if (!end)
			break;
	}
	if (denied) {
		fprintf(stderr, "umld: %s: Permission denied\n", name);
		_exit(126);
	}
	fprintf(stderr, "umld: %s: command not found\n", name);
	_exit(127);
}

static int status_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

/* pid 1: reap every orphan; end with the guest's first process. */
static int init_main(void)
{
	sigset_t all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, 0);
		if (pid == 2)
			return status_code(status);
		if (pid < 0 && errno == ECHILD)
			return 255;
	}
}

/* The first process of an idle machine: ends on SIGTERM, SIGINT, SIGHUP. */
static int idle_main(void)
{
	sigset_t ends;
	sigemptyset(&ends);
	sigaddset(&ends, SIGTERM);
	sigaddset(&ends, SIGINT);
	sigaddset(&ends, SIGHUP);
	sigprocmask(SIG_BLOCK, &ends, NULL);
	prctl(PR_SET_NAME, "umld-idle", 0, 0, 0);
	int sig;
	sigwait(&ends, &sig);
	return 0;
}

static void guest_main(struct spec *sp, const sigset_t *mask)
{
	/* The guest's names, in its own UTS namespace (uts_namespaces(7)), so
	 * /proc/sys/kernel/hostname agrees with uname(2); before the ids
	 * change, while we hold CAP_SYS_ADMIN there. */
	if (sp->hostname && sethostname(sp->hostname, strlen(sp->hostname)) < 0)
		die("cannot set the guest's host name");
	if (sp->domainname && setdomainname(sp->domainname, strlen(sp->domainname)) < 0)
		die("cannot set the guest's domain name");
	/* The guest's identity (credentials(7)); supplementary groups are
	 * reset as login(1) would for a user with only a primary group. */
	if (setgroups(1, &sp->gid) < 0 && errno != EPERM)
		die("setgroups");
	if (setresgid(sp->gid, sp->gid, sp->gid) < 0)
		die("cannot become gid %u", (unsigned)sp->gid);
	if (setresuid(sp->uid, sp->uid, sp->uid) < 0)
		die("cannot become uid %u", (unsigned)sp->uid);
	if (sp->subreaper)
		prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	/* An implicit working directory (umld's own) that the guest does not
	 * have falls back to /, as login does without a home directory. */
	if (sp->cwd && chdir(sp->cwd) < 0 && (sp->cwd_strict || chdir("/") < 0))
		die("cannot change to %s in the guest", sp->cwd);
	if (!sp->argv[0]) {
		/* A machine without a command (the Python API's): its first
		 * process is this program again, waiting to be asked to end.
		 * It execs, so the guest kernel sees the guest start. */
		char *idle_argv[] = {"umld-idle", NULL};
		execve("/proc/self/exe", idle_argv, environ);
		die("cannot start the idle process");
	}
	sigprocmask(SIG_SETMASK, mask, NULL);
	exec_command(sp->argv);
}

static void write_maps(pid_t child, uid_t uid, gid_t gid, int was_root)
{
	char path[64], text[128];
	if (was_root) {
		/* Root on the host: the guest's ids are the host's, so owners
		 * set by chown(2) in the guest are real and persist on disk
		 * images; capabilities stay confined to the guest's namespaces. */
		snprintf(text, sizeof text, "0 0 4294967295\n");
		snprintf(path, sizeof path, "/proc/%d/uid_map", child);
		write_file(path, text);
		snprintf(path, sizeof path, "/proc/%d/gid_map", child);
		write_file(path, text);
		return;
	}
	/* Not root: we are uid 0 of our own namespace, mapped to the user;
	 * the guest's uid is that one id. */
	snprintf(path, sizeof path, "/proc/%d/setgroups", child);
	write_file(path, "deny");
	snprintf(text, sizeof text, "%u 0 1\n", (unsigned)uid);
	snprintf(path, sizeof path, "/proc/%d/uid_map", child);
	write_file(path, text);
	snprintf(text, sizeof text, "%u 0 1\n", (unsigned)gid);
	snprintf(path, sizeof path, "/proc/%d/gid_map", child);
	write_file(path, text);
}

static void pid1_main(struct spec *sp, int self_fd, const sigset_t *mask)
{
	if (sp->proc) {
		if (mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
			die("cannot mount the guest's /proc");
		/* The guest's root may be the host's uid 0: what /proc lets uid
		 * 0 change about the host kernel is made read-only or masked,
		 * as container runtimes do (sysctl(2) files check the uid, not
		 * a capability in the caller's namespace). */
		if (mount("/newroot/proc/sys", "/newroot/proc/sys", NULL, MS_BIND | MS_REC, NULL) < 0)
			die("cannot bind /proc/sys");
		set_readonly("/newroot/proc/sys", "/proc/sys", 1);
		static const char *const masked[] = {"sysrq-trigger", "kcore", "timer_list"};
		for (size_t k = 0; k < sizeof masked / sizeof masked[0]; k++) {
			char to[64];
			snprintf(to, sizeof to, "/newroot/proc/%s", masked[k]);
			if (access(to, F_OK) == 0 && mount("/oldroot/dev/null", to, NULL, MS_BIND, NULL) < 0)
				die("cannot mask /proc/%s", masked[k]);
		}
	}
	for (int i = 0; i < sp->nfiles; i++) {
		char *from = join("/oldroot", sp->files[2 * i]);
		char *to = join("/newroot", sp->files[2 * i + 1]);
		if (mount(from, to, NULL, MS_BIND, NULL) < 0)
			die("cannot bind the machine's %s", sp->files[2 * i + 1]);
		set_readonly(to, sp->files[2 * i + 1], 0);
		free(from);
		free(to);
	}
	/* pivot_root(".", ".") stacks the old root on the new one; detaching
	 * it leaves only the guest's tree (pivot_root(2), NOTES). */
	if (chdir("/newroot") < 0 || syscall(SYS_pivot_root, ".", ".") < 0)
		die("cannot enter the guest's root");
	if (umount2(".", MNT_DETACH) < 0)
		die("cannot detach the host tree");
	if (chdir("/") < 0)
		die("chdir /");
	/* The guest runs in a user namespace below ours with a copy of this
	 * mount namespace.  Every mount in the copy is locked to the guest
	 * (mount_namespaces(7), "Restrictions on mount namespaces"): it
	 * cannot unmount one to see what is below it, nor make a read-only
	 * bind writable, yet it may mount and bind within its own tree. */
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		die("pipe");
	long g = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | SIGCHLD, 0, NULL,
			 NULL, 0);
	if (g < 0)
		die("cannot create the guest's user namespace");
	if (g == 0) {
		close(pipefd[1]);
		sync_read(pipefd[0]);
		close(pipefd[0]);
		guest_main(sp, mask);
	}
	close(pipefd[0]);
	write_maps((pid_t)g, sp->uid, sp->gid, sp->was_root);
	if (write(pipefd[1], "x", 1) != 1)
		die("sync");
	close(pipefd[1]);
	/* Show as "umld-init" in the guest's ps, not with our long argv. */
	char *init_argv[] = {"umld-init", NULL};
	char *init_env[] = {NULL};
	syscall(SYS_execveat, self_fd, "", init_argv, init_env, AT_EMPTY_PATH);
	_exit(init_main());
}

static void become_own_userns(void)
{
	uid_t uid = geteuid();
	gid_t gid = getegid();
	if (unshare(CLONE_NEWUSER) < 0)
		die("cannot create a user namespace (is kernel.unprivileged_userns_clone 0?)");
	char text[64];
	write_file("/proc/self/setgroups", "deny");
	snprintf(text, sizeof text, "0 %u 1\n", (unsigned)uid);
	write_file("/proc/self/uid_map", text);
	snprintf(text, sizeof text, "0 %u 1\n", (unsigned)gid);
	write_file("/proc/self/gid_map", text);
}

static void set_boottime(void)
{
	/* The machine's uptime (/proc/uptime) starts now: a time namespace
	 * whose boot clock is offset by the host's (time_namespaces(7)). */
	struct timespec now;
	clock_gettime(CLOCK_BOOTTIME, &now);
	if (unshare(CLONE_NEWTIME) < 0)
		die("cannot create a time namespace");
	char text[96];
	long long sec = -(long long)now.tv_sec;
	long nsec = 0;
	if (now.tv_nsec) {
		sec -= 1;
		nsec = 1000000000L - now.tv_nsec;
	}
	snprintf(text, sizeof text, "boottime %lld %ld\n", sec, nsec);
	write_file("/oldroot/proc/self/timens_offsets", text);
}

static void need(int argc, int i, int n, const char *op)
{
	if (i + n >= argc) {
		errno = 0;
		die("sandbox: %s needs %d arguments", op, n);
	}
}

/* umld-sandbox enter PID [stdio IN OUT ERR] [ids UID GID] [cwd DIR] -- CMD...
 *
 * A new process in a running machine: join the namespaces of its process
 * PID (user first: joining the others needs capabilities in it, see
 * setns(2)), then fork, because a new pid namespace applies to children
 * only, and exec the command there.  This process waits and exits with
 * the command's status. */
static int enter_main(int argc, char **argv)
{
	sigset_t mask, all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &mask);
	if (argc < 3)
		die("sandbox: enter PID -- CMD");
	const char *pid = argv[2];
	/* Order matters (setns(2)): the pid and time namespaces belong to the
	 * machine's outer user namespace, so they are joined while we still
	 * have our capabilities there; the mount namespace belongs to the
	 * guest's user namespace, joined just before it. */
	static const char *const kinds[] = {"pid", "time", "user", "mnt", "cgroup", "ipc", "uts"};
	int fds[7];
	for (int k = 0; k < 7; k++) {
		char path[64];
		snprintf(path, sizeof path, "/proc/%s/ns/%s", pid, kinds[k]);
		fds[k] = open(path, O_RDONLY | O_CLOEXEC);
		if (fds[k] < 0 && k < 3)
			die("the machine's process %s is gone", pid);
	}
	int in = -1, out = -1, err = -1;
	struct spec sp = {.uid = getuid(), .gid = getgid(), .cwd = "/", .cwd_strict = 1};
	int i = 3;
	for (; i < argc; i++) {
		const char *op = argv[i];
		if (strcmp(op, "--") == 0) {
			i++;
			break;
		} else if (strcmp(op, "stdio") == 0) {
			need(argc, i, 3, op);
			in = atoi(argv[i + 1]);
			out = atoi(argv[i + 2]);
			err = atoi(argv[i + 3]);
			i += 3;
		} else if (strcmp(op, "ids") == 0) {
			need(argc, i, 2, op);
			sp.uid = (uid_t)strtoul(argv[i + 1], NULL, 10);
			sp.gid = (gid_t)strtoul(argv[i + 2], NULL, 10);
			i += 2;
		} else if (strcmp(op, "cwd") == 0) {
			need(argc, i, 1, op);
			sp.cwd = argv[++i];
		} else if (strcmp(op, "cgroup") == 0) {
			/* The machine's pids cgroup (limits/nproc): the new process
			 * counts against it like the others ("0" is the writer). */
			need(argc, i, 1, op);
			char path[4096];
			snprintf(path, sizeof path, "%s/cgroup.procs", argv[++i]);
			int cg = open(path, O_WRONLY | O_CLOEXEC);
			if (cg < 0 || write(cg, "0", 1) != 1)
				die("cannot join the machine's cgroup %s", argv[i]);
			close(cg);
		} else {
			errno = 0;
			die("sandbox: unknown enter operation %s", op);
		}
	}
	if (i >= argc) {
		errno = 0;
		die("sandbox: no command");
	}
	sp.argv = argv + i;
	for (int k = 0; k < 7; k++) {
		/* The guest shares the machine's ipc/uts/cgroup namespaces with
		 * its init, which may be ours: EINVAL then means "already in". */
		if (fds[k] >= 0 && setns(fds[k], 0) < 0 && k < 4 && errno != EINVAL)
			die("cannot join the machine's %s namespace", kinds[k]);
		if (fds[k] >= 0)
			close(fds[k]);
	}
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		if (in >= 0 && (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0))
			die("dup2");
		if (in > 2)
			close(in);
		if (out > 2)
			close(out);
		if (err > 2)
			close(err);
		guest_main(&sp, &mask);
	}
	if (in > 2)
		close(in);
	if (out > 2)
		close(out);
	if (err > 2)
		close(err);
	int status;
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	return status_code(status);
}

int main(int argc, char **argv)
{
	if (argc > 0 && strcmp(argv[0], "umld-init") == 0)
		return init_main();
	if (argc > 0 && strcmp(argv[0], "umld-idle") == 0)
		return idle_main();
	if (argc > 1 && strcmp(argv[1], "enter") == 0)
		return enter_main(argc, argv);

	sigset_t mask, all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &mask);

	struct spec sp = {.uid = 0, .gid = 0};
	sp.files = calloc((size_t)argc, sizeof(char *));
	sp.was_root = geteuid() == 0;
	int self_fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (self_fd < 0)
		die("cannot open /proc/self/exe");

	if (!sp.was_root)
		become_own_userns();
	if (unshare(CLONE_NEWNS) < 0)
		die("cannot create a mount namespace");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("cannot make the mounts private");
	/* A staging tmpfs with the host tree below it at /oldroot: every host
	 * path below is named through /oldroot, so no staging directory ever
	 * hides a bind source (the way bubblewrap stages). */
	if (mount("tmpfs", STAGING, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k") < 0)
		die("cannot mount the staging ramdisk");
	if (mkdir(STAGING "/newroot", 0755) < 0 || mkdir(STAGING "/oldroot", 0755) < 0)
		die("cannot create the staging directories");
	if (syscall(SYS_pivot_root, STAGING, STAGING "/oldroot") < 0)
		die("cannot pivot to the staging ramdisk");
	if (chdir("/") < 0)
		die("chdir /");

	int i = 1;
	for (; i < argc; i++) {
		const char *op = argv[i];
		if (strcmp(op, "--") == 0) {
			i++;
			break;
		} else if (strcmp(op, "root") == 0) {
			need(argc, i, 2, op);
			char *from = join("/oldroot", argv[i + 1]);
			if (mount(from, "/newroot", NULL, MS_BIND | MS_REC, NULL) < 0)
				die("cannot use %s as the guest's root", argv[i + 1]);
			free(from);
			if (strcmp(argv[i + 2], "ro") == 0)
				set_readonly("/newroot", "/", 1);
			i += 2;
		} else if (strcmp(op, "bind") == 0) {
			need(argc, i, 3, op);
			op_bind(argv[i + 1], argv[i + 2], argv[i + 3]);
			i += 3;
		} else if (strcmp(op, "tmpfs") == 0) {
			need(argc, i, 2, op);
			op_tmpfs(argv[i + 1], argv[i + 2]);
			i += 2;
		} else if (strcmp(op, "disk") == 0) {
			need(argc, i, 3, op);
			op_disk(argv[i + 1], argv[i + 2], argv[i + 3]);
			i += 3;
		} else if (strcmp(op, "dev") == 0) {
			op_dev();
		} else if (strcmp(op, "mkdir") == 0) {
			need(argc, i, 1, op);
			char *to = join("/newroot", argv[i + 1]);
			if (mkdirs(to, 0755) < 0 || chmod(to, 01777) < 0)
				die("cannot create %s in the guest", argv[i + 1]);
			free(to);
			i += 1;
		} else if (strcmp(op, "proc") == 0) {
			/* The host's /proc under the root bind goes: the guest
			 * gets its own, and nothing is left below it to reveal. */
			struct stat st;
			if (stat("/newroot/proc", &st) < 0 && mkdirs((char[]){"/newroot/proc"}, 0555) < 0)
				die("cannot create /proc in the guest");
			umount2("/newroot/proc", MNT_DETACH);
			sp.proc = 1;
		} else if (strcmp(op, "file") == 0) {
			need(argc, i, 2, op);
			sp.files[2 * sp.nfiles] = argv[i + 1];
			sp.files[2 * sp.nfiles + 1] = argv[i + 2];
			sp.nfiles++;
			i += 2;
		} else if (strcmp(op, "ids") == 0) {
			need(argc, i, 2, op);
			sp.uid = (uid_t)strtoul(argv[i + 1], NULL, 10);
			sp.gid = (gid_t)strtoul(argv[i + 2], NULL, 10);
			i += 2;
		} else if (strcmp(op, "cwd") == 0) {
			need(argc, i, 2, op);
			sp.cwd = argv[i + 1];
			sp.cwd_strict = strcmp(argv[i + 2], "strict") == 0;
			i += 2;
		} else if (strcmp(op, "uts") == 0) {
			need(argc, i, 2, op);
			sp.hostname = argv[i + 1];
			sp.domainname = argv[i + 2];
			i += 2;
		} else if (strcmp(op, "subreaper") == 0) {
			sp.subreaper = 1;
		} else if (strcmp(op, "boottime") == 0) {
			sp.boottime = 1;
		} else {
			errno = 0;
			die("sandbox: unknown operation %s", op);
		}
	}
	sp.argv = argv + i; /* empty: an idle machine */

	if (sp.boottime)
		set_boottime();
	/* clone(2) without a new stack behaves as fork(2). */
	long child = syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | SIGCHLD, 0, NULL, NULL, 0);
	if (child < 0)
		die("cannot create the guest's pid namespace");
	if (child == 0)
		pid1_main(&sp, self_fd, &mask);
	int status;
	while (waitpid((pid_t)child, &status, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	return status_code(status);
}
