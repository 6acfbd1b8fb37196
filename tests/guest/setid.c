/* Every way to leave a set-user-ID or set-group-ID file, or a file with
 * capabilities, in directory DIR: for the root-run machine tests
 * (tests/kernel/test_hostroot.py).  Built 64-bit and -m32.  One line per
 * way: "NAME=RESULT mode=MODE", RESULT being 0 or -errno and MODE the
 * file's mode afterwards (octal, "-" when there is no file), or for the
 * xattrs "cap=1" when the file has security.capability.
 *
 *   setid DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Generic numbers, the same in both ABIs (linux/unistd.h of 6.6+). */
#define NR_FCHMODAT2 452
#define NR_SETXATTRAT 463
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

struct xattr_args {
	uint64_t value;
	uint32_t size;
	uint32_t flags;
};

static int dirfd_;
static const char *dir;

static char *in(const char *name)
{
	static char buf[4096];
	snprintf(buf, sizeof buf, "%s/%s", dir, name);
	return buf;
}

static void fresh(const char *name)
{
	unlinkat(dirfd_, name, 0);
	int fd = openat(dirfd_, name, O_CREAT | O_WRONLY | O_TRUNC, 0644);
	if (fd < 0) {
		perror(name);
		exit(2);
	}
	close(fd);
	fchmodat(dirfd_, name, 0644, 0); /* whatever the umask */
}

static void report(const char *what, const char *name, long r)
{
	struct stat st;
	r = r < 0 ? -errno : 0; /* an fd from open counts as success */
	if (fstatat(dirfd_, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		printf("%s=%ld mode=-\n", what, r);
	else
		printf("%s=%ld mode=%o\n", what, r, (unsigned)(st.st_mode & 07777));
}

static void report_cap(const char *what, const char *name, long r)
{
	if (r < 0)
		r = -errno;
	char value[64];
	int has = fgetxattr(openat(dirfd_, name, O_RDONLY), "security.capability", value,
			    sizeof value) > 0;
	printf("%s=%ld cap=%d\n", what, r, has);
}

/* A vfs_cap_data, revision 2 (20 bytes): CAP_NET_BIND_SERVICE, effective. */
static const uint32_t cap_v2[5] = {0x02000000 | 1, 1u << 10, 0, 0, 0};

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2)
		return 2;
	dir = argv[1];
	dirfd_ = open(dir, O_DIRECTORY | O_RDONLY);
	if (dirfd_ < 0) {
		perror(dir);
		return 2;
	}
	umask(022);
	static const struct {
		const char *name;
		mode_t mode;
	} chmods[] = {{"chmod-4755", 04755}, {"chmod-2755", 02755}, {"chmod-2745", 02745},
		      {"chmod-6711", 06711}, {"chmod-0755", 0755}};
	for (size_t i = 0; i < sizeof chmods / sizeof chmods[0]; i++) {
		fresh(chmods[i].name);
		report(chmods[i].name, chmods[i].name, chmod(in(chmods[i].name), chmods[i].mode));
	}
	fresh("fchmod");
	int fd = openat(dirfd_, "fchmod", O_RDONLY);
	report("fchmod-4755", "fchmod", fchmod(fd, 04755));
	close(fd);
	fresh("fchmodat");
	report("fchmodat-4755", "fchmodat", fchmodat(dirfd_, "fchmodat", 04755, 0));
	fresh("fchmodat2");
	report("fchmodat2-4755", "fchmodat2", syscall(NR_FCHMODAT2, dirfd_, "fchmodat2", 04755, 0));

	unlinkat(dirfd_, "open", 0);
	report("open-4755", "open", open(in("open"), O_CREAT | O_WRONLY, 04755));
	fresh("open-existing");
	/* Without O_CREAT the mode is ignored: this one opens. */
	report("open-noncreating", "open-existing", open(in("open-existing"), O_RDONLY, 04755));
	unlinkat(dirfd_, "openat", 0);
	report("openat-4755", "openat", openat(dirfd_, "openat", O_CREAT | O_WRONLY, 04755));
	unlinkat(dirfd_, "openat-0755", 0);
	report("openat-0755", "openat-0755", openat(dirfd_, "openat-0755", O_CREAT | O_WRONLY, 0755));
	unlinkat(dirfd_, "creat", 0);
	report("creat-4755", "creat", creat(in("creat"), 04755));
	unlinkat(dirfd_, "mknod", 0);
	report("mknod-4755", "mknod", mknod(in("mknod"), S_IFREG | 04755, 0));
	unlinkat(dirfd_, "mknodat", 0);
	report("mknodat-2755", "mknodat", mknodat(dirfd_, "mknodat", S_IFREG | 02755, 0));
	for (int resolve = 0; resolve < 2; resolve++) {
		const char *name = resolve ? "openat2-nosym" : "openat2";
		struct open_how how = {.flags = O_CREAT | O_WRONLY, .mode = 04755,
				       .resolve = resolve ? RESOLVE_NO_SYMLINKS : 0};
		unlinkat(dirfd_, name, 0);
		char label[64];
		snprintf(label, sizeof label, "%s-4755", name);
		report(label, name, syscall(SYS_openat2, dirfd_, name, &how, sizeof how));
		how.mode = 0640;
		unlinkat(dirfd_, name, 0);
		snprintf(label, sizeof label, "%s-0640", name);
		report(label, name, syscall(SYS_openat2, dirfd_, name, &how, sizeof how));
	}

	fresh("setxattr");
	report_cap("setxattr-cap", "setxattr",
		   setxattr(in("setxattr"), "security.capability", cap_v2, sizeof cap_v2, 0));
	fresh("lsetxattr");
	report_cap("lsetxattr-cap", "lsetxattr",
		   lsetxattr(in("lsetxattr"), "security.capability", cap_v2, sizeof cap_v2, 0));
	fresh("fsetxattr");
	fd = openat(dirfd_, "fsetxattr", O_RDONLY);
	report_cap("fsetxattr-cap", "fsetxattr",
		   fsetxattr(fd, "security.capability", cap_v2, sizeof cap_v2, 0));
	close(fd);
	fresh("setxattrat");
	struct xattr_args xa = {.value = (uint64_t)(uintptr_t)cap_v2, .size = sizeof cap_v2};
	report_cap("setxattrat-cap", "setxattrat",
		   syscall(NR_SETXATTRAT, dirfd_, "setxattrat", 0, "security.capability", &xa, sizeof xa));
	/* setxattrat with a user.* name, through its three shapes. */
	static const char *shapes[] = {"setxattrat-user-rel", "setxattrat-user-abs",
				       "setxattrat-user-fd"};
	for (int i = 0; i < 3; i++) {
		fresh(shapes[i]);
		struct xattr_args ua = {.value = (uint64_t)(uintptr_t) "v-of-at", .size = 7};
		long r;
		if (i == 0) {
			r = syscall(NR_SETXATTRAT, dirfd_, shapes[i], 0, "user.at", &ua, sizeof ua);
		} else if (i == 1) {
			r = syscall(NR_SETXATTRAT, AT_FDCWD, in(shapes[i]), AT_SYMLINK_NOFOLLOW, "user.at",
				    &ua, sizeof ua);
		} else {
			int f = openat(dirfd_, shapes[i], O_RDONLY);
			r = syscall(NR_SETXATTRAT, f, "", AT_EMPTY_PATH, "user.at", &ua, sizeof ua);
			close(f);
		}
		char got[32] = "";
		getxattr(in(shapes[i]), "user.at", got, sizeof got - 1);
		printf("%s=%ld value=%s\n", shapes[i], r < 0 ? -errno : r, got);
	}
	fresh("user-xattr");
	report_cap("setxattr-user", "user-xattr", setxattr(in("user-xattr"), "user.umld", "1", 1, 0));
	return 0;
}
