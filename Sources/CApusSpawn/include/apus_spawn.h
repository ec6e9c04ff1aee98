#ifndef APUS_SPAWN_H
#define APUS_SPAWN_H

#include <sys/types.h>

/// Starts `path` with `argv`/`envp` as the leader of a new process group, stdin from /dev/null, stdout and stderr
/// on `output_fd`, every other descriptor closed, default signal dispositions and an empty signal mask, working
/// directory `cwd` (NULL: inherited), and, when `parent_death_signal` is non-zero, that signal delivered to it when
/// the spawning thread's process dies (Linux `PR_SET_PDEATHSIG`; ignored elsewhere).
///
/// Returns the child's pid, or -errno when fork failed or the child could not exec (the child's exec errno travels
/// back over a close-on-exec pipe, so a missing binary is an error here rather than an exit status later).
pid_t apus_spawn(const char *path, char *const argv[], char *const envp[], const char *cwd, int output_fd,
                 int parent_death_signal);

#endif
