/* umld's command: a small front end that starts `umld run` warm.
 *
 * Python takes ~11 ms to start and umld's modules ~30 ms more to import,
 * several times what a whole machine costs to start.  So `umld run` asks
 * a warm umld of the caller's instead (umld/_warm.py): one per user and
 * per context (namespaces, cgroup, interpreter), started on demand the
 * first time, which has imported everything already and forks a process
 * per run.  That process reads everything else of the caller from
 * /proc/PID (its argv, environment, working directory, umask, limits,
 * signal dispositions, scheduling) while the caller waits, takes the
 * caller's standard descriptors (passed here, SCM_RIGHTS, unix(7)) and
 * runs `umld run` as this process would have; this process relays
 * signals to it and ends with its status.
 *
 * Anything else (every other command, a caller whose descriptors include
 * a terminal: job control needs the caller's session; a systemd unit's
 * process; UMLD_WARM=0; no
 * warm umld yet, or one that refuses this caller) runs Python's umld
 * here, cold, by execv(2): exactly what the command always was.  When
 * there was no warm umld, one is started in the background for the next
 * run.
 *
 * Where: root's in /run/umld/warm, another user's in
 * $XDG_RUNTIME_DIR/umld-warm or else /tmp/umld-warm-UID (UMLD_WARM_DIR
 * when set), a directory of
 * the user's own, mode 0700 (checked, never followed through a symbolic
 * link); the socket's name is a hash of the context, so that a caller in
 * another namespace or cgroup reaches its own warm umld, never this one.
 * The warm umld checks the context again from the caller's credentials
 * (SO_PEERCRED), whatever the name said.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef UMLD_PYTHON
#define UMLD_PYTHON "/usr/bin/python3"
#endif

/* The signals relayed to the run (what a cold umld takes and passes on to
 * its guest, and SIGWINCH/SIGCONT/SIGUSR1/SIGUSR2 as they come). */
static const int relayed[] = {SIGINT,  SIGTERM, SIGHUP,   SIGQUIT, SIGUSR1,
                              SIGUSR2, SIGALRM, SIGWINCH, SIGCONT};
#define NRELAYED (sizeof relayed / sizeof relayed[0])

/* The run, by a pidfd (pidfd_open(2)): a signal relayed after the run has
 * ended and been reaped never reaches a process that took its pid. */
static volatile sig_atomic_t run_pidfd = -1;

static void relay(int signo)
{
    int saved = errno;
    if (run_pidfd >= 0)
        syscall(SYS_pidfd_send_signal, (int)run_pidfd, signo, NULL, 0);
    errno = saved;
}

/* The interpreter: python3 beside this program (a virtual environment's,
 * or /usr/bin's), else the one umld was built with (a wheel is built in a
 * temporary environment of its own: that one is gone), else PATH's. */
static const char *python(char *buf, size_t size)
{
    ssize_t n = readlink("/proc/self/exe", buf, size - 16);
    if (n > 0) {
        buf[n] = '\0';
        char *slash = strrchr(buf, '/');
        if (slash != NULL) {
            strcpy(slash + 1, "python3");
            if (access(buf, X_OK) == 0)
                return buf;
        }
    }
    if (access(UMLD_PYTHON, X_OK) == 0)
        return UMLD_PYTHON;
    return "python3";
}

static void cold(int argc, char **argv) __attribute__((noreturn));
static void cold(int argc, char **argv)
{
    char buf[PATH_MAX];
    const char *py = python(buf, sizeof buf);
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (args == NULL) {
        fputs("umld: out of memory\n", stderr);
        exit(125);
    }
    args[0] = (char *)py;
    args[1] = "-m";
    args[2] = "umld";
    for (int i = 1; i < argc; i++)
        args[i + 2] = argv[i];
    args[argc + 2] = NULL;
    execvp(py, args);
    fprintf(stderr, "umld: cannot run %s: %s\n", py, strerror(errno));
    exit(125);
}

/* FNV-1a, 64 bits: a name for the context, not a secret. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t hash_file(uint64_t h, const char *path)
{
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hash_bytes(h, path, strlen(path));
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        h = hash_bytes(h, buf, (size_t)n);
    close(fd);
    return h;
}

/* What a warm umld cannot change per run: the namespaces, the cgroup,
 * the credentials, this program and its interpreter, and the variables
 * Python and umld read as they start. */
static uint64_t context_hash(void)
{
    static const char *const ns[] = {"mnt", "net", "pid", "user", "uts", "ipc", "cgroup", "time"};
    uint64_t h = 14695981039346656037ULL;
    char path[64], link[PATH_MAX];
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        snprintf(path, sizeof path, "/proc/self/ns/%s", ns[i]);
        ssize_t n = readlink(path, link, sizeof link);
        if (n > 0)
            h = hash_bytes(h, link, (size_t)n);
    }
    h = hash_file(h, "/proc/self/cgroup");
    uid_t ids[3];
    getresuid(&ids[0], &ids[1], &ids[2]);
    h = hash_bytes(h, ids, sizeof ids);
    getresgid(&ids[0], &ids[1], &ids[2]);
    h = hash_bytes(h, ids, sizeof ids);
    ssize_t n = readlink("/proc/self/exe", link, sizeof link);
    if (n > 0)
        h = hash_bytes(h, link, (size_t)n);
    h = hash_bytes(h, UMLD_PYTHON, sizeof UMLD_PYTHON);
    for (char **e = environ; *e != NULL; e++) {
        if (strncmp(*e, "UMLD_WARM=", 10) == 0) /* ours: not the run's */
            continue;
        if (strncmp(*e, "PYTHON", 6) == 0 || strncmp(*e, "UMLD_", 5) == 0 ||
            strncmp(*e, "LC_", 3) == 0 || strncmp(*e, "LANG=", 5) == 0 ||
            strncmp(*e, "XDG_RUNTIME_DIR=", 16) == 0)
            h = hash_bytes(h, *e, strlen(*e) + 1);
    }
    return h;
}

/* The user's directory of warm sockets, made if missing; 0 when it is the
 * user's own, not a link, mode 0700. */
static int warm_dir(char *dir, size_t size)
{
    uid_t uid = geteuid();
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const char *own = getenv("UMLD_WARM_DIR");
    if (own != NULL && own[0] == '/') {
        snprintf(dir, size, "%s", own);
    } else if (uid == 0) {
        mkdir("/run/umld", 0755);
        snprintf(dir, size, "/run/umld/warm");
    } else if (xdg != NULL && xdg[0] == '/') {
        snprintf(dir, size, "%s/umld-warm", xdg);
    } else {
        snprintf(dir, size, "/tmp/umld-warm-%u", (unsigned)uid);
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != uid || (st.st_mode & 077) != 0)
        return -1;
    return 0;
}

/* Start a warm umld in the background (its own session, no descriptor of
 * ours), for the next run; it gives up at once if another one is there. */
static void start_warm(const char *sock)
{
    pid_t pid = fork();
    if (pid != 0) {
        if (pid > 0)
            waitpid(pid, NULL, 0);
        return;
    }
    if (fork() != 0)
        _exit(0);
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
    }
    for (int fd = 3; fd < 1024; fd++)
        close(fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    char buf[PATH_MAX];
    const char *py = python(buf, sizeof buf);
    execlp(py, py, "-m", "umld", "_warm", sock, (char *)NULL);
    _exit(127);
}

static int any_tty(void)
{
    return isatty(0) || isatty(1) || isatty(2);
}

/* One line from the warm umld; 0 at its end. */
static int read_line(int fd, char *line, size_t size)
{
    size_t n = 0;
    while (n < size - 1) {
        ssize_t r = read(fd, line + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    return 1;
}

/* No warm start: UMLD_WARM=1 (tests, diagnosis) says why and fails;
 * otherwise the run goes cold. */
static int require_warm;

static void not_warm(int argc, char **argv, const char *why) __attribute__((noreturn));
static void not_warm(int argc, char **argv, const char *why)
{
    if (require_warm) {
        fprintf(stderr, "umld: no warm start (UMLD_WARM=1): %s\n", why);
        exit(125);
    }
    cold(argc, argv);
}

int main(int argc, char **argv)
{
    const char *warm = getenv("UMLD_WARM");
    require_warm = warm != NULL && strcmp(warm, "1") == 0;
    /* A systemd unit's process (INVOCATION_ID, systemd.exec(5)) runs one
     * machine for its life: the main process must be the run itself. */
    if (argc < 2 || strcmp(argv[1], "run") != 0 || (warm != NULL && strcmp(warm, "0") == 0) ||
        any_tty() || getenv("INVOCATION_ID") != NULL)
        cold(argc, argv);

    char dir[PATH_MAX - 64];
    if (warm_dir(dir, sizeof dir) < 0)
        not_warm(argc, argv, "the warm directory is not the user's own, mode 0700");
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    int len = snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%016llx.sock", dir,
                       (unsigned long long)context_hash());
    if (len < 0 || (size_t)len >= sizeof addr.sun_path)
        not_warm(argc, argv, "the warm directory's path is too long for a socket");

    /* Signals wait (blocked) until the run's pid is known; a cold run
     * gets the mask back before its exec. */
    sigset_t relay_set, old;
    sigemptyset(&relay_set);
    for (size_t i = 0; i < NRELAYED; i++)
        sigaddset(&relay_set, relayed[i]);
    sigprocmask(SIG_BLOCK, &relay_set, &old);

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int missing = errno == ENOENT || errno == ECONNREFUSED;
        if (s >= 0)
            close(s);
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (missing)
            start_warm(addr.sun_path);
        not_warm(argc, argv, "no warm umld yet (one is starting)");
    }
    int fds[3] = {0, 1, 2};
    char cmsg[CMSG_SPACE(sizeof fds)];
    memset(cmsg, 0, sizeof cmsg);
    /* The request: "run MASK", the signals blocked before we blocked ours
     * (the run's own mask; the rest it reads from /proc). */
    unsigned long long mask = 0;
    for (int signo = 1; signo <= 64; signo++)
        if (sigismember(&old, signo) == 1)
            mask |= 1ULL << (signo - 1);
    char request[64];
    int rlen = snprintf(request, sizeof request, "run %llx\n", mask);
    struct iovec iov = {.iov_base = request, .iov_len = (size_t)rlen};
    struct msghdr msg = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg, .msg_controllen = sizeof cmsg};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    char line[256];
    if (sendmsg(s, &msg, MSG_NOSIGNAL) != rlen || !read_line(s, line, sizeof line) ||
        strncmp(line, "pid ", 4) != 0) {
        /* Refused ("cold": another context, a newer umld) or gone. */
        close(s);
        sigprocmask(SIG_SETMASK, &old, NULL);
        not_warm(argc, argv, "the warm umld refused this caller");
    }
    /* At once: a run that has already ended and been reaped gives ESRCH
     * (nothing to relay to); from here on the pidfd names only the run. */
    run_pidfd = (int)syscall(SYS_pidfd_open, atoi(line + 4), 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = relay;
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < NRELAYED; i++)
        sigaction(relayed[i], &sa, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);

    if (!read_line(s, line, sizeof line)) {
        fputs("umld: the warm umld ended before the run did\n", stderr);
        return 125;
    }
    if (strncmp(line, "exit ", 5) == 0)
        return atoi(line + 5);
    if (strncmp(line, "signal ", 7) == 0) {
        int signo = atoi(line + 7);
        signal(signo, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, signo);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
        raise(signo);
        return 128 + signo;
    }
    fprintf(stderr, "umld: the warm umld said %s\n", line);
    return 125;
}
