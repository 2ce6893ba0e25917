/*
 * cmapp-supervise: supervises one run of cmappserver.
 *
 * It starts the application in a session of its own, as the user and groups
 * it is told, with exactly the environment it is given; holds the
 * application's standard streams; and keeps its exit status until a
 * cmappserver has collected it. It outlives cmappserver: a restarted
 * cmappserver finds it through its socket, RUNSDIR/ID.sock, and takes the
 * streams and the status from there. docs/cmapp-supervise.md is its manual:
 * arguments, exit codes, signals, the files and the socket protocol.
 *
 * One job, no allocation beyond the environment it is handed, every system
 * call checked, EINTR handled.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROG "cmapp-supervise"
#define VERSION "1"

/* Exit codes (docs/cmapp-supervise.md). */
#define EX_DONE 0
#define EX_USAGE 100
#define EX_SYS 111
#define EX_NOEXEC 112

#define BUFSZ 65536
#define MAX_ENV_BYTES (64u << 20)
#define MAX_GROUPS 1024
#define PENDING 4
#define DRAIN_MS 2000
#define RETRY_MS 10000
#define WATCH_MS 250
#define LEFTOVER_MS 10000 /* default grace for what is left of a session after its leader ended */
#define LOST_KILLED \
  "its supervisor was killed while it ran; it has ended and its exit status is unknown"
#define LOST_REBOOT "the guest was restarted while it ran"
#define LOST_GONE "it ended while no supervisor was there to record how"

/* ---------- small helpers ---------- */

static void say(const char *what, int err) {
  char line[512];
  int n = err ? snprintf(line, sizeof line, PROG ": fatal: %s: %s\n", what, strerror(err))
              : snprintf(line, sizeof line, PROG ": fatal: %s\n", what);
  if (n > 0) {
    size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    ssize_t r;
    do r = write(2, line, len);
    while (r < 0 && errno == EINTR);
  }
}

static void die(int code, const char *what, int err) {
  say(what, err);
  _exit(code);
}

static void usage(void) {
  die(EX_USAGE,
      "usage: " PROG " [-i] [-o] [-u UID -g GID [-G GID,...]] [-d DIR] [-m UMASK] -e ENVBYTES"
      " RUNSDIR ID PROGRAM ARGV0 [ARG...]\n"
      "       " PROG " -w [-p PID:START:SUPPID:SUPSTART:BOOTID] RUNSDIR ID",
      0);
}

static int64_t now_ms(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0) die(EX_SYS, "clock_gettime", errno);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes all of buf to a blocking fd. Returns 0, or -1 with errno. */
static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, buf, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    len -= (size_t)w;
  }
  return 0;
}

static void xclose(int *fd) {
  if (*fd >= 0) {
    close(*fd); /* never retried on EINTR: on Linux the fd is gone either way */
    *fd = -1;
  }
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -1;
  return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out) {
  uint64_t v = 0;
  if (*s == 0) return -1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    if (v > (max - (uint64_t)(*s - '0')) / 10) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  return 0;
}

static int valid_id(const char *id) {
  size_t n = strlen(id);
  if (n == 0 || n > 64 || id[0] == '.') return 0;
  for (const char *p = id; *p; p++) {
    char c = *p;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

/* Reads a small file relative to dirfd (or absolute) into buf, NUL-terminated. */
static ssize_t read_small(int dirfd, const char *path, char *buf, size_t size) {
  int fd;
  do fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  size_t have = 0;
  while (have < size - 1) {
    ssize_t r = read(fd, buf + have, size - 1 - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      errno = e;
      return -1;
    }
    if (r == 0) break;
    have += (size_t)r;
  }
  close(fd);
  buf[have] = 0;
  return (ssize_t)have;
}

/* ---------- /proc ---------- */

struct procstat {
  char state;
  long pgrp, session;
  unsigned long long start;
};

/* Reads /proc/PID/stat. Returns 0, -1 when the process does not exist, -2 when unreadable. */
static int proc_stat(long pid, struct procstat *ps) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  if (read_small(AT_FDCWD, path, buf, sizeof buf) < 0) return errno == ENOENT || errno == ESRCH ? -1 : -2;
  char *close_paren = strrchr(buf, ')');
  if (!close_paren || close_paren[1] != ' ') return -2;
  char *p = close_paren + 2;
  ps->state = *p;
  /* fields after the command: 3 state, 4 ppid, 5 pgrp, 6 session, ... 22 starttime */
  int field = 3;
  char *tok = p;
  for (char *q = p;; q++) {
    if (*q == ' ' || *q == 0 || *q == '\n') {
      char save = *q;
      *q = 0;
      if (field == 5) ps->pgrp = strtol(tok, NULL, 10);
      if (field == 6) ps->session = strtol(tok, NULL, 10);
      if (field == 22) {
        ps->start = strtoull(tok, NULL, 10);
        return 0;
      }
      if (save == 0 || save == '\n') return -2;
      field++;
      tok = q + 1;
    }
  }
}

static int proc_alive(long pid, unsigned long long start) {
  struct procstat ps;
  int r = proc_stat(pid, &ps);
  if (r == -2) return -1; /* unknown: cannot tell */
  if (r == -1) return 0;
  if (ps.state == 'Z' || ps.state == 'X') return 0;
  return ps.start == start;
}

static void boot_id(char *out, size_t size) {
  if (read_small(AT_FDCWD, "/proc/sys/kernel/random/boot_id", out, size) < 0) {
    snprintf(out, size, "-");
    return;
  }
  out[strcspn(out, "\n")] = 0;
  if (!*out) snprintf(out, size, "-");
}

/*
 * Sends sig to the run's process group, and to every process of its session
 * that moved to another group (shells with job control do that). A process
 * that started a session of its own has left the run.
 */
static int kill_session(long sid, int sig) {
  if (sid <= 1) return 0;
  int found = kill((pid_t)-sid, sig) == 0;
  int fd;
  do fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return found;
  static char dents[8192];
  for (;;) {
    long n = syscall(SYS_getdents64, fd, dents, sizeof dents);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      struct dirent64 *d = (struct dirent64 *)(dents + off);
      off += d->d_reclen;
      uint64_t pid;
      if (parse_u64(d->d_name, INT_MAX, &pid) < 0) continue;
      struct procstat ps;
      if (proc_stat((long)pid, &ps) < 0) continue;
      if (ps.session == sid && ps.pgrp != sid && ps.state != 'Z' && kill((pid_t)pid, sig) == 0)
        found = 1;
    }
  }
  close(fd);
  return found;
}

/* ---------- state ---------- */

struct out {
  const char *name; /* "out" or "err" */
  int pipe;         /* read end of the application's pipe, -1 once at its end or cut */
  int conn;         /* the daemon's connection for this stream, -1 when none */
  int ever;         /* a daemon has taken this stream at least once */
  int closed;       /* the daemon asked us to close it (close_stream) */
  char *buf;       /* BUFSZ bytes, apart from the rest (below): only a stream in use is paged in */
  size_t off, len; /* pending bytes: buf[off .. off+len) */
  uint64_t produced; /* bytes read from the pipe */
  uint64_t dropped;  /* bytes discarded while no daemon held the stream */
  char hdr[64];      /* "@OFFSET DROPPED\n" still to send on conn */
  size_t hdroff, hdrlen;
};

struct in {
  int pipe; /* write end of the application's stdin, -1 once closed */
  int conn;
  int next; /* a newer connection, waiting until what the older one holds is read */
  char *buf; /* BUFSZ bytes */
  size_t off, len;
  uint64_t accepted; /* bytes taken from daemons */
  uint32_t chunk;    /* bytes left in the current chunk */
  unsigned char lenbuf[4];
  int lenhave;
  int ended; /* end of stdin received: close the pipe once the buffer is written */
  char hdr[32];
  size_t hdroff, hdrlen;
};

struct pending {
  int fd;
  char line[16];
  size_t len;
};

static struct {
  int dirfd, lfd, sfd;
  const char *id;
  char sock[80], pidf[80], exitf[80], exittmp[80], pidtmp[80], lockf[80], recordf[80];
  long app, self;
  unsigned long long app_start, self_start;
  char boot[64];
  int watching; /* watch mode: app is not our child */
  int legacy;   /* watch mode: an older supervisor may still write ID.exit */
  long legacy_sup;
  unsigned long long legacy_sup_start;
  int exited;  /* app has ended (status known or lost) */
  char status[200]; /* "code N", "signal N" or "lost REASON" */
  int finalized;  /* outputs done, exit line final */
  int recorded;   /* ID.exit holds the final line */
  int done;       /* a daemon collected the exit */
  int term;       /* asked to end (SIGTERM and the like) after the run ended */
  int64_t exit_at, stop_deadline, retry_at, watch_at;
  int stopping;
  int64_t leftover_deadline; /* SIGKILL to what is left of the session, once the leader ended */
  int leftovers;             /* something of the session was left when the leader ended */
  int64_t grace_ms;          /* -k */
  int ctl;
  char ctlin[96];
  size_t ctlinlen;
  char ctlout[1024];
  size_t ctloutlen;
  struct pending pend[PENDING];
  struct out out[2];
  struct in in;
  int has_in, has_out;
} S;

static void ctl_drop(void) {
  xclose(&S.ctl);
  S.ctlinlen = S.ctloutlen = 0;
}

static void ctl_say(const char *line) {
  if (S.ctl < 0) return;
  size_t n = strlen(line);
  if (S.ctloutlen + n > sizeof S.ctlout) {
    ctl_drop(); /* a daemon that does not read its control connection loses it */
    return;
  }
  memcpy(S.ctlout + S.ctloutlen, line, n);
  S.ctloutlen += n;
}

static void fmt_counts(char *buf, size_t size) {
  char o[24] = "-", e[24] = "-", i[24] = "-";
  if (S.has_out) {
    snprintf(o, sizeof o, "%llu", (unsigned long long)S.out[0].produced);
    snprintf(e, sizeof e, "%llu", (unsigned long long)S.out[1].produced);
  }
  if (S.has_in) snprintf(i, sizeof i, "%llu", (unsigned long long)S.in.accepted);
  snprintf(buf, size, "%s %s %s", o, e, i);
}

static void ctl_exit_line(void) {
  char counts[80], line[400];
  fmt_counts(counts, sizeof counts);
  snprintf(line, sizeof line, "exit %d %s %s\n", S.recorded, counts, S.status);
  ctl_say(line);
}

static void ctl_hello(void) {
  char line[96];
  snprintf(line, sizeof line, "run %ld %ld\n", S.app, S.self);
  ctl_say(line);
  if (S.finalized) ctl_exit_line();
}

/* ---------- files ---------- */

/* Writes text to NAME atomically (TMP, then rename), relative to the runs directory. */
static int write_file(const char *name, const char *tmp, const char *text) {
  unlinkat(S.dirfd, tmp, 0);
  int fd;
  do fd = openat(S.dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  if (write_all(fd, text, strlen(text)) < 0) {
    int e = errno;
    close(fd);
    unlinkat(S.dirfd, tmp, 0);
    errno = e;
    return -1;
  }
  if (close(fd) < 0 && errno != EINTR) {
    int e = errno;
    unlinkat(S.dirfd, tmp, 0);
    errno = e;
    return -1;
  }
  if (renameat(S.dirfd, tmp, S.dirfd, name) < 0) {
    int e = errno;
    unlinkat(S.dirfd, tmp, 0);
    errno = e;
    return -1;
  }
  return 0;
}

static void record_exit(void) {
  char counts[80], text[400];
  fmt_counts(counts, sizeof counts);
  char o[24], e[24], i[24];
  if (sscanf(counts, "%23s %23s %23s", o, e, i) != 3) return;
  snprintf(text, sizeof text, "%s\npid %ld\nout %s\nerr %s\nin %s\n", S.status, S.app, o, e, i);
  S.recorded = write_file(S.exitf, S.exittmp, text) == 0;
  if (!S.recorded) S.retry_at = now_ms() + RETRY_MS;
}

/* ---------- the application's end ---------- */

static void set_status(int wstatus) {
  if (WIFSIGNALED(wstatus))
    snprintf(S.status, sizeof S.status, "signal %d", WTERMSIG(wstatus));
  else
    snprintf(S.status, sizeof S.status, "code %d", WEXITSTATUS(wstatus));
}

/*
 * The session leader ended: the run is over, and what is left of its session
 * (children in its process group or session) goes too, as systemd ends what
 * is left of a service: SIGTERM now, SIGKILL after the grace (at once if it
 * was being stopped). A process that made a session of its own has left.
 */
static void app_ended(void) {
  S.exited = 1;
  S.exit_at = now_ms();
  record_exit(); /* at once, so that a kill of this process loses no status */
  if (S.stopping) {
    S.leftovers = kill_session(S.app, SIGKILL);
    S.leftover_deadline = 0;
  } else {
    S.leftovers = kill_session(S.app, SIGTERM);
    S.leftover_deadline = S.leftovers ? S.exit_at + S.grace_ms : 0;
  }
  S.stopping = 0;
  if (S.in.pipe >= 0) xclose(&S.in.pipe);
  S.in.off = S.in.len = 0; /* stdin nobody will read: what comes is taken and discarded */
}

static void reap(void) {
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p < 0 && errno == EINTR) continue;
    if (p <= 0) return;
    if (p == S.app && !S.exited && (WIFEXITED(st) || WIFSIGNALED(st))) {
      set_status(st);
      app_ended();
    }
  }
}

/* ---------- streams ---------- */

static void out_cut(struct out *o) {
  xclose(&o->pipe);
}

/*
 * Cuts a pipe still open after the drain: what it holds unread is counted as
 * written and dropped, never lost silently (the exit record and the daemon's
 * tail report carry it).
 */
static void out_cut_counting(struct out *o) {
  int n = 0;
  if (o->pipe >= 0 && ioctl(o->pipe, FIONREAD, &n) == 0 && n > 0) {
    o->produced += (uint64_t)n;
    o->dropped += (uint64_t)n;
  }
  out_cut(o);
}

/* The stream is over for the daemon: EOF on its connection once everything is sent. */
static int out_flushed(struct out *o) {
  return o->pipe < 0 && o->len == 0 && o->hdroff == o->hdrlen;
}

static void out_take(struct out *o, int fd) {
  xclose(&o->conn);
  o->conn = fd;
  o->ever = 1;
  o->hdroff = 0;
  int n = snprintf(o->hdr, sizeof o->hdr, "@%llu %llu\n",
                   (unsigned long long)(o->produced - o->len), (unsigned long long)o->dropped);
  o->hdrlen = n > 0 ? (size_t)n : 0;
}

static void out_read(struct out *o, int64_t now) {
  (void)now;
  if (o->len == BUFSZ) {
    /* Full, and nobody is there to read it: the oldest bytes go, counted. */
    o->dropped += o->len;
    o->off = o->len = 0;
  }
  if (o->len == 0) o->off = 0;
  size_t room = BUFSZ - o->off - o->len;
  if (room == 0) {
    memmove(o->buf, o->buf + o->off, o->len);
    o->off = 0;
    room = BUFSZ - o->len;
  }
  ssize_t r = read(o->pipe, o->buf + o->off + o->len, room);
  if (r < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    out_cut(o);
    return;
  }
  if (r == 0) {
    out_cut(o);
    return;
  }
  o->len += (size_t)r;
  o->produced += (uint64_t)r;
}

static void out_write(struct out *o) {
  if (o->hdroff < o->hdrlen) {
    ssize_t w = send(o->conn, o->hdr + o->hdroff, o->hdrlen - o->hdroff, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno != EINTR && errno != EAGAIN) xclose(&o->conn);
      return;
    }
    o->hdroff += (size_t)w;
    if (o->hdroff < o->hdrlen) return;
  }
  if (o->len == 0) return;
  ssize_t w = send(o->conn, o->buf + o->off, o->len, MSG_NOSIGNAL);
  if (w < 0) {
    if (errno != EINTR && errno != EAGAIN) xclose(&o->conn);
    return;
  }
  o->off += (size_t)w;
  o->len -= (size_t)w;
  if (o->len == 0) o->off = 0;
}

static void in_activate(int fd) {
  S.in.conn = fd;
  S.in.chunk = 0;
  S.in.lenhave = 0;
  S.in.hdroff = 0;
  int n = snprintf(S.in.hdr, sizeof S.in.hdr, "@%llu\n", (unsigned long long)S.in.accepted);
  S.in.hdrlen = n > 0 ? (size_t)n : 0;
}

/*
 * A newer connection waits until the older one is read to its end: what a
 * cmappserver wrote before it died is in that socket, and it has told its
 * manager those bytes are taken. Only then is the newer one told the offset.
 */
static void in_take(int fd) {
  if (S.in.conn >= 0) {
    xclose(&S.in.next);
    S.in.next = fd;
    return;
  }
  in_activate(fd);
}

static void in_drop(void) {
  xclose(&S.in.conn);
  if (S.in.next >= 0) {
    int fd = S.in.next;
    S.in.next = -1;
    in_activate(fd);
  }
}

/* Reads framed stdin from the daemon: a 4-byte big-endian length, then that many bytes; 0 ends. */
static void in_read(void) {
  struct in *in = &S.in;
  if (in->chunk == 0) {
    ssize_t r = read(in->conn, in->lenbuf + in->lenhave, 4 - (size_t)in->lenhave);
    if (r < 0) {
      if (errno != EINTR && errno != EAGAIN) in_drop();
      return;
    }
    if (r == 0) {
      in_drop();
      return;
    }
    in->lenhave += (int)r;
    if (in->lenhave < 4) return;
    in->lenhave = 0;
    in->chunk = (uint32_t)in->lenbuf[0] << 24 | (uint32_t)in->lenbuf[1] << 16 |
                (uint32_t)in->lenbuf[2] << 8 | (uint32_t)in->lenbuf[3];
    if (in->chunk == 0) {
      in->ended = 1;
      in_drop();
    }
    return;
  }
  if (in->len == 0) in->off = 0;
  size_t room = BUFSZ - in->off - in->len;
  if (room == 0 && in->off > 0) {
    memmove(in->buf, in->buf + in->off, in->len);
    in->off = 0;
    room = BUFSZ - in->len;
  }
  if (room == 0) return;
  if (room > in->chunk) room = in->chunk;
  ssize_t r = read(in->conn, in->buf + in->off + in->len, room);
  if (r < 0) {
    if (errno != EINTR && errno != EAGAIN) in_drop();
    return;
  }
  if (r == 0) {
    in_drop();
    return;
  }
  in->chunk -= (uint32_t)r;
  in->accepted += (uint64_t)r;
  if (in->pipe < 0) return; /* stdin is closed: taken, and discarded */
  in->len += (size_t)r;
}

static void in_write(void) {
  struct in *in = &S.in;
  ssize_t w = write(in->pipe, in->buf + in->off, in->len);
  if (w < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    xclose(&in->pipe); /* it closed its stdin: what comes is discarded */
    in->off = in->len = 0;
    return;
  }
  in->off += (size_t)w;
  in->len -= (size_t)w;
  if (in->len == 0) in->off = 0;
}

static void in_hdr(void) {
  struct in *in = &S.in;
  ssize_t w = send(in->conn, in->hdr + in->hdroff, in->hdrlen - in->hdroff, MSG_NOSIGNAL);
  if (w < 0) {
    if (errno != EINTR && errno != EAGAIN) in_drop();
    return;
  }
  in->hdroff += (size_t)w;
}

/* ---------- control ---------- */

static void finish(void) {
  unlinkat(S.dirfd, S.sock, 0);
  unlinkat(S.dirfd, S.pidf, 0);
  unlinkat(S.dirfd, S.lockf, 0);
  _exit(EX_DONE);
}

static void ctl_command(char *line) {
  uint64_t n;
  if (strncmp(line, "kill ", 5) == 0 && parse_u64(line + 5, 64, &n) == 0 && n >= 1) {
    if (!S.exited) kill_session(S.app, (int)n);
  } else if (strncmp(line, "stop ", 5) == 0 && parse_u64(line + 5, 86400000ull * 365, &n) == 0) {
    if (S.exited) return;
    kill_session(S.app, SIGTERM);
    if (!S.stopping) S.stop_deadline = now_ms() + (int64_t)n;
    S.stopping = 1;
  } else if (strcmp(line, "close out") == 0 || strcmp(line, "close err") == 0) {
    struct out *o = &S.out[line[6] == 'o' ? 0 : 1];
    if (!S.has_out) return;
    o->closed = 1;
    out_cut(o);
    o->off = o->len = 0;
  } else if (strcmp(line, "done") == 0) {
    if (S.finalized) S.done = 1;
  } else {
    ctl_drop(); /* not a command of ours */
  }
}

static void ctl_read(void) {
  ssize_t r = read(S.ctl, S.ctlin + S.ctlinlen, sizeof S.ctlin - 1 - S.ctlinlen);
  if (r < 0) {
    if (errno != EINTR && errno != EAGAIN) ctl_drop();
    return;
  }
  if (r == 0) {
    ctl_drop();
    return;
  }
  S.ctlinlen += (size_t)r;
  for (;;) {
    char *nl = memchr(S.ctlin, '\n', S.ctlinlen);
    if (!nl) break;
    *nl = 0;
    size_t used = (size_t)(nl - S.ctlin) + 1;
    ctl_command(S.ctlin);
    if (S.ctl < 0) return;
    memmove(S.ctlin, S.ctlin + used, S.ctlinlen - used);
    S.ctlinlen -= used;
  }
  if (S.ctlinlen == sizeof S.ctlin - 1) ctl_drop(); /* a line too long */
}

static void ctl_write(void) {
  ssize_t w = send(S.ctl, S.ctlout, S.ctloutlen, MSG_NOSIGNAL);
  if (w < 0) {
    if (errno != EINTR && errno != EAGAIN) ctl_drop();
    return;
  }
  memmove(S.ctlout, S.ctlout + w, S.ctloutlen - (size_t)w);
  S.ctloutlen -= (size_t)w;
}

/* ---------- connections ---------- */

static void accept_one(void) {
  int fd = accept4(S.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return; /* EINTR, EAGAIN, EMFILE…: tried again at the next poll */
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
      (cred.uid != 0 && cred.uid != geteuid())) {
    close(fd);
    return;
  }
  for (int i = 0; i < PENDING; i++) {
    if (S.pend[i].fd < 0) {
      S.pend[i].fd = fd;
      S.pend[i].len = 0;
      return;
    }
  }
  close(fd);
}

static void pending_read(struct pending *p) {
  ssize_t r = read(p->fd, p->line + p->len, sizeof p->line - 1 - p->len);
  if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (r <= 0) {
    xclose(&p->fd);
    return;
  }
  p->len += (size_t)r;
  char *nl = memchr(p->line, '\n', p->len);
  if (!nl) {
    if (p->len == sizeof p->line - 1) xclose(&p->fd);
    return;
  }
  if (nl != p->line + p->len - 1) { /* nothing may follow the greeting before our answer */
    xclose(&p->fd);
    return;
  }
  *nl = 0;
  int fd = p->fd;
  p->fd = -1;
  if (strcmp(p->line, "ctl") == 0) {
    ctl_drop();
    S.ctl = fd;
    ctl_hello();
  } else if (strcmp(p->line, "out") == 0 && S.has_out) {
    out_take(&S.out[0], fd);
  } else if (strcmp(p->line, "err") == 0 && S.has_out) {
    out_take(&S.out[1], fd);
  } else if (strcmp(p->line, "in") == 0 && S.has_in) {
    in_take(fd);
  } else {
    close(fd);
  }
}

/* ---------- the loop ---------- */

static void finalize(void) {
  S.finalized = 1;
  /* What nobody has taken yet stays in the buffers for the next daemon. */
  for (int i = 0; i < 2; i++) out_cut(&S.out[i]);
  record_exit();
  ctl_exit_line();
}

/* After the application's exit, its children may still hold its outputs: cut them 2 s later. */
static void check_drain(int64_t now) {
  if (!S.exited || S.finalized) return;
  int open = 0;
  for (int i = 0; i < 2; i++) {
    struct out *o = &S.out[i];
    /* cut once nothing waits for a daemon taking it; what is unread is counted */
    if (o->pipe >= 0 && now >= S.exit_at + DRAIN_MS && (o->conn < 0 || o->len == 0))
      out_cut_counting(o);
    if (o->pipe >= 0) open = 1;
    /* bytes a daemon is taking are waited for; bytes nobody takes are not */
    if (o->conn >= 0 && !out_flushed(o)) open = 1;
  }
  if (!open) finalize();
}

static void close_finished_outputs(void) {
  for (int i = 0; i < 2; i++) {
    struct out *o = &S.out[i];
    if (o->conn >= 0 && out_flushed(o)) xclose(&o->conn); /* EOF: the stream is over */
  }
}

static void on_signal(void) {
  struct signalfd_siginfo si;
  for (;;) {
    ssize_t r = read(S.sfd, &si, sizeof si);
    if (r < 0 && errno == EINTR) continue;
    if (r != (ssize_t)sizeof si) return;
    if (si.ssi_signo == SIGCHLD) {
      if (!S.watching) reap();
    } else if (S.exited) {
      /* SIGTERM and the like once the run has ended: obeyed as soon as its status is safe on
         disk (see the loop); while it runs, ignored */
      S.term = 1;
    }
  }
}

static void watch_tick(int64_t now) {
  if (!S.watching || S.exited || now < S.watch_at) return;
  S.watch_at = now + WATCH_MS;
  int alive = proc_alive(S.app, S.app_start);
  if (alive != 0) return; /* alive, or cannot tell: asked again later, never taken as dead */
  if (S.legacy && proc_alive(S.legacy_sup, S.legacy_sup_start) == 1) return;
  char old[256];
  if (read_small(S.dirfd, S.exitf, old, sizeof old) > 0) {
    /* an older supervisor recorded it: its first line is the status */
    old[strcspn(old, "\n")] = 0;
    if (strncmp(old, "status ", 7) == 0) {
      uint64_t n;
      if (parse_u64(old + 7, 255, &n) == 0)
        snprintf(S.status, sizeof S.status, n > 128 ? "signal %llu" : "code %llu",
                 (unsigned long long)(n > 128 ? n - 128 : n));
      else
        snprintf(S.status, sizeof S.status, "lost " LOST_KILLED);
    } else {
      snprintf(S.status, sizeof S.status, "%.*s", (int)sizeof S.status - 1, old);
    }
  } else {
    snprintf(S.status, sizeof S.status, "lost " LOST_KILLED);
  }
  S.exited = 1;
  S.exit_at = now;
}

static int64_t next_deadline(void) {
  int64_t d = -1;
#define CONSIDER(t) \
  if ((t) > 0 && (d < 0 || (t) < d)) d = (t)
  /* the drain deadline only while it is ahead: past it, events wake us (no spinning) */
  if (S.exited && !S.finalized && now_ms() < S.exit_at + DRAIN_MS) CONSIDER(S.exit_at + DRAIN_MS);
  if (S.leftover_deadline) CONSIDER(S.leftover_deadline);
  if (S.stopping) CONSIDER(S.stop_deadline);
  if (S.finalized && !S.recorded) CONSIDER(S.retry_at);
  if (S.watching && !S.exited) CONSIDER(S.watch_at);
#undef CONSIDER
  return d;
}

enum { K_SIG, K_LISTEN, K_PEND, K_CTL, K_OPIPE, K_OCONN, K_IPIPE, K_ICONN };

static void loop(void) {
  struct pollfd pfd[16];
  int kind[16], idx[16];
  for (;;) {
    int64_t now = now_ms();
    if (S.stopping && now >= S.stop_deadline) {
      S.stopping = 0;
      if (!S.exited) kill_session(S.app, SIGKILL);
    }
    if (S.leftover_deadline && now >= S.leftover_deadline) {
      S.leftover_deadline = 0;
      kill_session(S.app, SIGKILL);
    }
    if (S.finalized && !S.recorded && now >= S.retry_at) record_exit();
    watch_tick(now);
    check_drain(now);
    close_finished_outputs();
    /* let go once collected, once what a daemon is taking of the outputs is sent, and once
       what was left of the session has had its SIGKILL */
    if (S.done && S.out[0].conn < 0 && S.out[1].conn < 0 && !S.leftover_deadline) finish();
    if (S.term && S.finalized && S.recorded) finish();
    if (S.in.ended && S.in.len == 0 && S.in.pipe >= 0) xclose(&S.in.pipe);

    int n = 0;
#define ADD(fd_, ev_, k_, i_) \
  do { \
    pfd[n].fd = (fd_); \
    pfd[n].events = (ev_); \
    pfd[n].revents = 0; \
    kind[n] = (k_); \
    idx[n] = (i_); \
    n++; \
  } while (0)
    ADD(S.sfd, POLLIN, K_SIG, 0);
    ADD(S.lfd, POLLIN, K_LISTEN, 0);
    for (int i = 0; i < PENDING; i++)
      if (S.pend[i].fd >= 0) ADD(S.pend[i].fd, POLLIN, K_PEND, i);
    if (S.ctl >= 0) ADD(S.ctl, POLLIN | (S.ctloutlen ? POLLOUT : 0), K_CTL, 0);
    for (int i = 0; i < 2 && S.has_out; i++) {
      struct out *o = &S.out[i];
      /* Read while there is room; with no daemon holding it (after one did), read anyway
         and drop the oldest: the application must never block on a daemon that is gone. */
      int nobody = o->conn < 0 && o->ever;
      if (o->pipe >= 0 && (o->len < BUFSZ || nobody)) ADD(o->pipe, POLLIN, K_OPIPE, i);
      if (o->conn >= 0) {
        int want = o->hdroff < o->hdrlen || o->len > 0;
        ADD(o->conn, POLLIN | (want ? POLLOUT : 0), K_OCONN, i);
      }
    }
    if (S.has_in) {
      if (S.in.pipe >= 0 && S.in.len > 0) ADD(S.in.pipe, POLLOUT, K_IPIPE, 0);
      if (S.in.conn >= 0) {
        short ev = (S.in.hdroff < S.in.hdrlen ? POLLOUT : 0) |
                   (S.in.hdroff == S.in.hdrlen && S.in.len < BUFSZ ? POLLIN : 0);
        /* not polled at all while it can be neither written nor read: a hang-up is always
           reported, and a full buffer cannot take it (it would wake us for ever) */
        if (ev) ADD(S.in.conn, ev, K_ICONN, 0);
      }
    }
#undef ADD
    int64_t dl = next_deadline();
    int timeout = dl < 0 ? -1 : dl <= now ? 0 : (int)(dl - now > INT_MAX ? INT_MAX : dl - now);
    int r = poll(pfd, (nfds_t)n, timeout);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOMEM) continue;
      die(EX_SYS, "poll", errno);
    }
    now = now_ms();
    for (int i = 0; i < n; i++) {
      short re = pfd[i].revents;
      if (!re) continue;
      switch (kind[i]) {
        case K_SIG: on_signal(); break;
        case K_LISTEN: accept_one(); break;
        case K_PEND: if (S.pend[idx[i]].fd == pfd[i].fd) pending_read(&S.pend[idx[i]]); break;
        case K_CTL:
          if (S.ctl != pfd[i].fd) break;
          if (re & (POLLIN | POLLHUP | POLLERR)) ctl_read();
          if (S.ctl >= 0 && (re & POLLOUT)) ctl_write();
          break;
        case K_OPIPE: {
          struct out *o = &S.out[idx[i]];
          if (o->pipe == pfd[i].fd) out_read(o, now);
          break;
        }
        case K_OCONN: {
          struct out *o = &S.out[idx[i]];
          if (o->conn != pfd[i].fd) break;
          if (re & POLLIN) { /* the daemon sends nothing here: EOF or garbage ends it */
            char junk[64];
            ssize_t got = recv(o->conn, junk, sizeof junk, MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
              xclose(&o->conn);
              break;
            }
          }
          if (re & (POLLERR | POLLHUP) && !(re & POLLOUT)) {
            xclose(&o->conn);
            break;
          }
          if (re & POLLOUT) out_write(o);
          break;
        }
        case K_IPIPE: if (S.in.pipe == pfd[i].fd) in_write(); break;
        case K_ICONN:
          if (S.in.conn != pfd[i].fd) break;
          if (re & POLLOUT) in_hdr();
          if (S.in.conn >= 0 && (re & (POLLIN | POLLHUP | POLLERR))) {
            if (S.in.hdroff < S.in.hdrlen && !(re & POLLIN)) in_drop();
            else if (S.in.hdroff == S.in.hdrlen) in_read();
          }
          break;
      }
    }
  }
}

/* ---------- start ---------- */

static void names(const char *id) {
  S.id = id;
  snprintf(S.sock, sizeof S.sock, "%s.sock", id);
  snprintf(S.pidf, sizeof S.pidf, "%s.pid", id);
  snprintf(S.pidtmp, sizeof S.pidtmp, "%s.pid.tmp", id);
  snprintf(S.exitf, sizeof S.exitf, "%s.exit", id);
  snprintf(S.exittmp, sizeof S.exittmp, "%s.exit.tmp", id);
  snprintf(S.lockf, sizeof S.lockf, "%s.lock", id);
  snprintf(S.recordf, sizeof S.recordf, "%s.json", id);
}

/* Opens the runs directory, refusing one that others could write to. */
static void open_runs(const char *dir) {
  do S.dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  while (S.dirfd < 0 && errno == EINTR);
  if (S.dirfd < 0) die(EX_SYS, "cannot open the runs directory", errno);
  struct stat st;
  if (fstat(S.dirfd, &st) < 0) die(EX_SYS, "cannot stat the runs directory", errno);
  if (st.st_uid != geteuid() || (st.st_mode & 022))
    die(EX_SYS, "the runs directory is not ours alone (owner or mode)", 0);
}

/* The stream buffers, out of the state struct: pages of a buffer never used are never touched,
   and the state itself stays on a page or two. */
static char outbuf[2][BUFSZ], inbuf[BUFSZ];

static void init_state(void) {
  S.lfd = S.sfd = S.ctl = S.in.pipe = S.in.conn = S.in.next = -1;
  S.out[0].buf = outbuf[0];
  S.out[1].buf = outbuf[1];
  S.in.buf = inbuf;
  for (int i = 0; i < PENDING; i++) S.pend[i].fd = -1;
  for (int i = 0; i < 2; i++) {
    S.out[i].pipe = S.out[i].conn = -1;
    S.out[i].name = i ? "err" : "out";
  }
}

static void signals(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) die(EX_SYS, "sigprocmask", errno);
  S.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (S.sfd < 0) die(EX_SYS, "signalfd", errno);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  if (sigaction(SIGPIPE, &sa, NULL) < 0) die(EX_SYS, "sigaction", errno);
}

/* Leaves the daemon: a session of our own, and no longer its child. */
/*
 * A session of its own. cmappserver's child is no process group leader, so
 * setsid works at once, and it stays cmappserver's child (which reaps it);
 * started as a group leader (from a shell), it forks first and the parent
 * exits 0.
 */
static void detach(void) {
  if (setsid() < 0) {
    if (errno != EPERM) die(EX_SYS, "setsid", errno);
    pid_t p = fork();
    if (p < 0) die(EX_SYS, "fork", errno);
    if (p > 0) _exit(EX_DONE);
    if (setsid() < 0) die(EX_SYS, "setsid", errno);
  }
  S.self = (long)getpid();
  struct procstat ps;
  S.self_start = proc_stat(S.self, &ps) == 0 ? ps.start : 0;
}

static void bind_socket(void) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(S.sock) >= sizeof sa.sun_path) die(EX_USAGE, "socket name too long", 0);
  memcpy(sa.sun_path, S.sock, strlen(S.sock) + 1);
  S.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (S.lfd < 0) die(EX_SYS, "socket", errno);
  mode_t old = umask(077);
  /* bind(2) takes a path: bind relative to the runs directory, whatever its length */
  if (fchdir(S.dirfd) < 0) die(EX_SYS, "fchdir", errno);
  int r = bind(S.lfd, (struct sockaddr *)&sa, sizeof sa);
  int e = errno;
  umask(old);
  if (chdir("/") < 0) die(EX_SYS, "chdir /", errno);
  if (r < 0) die(EX_SYS, "cannot bind the run's socket", e);
  if (listen(S.lfd, 8) < 0) die(EX_SYS, "listen", errno);
}

static void report(const char *line) {
  (void)write_all(1, line, strlen(line)); /* the daemon may be gone: nothing to do then */
}

static void quiet_stdio(void) {
  int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) die(EX_SYS, "open /dev/null", errno);
  for (int i = 0; i < 3; i++)
    if (dup2(fd, i) < 0) die(EX_SYS, "dup2", errno);
  if (fd > 2) close(fd);
}

/*
 * Takes the run's lock (RUNSDIR/ID.lock, flock, held for life: a daemon that
 * finds no supervisor answering tries it to tell a dead supervisor from one
 * still starting), then checks that the run's record is still there: a
 * daemon that concluded the run never started forgets it while holding this
 * lock, and a supervisor that comes too late must then start nothing.
 */
static void lock_run(void) {
  int fd;
  /* read-only: a file open for writing would keep the disk from being remounted read-only */
  do fd = openat(S.dirfd, S.lockf, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  while (fd < 0 && errno == EINTR);
  char line[64];
  if (fd < 0) {
    int e = errno;
    snprintf(line, sizeof line, "fail lock %d\n", e);
    report(line);
    die(EX_SYS, "cannot open the run's lock", e);
  }
  int r;
  do r = flock(fd, LOCK_EX | LOCK_NB);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    snprintf(line, sizeof line, "fail lock %d\n", e);
    report(line);
    die(EX_SYS, "the run is locked: cmappserver is resolving it", e == EWOULDBLOCK ? 0 : e);
  }
  if (faccessat(S.dirfd, S.recordf, F_OK, AT_SYMLINK_NOFOLLOW) < 0) {
    int e = errno;
    snprintf(line, sizeof line, "fail record %d\n", e);
    report(line);
    unlinkat(S.dirfd, S.lockf, 0);
    die(EX_SYS, "the run's record is gone: it was forgotten, nothing is started", 0);
  }
  /* fd stays open, unclosed, for the life of the process (and not across exec) */
}

/*
 * Marks every descriptor above stderr close-on-exec, so that nothing the
 * caller left open reaches the application.
 */
static void cloexec_inherited(void) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) == 0) return;
#endif
  int fd;
  do fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    for (int i = 3; i < 4096; i++) fcntl(i, F_SETFD, FD_CLOEXEC);
    return;
  }
  static char dents[4096];
  for (;;) {
    long n = syscall(SYS_getdents64, fd, dents, sizeof dents);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      struct dirent64 *d = (struct dirent64 *)(dents + off);
      off += d->d_reclen;
      uint64_t v;
      if (parse_u64(d->d_name, INT_MAX, &v) < 0 || v < 3 || (int)v == fd) continue;
      fcntl((int)v, F_SETFD, FD_CLOEXEC);
    }
  }
  close(fd);
}

struct spec {
  int uid, gid, ngroups, has_user;
  gid_t groups[MAX_GROUPS];
  const char *cwd;
  mode_t umask;
  char *program;
  char **argv;
  char **envp;
};

/* Reads the environment: exactly envbytes of NUL-terminated NAME=value entries on stdin. */
static char **read_env(uint64_t envbytes) {
  char *buf = malloc(envbytes + 1);
  if (!buf) die(EX_SYS, "malloc", errno);
  size_t have = 0;
  while (have < envbytes) {
    ssize_t r = read(0, buf + have, envbytes - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      die(EX_SYS, "reading the environment", errno);
    }
    if (r == 0) die(EX_USAGE, "the environment ended early", 0);
    have += (size_t)r;
  }
  if (envbytes > 0 && buf[envbytes - 1] != 0) die(EX_USAGE, "the environment is not terminated", 0);
  size_t count = 0;
  for (size_t i = 0; i < envbytes; i++)
    if (buf[i] == 0) count++;
  char **envp = calloc(count + 1, sizeof *envp);
  if (!envp) die(EX_SYS, "calloc", errno);
  size_t k = 0;
  for (size_t i = 0; i < envbytes; i++) {
    envp[k++] = buf + i;
    if (!strchr(buf + i, '=')) die(EX_USAGE, "an environment entry without '='", 0);
    i += strlen(buf + i);
  }
  envp[k] = NULL;
  return envp;
}

static void parse_groups(const char *s, struct spec *sp) {
  char copy[MAX_GROUPS * 12];
  if (strlen(s) >= sizeof copy) die(EX_USAGE, "-G: too many groups", 0);
  strcpy(copy, s);
  sp->ngroups = 0;
  for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    uint64_t g;
    if (sp->ngroups == MAX_GROUPS || parse_u64(t, UINT32_MAX - 1, &g) < 0) usage();
    sp->groups[sp->ngroups++] = (gid_t)g;
  }
}

/* In the child: fails by telling the parent (stage, errno) on the error pipe, then 127 or 126. */
static void child_fail(int errfd, int stage, int err) {
  int msg[2] = {stage, err};
  (void)write_all(errfd, (const char *)msg, sizeof msg);
  _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}

enum { ST_SETUP = 1, ST_CWD, ST_GROUPS, ST_GID, ST_UID, ST_EXEC, ST_RECORD, ST_ABORT };
static const char *stage_name(int st) {
  switch (st) {
    case ST_SETUP: return "setup";
    case ST_CWD: return "chdir";
    case ST_GROUPS: return "setgroups";
    case ST_GID: return "setgid";
    case ST_UID: return "setuid";
    case ST_EXEC: return "exec";
    case ST_RECORD: return "record";
    default: return "abort";
  }
}

/* Decimal digits of v into b (no libc: this runs in a vfork child). */
static char *put_u(char *b, unsigned long long v) {
  char tmp[24];
  int n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) > 0);
  while (n > 0) *b++ = tmp[--n];
  return b;
}

static char *put_s(char *b, const char *s) {
  while (*s) *b++ = *s++;
  return b;
}

/*
 * In the application's process, before anything of the application runs:
 * its pid record, written by itself (the supervisor is suspended in vfork
 * until the exec), so that no application runs unrecorded. Only system
 * calls and its own stack: no stdio, no allocation.
 */
static int child_record(void) {
  long pid = syscall(SYS_getpid);
  char st[1024];
  int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/stat", O_RDONLY | O_CLOEXEC);
  unsigned long long start = 0;
  if (fd >= 0) {
    ssize_t n;
    do n = read(fd, st, sizeof st - 1);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n > 0) {
      st[n] = 0;
      char *p = st + n;
      while (p > st && p[-1] != ')') p--;
      /* field 22 is the 20th after the command's ") " */
      for (int field = 3; *p && field < 22; p++)
        if (*p == ' ') field++;
      while (*p >= '0' && *p <= '9') start = start * 10 + (unsigned long long)(*p++ - '0');
    }
  }
  char text[256], *b = text;
  b = put_s(b, S.boot);
  *b++ = ' ';
  b = put_u(b, (unsigned long long)S.self);
  *b++ = ' ';
  b = put_u(b, S.self_start);
  *b++ = ' ';
  b = put_u(b, (unsigned long long)pid);
  *b++ = ' ';
  b = put_u(b, start);
  *b++ = '\n';
  unlinkat(S.dirfd, S.pidtmp, 0);
  fd = openat(S.dirfd, S.pidtmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  if (write_all(fd, text, (size_t)(b - text)) < 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return renameat(S.dirfd, S.pidtmp, S.dirfd, S.pidf);
}

/*
 * The application's process, between vfork and exec: a session of its own,
 * every signal at its default, its stdio, its pid record, its directory and
 * identity. Fails by telling the supervisor (stage, errno) on the error pipe.
 */
static void child(struct spec *sp, int errfd, int fds[3]) {
  if (setsid() < 0) child_fail(errfd, ST_SETUP, errno);
  /* The application gets every signal at its default, none blocked: the raw system call,
     since libc refuses the real-time signals it keeps for itself, which an ignoring parent
     would otherwise hand down ignored. */
  struct {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
  } ksa = {SIG_DFL, 0, NULL, 0};
  for (int s = 1; s <= 64; s++) syscall(SYS_rt_sigaction, s, &ksa, NULL, sizeof ksa.mask);
  uint64_t none = 0;
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none) < 0)
    child_fail(errfd, ST_SETUP, errno);
  for (int i = 0; i < 3; i++)
    if (dup2(fds[i], i) < 0) child_fail(errfd, ST_SETUP, errno);
  /* recorded while still root: the runs directory is ours alone */
  if (child_record() < 0) child_fail(errfd, ST_RECORD, errno);
  if (chdir(sp->cwd) < 0) child_fail(errfd, ST_CWD, errno);
  if (sp->has_user) {
    if (setgroups((size_t)sp->ngroups, sp->groups) < 0) child_fail(errfd, ST_GROUPS, errno);
    if (setgid((gid_t)sp->gid) < 0) child_fail(errfd, ST_GID, errno);
    if (setuid((uid_t)sp->uid) < 0) child_fail(errfd, ST_UID, errno);
    if (getuid() != (uid_t)sp->uid || geteuid() != (uid_t)sp->uid ||
        getgid() != (gid_t)sp->gid || getegid() != (gid_t)sp->gid)
      child_fail(errfd, ST_UID, EPERM);
  }
  umask(sp->umask);
  execve(sp->program, sp->argv, sp->envp);
  child_fail(errfd, ST_EXEC, errno);
}

/* Pipes for the application's stdin, stdout, stderr (or /dev/null); our ends non-blocking. */
static void make_stdio(int fds[3]) {
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0) die(EX_SYS, "open /dev/null", errno);
  fds[0] = fds[1] = fds[2] = devnull;
  if (S.has_in) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0 || set_nonblock(p[1]) < 0) die(EX_SYS, "pipe", errno);
    fds[0] = p[0];
    S.in.pipe = p[1];
  }
  if (S.has_out) {
    for (int i = 0; i < 2; i++) {
      int p[2];
      if (pipe2(p, O_CLOEXEC) < 0 || set_nonblock(p[0]) < 0) die(EX_SYS, "pipe", errno);
      fds[1 + i] = p[1];
      S.out[i].pipe = p[0];
    }
  }
}

/*
 * Starts the application: vfork (the supervisor waits, suspended, until the
 * exec), the child records its pid and execs; an error pipe (close-on-exec)
 * tells the supervisor the exec happened (end of file) or why it did not.
 */
static void start(struct spec *sp) {
  int fds[3], errp[2];
  make_stdio(fds);
  if (pipe2(errp, O_CLOEXEC) < 0) die(EX_SYS, "pipe", errno);
  pid_t p = vfork();
  if (p < 0) die(EX_SYS, "vfork", errno);
  if (p == 0) child(sp, errp[1], fds); /* never returns */
  close(errp[1]);
  for (int i = 0; i < 3; i++)
    if (i == 0 || fds[i] != fds[i - 1]) close(fds[i]);
  S.app = (long)p;
  int msg[2];
  size_t have = 0;
  while (have < sizeof msg) {
    ssize_t r = read(errp[0], (char *)msg + have, sizeof msg - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += (size_t)r;
  }
  close(errp[0]);
  if (have == sizeof msg) {
    /* it never ran: say why, and leave nothing behind */
    int st;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
    }
    unlinkat(S.dirfd, S.pidf, 0);
    unlinkat(S.dirfd, S.pidtmp, 0);
    unlinkat(S.dirfd, S.sock, 0);
    unlinkat(S.dirfd, S.lockf, 0);
    char line[64];
    snprintf(line, sizeof line, "fail %s %d\n", stage_name(msg[0]), msg[1]);
    report(line);
    char what[128];
    snprintf(what, sizeof what, "%s: %s", stage_name(msg[0]), sp->program);
    die(msg[0] == ST_RECORD ? EX_SYS : EX_NOEXEC, what, msg[1]);
  }
  struct procstat ps;
  S.app_start = proc_stat(S.app, &ps) == 0 ? ps.start : 0;
  char line[64];
  snprintf(line, sizeof line, "pid %ld %ld\n", S.app, S.self);
  report(line);
}

/* Watch mode: re-adopt an application whose supervisor was killed. */
static void watch(const char *given) {
  char text[256], boot[64];
  long sup = 0;
  unsigned long long sup_start = 0;
  if (given) {
    snprintf(text, sizeof text, "%s", given);
    for (char *p = text; *p; p++)
      if (*p == ':') *p = ' ';
    S.legacy = 1;
  } else if (read_small(S.dirfd, S.pidf, text, sizeof text) < 0) {
    die(EX_SYS, "cannot read the pid file", errno);
  }
  int got = given ? sscanf(text, "%ld %llu %ld %llu %63s", &S.app, &S.app_start, &sup, &sup_start,
                           boot)
                  : sscanf(text, "%63s %ld %llu %ld %llu", boot, &sup, &sup_start, &S.app,
                           &S.app_start);
  if (got != 5 || S.app <= 1) die(EX_USAGE, "a malformed pid record", 0);
  S.legacy_sup = sup;
  S.legacy_sup_start = sup_start;
  S.watching = 1;
  S.exited = 0;
  if (strcmp(boot, S.boot) != 0 || strcmp(boot, "-") == 0) {
    snprintf(S.status, sizeof S.status, "lost " LOST_REBOOT);
    S.exited = 1;
  }
  unlinkat(S.dirfd, S.sock, 0); /* the dead supervisor's */
  bind_socket();
  if (!S.exited) {
    snprintf(text, sizeof text, "%s %ld %llu %ld %llu\n", S.boot, S.self, S.self_start, S.app,
             S.app_start);
    if (!given && write_file(S.pidf, S.pidtmp, text) < 0) die(EX_SYS, "cannot record our pid", errno);
    watch_tick(now_ms());
  }
  if (S.exited) S.exit_at = now_ms();
  char line[64];
  snprintf(line, sizeof line, "pid %ld %ld\n", S.app, S.self);
  report(line);
}

int main(int argc, char **argv) {
  static struct spec sp;
  init_state();
  sp.cwd = "/";
  sp.umask = 022;
  uint64_t envbytes = 0, v;
  int has_env = 0, watch_mode = 0, has_gid = 0;
  const char *given = NULL;
  int c;
  S.grace_ms = LEFTOVER_MS;
  while ((c = getopt(argc, argv, "+ioe:u:g:G:d:m:k:wp:V")) != -1) {
    switch (c) {
      case 'i': S.has_in = 1; break;
      case 'o': S.has_out = 1; break;
      case 'e':
        if (parse_u64(optarg, MAX_ENV_BYTES, &envbytes) < 0) usage();
        has_env = 1;
        break;
      case 'u':
        if (parse_u64(optarg, UINT32_MAX - 1, &v) < 0) usage();
        sp.uid = (int)v;
        sp.has_user = 1;
        break;
      case 'g':
        if (parse_u64(optarg, UINT32_MAX - 1, &v) < 0) usage();
        sp.gid = (int)v;
        has_gid = 1;
        break;
      case 'G': parse_groups(optarg, &sp); break;
      case 'd': sp.cwd = optarg; break;
      case 'm': {
        char *end;
        errno = 0;
        unsigned long m = strtoul(optarg, &end, 8);
        if (errno || *end || end == optarg || m > 0777) usage();
        sp.umask = (mode_t)m;
        break;
      }
      case 'k':
        if (parse_u64(optarg, 86400000ull * 365, &v) < 0) usage();
        S.grace_ms = (int64_t)v;
        break;
      case 'w': watch_mode = 1; break;
      case 'p': given = optarg; break;
      case 'V': report(PROG " " VERSION "\n"); return 0;
      default: usage();
    }
  }
  if (sp.has_user != has_gid) usage(); /* a user comes with its group, or neither */
  int need = watch_mode ? 2 : 4;
  if (argc - optind < need || (watch_mode && argc - optind != 2)) usage();
  if (!watch_mode && !has_env) usage();
  const char *runs = argv[optind], *id = argv[optind + 1];
  if (runs[0] != '/' || !valid_id(id)) usage();
  names(id);
  cloexec_inherited();
  signals();
  if (!watch_mode) {
    sp.envp = read_env(envbytes);
    sp.program = argv[optind + 2];
    sp.argv = argv + optind + 3;
    if (sp.program[0] != '/' || sp.cwd[0] != '/') usage();
  }
  open_runs(runs);
  lock_run();
  boot_id(S.boot, sizeof S.boot);
  detach();
  if (watch_mode) {
    watch(given);
  } else {
    bind_socket();
    start(&sp);
  }
  quiet_stdio();
  loop();
  return 0;
}
