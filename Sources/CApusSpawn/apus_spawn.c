#define _GNU_SOURCE
#include "apus_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

// Everything between fork and exec is async-signal-safe: the parent is multi-threaded (Swift concurrency, NIO), so
// the child may only call functions that take no locks.
static void close_descriptors_from(int first) {
#if defined(__linux__) && defined(SYS_close_range)
    if (syscall(SYS_close_range, (unsigned int)first, ~0U, 0) == 0) { return; }
#endif
    long limit = sysconf(_SC_OPEN_MAX);
    if (limit < 0 || limit > 65536) { limit = 65536; }
    for (int fd = first; fd < limit; fd++) { close(fd); }
}

pid_t apus_spawn(const char *path, char *const argv[], char *const envp[], const char *cwd, int output_fd,
                 int parent_death_signal) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) { return -errno; }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int error = errno;
        close(report[0]);
        close(report[1]);
        return -error;
    }
    if (pid == 0) {
        int error = 0;
        setpgid(0, 0);
#ifdef __linux__
        if (parent_death_signal != 0) {
            prctl(PR_SET_PDEATHSIG, parent_death_signal);
            // The parent may have died between fork and prctl: then nobody would ever signal us.
            if (getppid() != parent) { _exit(127); }
        }
#else
        (void)parent;
        (void)parent_death_signal;
#endif
        // Ignored signals stay ignored across exec (the controller ignores SIGPIPE and, through its signal
        // handling, SIGINT/SIGTERM): restore the defaults so children die on SIGTERM like any process.
        for (int signal_number = 1; signal_number < NSIG; signal_number++) {
            if (signal_number == SIGKILL || signal_number == SIGSTOP) { continue; }
            signal(signal_number, SIG_DFL);
        }
        sigset_t empty;
        sigemptyset(&empty);
        sigprocmask(SIG_SETMASK, &empty, NULL);
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(output_fd, 1) < 0 || dup2(output_fd, 2) < 0) {
            error = errno;
        } else if (cwd != NULL && chdir(cwd) != 0) {
            error = errno;
        }
        if (error == 0) {
            // Close every inherited descriptor (listening sockets, other children's pipes) except the report pipe,
            // which closes itself on exec.
            int keep = report[1];
            for (int fd = 3; fd < keep; fd++) { close(fd); }
            close_descriptors_from(keep + 1);
            execve(path, argv, envp);
            error = errno;
            ssize_t written = write(keep, &error, sizeof(error));
            (void)written;
            _exit(127);
        }
        ssize_t written = write(report[1], &error, sizeof(error));
        (void)written;
        _exit(127);
    }
    close(report[1]);
    // Also set the group from the parent so a signal to the group right after we return cannot miss the child.
    setpgid(pid, pid);
    int child_error = 0;
    ssize_t count;
    do {
        count = read(report[0], &child_error, sizeof(child_error));
    } while (count < 0 && errno == EINTR);
    close(report[0]);
    if (count == (ssize_t)sizeof(child_error)) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -(child_error != 0 ? child_error : ECHILD);
    }
    return pid;
}
