/*
 * umld-sandbox: realizes a guest's mount table, identity and /proc view
 * with Linux namespaces, then execs the guest's first process.
 *
 * The guest kernel (umld/core/sandbox.py) keeps the mount table as data
 * and passes it here as a list of operations.  This program runs as the
 * guest's first traced process, before the guest's first instruction:
 *
 *   S (this program, host pid namespace)
 *     joins the machine's cgroups, unshare(NEWUSER) when not root
 *     (user_namespaces(7)), unshare(NEWNS), makes every mount private,
 *     pivots into a staging tmpfs with the host tree at /oldroot, builds
 *     the guest tree at /newroot (binds, ramdisks, loop-mounted disk
 *     images; umld's own exports hidden; host-global kernel files masked),
 *     unshare(NEWTIME) with the machine's boot time, then
 *     clone(NEWNS|NEWPID) → I.
 *   I (pid 1 of the guest's pid namespace)
 *     mounts a fresh /proc (it shows only the guest's processes), masks
 *     what it tells of the host, binds the machine's generated /proc and
 *     /sys files over it, pivot_root(2)s into /newroot and detaches the
 *     host tree, clones G with NEWUSER|NEWNS|NEWUTS|NEWCGROUP, writes G's
 *     id maps, and re-execs as "umld-init": a reaper that exits with G's
 *     status.  The mounts S made are *locked* in G's namespace
 *     (mount_namespaces(7), "Restrictions on mount namespaces"): the guest
 *     cannot unmount them to see what is below, nor make a read-only bind
 *     writable.
 *   G (pid 2, the guest's first process)
 *     takes a session keyring of its own and the guest's uid/gid,
 *     restores the signal mask, chdirs and execs the command (searching
 *     PATH as a shell does).
 *
 * Identity.  Run by root, the guest's ids are a range of host ids that
 * nobody else uses ("subids BASEUID BASEGID COUNT", leased by
 * umld/core/ids.py): guest uid k is host uid BASEUID+k, so the guest's
 * root is an unprivileged host user whose capabilities reach only the
 * machine's namespaces.  The host trees it is given are presented
 * through idmapped mounts (mount_setattr(2), MOUNT_ATTR_IDMAP) with the
 * same map, so host uid k shows as guest uid k: the guest sees the owners
 * the caller sees, and what it writes lands with the ids it used.  Run by
 * another user, the guest's one id is that user (an unprivileged user
 * namespace of our own), and no idmapped mount is possible or needed.
 *
 * Failures print one line "umld: ..." and exit 125, as env(1) does for its
 * own errors; a command that cannot be found or run exits 127 or 126.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/loop.h>
#include <linux/mount.h>
#include <linux/nsfs.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
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
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41) /* Linux 4.13, ioctl_tty(2) */
#endif
#define KEYCTL_JOIN_SESSION_KEYRING 1    /* linux/keyctl.h */
#define OVERLAYFS_SUPER_MAGIC 0x794c7630 /* linux/magic.h */
#define DEVPTS_SUPER_MAGIC 0x1cd1        /* linux/magic.h */

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

/* Whether the sandbox runs as host root (its mount namespace is then its
 * own, not locked to another user namespace's). */
static int sp_was_root;

/* Root of the host: uid 0 in the initial user namespace, whose uid_map is
 * the identity over every id (user_namespaces(7)).  Root of a machine
 * umld runs in (nesting) has the mounts of its host locked together and
 * only the ids its host gave it: it builds its machine as an ordinary
 * user does. */
static int host_root(void)
{
    if (geteuid() != 0)
        return 0;
    FILE *f = fopen("/proc/self/uid_map", "re");
    if (!f)
        return 1;
    unsigned long inside = 1, outside = 1, count = 0;
    int n = fscanf(f, "%lu %lu %lu", &inside, &outside, &count);
    fclose(f);
    return n == 3 && inside == 0 && outside == 0 && count == 4294967295UL;
}

/* The guest's host ids when root runs the machine ("subids"): guest id k
 * is host id base+k for k below count - 1; a guest uid or gid at or above
 * that takes the range's last id (so one machine may still run as, say,
 * uid 3000000000).  Off when not root, or in the --unsafe-host-ids mode. */
static struct {
    int on;
    unsigned long uid, gid, count;
    uid_t guest_uid;
    gid_t guest_gid;
    int userns; /* a user namespace with the guest's maps: the idmap */
} ids = {.userns = -1};

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

/* With the guest's own ids, what the sandbox creates in the guest's tree
 * (mount points, /dev entries) is created as the guest's root: an
 * idmapped mount refuses to create files for a host id its map lacks
 * (EOVERFLOW, mount_setattr(2)), and the guest owns what it would own
 * natively.  setfsuid(2) also drops the capabilities that would let the
 * sandbox create where the guest's root could not. */
struct fsids {
    int uid, gid;
};

static struct fsids as_guest_root(void)
{
    struct fsids old = {-1, -1};
    if (ids.on) {
        old.gid = setfsgid((gid_t)ids.gid);
        old.uid = setfsuid((uid_t)ids.uid);
    }
    return old;
}

static void restore_fsids(struct fsids old)
{
    if (old.uid >= 0) {
        setfsuid((uid_t)old.uid);
        setfsgid((gid_t)old.gid);
    }
}

static void ensure_target_as(const char *guest, char *target, int want_dir);

static void ensure_target(const char *guest, char *target, int want_dir)
{
    struct fsids old = as_guest_root();
    ensure_target_as(guest, target, want_dir);
    restore_fsids(old);
}

static void ensure_target_as(const char *guest, char *target, int want_dir)
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

/* uid_map / gid_map text (user_namespaces(7)) of the guest's range. */
static void format_map(char *buf, size_t size, unsigned long base, unsigned long count,
                       unsigned long id)
{
    if (id < count)
        snprintf(buf, size, "0 %lu %lu\n", base, count);
    else
        snprintf(buf, size, "0 %lu %lu\n%lu %lu 1\n", base, count - 1, id, base + count - 1);
}

/* The host id of the guest's own uid or gid (format_map's map). */
static unsigned int guest_host_id(unsigned long base, unsigned long id)
{
    return (unsigned int)(id < ids.count ? base + id : base + ids.count - 1);
}

static void write_id_maps(pid_t pid, const char *proc)
{
    char path[96], text[128];
    format_map(text, sizeof text, ids.uid, ids.count, ids.guest_uid);
    snprintf(path, sizeof path, "%s/%d/uid_map", proc, pid);
    write_file(path, text);
    format_map(text, sizeof text, ids.gid, ids.count, ids.guest_gid);
    snprintf(path, sizeof path, "%s/%d/gid_map", proc, pid);
    write_file(path, text);
}

/* A user namespace with the guest's id maps, for MOUNT_ATTR_IDMAP: made by
 * a child that only waits.  CLONE_UNTRACED keeps it out of the tracer's
 * sight (the guest kernel counts this process's children: init, then the
 * guest); it inherits the seccomp filter and makes no call that stops.
 * Never negative (it dies instead): callers cast it to mount_attr's __u64
 * as is. */
static int userns_with_maps(const char *uid_map, const char *gid_map);

/* "rootids UIDS GIDS": the owners on disk of the tree given as the guest's
 * root, when an engine gave them other host ids than the guest's (an OCI
 * bundle made for a user namespace, linux.uidMappings): extents
 * GUEST:HOST:COUNT, comma-separated.  The root alone is idmapped with
 * them (host id HOST+k shows as guest id GUEST+k, and what the guest
 * writes there lands as HOST+k); the guest's processes keep their own
 * range, and every other tree keeps the guest's idmap. */
static struct {
    const char *uids, *gids;
    int userns;    /* a user namespace with those maps */
    int attaching; /* the root is being attached: idmap_userns() is it */
} root_ids = {.userns = -1};

/* user_namespaces(7) map text of "rootids" extents: inside (the ids on
 * disk) HOST, outside the guest's host id of GUEST. */
static void format_root_map(char *buf, size_t size, const char *extents, unsigned long base)
{
    char *copy = strdup(extents), *save = NULL;
    if (!copy)
        die("out of memory");
    size_t used = 0;
    buf[0] = '\0';
    for (char *e = strtok_r(copy, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        unsigned long guest, host, count;
        char tail;
        if (sscanf(e, "%lu:%lu:%lu%c", &guest, &host, &count, &tail) != 3 || count == 0 ||
            guest + count > ids.count) {
            errno = 0;
            die("sandbox: bad rootids extent %s", e);
        }
        int n = snprintf(buf + used, size - used, "%lu %lu %lu\n", host, base + guest, count);
        if (n < 0 || (size_t)n >= size - used) {
            errno = 0;
            die("sandbox: too many rootids extents");
        }
        used += (size_t)n;
    }
    free(copy);
}

static int idmap_userns(void)
{
    if (root_ids.attaching) {
        if (root_ids.userns < 0) {
            char uid_map[4096], gid_map[4096];
            format_root_map(uid_map, sizeof uid_map, root_ids.uids, ids.uid);
            format_root_map(gid_map, sizeof gid_map, root_ids.gids, ids.gid);
            root_ids.userns = userns_with_maps(uid_map, gid_map);
        }
        return root_ids.userns;
    }
    if (ids.userns < 0) {
        char uid_map[128], gid_map[128];
        format_map(uid_map, sizeof uid_map, ids.uid, ids.count, ids.guest_uid);
        format_map(gid_map, sizeof gid_map, ids.gid, ids.count, ids.guest_gid);
        ids.userns = userns_with_maps(uid_map, gid_map);
    }
    return ids.userns;
}

static int userns_with_maps(const char *uid_map, const char *gid_map)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        die("pipe");
    long pid = syscall(SYS_clone, CLONE_NEWUSER | CLONE_UNTRACED | SIGCHLD, 0, NULL, NULL, 0);
    if (pid < 0)
        die("cannot create the user namespace of the idmapped mounts");
    if (pid == 0) {
        char c;
        close(pipefd[1]);
        _exit(read(pipefd[0], &c, 1) < 0);
    }
    close(pipefd[0]);
    char path[64];
    snprintf(path, sizeof path, "/oldroot/proc/%ld/uid_map", pid);
    write_file(path, uid_map);
    snprintf(path, sizeof path, "/oldroot/proc/%ld/gid_map", pid);
    write_file(path, gid_map);
    snprintf(path, sizeof path, "/oldroot/proc/%ld/ns/user", pid);
    int userns = open(path, O_RDONLY | O_CLOEXEC);
    if (userns < 0)
        die("cannot open %s", path);
    close(pipefd[1]);
    while (waitpid((pid_t)pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return userns;
}

/* Attributes every bind of a host tree gets: set-uid bits and device
 * nodes placed there by anyone mean nothing in the guest. */
#define BIND_ATTRS (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)

/* Clone the one mount at PATH (open_tree(2), not recursive), idmapped
 * (with the guest's own ids) when the filesystem allows it (ext4, xfs, btrfs, overlayfs; tmpfs from
 * Linux 6.3), and attach it at TARGET.  A filesystem that refuses an
 * idmap (proc, sysfs, devpts, fuse, nfs) shows its owners unmapped
 * (nobody) in the guest.  -1 when a mount that is not REQUIRED cannot be
 * cloned. */
static int attach_clone(const char *path, const char *target, unsigned long long attrs,
                        int required)
{
    int fd =
        (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | O_CLOEXEC | AT_NO_AUTOMOUNT);
    if (fd < 0) {
        /* A submount root may not reach (another user's FUSE mount
         * without allow_other): the guest goes without it. */
        if (!required)
            return -1;
        die("cannot clone the mount %s", path + 8);
    }
    struct mount_attr attr = {.attr_set = attrs};
    if (ids.on) {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = (__u64)idmap_userns();
    }
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        memset(&attr, 0, sizeof attr);
        attr.attr_set = attrs;
        if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
            die("cannot set the attributes of %s", path + 8);
    }
    if (syscall(SYS_move_mount, fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        die("cannot attach %s at %s", path + 8, target + 8);
    close(fd);
    return 0;
}

/* Give the mount at TARGET the guest's idmap, in place: clone it, idmap
 * the clone, detach the original, attach the clone. */
static void idmap_in_place(const char *target, const char *guest)
{
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, target, OPEN_TREE_CLONE | O_CLOEXEC);
    if (fd < 0)
        die("cannot clone the mount %s", guest);
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (__u64)idmap_userns()};
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0)
        die("cannot idmap %s", guest);
    if (umount2(target, MNT_DETACH) < 0 ||
        syscall(SYS_move_mount, fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        die("cannot replace %s with its idmapped clone", guest);
    close(fd);
}

/* One line of mountinfo (proc(5)) that matters here. */
struct mnt {
    char *point;
    char *fstype;
    int hidden; /* one of umld's own exports */
};

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
    char *out = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

static int below(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/' || dir[n - 1] == '/');
}

/* The mounts at or below DIR as this process sees them, in the order they
 * were mounted, without the ones another hides (mounted over them or over
 * a directory above them).  Exports of umld (FUSE mounts whose source is
 * "umld", a daemon's, or "umld-NAME", a machine's) are marked hidden: no
 * machine ever sees one. */
static size_t mounts_below(const char *dir, struct mnt **out)
{
    FILE *f = fopen("/oldroot/proc/self/mountinfo", "re");
    if (!f)
        die("cannot read the host's mount table");
    size_t n = 0, cap = 64;
    struct mnt *list = malloc(cap * sizeof *list);
    char *line = NULL;
    size_t len = 0;
    while (list && getline(&line, &len, f) > 0) {
        char point[4096], fstype[256], source[4096];
        char *sep = strstr(line, " - ");
        if (!sep || sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1 ||
            sscanf(sep + 3, "%255s %4095s", fstype, source) != 2)
            continue;
        unescape(point);
        unescape(source);
        if (!below(point, dir))
            continue;
        /* Covered: drop what this mount hides. */
        size_t kept = 0;
        for (size_t k = 0; k < n; k++) {
            if (below(list[k].point, point)) {
                free(list[k].point);
                free(list[k].fstype);
            } else {
                list[kept++] = list[k];
            }
        }
        n = kept;
        if (n == cap) {
            cap *= 2;
            list = realloc(list, cap * sizeof *list);
            if (!list)
                break;
        }
        list[n].point = strdup(point);
        list[n].fstype = strdup(fstype);
        list[n].hidden = strncmp(fstype, "fuse", 4) == 0 &&
                         (strcmp(source, "umld") == 0 || strncmp(source, "umld-", 5) == 0);
        n++;
    }
    if (!list)
        die("out of memory");
    free(line);
    fclose(f);
    *out = list;
    return n;
}

static void free_mounts(struct mnt *list, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(list[k].point);
        free(list[k].fstype);
    }
    free(list);
}

/* An empty read-only directory over a guest path: what hides a mount. */
static void cover_dir(const char *target, const char *guest)
{
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
              "size=4k,mode=0555") < 0)
        die("cannot hide %s", guest);
}

/* Bind the host tree FROM (below /oldroot) at TO (below /newroot).  With
 * the guest's own id range, mount by mount, each clone idmapped; else one
 * recursive bind.  umld's exports below FROM are left out or covered. */
static void bind_tree(const char *from_path, const char *to, unsigned long long attrs)
{
    char from[4096];
    snprintf(from, sizeof from, "%s", from_path);
    for (size_t len = strlen(from); len > 1 && from[len - 1] == '/'; len--)
        from[len - 1] = '\0';
    struct mnt *list;
    size_t n = mounts_below(from, &list);
    if (ids.on) {
        attach_clone(from, to, attrs, 1);
        for (size_t k = 0; k < n; k++) {
            const char *p = list[k].point;
            /* Below a mount left out (an export, or one that cannot
             * be cloned): left out too. */
            int out = list[k].hidden;
            for (size_t j = 0; j < k && !out; j++)
                out = list[j].hidden && below(p, list[j].point);
            if (out) {
                list[k].hidden = 1;
                continue;
            }
            if (strcmp(p, from) == 0)
                continue;
            char *target = join(to, p + strlen(from));
            if (attach_clone(p, target, attrs, 0) < 0)
                list[k].hidden = 1;
            free(target);
        }
    } else {
        if (mount(from, to, NULL, MS_BIND | MS_REC, NULL) < 0)
            die("cannot bind %s at %s", from + 8, to + 8);
        struct mount_attr attr = {.attr_set = attrs};
        if (syscall(SYS_mount_setattr, AT_FDCWD, to, AT_RECURSIVE, &attr, sizeof attr) < 0)
            die("cannot set the attributes of %s", to + 8);
        /* Mounts copied from the host's namespace are locked together
         * (mount_namespaces(7)): an export is covered, not unmounted. */
        for (size_t k = 0; k < n; k++) {
            if (!list[k].hidden)
                continue;
            char *target = join(to, list[k].point + strlen(from));
            /* An export we may not even look up (another user's,
             * without allow_other) is as closed to the guest. */
            if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
                      "size=4k,mode=0555") < 0 &&
                errno != EACCES)
                die("cannot hide %s", target + 8);
            free(target);
        }
    }
    free_mounts(list, n);
}

/* ---- the copy-on-write host tree (the default root) -------------------- */

static void loop_mount(const char *from, const char *to, const char *fstype, const char *image,
                       const char *dst);

/* Filesystems an overlay can take as a lower layer (overlayfs(7)); the
 * rest (proc, sysfs, devpts, cgroup, fuse, ...) are bound read-only. */
static int overlayable(const char *fstype)
{
    static const char *const ok[] = {"ext2",    "ext3",     "ext4",  "xfs",      "btrfs",
                                     "tmpfs",   "vfat",     "exfat", "f2fs",     "zfs",
                                     "overlay", "squashfs", "erofs", "iso9660",  "nfs",
                                     "nfs4",    "ntfs3",    "jfs",   "bcachefs", "ramfs"};
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++)
        if (strcmp(fstype, ok[k]) == 0)
            return 1;
    return 0;
}

/* What lies below the kernel's own trees (/proc, /sys, /dev) or /run
 * (the machine's /dev and /run replace the host's) is bound read-only as
 * it is, never made copy-on-write: a tmpfs holding cgroup mounts, the
 * host's /dev/shm. */
static int kernel_tree(const char *guest)
{
    static const char *const trees[] = {"/proc", "/sys", "/dev", "/run"};
    for (size_t k = 0; k < sizeof trees / sizeof trees[0]; k++)
        if (below(guest, trees[k]))
            return 1;
    return 0;
}

/* The machine's upper layer ("upper tmpfs OPTIONS", "upper disk IMAGE",
 * "upper dir HOSTDIR"): where every write to the host tree lands, mounted
 * at /upper of the stage.  Each overlay of the tree (a "unit") keeps its
 * upper and work directories in /upper/units/NAME, NAME being the guest
 * path with / as %2F ("root" for /): the same in every run of a named
 * machine, whose upper layer persists. */
static int have_upper;

static void op_upper(const char *kind, const char *arg)
{
    if (mkdir("/upper", 0755) < 0 && errno != EEXIST)
        die("cannot create /upper");
    if (strcmp(kind, "tmpfs") == 0) {
        if (mount("tmpfs", "/upper", "tmpfs", MS_NOSUID | MS_NODEV, arg) < 0)
            die("cannot mount the machine's upper layer (%s)", arg);
    } else if (strcmp(kind, "disk") == 0) {
        char *from = join("/oldroot", arg);
        loop_mount(from, "/upper", "ext4", arg, "the machine's upper layer");
        free(from);
    } else if (strcmp(kind, "dir") == 0) {
        char *from = join("/oldroot", arg);
        if (mount(from, "/upper", NULL, MS_BIND, NULL) < 0)
            die("cannot bind %s as the machine's upper layer", arg);
        free(from);
    } else {
        errno = 0;
        die("sandbox: unknown upper layer %s", kind);
    }
    struct fsids old = as_guest_root();
    if (mkdir("/upper/units", 0755) < 0 && errno != EEXIST)
        die("cannot create the machine's upper layer");
    restore_fsids(old);
    have_upper = 1;
}

struct unit {
    char *guest;       /* "/", "/home", ... */
    char *lower;       /* the lower layer, a path of the stage */
    const char *attrs; /* the directory whose owner and mode it shows */
    char name[256];
    char upper[320], work[320];
};

/* A unit's name: its guest path with / and % as %2F and %25, "root" for
 * /; a path too long for one name is "long-" and a hash of it.  Each unit
 * directory also holds the guest path in a file "path". */
static void unit_name(const char *guest, char *name, size_t size)
{
    size_t k = 0;
    if (strcmp(guest, "/") == 0) {
        snprintf(name, size, "root");
        return;
    }
    name[0] = '\0';
    for (const char *p = guest + 1; *p; p++) {
        if (k + 4 >= size || k > 200) {
            unsigned long long h = 1469598103934665603ULL; /* FNV-1a */
            for (const char *q = guest; *q; q++)
                h = (h ^ (unsigned char)*q) * 1099511628211ULL;
            snprintf(name, size, "long-%016llx", h);
            return;
        }
        if (*p == '/' || *p == '%') {
            k += (size_t)snprintf(name + k, size - k, "%%%02X", (unsigned)*p);
        } else {
            name[k++] = *p;
            name[k] = '\0';
        }
    }
}

static void unit_dirs(struct unit *u)
{
    unit_name(u->guest, u->name, sizeof u->name);
    char base[300];
    snprintf(base, sizeof base, "/upper/units/%s", u->name);
    snprintf(u->upper, sizeof u->upper, "%s/u", base);
    snprintf(u->work, sizeof u->work, "%s/w", base);
    if ((mkdir(base, 0755) < 0 && errno != EEXIST) || (mkdir(u->work, 0700) < 0 && errno != EEXIST))
        die("cannot create the upper layer of %s", u->guest);
    struct stat st;
    if (stat(u->upper, &st) == 0)
        return; /* a named machine's, from an earlier run */
    char path[320];
    snprintf(path, sizeof path, "%s/path", base);
    FILE *f = fopen(path, "we");
    if (!f || fprintf(f, "%s\n", u->guest) < 0 || fclose(f) != 0)
        die("cannot create the upper layer of %s", u->guest);
    /* The upper directory gives the merged root of the unit its owner and
     * mode: the lower's, as seen here (through the idmap, as root).  Where
     * that owner has no id here (an ordinary user's stage), the user keeps
     * it, without the owner's write: the guest's root may still write
     * there, its users no more than natively.  Where the upper layer has
     * no id for it (EOVERFLOW: a host mount below a writable tree, whose
     * owner the guest sees as nobody), the upper keeps ours. */
    if (stat(u->attrs, &st) < 0 || mkdir(u->upper, 0700) < 0)
        die("cannot create the upper layer of %s", u->guest);
    mode_t mode = st.st_mode & 07777;
    if (!sp_was_root && st.st_uid != geteuid()) {
        mode = (mode_t)((mode & ~(mode_t)0700) | ((mode & 07) << 6));
    } else if (chown(u->upper, st.st_uid, st.st_gid) < 0 && errno != EINVAL && errno != EOVERFLOW) {
        die("cannot give the upper layer of %s its owner", u->guest);
    }
    /* A machine that root runs refuses set-id modes with group execute
     * (umld/core/syscalls/sys_file.py): nested in one, the upper layer
     * of a set-group-ID directory (/var/mail) goes without the bit. */
    if (chmod(u->upper, mode) < 0 &&
        (errno != EPERM || chmod(u->upper, mode & ~(mode_t)(S_ISUID | S_ISGID)) < 0))
        die("cannot give the upper layer of %s its mode", u->guest);
}

/* xino=on: the upper layer (tmpfs, an image) is never the lower's file
 * system, and without xino a merged directory's d_ino in getdents(2) is
 * the lower inode while its st_ino is the overlay's (the table "Inode
 * properties" in the kernel's overlayfs.rst); "auto" turns itself off
 * for a lower file system with a null uuid, "on" does not.  Inode numbers
 * too wide for the borrowed high bits fall back to the non-xino scheme,
 * one inode at a time. */
static void mount_unit(struct unit *u, const char *target)
{
    char opts[12800];
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s,xino=on%s", u->lower, u->upper,
             u->work, sp_was_root ? "" : ",userxattr");
    if (mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, opts) < 0) {
        /* An overlay over an overlay over a file system is as deep as the
         * kernel stacks them (FILESYSTEM_MAX_STACK_DEPTH, 2): a machine
         * in a machine in a machine cannot have a copy-on-write root. */
        struct statfs fs;
        if (errno == EINVAL && statfs(u->lower, &fs) == 0 && fs.f_type == OVERLAYFS_SUPER_MAGIC) {
            errno = 0;
            die("cannot make %s copy-on-write: it is an overlay over an overlay already (the "
                "third nested machine: give it --read-only-root or --root)",
                u->guest);
        }
        die("cannot make %s copy-on-write", u->guest);
    }
}

static struct unit units[512];
static size_t nunits;

static struct unit *new_unit(const char *guest, const char *lower)
{
    if (nunits == sizeof units / sizeof units[0]) {
        errno = 0;
        die("too many filesystems to make copy-on-write");
    }
    struct unit *u = &units[nunits++];
    u->guest = strdup(guest);
    u->lower = strdup(lower);
    u->attrs = u->lower;
    if (!u->guest || !u->lower)
        die("out of memory");
    return u;
}

/* Whether any mount of LIST lies strictly below DIR. */
static int mounts_under(const struct mnt *list, size_t n, const char *dir)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(list[k].point, dir) != 0 && below(list[k].point, dir))
            return 1;
    return 0;
}

static const struct mnt *mount_at(const struct mnt *list, size_t n, const char *path)
{
    const struct mnt *found = NULL;
    for (size_t k = 0; k < n; k++)
        if (strcmp(list[k].point, path) == 0)
            found = &list[k];
    return found;
}

/* Root-run (the stage's mounts are its own, unlocked): each host mount is
 * cloned alone, idmapped with the guest's ids, as the lower layer of an
 * overlay at its place; a mount an overlay cannot take is bound read-only
 * instead.  Whole filesystems, root files included, are copy-on-write. */
static void cow_mounts(struct mnt *list, size_t n)
{
    if (mkdir("/lower", 0700) < 0)
        die("cannot create /lower");
    for (size_t k = 0; k < n; k++) {
        const char *p = list[k].point;
        int out = list[k].hidden;
        for (size_t j = 0; j < k && !out; j++)
            out = list[j].hidden && below(p, list[j].point);
        if (out) {
            list[k].hidden = 1;
            continue;
        }
        const char *guest = p[strlen("/oldroot")] ? p + strlen("/oldroot") : "/";
        char *target = join("/newroot", guest);
        if (!overlayable(list[k].fstype) || kernel_tree(guest)) {
            if (attach_clone(p, target, BIND_ATTRS | MOUNT_ATTR_RDONLY, 0) < 0)
                list[k].hidden = 1;
            free(target);
            continue;
        }
        char lower[64];
        snprintf(lower, sizeof lower, "/lower/%zu", k);
        if (mkdir(lower, 0700) < 0)
            die("cannot create %s", lower);
        if (attach_clone(p, lower, BIND_ATTRS | MOUNT_ATTR_RDONLY, k == 0) < 0) {
            list[k].hidden = 1;
            free(target);
            continue;
        }
        struct unit *u = new_unit(guest, lower);
        unit_dirs(u);
        mount_unit(u, target);
        free(target);
    }
}

/* An ordinary user's stage holds the host's mounts locked together
 * (mount_namespaces(7)), and an overlay cannot take as its lower layer a
 * directory below which a locked mount lies (overlayfs clones its lower
 * layers, and a clone may not uncover what a locked mount hides).  So the
 * tree is built piecewise (cow_dir): a directory with no mount below it is
 * one overlay; one with mounts below is "split": an overlay whose lower
 * layer is a stub of it (its entries, empty, in the stage's /stubs), each
 * entry then placed over the stub: directories and mounts made
 * copy-on-write in turn, other filesystems (proc, sysfs, ...) bound
 * read-only, files bound read-only.  So new entries in a split directory
 * (/, /tmp with a mount inside) are copy-on-write like any; its own files
 * are read-only (EROFS) and cannot be removed (EBUSY).
 *
 * "writable GUEST": a directory where an ordinary user's guest writes
 * (its home, its working directory, /var/tmp).  An overlay copies up the
 * directories above a file it writes, and it cannot copy up one whose
 * owner or group has no id in the user's namespace (EOVERFLOW): root's /,
 * /home, /var.  So those above a writable directory are split, and a
 * writable directory whose own copy-up would fail (a project directory of
 * another group below the world-writable /var/tmp) is the root of an
 * overlay of its own.  A named machine's units of earlier runs are cut
 * the same way again, so that its changes stay where they were made. */
static char **writables;
static int nwritables;
static char **forced;
static int nforced;

static void add_path(char ***list, int *n, const char *path)
{
    char **grown = realloc(*list, (size_t)(*n + 1) * sizeof **list);
    if (!grown || !(grown[*n] = strdup(path)))
        die("out of memory");
    *list = grown;
    (*n)++;
}

/* Whether a directory has any entry. */
static int has_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)))
        found = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return found;
}

/* The guest paths of the units of earlier runs that hold changes (their
 * "path" files), where the host still has a directory. */
static void read_old_units(void)
{
    DIR *d = opendir("/upper/units");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[320], guest[4200];
        snprintf(path, sizeof path, "/upper/units/%s/u", e->d_name);
        if (!has_entries(path))
            continue;
        snprintf(path, sizeof path, "/upper/units/%s/path", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        if (fgets(guest, sizeof guest, f) && guest[0] == '/') {
            guest[strcspn(guest, "\n")] = '\0';
            char *host = join("/oldroot", guest);
            struct stat st;
            if (stat(host, &st) == 0 && S_ISDIR(st.st_mode)) {
                add_path(&forced, &nforced, guest);
                add_path(&writables, &nwritables, guest);
            }
            free(host);
        }
        fclose(f);
    }
    closedir(d);
}

static int mapped_here(const struct stat *st)
{
    return st->st_uid == geteuid() && st->st_gid == getegid();
}

static int split_for_writes(const char *guest, const char *src)
{
    if (sp_was_root)
        return 0;
    int above = 0;
    for (int k = 0; k < nwritables && !above; k++)
        above = strcmp(writables[k], guest) != 0 && below(writables[k], guest);
    struct stat st;
    if (!above || stat(src, &st) < 0)
        return 0;
    return !mapped_here(&st) && !(st.st_mode & S_IWOTH);
}

static int is_forced(const char *guest)
{
    for (int k = 0; k < nforced; k++)
        if (strcmp(forced[k], guest) == 0)
            return 1;
    return 0;
}

/* Whether writes below the writable W, inside the unit U, need W cut as
 * a unit of its own: a directory from below U's root to W that the
 * overlay could not copy up, and not copied up already. */
static int needs_own_unit(const struct unit *u, const char *w)
{
    if (is_forced(w))
        return 1;
    size_t root = strcmp(u->guest, "/") == 0 ? 0 : strlen(u->guest);
    char up[4600];
    snprintf(up, sizeof up, "%s%s", u->upper, w + root);
    struct stat st;
    if (lstat(up, &st) == 0)
        return 0;
    char host[4200];
    for (size_t k = root + 1; w[k - 1]; k++) {
        if (w[k] != '/' && w[k] != '\0')
            continue;
        snprintf(host, sizeof host, "/oldroot%.*s", (int)k, w);
        if (stat(host, &st) < 0 || !S_ISDIR(st.st_mode))
            return 0;
        if (!mapped_here(&st))
            return 1;
    }
    return 0;
}

static struct unit *new_unit(const char *guest, const char *lower);
static void mount_unit(struct unit *u, const char *target);

static int by_length(const void *a, const void *b)
{
    size_t x = strlen(*(char *const *)a), y = strlen(*(char *const *)b);
    return (x > y) - (x < y);
}

/* The unit U just mounted: cut the writables below it that need it. */
static void cut_nested(const struct unit *u)
{
    if (sp_was_root)
        return;
    for (int k = 0; k < nwritables; k++) {
        const char *w = writables[k];
        if (strcmp(w, u->guest) == 0 || !below(w, u->guest) || !needs_own_unit(u, w))
            continue;
        char *src = join("/oldroot", w);
        char *dst = join("/newroot", w);
        struct stat st;
        if (stat(src, &st) < 0 || !S_ISDIR(st.st_mode)) {
            free(src);
            free(dst);
            continue;
        }
        struct unit *nested = new_unit(w, src);
        unit_dirs(nested);
        mount_unit(nested, dst);
        free(src);
        free(dst);
    }
}

static void bind_read_only(const char *src, const char *dst, const char *rel)
{
    if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
        die("cannot bind %s", rel);
    struct mount_attr attr = {.attr_set = BIND_ATTRS | MOUNT_ATTR_RDONLY};
    if (syscall(SYS_mount_setattr, AT_FDCWD, dst, AT_RECURSIVE, &attr, sizeof attr) < 0)
        die("cannot make %s read-only", rel);
}

static void cow_dir(const struct mnt *list, size_t n, const char *rel)
{
    char *src = join("/oldroot", rel);
    char *dst = join("/newroot", rel);
    const struct mnt *m = mount_at(list, n, src);
    if (m && m->hidden) {
        free(src);
        free(dst);
        return; /* an export: left an empty directory */
    }
    if ((m && !overlayable(m->fstype)) || (rel[0] && kernel_tree(rel))) {
        bind_read_only(src, dst, rel);
        free(src);
        free(dst);
        return;
    }
    if (!mounts_under(list, n, src) && !split_for_writes(rel[0] ? rel : "/", src)) {
        struct unit *u = new_unit(rel[0] ? rel : "/", src);
        unit_dirs(u);
        mount_unit(u, dst);
        cut_nested(u);
        free(src);
        free(dst);
        return;
    }
    /* Split: an overlay whose lower layer is a stub of the directory (its
     * entries, empty), with each entry then placed over it. */
    static unsigned nstubs;
    char stub[64];
    snprintf(stub, sizeof stub, "/stubs/%u", nstubs++);
    if ((mkdir("/stubs", 0755) < 0 && errno != EEXIST) || mkdir(stub, 0755) < 0)
        die("cannot create %s", stub);
    DIR *d = opendir(src);
    if (!d) {
        /* A directory the user may not read (another user's home with a
         * mount inside): as it is, read-only; the user could not look in
         * natively either. */
        bind_read_only(src, dst, rel);
        free(src);
        free(dst);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char from[4200], to[4200];
        snprintf(from, sizeof from, "%s/%s", src, e->d_name);
        snprintf(to, sizeof to, "%s/%s", stub, e->d_name);
        const struct mnt *hm = mount_at(list, n, from);
        struct stat st;
        if (hm && hm->hidden) {
            /* An export (never stat(2)ed: it refuses the machine): an
             * empty directory. */
            if (mkdir(to, 0755) < 0)
                die("cannot create %s", to);
            continue;
        }
        if (lstat(from, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (mkdir(to, st.st_mode & 07777) < 0)
                die("cannot create %s", to);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t len = readlink(from, target, sizeof target - 1);
            if (len < 0)
                continue;
            target[len] = '\0';
            if (symlink(target, to) < 0)
                die("cannot create %s", to);
        } else {
            int fd = open(to, O_WRONLY | O_CREAT | O_CLOEXEC, st.st_mode & 0777);
            if (fd < 0)
                die("cannot create %s", to);
            close(fd);
        }
    }
    struct unit *u = new_unit(rel[0] ? rel : "/", stub);
    u->attrs = src;
    unit_dirs(u);
    mount_unit(u, dst);
    rewinddir(d);
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char sub[4096], from[4200], to[4200];
        snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
        snprintf(from, sizeof from, "/oldroot%s", sub);
        snprintf(to, sizeof to, "/newroot%s", sub);
        struct stat st;
        if (lstat(from, &st) < 0 || S_ISLNK(st.st_mode))
            continue;
        if (S_ISDIR(st.st_mode)) {
            cow_dir(list, n, sub);
        } else if (mount(from, to, NULL, MS_BIND, NULL) == 0) {
            /* A file of a split directory: read-only (a socket or device
             * we may not bind stays the stub's empty file). */
            struct mount_attr attr = {.attr_set = BIND_ATTRS | MOUNT_ATTR_RDONLY};
            syscall(SYS_mount_setattr, AT_FDCWD, to, 0, &attr, sizeof attr);
        }
    }
    closedir(d);
    free(src);
    free(dst);
}

/* The stage's record of the units, for the export's changes/ and umld
 * diff: /changes, the units' directories read-only (the upper layers are
 * never written from outside the overlays), and /upper-map, which unit is
 * where ("GUEST\tNAME\tLOWER" lines, in the order they were mounted). */
static void record_units(void)
{
    FILE *map = fopen("/upper-map", "we");
    if (!map)
        die("cannot write /upper-map");
    for (size_t k = 0; k < nunits; k++)
        fprintf(map, "%s\t%s\t%s\n", units[k].guest, units[k].name, units[k].lower);
    if (fclose(map) != 0)
        die("cannot write /upper-map");
    if (mkdir("/changes", 0755) < 0 || mount("/upper/units", "/changes", NULL, MS_BIND, NULL) < 0)
        die("cannot create /changes");
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | BIND_ATTRS};
    if (syscall(SYS_mount_setattr, AT_FDCWD, "/changes", 0, &attr, sizeof attr) < 0)
        die("cannot make /changes read-only");
}

/* as_guest_root(), keeping the capabilities setfsuid(2) drops: the
 * overlays take their creator's credentials for every copy-up
 * (overlayfs(7)), which must chown to the lower file's owner and write
 * the upper layer, which for a named machine is an idmapped disk image
 * (where host root has no id: EOVERFLOW). */
static struct fsids as_guest_root_capable(void)
{
    struct fsids old = as_guest_root();
    if (old.uid < 0)
        return old;
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0)
        die("capget");
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    if (syscall(SYS_capset, &head, data) < 0)
        die("capset");
    return old;
}

/* "root / cow": the host's tree as the guest's /, copy-on-write. */
static void cow_tree(void)
{
    if (!have_upper) {
        errno = 0;
        die("sandbox: a copy-on-write root needs an upper layer");
    }
    struct fsids old = as_guest_root_capable();
    struct mnt *list;
    size_t n = mounts_below("/oldroot", &list);
    if (sp_was_root) {
        cow_mounts(list, n);
    } else {
        read_old_units();
        if (nwritables)
            qsort(writables, (size_t)nwritables, sizeof writables[0], by_length);
        cow_dir(list, n, "");
    }
    free_mounts(list, n);
    record_units();
    restore_fsids(old);
}

/* "hide GUEST": what the guest must not reach although it lies inside a
 * tree it was given (the daemon's control socket): a directory becomes an
 * empty one, anything else an empty file. */
static void op_hide(const char *guest)
{
    char *target = join("/newroot", guest);
    struct stat st;
    if (lstat(target, &st) < 0) {
        free(target);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        cover_dir(target, guest);
    } else if (!S_ISLNK(st.st_mode)) {
        int fd = open("/hidden", O_WRONLY | O_CREAT | O_CLOEXEC, 0);
        if (fd < 0)
            die("cannot create the staging file /hidden");
        close(fd);
        if (mount("/hidden", target, NULL, MS_BIND | MS_RDONLY, NULL) < 0)
            die("cannot hide %s", guest);
    }
    free(target);
}

/* "mask GUEST", once /proc is there (an OCI bundle's maskedPaths): as
 * runc masks, a directory becomes an empty read-only one, anything else
 * /dev/null (read as empty, written to no effect), as mask_proc does. */
static void op_mask(const char *guest)
{
    char *target = join("/newroot", guest);
    struct stat st;
    if (lstat(target, &st) < 0 || S_ISLNK(st.st_mode))
        ; /* nothing there to mask, as runc skips it */
    else if (S_ISDIR(st.st_mode))
        cover_dir(target, guest);
    else if (mount("/oldroot/dev/null", target, NULL, MS_BIND, NULL) < 0)
        die("cannot mask %s", guest);
    free(target);
}

/* "readonly GUEST": the guest path and all below it read-only (an OCI
 * bundle's readonlyPaths): bound onto itself, then made read-only
 * recursively (mount_setattr(2)), as runc does.  A path that does not
 * exist is skipped, as runc skips it. */
static void op_readonly(const char *guest)
{
    struct stat st;
    if (lstat(guest, &st) < 0 || S_ISLNK(st.st_mode))
        return;
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV};
    if (mount(guest, guest, NULL, MS_BIND | MS_REC, NULL) < 0 ||
        syscall(SYS_mount_setattr, AT_FDCWD, guest, AT_RECURSIVE, &attr, sizeof attr) < 0)
        die("cannot make %s read-only", guest);
}

/* "sysctl KEY VALUE" (an OCI bundle's linux.sysctl; umld/oci/_spec.py
 * lets through only keys of the machine's own namespaces): written to
 * /proc/sys/KEY, dots as slashes, as sysctl(8) does. */
static void write_sysctl(const char *key, const char *value)
{
    char path[512];
    int n = snprintf(path, sizeof path, "/proc/sys/%s", key);
    if (n < 0 || (size_t)n >= sizeof path) {
        errno = 0;
        die("sandbox: sysctl %s: too long", key);
    }
    for (char *p = path + 10; *p; p++)
        if (*p == '.')
            *p = '/';
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || write(fd, value, strlen(value)) < 0)
        die("cannot set sysctl %s", key);
    close(fd);
}

/* Host-global kernel files: masked or read-only, as OCI runtimes do by
 * default (runc's masked and read-only paths). */
static const char *const proc_masked_files[] = {
    "kcore", "keys", "latency_stats", "timer_list", "timer_stats", "sched_debug", "sysrq-trigger"};
static const char *const proc_masked_dirs[] = {"acpi", "asound", "scsi"};
static const char *const proc_readonly[] = {"bus", "fs", "irq", "sys"};
static const char *const sys_masked_dirs[] = {"firmware", "devices/virtual/powercap"};

static void mask_sys(void)
{
    for (size_t k = 0; k < sizeof sys_masked_dirs / sizeof sys_masked_dirs[0]; k++) {
        char to[96];
        struct stat st;
        snprintf(to, sizeof to, "/newroot/sys/%s", sys_masked_dirs[k]);
        if (stat(to, &st) == 0 && S_ISDIR(st.st_mode))
            cover_dir(to, to + 8);
    }
}

/* /proc/sys: read-only only where the guest's root is the host's
 * (--unsafe-host-ids), since a sysctl's default check is the uid, not a
 * capability (test_perm(), kernel/sysctl.c: GLOBAL_ROOT_UID).  Otherwise
 * the kernel's own checks decide, as for any root of a user namespace:
 * the host's sysctls are others' to the guest (read-only, 0644), and
 * those of the machine's own namespaces are its root's, checked against
 * their owner (IPC: ipc_permissions; the network's when the machine has
 * its own: net_ctl_permissions; its user namespace's limits).  A bind of
 * one file cannot do this: such entries are looked up per namespace, so
 * a bind would pin the stage's. */
static void mask_proc(int unsafe_ids)
{
    for (size_t k = 0; k < sizeof proc_masked_files / sizeof proc_masked_files[0]; k++) {
        char to[96];
        snprintf(to, sizeof to, "/newroot/proc/%s", proc_masked_files[k]);
        if (access(to, F_OK) == 0 && mount("/oldroot/dev/null", to, NULL, MS_BIND, NULL) < 0)
            die("cannot mask /proc/%s", proc_masked_files[k]);
    }
    for (size_t k = 0; k < sizeof proc_masked_dirs / sizeof proc_masked_dirs[0]; k++) {
        char to[96];
        snprintf(to, sizeof to, "/newroot/proc/%s", proc_masked_dirs[k]);
        if (access(to, F_OK) == 0)
            cover_dir(to, to + 8);
    }
    for (size_t k = 0; k < sizeof proc_readonly / sizeof proc_readonly[0]; k++) {
        char to[96];
        snprintf(to, sizeof to, "/newroot/proc/%s", proc_readonly[k]);
        if (access(to, F_OK) != 0 || (strcmp(proc_readonly[k], "sys") == 0 && !unsafe_ids))
            continue;
        if (mount(to, to, NULL, MS_BIND | MS_REC, NULL) < 0)
            die("cannot bind /proc/%s", proc_readonly[k]);
        set_readonly(to, to + 8, 1);
    }
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
    bind_tree(from, to, BIND_ATTRS | (has_flag(flags, "ro") ? MOUNT_ATTR_RDONLY : 0));
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
    loop_mount(from, to, fstype, image, dst);
    free(from);
    free(to);
}

/* Attach the image FROM to a free loop device and mount it at TO
 * (IMAGE and DST: the names the errors give). */
static void loop_mount(const char *from, const char *to, const char *fstype, const char *image,
                       const char *dst)
{
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
        /* The image holds guest ids (mkfs made its root the guest's): the
         * same ids in every run, whichever host range the machine has. */
        if (ids.on)
            idmap_in_place(to, dst);
        close(lfd);
        break;
    }
    close(ctl);
    close(img);
}

/* The stage's end of umld's disk helper ("helper FD"): requests for
 * fuse2fs go out on it, and why one could not serve comes back. */
static int helper_fd = -1;

/* Whether the host directory AT (below /oldroot) is a mount point yet: its
 * device differs from its parent's.  The stat of a FUSE mount's root waits
 * for its daemon's first answers, so once this holds the disk is served;
 * a daemon that died after mounting gives ENOTCONN. */
static int mounted_at(char *at)
{
    struct stat st, up;
    if (stat(at, &st) < 0)
        return -1;
    char *slash = strrchr(at, '/');
    *slash = '\0';
    int r = stat(at, &up);
    *slash = '/';
    if (r < 0)
        return -1;
    return st.st_dev != up.st_dev;
}

/* What umld says when fuse2fs could not serve an image: one line. */
static void die_with_helper_reason(const char *image)
{
    char why[512];
    ssize_t n = read(helper_fd, why, sizeof why - 1);
    why[n > 0 ? n : 0] = '\0';
    why[strcspn(why, "\n")] = '\0';
    errno = 0;
    die("cannot mount the disk image %s: %s", image, n > 0 ? why : "fuse2fs ended without a word");
}

/* "fusedisk IMAGE GUEST DIR": an ext4 image of an ordinary user's machine,
 * which the kernel will not mount for it (only FUSE is mountable in a user
 * namespace, fuse(4)).  umld starts fuse2fs in this stage's user and mount
 * namespaces when asked on the helper socket ("umld-sandbox serve"); it
 * mounts the image at the host directory DIR, seen here below /oldroot
 * and in this mount namespace only, and that mount is bound at GUEST.
 * The wait is on events, not time: a change of this namespace's mount
 * table wakes poll(2) on mountinfo (POLLPRI, proc(5)), and umld's answer
 * on the socket is why fuse2fs ended. */
static void op_fusedisk(const char *image, const char *dst, const char *dir)
{
    if (helper_fd < 0) {
        errno = 0;
        die("sandbox: fusedisk needs the helper socket");
    }
    char *to = join("/newroot", dst);
    char *at = join("/oldroot", dir);
    ensure_target(dst, to, 1);
    int table = open("/oldroot/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (table < 0)
        die("cannot read the stage's mount table");
    if (dprintf(helper_fd, "mount %s\n", dir) < 0)
        die("cannot ask umld to serve %s", image);
    for (;;) {
        int m = mounted_at(at);
        if (m < 0)
            die_with_helper_reason(image);
        if (m)
            break;
        struct pollfd p[2] = {{.fd = table, .events = POLLPRI},
                              {.fd = helper_fd, .events = POLLIN}};
        int n = poll(p, 2, 60000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("fuse2fs did not mount the disk image %s", image);
        if (p[1].revents)
            die_with_helper_reason(image);
    }
    close(table);
    if (mount(at, to, NULL, MS_BIND, NULL) < 0)
        die("cannot bind the disk image %s at %s", image, dst);
    /* From now on, a fuse2fs that ends is umld's to report. */
    if (dprintf(helper_fd, "mounted %s\n", dir) < 0)
        die("cannot tell umld that %s is mounted", image);
    free(at);
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
    char opts[96] = "mode=0755,size=64k";
    if (ids.on)
        snprintf(opts, sizeof opts, "mode=0755,size=64k,uid=%lu,gid=%lu", ids.uid, ids.gid);
    if (mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, opts) < 0)
        die("cannot mount the guest's /dev");
    struct fsids old = as_guest_root();
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
        {"pts/ptmx", "/newroot/dev/ptmx"},          {"/proc/self/fd", "/newroot/dev/fd"},
        {"/proc/self/fd/0", "/newroot/dev/stdin"},  {"/proc/self/fd/1", "/newroot/dev/stdout"},
        {"/proc/self/fd/2", "/newroot/dev/stderr"}, {"/proc/kcore", "/newroot/dev/core"},
    };
    for (size_t k = 0; k < sizeof links / sizeof links[0]; k++)
        if (symlink(links[k][0], links[k][1]) < 0)
            die("cannot create %s", links[k][1] + 8);
    restore_fsids(old);
}

/* "loopctl": the host's loop-control device in the guest's /dev (the
 * machine's devices/loop setting, root-run machines only), owned by the
 * guest's root and group disk.  Every request on it stops in umld
 * (sys_block.py): the guest gets loop devices leased to its machine, never
 * the host's others. */
static void op_loopctl(void)
{
    if (!ids.on) {
        errno = 0;
        die("loop devices need a machine run by root");
    }
    const char *node = "/newroot/dev/loop-control";
    if (mknod(node, S_IFCHR | 0660, makedev(10, 237)) < 0 || chmod(node, 0660) < 0 ||
        lchown(node, (uid_t)ids.uid, (gid_t)(ids.gid + 6)) < 0)
        die("cannot create /dev/loop-control in the guest");
}

/* Where a nesting machine ("nest") shows the guest a /proc with nothing
 * bound over it. */
#define NEST_PROC "/dev/.umld/proc"

/* "nest": what umld needs to build a machine inside this one (the
 * machine's nest setting).  /dev/fuse, for the inner machine's export and
 * an ordinary user's disks (FUSE mounts in a user namespace are allowed,
 * fuse(4)); /dev/net/tun, for its user-mode network (pasta opens it in
 * the inner guest's network namespace, where it only creates interfaces
 * of a namespace the opener administers, tuntap.txt); and a mount point
 * for pid 1's uncovered /proc (pid1_main). */
static void op_nest(void)
{
    static const char *const nodes[] = {"fuse", "net/tun"};
    for (size_t k = 0; k < sizeof nodes / sizeof nodes[0]; k++) {
        char from[64], to[64];
        snprintf(from, sizeof from, "/oldroot/dev/%s", nodes[k]);
        snprintf(to, sizeof to, "/newroot/dev/%s", nodes[k]);
        if (access(from, F_OK) < 0)
            die("--nest: the host has no /dev/%s", nodes[k]);
        ensure_target(to + 8, to, 0);
        if (mount(from, to, NULL, MS_BIND, NULL) < 0)
            die("cannot bind /dev/%s", nodes[k]);
    }
    ensure_target(NEST_PROC, (char[]){"/newroot" NEST_PROC}, 1);
}

/* The guest's terminal ("tty SOCKET COLS ROWS", the machine's tty setting):
 * a pseudo-terminal of the guest's own devpts instance (op_dev), so the
 * guest sees /dev/pts/0 and never a terminal of the host.  The master goes
 * to umld over SOCKET with SCM_RIGHTS (unix(7), cmsg(3); runc's console
 * socket does the same), where the machine's terminal emulator reads it;
 * the slave stays here for the guest's first process (guest_main), which
 * makes it its controlling terminal.  The slave is opened from the master
 * (TIOCGPTPEER, ioctl_tty(2)), never by a path the guest could swap.
 * ptmx is opened as the guest's user: devpts gives the new slave the
 * opener's fsuid and fsgid (devpts(5)), so the guest owns its terminal. */
static int tty_slave = -1;

static void send_fd(int sock, int fd)
{
    char byte = 't';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    while (sendmsg(sock, &msg, 0) < 0)
        if (errno != EINTR)
            die("cannot pass the guest's terminal to umld");
}

static unsigned short tty_dimension(const char *text, const char *what)
{
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    if (*end || v == 0 || v > 10000) {
        errno = 0;
        die("sandbox: bad terminal %s %s", what, text);
    }
    return (unsigned short)v;
}

/* The new terminal whose MASTER is open: unlocked and sized WS (before
 * the guest's first instruction: its first `tput cols` already reads it,
 * TIOCGWINSZ), the master passed on SOCK; both are closed, and the slave,
 * opened from the master, returned. */
static int pass_terminal(int master, const struct winsize *ws, int sock)
{
    int unlock = 0;
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
        die("cannot unlock the guest's terminal");
    if (ioctl(master, TIOCSWINSZ, ws) < 0)
        die("cannot size the guest's terminal");
    int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
        die("cannot open the guest's terminal");
    send_fd(sock, master);
    close(master);
    close(sock);
    return slave;
}

static void op_tty(const char *sock_text, const char *cols, const char *rows)
{
    int sock = atoi(sock_text);
    /* The stage's alone: not the guest's after exec. */
    if (fcntl(sock, F_SETFD, FD_CLOEXEC) < 0)
        die("sandbox: bad terminal socket");
    struct winsize ws = {.ws_col = tty_dimension(cols, "width"),
                         .ws_row = tty_dimension(rows, "height")};
    struct fsids old = {-1, -1};
    if (ids.on) {
        old.gid = setfsgid(guest_host_id(ids.gid, ids.guest_gid));
        old.uid = setfsuid(guest_host_id(ids.uid, ids.guest_uid));
    }
    int master = open("/newroot/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    restore_fsids(old);
    if (master < 0)
        die("cannot open the guest's /dev/pts/ptmx (is /dev the machine's own?)");
    tty_slave = pass_terminal(master, &ws, sock);
}

/* The guest's first process takes its terminal: a session of its own
 * (setsid(2)) whose controlling terminal it is (TIOCSCTTY, ioctl_tty(2)),
 * on its standard input, output and error. */
static void take_tty(void)
{
    if (tty_slave < 0)
        return;
    if (setsid() < 0)
        die("cannot start the guest's session");
    if (ioctl(tty_slave, TIOCSCTTY, 0) < 0)
        die("cannot make /dev/pts/0 the guest's terminal");
    for (int fd = 0; fd < 3; fd++)
        if (dup2(tty_slave, fd) < 0)
            die("cannot give the guest its terminal");
    if (tty_slave > 2)
        close(tty_slave);
}

struct spec {
    char **argv;     /* the guest command */
    const char *cwd; /* guest path */
    int cwd_strict;
    const char *hostname; /* of the guest's own UTS namespace */
    const char *domainname;
    uid_t uid;
    gid_t gid;
    int ngroups;   /* "groups LIST": the first process's supplementary groups; */
    gid_t *groups; /* -1: only the primary group, as login(1) would give */
    int proc;      /* mount a fresh /proc */
    int subreaper;
    int boottime;         /* the guest's uptime starts at 0 */
    int oom_floor_set;    /* oom_score_adj_min lowered (op "oomfloor") */
    char oom_initial[16]; /* what the guest's processes start at then */
    char **files;         /* pairs: host file, guest path, bound after /proc */
    int nfiles;
    int was_root;
    int netns;    /* the guest's own network namespace ("netns") */
    int net_fd;   /* umld's network helper, asked once it exists ("netsync FD") */
    int hold_fd;  /* "hold FD": wait here to be started (the OCI runtime's create) */
    int net_join; /* "netjoin PATH": the network namespace the guest joins, -1 */
    int nest;     /* the guest may run umld ("nest") */
    int caps_set; /* "caps BND EFF PRM INH AMB": the process's capability sets */
    uint64_t caps[5];
    int tty_sock; /* enter's "tty SOCKET COLS ROWS": a terminal of the machine's own */
    struct winsize tty_size;
    const char **masks; /* "mask GUEST": covered by pid 1, once /proc is there */
    int nmasks;
    const char **readonlys; /* "readonly GUEST": made so by the first process */
    int nreadonlys;
    const char **sysctls; /* pairs KEY, VALUE ("sysctl"): written before the ids change */
    int nsysctls;
    struct sock_fprog filter; /* "seccomp FLAGS HEX": installed just before exec */
    unsigned filter_flags;
};

/* "seccomp FLAGS HEX": a seccomp-bpf program (struct sock_filter array, in
 * hex) the process installs just before it runs its command: an OCI
 * bundle's linux.seccomp, compiled by umld/oci/_seccomp.py, which stacks
 * on umld's own filter (seccomp(2): the kernel takes the action of
 * highest precedence of all a thread's filters). */
static void parse_filter(struct spec *sp, const char *flags, const char *hex)
{
    size_t len = strlen(hex);
    char *end;
    errno = 0;
    sp->filter_flags = (unsigned)strtoul(flags, &end, 10);
    if (errno || *end || len == 0 || len % 16 || len / 16 > 4096) {
        errno = 0;
        die("sandbox: bad seccomp program");
    }
    unsigned char *bytes = malloc(len / 2);
    if (!bytes)
        die("out of memory");
    for (size_t k = 0; k < len / 2; k++) {
        unsigned v;
        if (sscanf(hex + 2 * k, "%2x", &v) != 1) {
            errno = 0;
            die("sandbox: bad seccomp program");
        }
        bytes[k] = (unsigned char)v;
    }
    sp->filter.len = (unsigned short)(len / 16);
    sp->filter.filter = (struct sock_filter *)bytes;
}

/* The guest's sysctls, and then its read-only paths, by its first process
 * while it is still its namespaces' root: the IPC namespace (and the
 * network namespace of its own) exist from its clone on, and /proc/sys
 * may be among the read-only paths.  A network namespace joined by path
 * is not the guest's to configure: its sysctls are the stage's to write
 * (stage_sysctls). */
static void guest_sysctls_and_readonly(const struct spec *sp)
{
    /* An IPC sysctl is writable by its namespace's root uid alone, not by
     * a capability (ipc_permissions, ipc/ipc_sysctl.c): become the
     * guest's root for it (the ids change for good below).  Where the
     * machine has no uid 0 (an ordinary user's with another --uid) the
     * write fails and says so. */
    if (sp->nsysctls && seteuid(0) < 0 && errno != EINVAL)
        die("seteuid");
    for (int i = 0; i + 1 < sp->nsysctls; i += 2)
        if (sp->net_join < 0 || strncmp(sp->sysctls[i], "net.", 4) != 0)
            write_sysctl(sp->sysctls[i], sp->sysctls[i + 1]);
    for (int i = 0; i < sp->nreadonlys; i++)
        op_readonly(sp->readonlys[i]);
}

static void install_filter(const struct spec *sp)
{
    if (sp->filter.len == 0)
        return;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, sp->filter_flags, &sp->filter) < 0)
        die("cannot install the container's seccomp filter");
}

/* enter's "tty SOCKET COLS ROWS": the entering process runs on a new
 * terminal of the machine's devpts, whose master goes to SOCKET (an
 * engine's console socket: the OCI runtime's exec --tty), as op_tty's
 * does for the first process.  Made as the guest's own user, once its
 * ids are set, through the guest's /dev/pts/ptmx, which the guest may
 * have replaced: what is opened must be a ptmx of a devpts (fstat(2),
 * fstatfs(2)), else the guest could pass anything to the engine. */
static void own_tty(const struct spec *sp)
{
    if (sp->tty_sock < 0)
        return;
    int master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (master < 0)
        die("cannot open the machine's /dev/pts/ptmx");
    struct stat st;
    struct statfs fs;
    if (fstat(master, &st) < 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 ||
        minor(st.st_rdev) != 2 || fstatfs(master, &fs) < 0 || fs.f_type != DEVPTS_SUPER_MAGIC) {
        errno = 0;
        die("the machine's /dev/pts/ptmx is not a devpts terminal multiplexer");
    }
    if (fcntl(master, F_SETFL, O_RDWR) < 0)
        die("fcntl");
    tty_slave = pass_terminal(master, &sp->tty_size, sp->tty_sock);
    take_tty();
}

enum { CAPS_BND, CAPS_EFF, CAPS_PRM, CAPS_INH, CAPS_AMB };

/* The calling thread's capability bounding set (PR_CAPBSET_READ up to the
 * kernel's last capability, past which it says EINVAL). */
static uint64_t bounding_set(void)
{
    uint64_t set = 0;
    for (int cap = 0; cap < 64; cap++) {
        int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (r < 0)
            break;
        if (r == 1)
            set |= 1ULL << cap;
    }
    return set;
}

/* Drop from the bounding set every capability KEEP lacks (CAP_SETPCAP:
 * before the ids change). */
static void keep_in_bounding_set(uint64_t keep)
{
    uint64_t have = bounding_set();
    for (int cap = 0; cap < 64; cap++)
        if (have >> cap & 1 && !(keep >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            die("cannot drop capability %d", cap);
}

/* "caps BND EFF PRM INH AMB": five masks in hex (bit k: capability k). */
static void parse_caps(struct spec *sp, char **args)
{
    for (int k = 0; k < 5; k++) {
        char *end;
        errno = 0;
        sp->caps[k] = strtoull(args[k], &end, 16);
        if (errno || end == args[k] || *end) {
            errno = 0;
            die("sandbox: bad capability mask %s", args[k]);
        }
    }
    sp->caps_set = 1;
}

/* The asked capabilities, part one, before the ids change: the bounding
 * set loses what was not asked (PR_CAPBSET_DROP needs CAP_SETPCAP, which
 * a new uid would not have), and a process that becomes another uid than
 * 0 keeps its permitted set across setresuid(2) (PR_SET_KEEPCAPS,
 * capabilities(7) "Effect of user ID changes on capabilities"). */
static void caps_before_ids(const struct spec *sp)
{
    if (!sp->caps_set)
        return;
    keep_in_bounding_set(sp->caps[CAPS_BND]);
    if (sp->uid != 0 && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        die("PR_SET_KEEPCAPS");
}

/* Part two, as the new ids: the effective, permitted and inheritable sets,
 * then the ambient set (raised only where a capability is permitted and
 * inheritable, PR_CAP_AMBIENT_RAISE).  What the guest's root never holds
 * (CAP_SETFCAP of a root-run machine, what umld's caller lacks) is left
 * out, not an error: a runtime asked for the default set of its kind
 * gets what the machine has of it. */
static void caps_after_ids(const struct spec *sp)
{
    if (!sp->caps_set)
        return;
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0)
        die("capget");
    uint64_t have = (uint64_t)data[1].permitted << 32 | data[0].permitted;
    uint64_t bnd = bounding_set();
    uint64_t prm = sp->caps[CAPS_PRM] & have;
    uint64_t eff = sp->caps[CAPS_EFF] & prm;
    uint64_t inh = sp->caps[CAPS_INH] &
                   (have | ((uint64_t)data[1].inheritable << 32 | data[0].inheritable)) & bnd;
    for (int w = 0; w < 2; w++) {
        data[w].permitted = (uint32_t)(prm >> 32 * w);
        data[w].effective = (uint32_t)(eff >> 32 * w);
        data[w].inheritable = (uint32_t)(inh >> 32 * w);
    }
    if (syscall(SYS_capset, &head, data) < 0)
        die("cannot set the capabilities asked");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        die("cannot clear the ambient capabilities");
    uint64_t amb = sp->caps[CAPS_AMB] & prm & inh;
    for (int cap = 0; cap < 64; cap++)
        if (amb >> cap & 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0)
            die("cannot raise the ambient capability %d", cap);
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
}

/* "netns": the guest's user namespace gets a network namespace of its own
 * (clone(2) with CLONE_NEWUSER|CLONE_NEWNET: the new user namespace owns
 * it, so the guest's root may configure its interfaces and never the
 * host's, network_namespaces(7)).  Its loopback starts down; bring it up
 * (netdevice(7), SIOCSIFFLAGS), as a boot would. */
static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("cannot open a socket in the guest's network namespace");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        die("cannot read the guest's loopback");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        die("cannot bring the guest's loopback up");
    close(s);
}

/* "netsync FD": umld attaches its user-mode network (pasta) to this
 * process's network namespace before the guest's first instruction.  The
 * request is one line; umld learns this process's pid from the socket's
 * credentials (SO_PASSCRED, unix(7)), translated to its own pid
 * namespace.  The answer is "ok" or why the network could not start. */
static void net_sync(int fd)
{
    if (write(fd, "net\n", 4) != 4)
        die("cannot ask umld for the machine's network");
    char line[512];
    size_t n = 0;
    while (n < sizeof line - 1) {
        ssize_t r = read(fd, line + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(fd);
    if (strcmp(line, "ok") != 0) {
        errno = 0;
        die("%s", n ? line : "the machine's network could not start");
    }
}

/* "groups G1,G2,..." or "groups -" (none): the supplementary groups of
 * the process that runs the command (setgroups(2) in guest_main). */
static void parse_groups(struct spec *sp, const char *list)
{
    sp->ngroups = 0;
    sp->groups = calloc(strlen(list) / 2 + 2, sizeof(gid_t));
    if (!sp->groups)
        die("sandbox: out of memory");
    for (const char *c = list; strcmp(list, "-") != 0 && *c;) {
        char *end;
        unsigned long g = strtoul(c, &end, 10);
        if (end == c || (*end && *end != ',') || g > UINT32_MAX - 1) {
            errno = EINVAL;
            die("sandbox: bad groups %s", list);
        }
        sp->groups[sp->ngroups++] = (gid_t)g;
        c = *end ? end + 1 : end;
    }
}

/* "hold FD": the machine is made, its first process is about to exec the
 * command; say so ("held") and wait for umld's one byte ("g") before it
 * does: the OCI runtime's create leaves the container here, its start
 * lets it go (runtime-spec, "Lifecycle").  Anything else (umld gone, the
 * container deleted before its start) ends it without running a guest
 * instruction. */
static void hold(int fd)
{
    if (write(fd, "held\n", 5) != 5)
        _exit(EXIT_SETUP);
    char c = 0;
    ssize_t r;
    do
        r = read(fd, &c, 1);
    while (r < 0 && errno == EINTR);
    if (r != 1 || c != 'g')
        _exit(EXIT_SETUP);
    close(fd);
}

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

/* The capability bounding set of umld's caller, read before any user
 * namespace is made: a new user namespace (or setns into one) gives a
 * process every capability there, bounding set included
 * (set_cred_user_ns, kernel/cred.c), and the guest's root must hold none
 * its caller could never hold (a host that runs everything without
 * CAP_SYS_RESOURCE, as this project's CI does: a guest root that shows
 * it but cannot use it misleads programs, LTP's OOM protection among
 * them). */
static uint64_t caller_bset;

static void read_caller_bset(void)
{
    caller_bset = bounding_set();
}

/* In the guest's user namespace, before its ids change (CAP_SETPCAP). */
static void drop_what_the_caller_lacks(void)
{
    keep_in_bounding_set(caller_bset);
}

/* "oomfloor SCORE": the lowest oom_score_adj the guest may set.  A write
 * of oom_score_adj by a process with the host's CAP_SYS_RESOURCE also
 * sets its oom_score_adj_min, which its children inherit and which only
 * such a process can lower (proc(5); __set_oom_adj, fs/proc/base.c).  So
 * the stage, run by root, writes the floor, and the guest's first
 * process, which never has that capability, writes back the score it
 * started at (guest_main): the guest's processes then start where they
 * did and may go down to the floor.  umld asks for this only with a
 * memory limit of the machine's own (machine.py, check_oom_floor). */
static void set_oom_floor(struct spec *sp, const char *score)
{
    int fd = open("/oldroot/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, sp->oom_initial, sizeof sp->oom_initial - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        die("cannot read oom_score_adj");
    sp->oom_initial[n] = 0;
    write_file("/oldroot/proc/self/oom_score_adj", score);
    sp->oom_floor_set = 1;
}

static void guest_main(struct spec *sp, const sigset_t *mask)
{
    take_tty();
    /* Back to the score we started at, as a process that may not lower
     * it below its floor (set_oom_floor): the floor stays. */
    if (sp->oom_floor_set)
        write_file("/proc/self/oom_score_adj", sp->oom_initial);
    /* The guest's names, in its own UTS namespace (uts_namespaces(7)), so
     * /proc/sys/kernel/hostname agrees with uname(2); before the ids
     * change, while we hold CAP_SYS_ADMIN there. */
    if (sp->hostname && sethostname(sp->hostname, strlen(sp->hostname)) < 0)
        die("cannot set the guest's host name");
    if (sp->domainname && setdomainname(sp->domainname, strlen(sp->domainname)) < 0)
        die("cannot set the guest's domain name");
    guest_sysctls_and_readonly(sp);
    /* Run by root, what the guest writes to a tree it is given lands as
     * root's: no file capability may land with it (a security.capability
     * xattr whose root is the guest's maps to the host's root through the
     * idmap).  Without CAP_SETFCAP in its bounding set the guest can set
     * none, nor map a nested user namespace's root to its own
     * (user_namespaces(7), "Defining user and group ID mappings"). */
    if (sp->was_root && prctl(PR_CAPBSET_DROP, CAP_SETFCAP, 0, 0, 0) < 0)
        die("cannot drop CAP_SETFCAP");
    drop_what_the_caller_lacks();
    caps_before_ids(sp);
    /* The guest's identity (credentials(7)); supplementary groups are
     * reset as login(1) would for a user with only a primary group. */
    if (sp->ngroups >= 0) {
        /* As the caller asked (the OCI runtime's additionalGids, none
         * at all as runc gives when there are none).  A machine of an
         * ordinary user cannot (its user namespace has "deny" in
         * setgroups): its one group is all there is, and nothing else
         * may be asked. */
        if (setgroups((size_t)sp->ngroups, sp->groups) < 0) {
            int only_own = 1;
            for (int k = 0; k < sp->ngroups; k++)
                only_own &= sp->groups[k] == sp->gid;
            if (errno != EPERM || !only_own)
                die("cannot set the supplementary groups");
        }
    } else if (setgroups(1, &sp->gid) < 0 && errno != EPERM) {
        die("setgroups");
    }
    if (setresgid(sp->gid, sp->gid, sp->gid) < 0)
        die("cannot become gid %u", (unsigned)sp->gid);
    if (setresuid(sp->uid, sp->uid, sp->uid) < 0)
        die("cannot become uid %u", (unsigned)sp->uid);
    caps_after_ids(sp);
    own_tty(sp);
    /* A session keyring of the guest's own (keyrings(7)): the one
     * inherited from umld's caller would let the guest use the caller's
     * keys.  The user and persistent keyrings are per user namespace. */
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0 && errno != ENOSYS)
        die("cannot create the guest's session keyring");
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
    if (sp->hold_fd >= 0)
        hold(sp->hold_fd);
    sigprocmask(SIG_SETMASK, mask, NULL);
    install_filter(sp);
    exec_command(sp->argv);
}

/* When the machine booted, on the stage's boot clock (enter_machine_time). */
static struct timespec machine_boot;

/* The boot clock offset of the time namespace this process's children
 * get (its own, until it unshares one): "boottime SEC NSEC" in
 * /proc/self/timens_offsets (time_namespaces(7)). */
static long long boottime_offset_ns(void)
{
    FILE *f = fopen("/proc/self/timens_offsets", "re");
    if (!f)
        return 0; /* a kernel without time namespaces: no offset */
    char name[32];
    long long sec, nsec;
    long long offset = 0;
    while (fscanf(f, "%31s %lld %lld", name, &sec, &nsec) == 3)
        if (strcmp(name, "boottime") == 0 || strcmp(name, "7") == 0)
            offset = sec * 1000000000LL + nsec;
    fclose(f);
    return offset;
}

/* The machine's uptime (/proc/uptime, CLOCK_BOOTTIME) starts at
 * machine_boot: a time namespace whose boot clock is offset by it.  Made
 * by the guest's first process, in the guest's user namespace, which so
 * owns it: a guest root may make time namespaces of its own and setns(2)
 * back into the machine's, which needs CAP_SYS_ADMIN in the owner
 * (time_namespaces(7), LTP clock_gettime03).  Offsets are from the
 * host's clocks, not the caller's: the caller's own (a nested machine's)
 * is added.  The process enters the namespace itself (setns of
 * time_for_children) before it runs anything. */
static void enter_machine_time(void)
{
    long long boot = (long long)machine_boot.tv_sec * 1000000000LL + machine_boot.tv_nsec;
    long long offset = boottime_offset_ns() - boot;
    if (unshare(CLONE_NEWTIME) < 0)
        die("cannot create a time namespace");
    long long sec = offset / 1000000000LL, nsec = offset % 1000000000LL;
    if (nsec < 0) {
        sec -= 1;
        nsec += 1000000000LL;
    }
    char text[96];
    snprintf(text, sizeof text, "boottime %lld %lld\n", sec, nsec);
    write_file("/proc/self/timens_offsets", text);
    int fd = open("/proc/self/ns/time_for_children", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWTIME) < 0)
        die("cannot enter the machine's time namespace");
    close(fd);
}

/* The id the stage's root takes in its parent namespace when uid 0 there
 * cannot be mapped (nesting, below). */
#define NESTED_ROOT_ID 1U
/* The nested stage's ids in its parent namespace: all the parent's (a
 * machine's 65536, umld/core/ids.py, one fewer each level down) but its
 * root, shifted by one, as a machine run by root has a slot of the
 * host's ids: "0 1 COUNT-1", one piece, in order (the kernel sorts
 * supplementary groups by their ids in the initial namespace, so
 * getgroups(2) keeps the order a program gave setgroups(2)).  The
 * guest's are then the stage's, one for one: "0 0 COUNT-1". */
static unsigned nested_uids, nested_gids;
/* Set when the stage's ids are those (become_own_userns). */
static int nested_ids;

/* How many ids from 0 up a map of ours (/proc/self/uid_map or gid_map)
 * holds in one piece: the count of the extent that starts at 0. */
static unsigned ids_from_zero(const char *path)
{
    FILE *f = fopen(path, "re");
    unsigned inside, outside, count, found = 0;
    while (f && fscanf(f, "%u %u %u", &inside, &outside, &count) == 3)
        if (inside == 0)
            found = count;
    if (f)
        fclose(f);
    return found;
}

static void write_maps(pid_t child, uid_t uid, gid_t gid, int was_root)
{
    char path[64], text[128];
    if (ids.on) {
        write_id_maps(child, "/proc");
        return;
    }
    if (was_root) {
        /* --unsafe-host-ids: the guest's ids are the host's, and its
         * root is the host's root on every host file it can reach. */
        snprintf(text, sizeof text, "0 0 4294967295\n");
        snprintf(path, sizeof path, "/proc/%d/uid_map", child);
        write_file(path, text);
        snprintf(path, sizeof path, "/proc/%d/gid_map", child);
        write_file(path, text);
        return;
    }
    if (nested_ids) {
        /* A nested machine: the stage's ids, one for one (and so the
         * guest's uid is its own, 0 by default, the stage's root); a
         * guest id above them shares the last, as in a root-run one. */
        format_map(text, sizeof text, 0, nested_uids, uid);
        snprintf(path, sizeof path, "/proc/%d/uid_map", child);
        write_file(path, text);
        format_map(text, sizeof text, 0, nested_gids, gid);
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

/* Since Linux 6.14 each pid namespace has a pid_max of its own, and a new
 * one starts at the largest (4194304): give the guest the host's, so that
 * programs that size a pid column by it (top, ps) print what they print
 * natively.  The file shows the value of the reader's own pid namespace,
 * so it is read before the machine's is made (main), and written by its
 * pid 1.  Best effort: the value written is the host's own, so where the
 * file is still global (older kernels) it changes nothing. */
static char host_pid_max[32];
static ssize_t host_pid_max_len = -1;

static void read_host_pid_max(void)
{
    int fd = open("/proc/sys/kernel/pid_max", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    host_pid_max_len = read(fd, host_pid_max, sizeof host_pid_max - 1);
    close(fd);
}

static void copy_pid_max(void)
{
    if (host_pid_max_len <= 0)
        return;
    int fd = open("/newroot/proc/sys/kernel/pid_max", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (write(fd, host_pid_max, (size_t)host_pid_max_len) < 0) {
        /* Not the namespace's owner: the guest keeps the kernel's value. */
    }
    close(fd);
}

/* The net.* sysctls of a network namespace joined by path, written here,
 * by the stage that joined it (its owner's root: the engine's rights, as
 * runc has them).  The group ids of net.ipv4.ping_group_range are read in
 * the writer's user namespace (ipv4_ping_group_range,
 * net/ipv4/sysctl_net_ipv4.c): the guest's are given as their host ids,
 * so that the range means the guest's groups. */
static void stage_sysctls(const struct spec *sp)
{
    for (int i = 0; i + 1 < sp->nsysctls; i += 2) {
        const char *key = sp->sysctls[i], *value = sp->sysctls[i + 1];
        if (strncmp(key, "net.", 4) != 0)
            continue;
        char text[64];
        unsigned long lo, hi;
        char tail;
        if (ids.on && strcmp(key, "net.ipv4.ping_group_range") == 0) {
            if (sscanf(value, "%lu %lu%c", &lo, &hi, &tail) != 2) {
                errno = 0;
                die("sysctl %s: two group ids expected", key);
            }
            snprintf(text, sizeof text, "%u %u", guest_host_id(ids.gid, lo),
                     guest_host_id(ids.gid, hi));
            value = text;
        }
        write_sysctl(key, value);
    }
}

static void pid1_main(struct spec *sp, int self_fd, const sigset_t *mask)
{
    if (sp->proc) {
        if (mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) {
            /* In a user namespace only where a /proc shows all its files
             * (mount_too_revealing(), fs/namespace.c): not in a umld
             * machine without --nest, nor in most containers. */
            if (errno == EPERM && !sp->was_root) {
                errno = 0;
                die("cannot mount the guest's /proc: every /proc here has files covered (inside "
                    "a umld machine, give that machine --nest)");
            }
            die("cannot mount the guest's /proc");
        }
        copy_pid_max();
        /* What /proc tells of, or lets change about, the host kernel is
         * masked or read-only, as container runtimes do: sysctl(2) files
         * check the uid, not a capability in the caller's namespace,
         * and --unsafe-host-ids makes the guest's root the host's. */
        mask_proc(sp->was_root && !ids.on);
    }
    /* A nesting machine: the inner umld's pid 1 mounts a /proc of its own,
     * which a kernel allows in a user namespace only where a procfs is
     * already mounted with nothing locked over its files
     * (mount_too_revealing(), fs/namespace.c: a new mount may not reveal
     * what an existing one hides).  The guest's /proc has the machine's
     * files bound over the host's, so the guest gets a second one, plain,
     * as LXC keeps at /dev/.lxc/proc.  Mounted here, by the guest's pid 1,
     * it shows the machine's processes only; its other files are the
     * host's own (the README, "Nesting"). */
    if (sp->nest &&
        mount("proc", "/newroot" NEST_PROC, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        die("cannot mount the nesting machine's %s", NEST_PROC);
    for (int i = 0; i < sp->nfiles; i++) {
        char *from = join("/oldroot", sp->files[2 * i]);
        char *to = join("/newroot", sp->files[2 * i + 1]);
        if (mount(from, to, NULL, MS_BIND, NULL) < 0)
            die("cannot bind the machine's %s", sp->files[2 * i + 1]);
        set_readonly(to, sp->files[2 * i + 1], 0);
        free(from);
        free(to);
    }
    /* An OCI bundle's maskedPaths, over everything above (its /proc's
     * included). */
    for (int i = 0; i < sp->nmasks; i++)
        op_mask(sp->masks[i]);
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
    /* A cgroup namespace rooted at the machine's cgroup (S joined it):
     * the guest sees, and may mount, only its own subtree
     * (cgroup_namespaces(7)).  An IPC namespace of its own: the host's
     * System V objects and POSIX message queues are not the guest's to
     * see or attach (ipc_namespaces(7)). */
    unsigned long flags =
        CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWCGROUP | CLONE_NEWIPC;
    if (sp->netns)
        flags |= CLONE_NEWNET;
    /* "netjoin": a network namespace made by whoever runs the machine
     * (an OCI engine's, given by path): joined here, while this stage
     * still has the rights its owner's namespace asks of setns(2); the
     * guest's user namespace does not own it, so its root cannot
     * reconfigure it. */
    if (sp->net_join >= 0 && setns(sp->net_join, CLONE_NEWNET) < 0)
        die("cannot join the machine's network namespace");
    if (sp->net_join >= 0)
        stage_sysctls(sp);
    long g = syscall(SYS_clone, flags | SIGCHLD, 0, NULL, NULL, 0);
    if (g < 0)
        die("cannot create the guest's user namespace");
    if (g == 0) {
        close(pipefd[1]);
        sync_read(pipefd[0]);
        close(pipefd[0]);
        /* With its id maps written: full capabilities in its new user
         * namespace, which owns the new network namespace. */
        if (sp->netns)
            loopback_up();
        if (sp->net_fd >= 0)
            net_sync(sp->net_fd);
        if (sp->boottime)
            enter_machine_time();
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

/* Why unshare(CLONE_NEWUSER) failed, as the kernel feature or setting
 * that is missing (user_namespaces(7), unshare(2) ERRORS). */
static const char *userns_refusal(int err)
{
    switch (err) {
    case ENOSPC:
        return "user.max_user_namespaces is 0, or its limit is reached (sysctl "
               "user.max_user_namespaces)";
    case EPERM:
    case EACCES:
        return "unprivileged user namespaces are disabled (sysctl "
               "kernel.unprivileged_userns_clone=0, or a security policy such as AppArmor's "
               "kernel.apparmor_restrict_unprivileged_userns)";
    case EINVAL:
    case ENOSYS:
        return "the kernel has no user namespaces (CONFIG_USER_NS)";
    default:
        return strerror(err);
    }
}

/* Writes TEXT to the file PATH whole; 0, or -1 with errno. */
static int try_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    ssize_t r = write(fd, text, n);
    int err = errno;
    close(fd);
    errno = err;
    return r == (ssize_t)n ? 0 : -1;
}

/* The helper of become_own_userns: forked before the unshare, so it stays
 * in the parent user namespace, where (as uid 0 of a machine) it holds
 * CAP_SETUID and CAP_SETGID.  Asked on FD, it writes the shifted maps for the
 * stage, as newuidmap(1) writes a map for another process
 * (user_namespaces(7), "Defining user and group ID mappings"); being
 * privileged, it needs no "deny" in setgroups, so the machine keeps
 * setgroups(2). */
static void map_helper(int fd, pid_t stage)
{
    char ask;
    if (read(fd, &ask, 1) != 1)
        _exit(0); /* the stage mapped itself */
    char path[64], text[64];
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)stage);
    format_map(text, sizeof text, NESTED_ROOT_ID, nested_uids, 0);
    if (try_write_file(path, text) < 0)
        _exit(1);
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)stage);
    format_map(text, sizeof text, NESTED_ROOT_ID, nested_gids, 0);
    _exit(try_write_file(path, text) < 0 ? 2 : 0);
}

/* An ordinary user's machine: a user namespace of our own whose root is
 * the caller (user_namespaces(7)).
 *
 * Nesting: run as uid 0 of a machine that root runs, the map "0 0 1" is
 * refused.  Mapping uid 0 of the parent namespace needs CAP_SETFCAP where
 * the namespace was made (verify_root_map(), kernel/user_namespace.c),
 * and such a machine drops CAP_SETFCAP from its bounding set on purpose
 * (guest_main).  Its ids are then the outer's shifted by one
 * (nested_uids): the inner guest is root of nothing the outer guest's
 * root owns, it reads the outer's root-owned files as others do, and it
 * has a machine's worth of users and groups, as a machine run by root
 * has. */
static void become_own_userns(void)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    int ask[2] = {-1, -1};
    pid_t helper = -1;
    if (uid == 0) {
        /* Ours from 0 up, less the one the shift takes (map_helper). */
        nested_uids = ids_from_zero("/proc/self/uid_map");
        nested_gids = ids_from_zero("/proc/self/gid_map");
        nested_uids -= nested_uids > 1;
        nested_gids -= nested_gids > 1;
        if (pipe2(ask, O_CLOEXEC) < 0)
            die("pipe");
        pid_t stage = getpid();
        helper = fork();
        if (helper < 0)
            die("fork");
        if (helper == 0) {
            close(ask[1]);
            map_helper(ask[0], stage);
        }
        close(ask[0]);
    }
    if (unshare(CLONE_NEWUSER) < 0) {
        const char *why = userns_refusal(errno);
        errno = 0;
        die("cannot create a user namespace: %s", why);
    }
    char text[64];
    /* uid_map first: "deny" in setgroups, which an unprivileged gid_map
     * needs, would bind every namespace below too, and the helper's
     * privileged maps need none. */
    snprintf(text, sizeof text, "0 %u 1\n", (unsigned)uid);
    if (try_write_file("/proc/self/uid_map", text) == 0) {
        write_file("/proc/self/setgroups", "deny");
        snprintf(text, sizeof text, "0 %u 1\n", (unsigned)gid);
        write_file("/proc/self/gid_map", text);
    } else if (uid != 0 || errno != EPERM) {
        die("cannot write /proc/self/uid_map");
    } else if (write(ask[1], "m", 1) != 1) {
        die("cannot ask for the nested machine's id map");
    } else {
        nested_ids = 1;
    }
    if (helper > 0) {
        close(ask[1]);
        int status;
        while (waitpid(helper, &status, 0) < 0)
            if (errno != EINTR)
                die("waitpid");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            errno = 0;
            die("cannot map the nested machine's root to uid %u of its host", NESTED_ROOT_ID);
        }
        /* Our own ids are unmapped here (the overflow id, which creates
         * no file: EOVERFLOW): become the namespace's root. */
        if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
            die("cannot become the nested machine's root");
        /* The change of ids made us undumpable, which gives our /proc/self
         * files to the root of the namespace we were exec'd in (proc(5),
         * PR_SET_DUMPABLE): the timens_offsets we write would be the
         * outer root's. */
        if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
            die("cannot make the nested machine's stage dumpable");
    }
}

/* Move this process into the cgroup DIR (a host path, seen below PREFIX):
 * every process it starts is then charged to it ("0" is the writer,
 * cgroups(7)). */
static void join_cgroup_at(const char *prefix, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s/cgroup.procs", prefix, dir);
    int cg = open(path, O_WRONLY | O_CLOEXEC);
    if (cg < 0 || write(cg, "0", 1) != 1)
        die("cannot join the machine's cgroup %s", dir);
    close(cg);
}

static void join_cgroup(const char *dir)
{
    join_cgroup_at("/oldroot", dir);
}

/* "rlimit nproc|nofile N": set before the guest's first instruction, so
 * that it and everything it starts inherit it (getrlimit(2)). */
static void set_rlimit(const char *name, const char *value)
{
    int which;
    if (strcmp(name, "nproc") == 0)
        which = RLIMIT_NPROC;
    else if (strcmp(name, "nofile") == 0)
        which = RLIMIT_NOFILE;
    else {
        errno = 0;
        die("sandbox: unknown rlimit %s", name);
    }
    struct rlimit lim;
    if (strcmp(value, "unlimited") == 0)
        lim.rlim_cur = lim.rlim_max = RLIM_INFINITY;
    else
        lim.rlim_cur = lim.rlim_max = strtoull(value, NULL, 10);
    if (setrlimit(which, &lim) < 0)
        die("cannot set the guest's %s limit to %s", name, value);
}

static void need(int argc, int i, int n, const char *op)
{
    if (i + n >= argc) {
        errno = 0;
        die("sandbox: %s needs %d arguments", op, n);
    }
}

/* Whether the namespace open at FD is the user namespace this process is in. */
static int our_userns(int fd)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat("/proc/self/ns/user", &b) == 0 && a.st_ino == b.st_ino &&
           a.st_dev == b.st_dev;
}

/* Join the user namespace that owns the namespace open at NSFD
 * (NS_GET_USERNS, ioctl_nsfs(2)), unless it is ours.  Joining a pid, time,
 * UTS or mount namespace needs CAP_SYS_ADMIN both in its owner and in the
 * caller's own user namespace (setns(2)): root has it everywhere; an
 * ordinary user has it only in the namespaces it created (the machine's
 * are), once it is in one of them.  Only a single-threaded process may
 * join a user namespace, hence these helper modes. */
static void join_owner(int nsfd, const char *what)
{
    int owner = ioctl(nsfd, NS_GET_USERNS);
    if (owner < 0)
        die("cannot find the owner of the machine's %s namespace", what);
    if (!our_userns(owner) && setns(owner, CLONE_NEWUSER) < 0)
        die("cannot join the user namespace of the machine's %s namespace", what);
    close(owner);
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
    int in = -1, out = -1, err = -1;
    read_caller_bset();
    struct spec sp = {.uid = getuid(),
                      .gid = getgid(),
                      .cwd = "/",
                      .cwd_strict = 1,
                      .was_root = host_root(),
                      .net_fd = -1,
                      .hold_fd = -1,
                      .ngroups = -1,
                      .net_join = -1,
                      .tty_sock = -1};
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
        } else if (strcmp(op, "groups") == 0) {
            need(argc, i, 1, op);
            parse_groups(&sp, argv[++i]);
        } else if (strcmp(op, "caps") == 0) {
            need(argc, i, 5, op);
            parse_caps(&sp, argv + i + 1);
            i += 5;
        } else if (strcmp(op, "seccomp") == 0) {
            need(argc, i, 2, op);
            parse_filter(&sp, argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (strcmp(op, "tty") == 0) {
            need(argc, i, 3, op);
            sp.tty_sock = atoi(argv[i + 1]);
            if (fcntl(sp.tty_sock, F_SETFD, FD_CLOEXEC) < 0)
                die("sandbox: bad terminal socket");
            sp.tty_size.ws_col = tty_dimension(argv[i + 2], "width");
            sp.tty_size.ws_row = tty_dimension(argv[i + 3], "height");
            i += 3;
        } else if (strcmp(op, "cgroup") == 0) {
            /* One of the machine's cgroups: the new process counts
             * against its limits like the others ("0" is the writer). */
            need(argc, i, 1, op);
            join_cgroup_at("", argv[++i]);
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
    /* From here on what goes wrong is the caller's to read (umld exec
     * prints our stderr), not the daemon's log. */
    if (err >= 0 && dup2(err, 2) < 0)
        die("dup2");
    /* Order matters (setns(2)): the pid and time namespaces belong to the
     * machine's outer user namespace, so they are joined while we still
     * have our capabilities there; the mount namespace belongs to the
     * guest's user namespace, joined just before it. */
    static const char *const kinds[] = {"pid",    "time", "user", "mnt",
                                        "cgroup", "ipc",  "uts",  "net"};
    enum { NKINDS = 8, NET = 7 };
    int fds[NKINDS];
    for (int k = 0; k < NKINDS; k++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%s/ns/%s", pid, kinds[k]);
        fds[k] = open(path, O_RDONLY | O_CLOEXEC);
        if (fds[k] < 0 && k < 3)
            die("the machine's process %s is gone", pid);
    }
    /* The machine's network namespace (its own, owned by the guest's user
     * namespace), unless it is the host's ("--net host"), which is ours:
     * an ordinary user could not join that one again from inside. */
    struct stat net_st, own_st;
    if (fds[NET] >= 0 && fstat(fds[NET], &net_st) == 0 && stat("/proc/self/ns/net", &own_st) == 0 &&
        net_st.st_ino == own_st.st_ino && net_st.st_dev == own_st.st_dev) {
        close(fds[NET]);
        fds[NET] = -1;
    }
    /* Run by an ordinary user, the pid and time namespaces are the stage's
     * (its own user namespace owns them): into that one first. */
    join_owner(fds[0], "pid");
    for (int k = 0; k < NKINDS; k++) {
        /* The guest shares the machine's ipc/uts/cgroup namespaces with
         * its init, which may be ours: EINVAL then means "already in". */
        if (fds[k] >= 0 && setns(fds[k], 0) < 0 && (k < 4 || k == NET) && errno != EINVAL)
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

/* umld-sandbox names PID [hostname NAME] [domainname NAME]
 *
 * A live change of a running machine's names: join the UTS namespace of
 * its process PID and set them there (uts_namespaces(7)), where
 * /proc/sys/kernel/hostname and a native uname(2) read them.  The owner of
 * that namespace is the guest's user namespace, joined first. */
static int names_main(int argc, char **argv)
{
    if (argc < 3) {
        errno = 0;
        die("sandbox: names PID [hostname NAME] [domainname NAME]");
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/uts", argv[2]);
    int uts = open(path, O_RDONLY | O_CLOEXEC);
    if (uts < 0)
        die("the machine's process %s is gone", argv[2]);
    join_owner(uts, "UTS");
    if (setns(uts, CLONE_NEWUTS) < 0)
        die("cannot join the machine's UTS namespace");
    for (int i = 3; i < argc; i++) {
        const char *op = argv[i];
        if (strcmp(op, "hostname") == 0) {
            need(argc, i, 1, op);
            const char *name = argv[++i];
            if (sethostname(name, strlen(name)) < 0)
                die("cannot set the guest's host name");
        } else if (strcmp(op, "domainname") == 0) {
            need(argc, i, 1, op);
            const char *name = argv[++i];
            if (setdomainname(name, strlen(name)) < 0)
                die("cannot set the guest's domain name");
        } else {
            errno = 0;
            die("sandbox: unknown names operation %s", op);
        }
    }
    return 0;
}

/* umld-sandbox serve PID PARENT -- CMD...
 *
 * A file system daemon (fuse2fs) for the machine whose stage is process
 * PID: join the stage's user and mount namespaces, chroot to the host's
 * tree (/oldroot there, so CMD finds its libraries and the image at its
 * host path) and run CMD, whose FUSE mount then lands in the stage's mount
 * namespace alone ("fusedisk").  umld starts it outside the machine: not
 * traced, without the seccomp filter, so SIGKILL of umld (which kills every
 * traced process) leaves CMD to end cleanly, on SIGTERM.
 *
 * This process stays, as CMD's parent, to turn the end of umld (PARENT)
 * and umld's own SIGTERM into exactly one SIGTERM for CMD.  The
 * parent-death signal comes once per thread of umld that dies while it has
 * live ones left (the child is handed to the next one, prctl(2)); libfuse
 * puts SIGTERM back to its default once it has begun to unmount, so a
 * second one would kill fuse2fs before it has flushed the image.  It exits
 * with CMD's status. */
static int serve_main(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[4], "--") != 0) {
        errno = 0;
        die("sandbox: serve PID PARENT -- CMD");
    }
    pid_t parent = (pid_t)strtol(argv[3], NULL, 10);
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/mnt", argv[2]);
    int mnt = open(path, O_RDONLY | O_CLOEXEC);
    if (mnt < 0)
        die("the machine's stage %s is gone", argv[2]);
    join_owner(mnt, "mount");
    if (setns(mnt, CLONE_NEWNS) < 0)
        die("cannot join the stage's mount namespace");
    close(mnt);
    if (chroot("/oldroot") < 0 || chdir("/") < 0)
        die("cannot enter the host's tree in the stage");
    sigset_t waited, old;
    sigemptyset(&waited);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    sigaddset(&waited, SIGHUP);
    sigaddset(&waited, SIGCHLD);
    sigprocmask(SIG_BLOCK, &waited, &old);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0 || getppid() != parent) {
        errno = 0;
        die("umld is gone");
    }
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        /* umld's threads block the signals its loop takes (SIGTERM among
         * them), and exec keeps a mask: CMD must get its SIGTERM. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(argv[5], argv + 5);
        die("cannot run %s", argv[5]);
    }
    /* CMD holds what umld passed (the image's lock); not this process. */
    syscall(SYS_close_range, 3U, ~0U, 0U);
    int asked = 0;
    for (;;) {
        int sig = sigwaitinfo(&waited, NULL);
        if (sig == SIGCHLD) {
            int status;
            if (waitpid(child, &status, WNOHANG) == child)
                return status_code(status);
        } else if (sig > 0 && !asked) {
            asked = 1;
            kill(child, SIGTERM);
        }
    }
}

/* One step of blockmount_main that the guest's mount(2) answers with
 * errno: print it for umld, which completes the call with it. */
static int mount_failed(void)
{
    printf("%d\n", errno ? errno : EIO);
    return 0;
}

/* The comma-separated mount options TEXT as fsconfig(2) parameters of the
 * file system context FS: "key=value" a string, "key" a flag (what the
 * legacy mount(2) does with its data, vfs_parse_monolithic_sep); -1 with
 * errno at the first the file system refuses. */
static int config_options(int fs, const char *text)
{
    char *opts = strdup(text), *save = NULL;
    if (!opts)
        return -1;
    int ok = 1;
    for (char *o = strtok_r(opts, ",", &save); ok && o; o = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(o, '=');
        if (eq)
            *eq = '\0';
        ok = syscall(SYS_fsconfig, fs, eq ? FSCONFIG_SET_STRING : FSCONFIG_SET_FLAG, o,
                     eq ? eq + 1 : NULL, 0) == 0;
    }
    int err = errno;
    free(opts);
    errno = err;
    return ok ? 0 : -1;
}

/* A detached mount of FSTYPE on SOURCE (fsopen(2), fsconfig(2), fsmount(2)),
 * with the superblock flags SBFLAGS and the options DATA (both
 * comma-separated) and the mount attributes ATTRS; -1 with errno set. */
static int build_mount(const char *fstype, const char *source, const char *sbflags,
                       const char *data, unsigned long attrs)
{
    int fs = (int)syscall(SYS_fsopen, fstype, FSOPEN_CLOEXEC);
    if (fs < 0)
        return -1;
    int ok = syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "source", source, 0) == 0 &&
             config_options(fs, sbflags) == 0 && config_options(fs, data) == 0;
    int mnt = -1;
    if (ok && syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
        mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, attrs);
    int err = errno;
    close(fs);
    errno = err;
    return mnt;
}

/* The guest thread TID's user and mount namespaces, root and working
 * directory, opened (GUEST_*), for enter_guest_tree. */
enum { GUEST_USERNS, GUEST_MNTNS, GUEST_ROOT, GUEST_CWD, GUEST_FDS };
static void open_guest_tree(const char *tid, int fds[GUEST_FDS])
{
    static const char *const kinds[] = {"ns/user", "ns/mnt", "root", "cwd"};
    for (int k = 0; k < GUEST_FDS; k++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%s/%s", tid, kinds[k]);
        fds[k] = open(path, (k < GUEST_ROOT ? O_RDONLY : O_PATH | O_DIRECTORY) | O_CLOEXEC);
        if (fds[k] < 0)
            die("the guest's thread %s is gone", tid);
    }
}

/* Join the guest's mount namespace and take its root and working
 * directory, so that a path resolves as it does for the guest (what
 * nsenter(1) does). */
static void enter_guest_tree(const int fds[GUEST_FDS])
{
    if (setns(fds[GUEST_MNTNS], CLONE_NEWNS) < 0)
        die("cannot join the guest's mount namespace");
    if (fchdir(fds[GUEST_ROOT]) < 0 || chroot(".") < 0 || fchdir(fds[GUEST_CWD]) < 0)
        die("cannot take the guest's root and working directory");
}

/* The mount (its root) of the leased device RDEV at the guest's path
 * TARGET, as a descriptor (fstat of it is then what is acted on: the
 * guest cannot swap the path meanwhile); -1 with errno (EINVAL: TARGET is
 * not the root of a mount of that device, as mount(2) answers). */
static int device_mount_at(const char *target, const char *rdev)
{
    int fd = open(target, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st, up;
    if (fstat(fd, &st) < 0 || st.st_dev != (dev_t)strtoull(rdev, NULL, 10)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    /* Root of a mount: its parent is on another device or is itself. */
    int parent = openat(fd, "..", O_PATH | O_CLOEXEC);
    int root = parent >= 0 && fstat(parent, &up) == 0 &&
               (up.st_dev != st.st_dev || up.st_ino == st.st_ino);
    if (parent >= 0)
        close(parent);
    if (!root) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

/* guestmount's "mknod": see guestmount_main. */
static int guest_mknod(char **argv, const int guest[GUEST_FDS])
{
    const char *tid = argv[2], *dirfd = argv[4];
    char *path = argv[5];
    mode_t mode = (mode_t)strtoul(argv[6], NULL, 8);
    dev_t dev = (dev_t)strtoull(argv[7], NULL, 10);
    int any = strcmp(argv[8], "any") == 0; /* else DEVS */
    uid_t fsuid = (uid_t)strtoul(argv[9], NULL, 10);
    gid_t fsgid = (gid_t)strtoul(argv[10], NULL, 10);
    int base = AT_FDCWD;
    if (strcmp(dirfd, "cwd") != 0) {
        char at[64];
        snprintf(at, sizeof at, "/proc/%s/fd/%s", tid, dirfd);
        base = open(at, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (base < 0) {
            errno = errno == ENOENT ? EBADF : errno;
            return mount_failed();
        }
    }
    /* The supplementary groups, then the guest's fs ids: what decides
     * whether it may create in the directory (setfsuid(2) drops the
     * capabilities that would bypass that; only CAP_MKNOD comes back). */
    size_t ngroups = 0;
    gid_t groups[64];
    for (char *g = strtok(argv[11], ","); g && ngroups < 64; g = strtok(NULL, ","))
        groups[ngroups++] = (gid_t)strtoul(g, NULL, 10);
    enter_guest_tree(guest);
    if (setgroups(ngroups, groups) < 0)
        die("setgroups");
    setfsgid(fsgid);
    setfsuid(fsuid);
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0)
        die("capget");
    data[0].effective = data[0].permitted & (1U << CAP_MKNOD);
    data[1].effective = 0;
    if (syscall(SYS_capset, &head, data) < 0)
        die("capset");
    /* The parent, then the node's name in it: a descriptor, so the
     * directory whose mount was checked is the one written. */
    char *slash = strrchr(path, '/'), *name = path;
    int parent = base;
    if (slash) {
        *slash = '\0';
        name = slash + 1;
        parent = openat(base, slash == path ? "/" : path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (parent < 0)
            return mount_failed();
    }
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        errno = EEXIST;
        return mount_failed();
    }
    /* Any other device only on a nodev mount of one of the devices listed
     * (the machine's loop devices, whose file systems are its own): a
     * node on a host tree could open from the host, where it is not
     * nodev. */
    struct statvfs vfs;
    struct stat dir;
    if (!any) {
        if ((parent == AT_FDCWD ? statvfs(".", &vfs) : fstatvfs(parent, &vfs)) < 0 ||
            (parent == AT_FDCWD ? stat(".", &dir) : fstat(parent, &dir)) < 0)
            return mount_failed();
        int listed = 0;
        char *save = NULL;
        for (char *d = strtok_r(argv[8], ",", &save); d; d = strtok_r(NULL, ",", &save))
            listed |= dir.st_dev == (dev_t)strtoull(d, NULL, 10);
        if (!listed || !(vfs.f_flag & ST_NODEV)) {
            errno = EPERM;
            return mount_failed();
        }
    }
    if (mknodat(parent, name, mode, dev) < 0)
        return mount_failed();
    printf("0\n");
    return 0;
}

/* umld-sandbox guestmount TID mount SOURCE FSTYPE SBFLAGS ATTRS DATA TARGET
 * umld-sandbox guestmount TID remount RDEV SBFLAGS ATTRS DATA TARGET
 * umld-sandbox guestmount TID umount RDEV FLAGS TARGET
 * umld-sandbox guestmount TID mknod DIRFD|cwd PATH MODE DEV any|DEVS FSUID FSGID GROUPS
 *
 * What a guest root's mount(2) and umount2(2) of one of its machine's loop
 * devices (umld/core/loopdev.py) need of the host, done for it: a block
 * device's file system can be mounted, reconfigured or force-unmounted
 * only with CAP_SYS_ADMIN in the initial user namespace (no
 * FS_USERNS_MOUNT, mount_namespaces(7); can_umount's MNT_FORCE check).
 * This process (host root, started by umld) acts in the guest's mount
 * namespace, from its root and working directory (enter_guest_tree):
 *
 * mount: builds the mount with the new mount API (build_mount), always
 *   with MOUNT_ATTR_NODEV (a device node on an image the guest wrote would
 *   otherwise open the host's devices), idmaps it with the guest's user
 *   namespace (on-disk id k is guest id k, as for --disk), and attaches it
 *   at TARGET (move_mount(2)).  ext2 and ext3 served by the ext4 driver
 *   (CONFIG_EXT4_USE_FOR_EXT2) are registered without FS_ALLOW_IDMAP, so
 *   they are mounted as ext4 (the same driver and on-disk format;
 *   mountinfo says ext4).  Another file system without idmapped mounts
 *   shows its on-disk owners unmapped (nobody), as the guest's own mount
 *   of it would.
 * remount: MS_REMOUNT of such a mount (TARGET must be the root of a mount
 *   of device RDEV): the superblock reconfigured with SBFLAGS and DATA
 *   (fspick(2), FSCONFIG_CMD_RECONFIGURE; SBFLAGS "-": MS_BIND, the mount
 *   only), then the mount's attributes set to exactly ATTRS, nodev kept
 *   (mount_setattr(2)), as do_remount does.
 * umount: umount2(2) of TARGET with FLAGS (MNT_FORCE), once TARGET was
 *   seen to be a mount of device RDEV.  What a host root can do there
 *   beyond the guest's own umount2 is MNT_FORCE alone (a locked mount
 *   stays locked to everyone, can_umount).
 * mknod: a guest root's mknod(2) of a character or block device, which
 *   needs CAP_MKNOD of the initial namespace (vfs_mknod), made with the
 *   guest's fs ids and groups (so the directory's permissions are the
 *   guest's to pass) and CAP_MKNOD alone: "any", one of the harmless
 *   character devices the machine's /dev already offers; DEVS (numbers,
 *   comma-separated), any device, only in a directory on a nodev mount
 *   of one of those devices (the machine's loop devices), where the node
 *   never opens (umld/core/syscalls/sys_file.py).  MODE is octal, the
 *   guest's umask applied.
 *
 * Prints 0, or the errno the guest's call fails with. */
static int guestmount_main(int argc, char **argv)
{
    const char *op = argc > 3 ? argv[3] : "";
    int mount_op = strcmp(op, "mount") == 0, remount_op = strcmp(op, "remount") == 0;
    int mknod_op = strcmp(op, "mknod") == 0;
    if (!((mount_op && argc == 10) || (remount_op && argc == 9) ||
          (strcmp(op, "umount") == 0 && argc == 7) || (mknod_op && argc == 12))) {
        errno = 0;
        die("sandbox: guestmount TID mount|remount|umount|mknod ...");
    }
    int guest[GUEST_FDS];
    open_guest_tree(argv[2], guest);
    if (mknod_op)
        return guest_mknod(argv, guest);
    if (!mount_op)
        enter_guest_tree(guest);
    if (!mount_op && !remount_op) {
        int fd = device_mount_at(argv[6], argv[4]);
        if (fd < 0)
            return mount_failed();
        close(fd); /* it would keep the mount busy */
        if (umount2(argv[6], (int)strtol(argv[5], NULL, 10)) < 0)
            return mount_failed();
        printf("0\n");
        return 0;
    }
    if (remount_op) {
        const char *sbflags = argv[5], *data = argv[7], *target = argv[8];
        unsigned long attrs = strtoul(argv[6], NULL, 10) | MOUNT_ATTR_NODEV;
        int fd = device_mount_at(target, argv[4]);
        if (fd < 0)
            return mount_failed();
        if (strcmp(sbflags, "-") != 0) {
            int fs = (int)syscall(SYS_fspick, fd, "", FSPICK_EMPTY_PATH | FSPICK_CLOEXEC);
            /* Read-only or not is what the guest said, as a remount's
             * flags replace the old ones. */
            const char *ro = strstr(sbflags, "ro") ? "ro" : "rw";
            if (fs < 0 || syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, ro, NULL, 0) < 0 ||
                config_options(fs, data) < 0 ||
                syscall(SYS_fsconfig, fs, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0) < 0)
                return mount_failed();
        }
        struct mount_attr set = {
            .attr_set = attrs,
            .attr_clr = (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC |
                         MOUNT_ATTR__ATIME | MOUNT_ATTR_NODIRATIME | MOUNT_ATTR_NOSYMFOLLOW) &
                        ~(attrs & ~(__u64)MOUNT_ATTR__ATIME),
        };
        set.attr_clr |= MOUNT_ATTR__ATIME;
        if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &set, sizeof set) < 0)
            return mount_failed();
        printf("0\n");
        return 0;
    }
    const char *source = argv[4], *fstype = argv[5], *target = argv[9];
    unsigned long attrs = strtoul(argv[7], NULL, 10) | MOUNT_ATTR_NODEV;
    int mnt = build_mount(fstype, source, argv[6], argv[8], attrs);
    if (mnt < 0)
        return mount_failed();
    struct mount_attr idmap = {.attr_set = MOUNT_ATTR_IDMAP,
                               .userns_fd = (__u64)guest[GUEST_USERNS]};
    if (syscall(SYS_mount_setattr, mnt, "", AT_EMPTY_PATH, &idmap, sizeof idmap) < 0) {
        if (errno != EINVAL)
            return mount_failed();
        if (strcmp(fstype, "ext2") == 0 || strcmp(fstype, "ext3") == 0) {
            /* The device is the first superblock's until its mount goes. */
            close(mnt);
            mnt = build_mount("ext4", source, argv[6], argv[8], attrs);
            if (mnt >= 0 &&
                syscall(SYS_mount_setattr, mnt, "", AT_EMPTY_PATH, &idmap, sizeof idmap) < 0) {
                close(mnt);
                mnt = -1;
            }
            if (mnt < 0)
                mnt = build_mount(fstype, source, argv[6], argv[8], attrs);
            if (mnt < 0)
                return mount_failed();
        }
    }
    /* SOURCE was the host's device node; TARGET is the guest's path. */
    enter_guest_tree(guest);
    if (syscall(SYS_move_mount, mnt, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0)
        return mount_failed();
    printf("0\n");
    return 0;
}

/* umld-sandbox tied PARENT -- CMD...
 *
 * A host-side helper of a machine (pasta, its user-mode network) that
 * must not outlive umld: SIGTERM when the thread of umld (PARENT) that
 * started it ends (PR_SET_PDEATHSIG, prctl(2); it survives execve(2) of
 * a program that is not set-user-ID), even when umld is killed. */
static int tied_main(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[3], "--") != 0) {
        errno = 0;
        die("sandbox: tied PARENT -- CMD");
    }
    pid_t parent = (pid_t)strtol(argv[2], NULL, 10);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0 || getppid() != parent) {
        errno = 0;
        die("umld is gone");
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(argv[4], argv + 4);
    die("cannot run %s", argv[4]);
}

int main(int argc, char **argv)
{
    if (argc > 0 && strcmp(argv[0], "umld-init") == 0)
        return init_main();
    if (argc > 0 && strcmp(argv[0], "umld-idle") == 0)
        return idle_main();
    if (argc > 1 && strcmp(argv[1], "enter") == 0)
        return enter_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "names") == 0)
        return names_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return serve_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "tied") == 0)
        return tied_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "guestmount") == 0)
        return guestmount_main(argc, argv);

    sigset_t mask, all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &mask);

    struct spec sp = {.uid = 0,
                      .gid = 0,
                      .net_fd = -1,
                      .hold_fd = -1,
                      .ngroups = -1,
                      .net_join = -1,
                      .tty_sock = -1};
    sp.files = calloc((size_t)argc, sizeof(char *));
    sp.was_root = host_root();
    sp_was_root = sp.was_root;
    read_caller_bset();
    int self_fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
    if (self_fd < 0)
        die("cannot open /proc/self/exe");
    read_host_pid_max();

    const char **hides = calloc((size_t)argc, sizeof(char *));
    int nhides = 0;
    sp.masks = calloc((size_t)argc, sizeof(char *));
    sp.readonlys = calloc((size_t)argc, sizeof(char *));
    sp.sysctls = calloc((size_t)argc, sizeof(char *));
    if (!hides || !sp.masks || !sp.readonlys || !sp.sysctls)
        die("out of memory");
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
            if (strcmp(argv[i + 2], "cow") == 0) {
                if (strcmp(argv[i + 1], "/") != 0) {
                    errno = 0;
                    die("sandbox: only the host's / is made copy-on-write");
                }
                cow_tree();
            } else {
                char *from = join("/oldroot", argv[i + 1]);
                root_ids.attaching = root_ids.uids != NULL;
                bind_tree(from, "/newroot",
                          BIND_ATTRS | (strcmp(argv[i + 2], "ro") == 0 ? MOUNT_ATTR_RDONLY : 0));
                root_ids.attaching = 0;
                free(from);
            }
            i += 2;
        } else if (strcmp(op, "writable") == 0) {
            need(argc, i, 1, op);
            add_path(&writables, &nwritables, argv[++i]);
        } else if (strcmp(op, "upper") == 0) {
            need(argc, i, 2, op);
            op_upper(argv[i + 1], argv[i + 2]);
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
        } else if (strcmp(op, "helper") == 0) {
            need(argc, i, 1, op);
            helper_fd = atoi(argv[++i]);
            /* The stage's alone: not the guest's after exec. */
            if (fcntl(helper_fd, F_SETFD, FD_CLOEXEC) < 0)
                die("sandbox: bad helper socket");
        } else if (strcmp(op, "fusedisk") == 0) {
            need(argc, i, 3, op);
            op_fusedisk(argv[i + 1], argv[i + 2], argv[i + 3]);
            i += 3;
        } else if (strcmp(op, "dev") == 0) {
            op_dev();
        } else if (strcmp(op, "loopctl") == 0) {
            op_loopctl();
        } else if (strcmp(op, "tty") == 0) {
            need(argc, i, 3, op);
            op_tty(argv[i + 1], argv[i + 2], argv[i + 3]);
            i += 3;
        } else if (strcmp(op, "mkdir") == 0) {
            need(argc, i, 1, op);
            char *to = join("/newroot", argv[i + 1]);
            struct fsids old = as_guest_root();
            if (mkdirs(to, 0755) < 0 || chmod(to, 01777) < 0)
                die("cannot create %s in the guest", argv[i + 1]);
            restore_fsids(old);
            free(to);
            i += 1;
        } else if (strcmp(op, "proc") == 0) {
            /* The host's /proc under the root bind goes: the guest
             * gets its own, and nothing is left below it to reveal. */
            struct stat st;
            struct fsids old = as_guest_root();
            if (stat("/newroot/proc", &st) < 0 && mkdirs((char[]){"/newroot/proc"}, 0555) < 0)
                die("cannot create /proc in the guest");
            restore_fsids(old);
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
            ids.guest_uid = sp.uid;
            ids.guest_gid = sp.gid;
            i += 2;
        } else if (strcmp(op, "subids") == 0) {
            need(argc, i, 3, op);
            if (!sp.was_root) {
                errno = 0;
                die("sandbox: subids needs root");
            }
            ids.on = 1;
            ids.uid = strtoul(argv[i + 1], NULL, 10);
            ids.gid = strtoul(argv[i + 2], NULL, 10);
            ids.count = strtoul(argv[i + 3], NULL, 10);
            if (ids.uid == 0 || ids.gid == 0 || ids.count < 2) {
                errno = 0;
                die("sandbox: bad subids");
            }
            i += 3;
        } else if (strcmp(op, "rootids") == 0) {
            need(argc, i, 2, op);
            if (!ids.on) {
                errno = 0;
                die("sandbox: rootids needs subids first");
            }
            root_ids.uids = argv[i + 1];
            root_ids.gids = argv[i + 2];
            i += 2;
        } else if (strcmp(op, "cgroup") == 0) {
            need(argc, i, 1, op);
            join_cgroup(argv[++i]);
        } else if (strcmp(op, "hide") == 0) {
            need(argc, i, 1, op);
            hides[nhides++] = argv[++i];
        } else if (strcmp(op, "mask") == 0) {
            need(argc, i, 1, op);
            sp.masks[sp.nmasks++] = argv[++i];
        } else if (strcmp(op, "readonly") == 0) {
            need(argc, i, 1, op);
            sp.readonlys[sp.nreadonlys++] = argv[++i];
        } else if (strcmp(op, "sysctl") == 0) {
            need(argc, i, 2, op);
            sp.sysctls[sp.nsysctls++] = argv[i + 1];
            sp.sysctls[sp.nsysctls++] = argv[i + 2];
            i += 2;
        } else if (strcmp(op, "rlimit") == 0) {
            need(argc, i, 2, op);
            set_rlimit(argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (strcmp(op, "oomfloor") == 0) {
            need(argc, i, 1, op);
            set_oom_floor(&sp, argv[++i]);
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
        } else if (strcmp(op, "nest") == 0) {
            op_nest();
            sp.nest = 1;
        } else if (strcmp(op, "netns") == 0) {
            sp.netns = 1;
        } else if (strcmp(op, "netsync") == 0) {
            need(argc, i, 1, op);
            sp.net_fd = atoi(argv[++i]);
            /* The guest's first process's alone: not the guest's after exec. */
            if (fcntl(sp.net_fd, F_SETFD, FD_CLOEXEC) < 0)
                die("sandbox: bad network helper socket");
        } else if (strcmp(op, "netjoin") == 0) {
            need(argc, i, 1, op);
            char *path = join("/oldroot", argv[++i]);
            sp.net_join = open(path, O_RDONLY | O_CLOEXEC);
            if (sp.net_join < 0)
                die("cannot open the network namespace %s", argv[i]);
            free(path);
        } else if (strcmp(op, "groups") == 0) {
            need(argc, i, 1, op);
            parse_groups(&sp, argv[++i]);
        } else if (strcmp(op, "caps") == 0) {
            need(argc, i, 5, op);
            parse_caps(&sp, argv + i + 1);
            i += 5;
        } else if (strcmp(op, "seccomp") == 0) {
            need(argc, i, 2, op);
            parse_filter(&sp, argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (strcmp(op, "hold") == 0) {
            need(argc, i, 1, op);
            sp.hold_fd = atoi(argv[++i]);
            if (fcntl(sp.hold_fd, F_SETFD, FD_CLOEXEC) < 0)
                die("sandbox: bad hold socket");
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
    mask_sys();
    for (int k = 0; k < nhides; k++)
        op_hide(hides[k]);

    if (sp.boottime)
        clock_gettime(CLOCK_BOOTTIME, &machine_boot);
    /* clone(2) without a new stack behaves as fork(2). */
    long child = syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | SIGCHLD, 0, NULL, NULL, 0);
    if (child < 0)
        die("cannot create the guest's pid namespace");
    if (child == 0)
        pid1_main(&sp, self_fd, &mask);
    /* The terminal is the guest's: the stage keeping it open would keep
     * umld from seeing it hang up when the guest is gone. */
    if (tty_slave >= 0)
        close(tty_slave);
    int status;
    while (waitpid((pid_t)child, &status, 0) < 0)
        if (errno != EINTR)
            die("waitpid");
    return status_code(status);
}
