/**
 * Starting and ending guest processes. Each run gets a small supervising
 * process (perl, or /bin/sh where perl is missing) that starts the
 * application in its own session, waits for it, and writes its exit status
 * to a file before exiting. The supervisor outlives cmappserver, so an exit
 * status is never lost when the daemon is restarted or killed: the next
 * daemon finds it in the state directory. Knows nothing of managers or the
 * network.
 *
 * @module
 */

import { type ExitStatus, signalNumber } from "../protocol/mod.ts";
import { Gatherer } from "../protocol/read_ahead.ts";
import { allProcStats, isLive } from "./procfs.ts";

/** The PATH given to every process unless the request sets one. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Which program supervises each run. */
export type SupervisorKind = "perl" | "sh";

/**
 * The perl supervisor. argv: STATUSFILE IO PROGRAM [ARG…], where PROGRAM is
 * util-linux setsid (and the rest the application's command). Prints the
 * application's pid and its start time (field 22 of /proc/PID/stat, read
 * by the supervisor itself: the daemon would need a subprocess for it) on
 * stdout as "PID START SUPERVISOR_START" (the last its own start time, so
 * that a re-adopting daemon can tell it from a process that reused its pid;
 * "-" for one it could not read), then writes "code N" or "signal N" to STATUSFILE
 * (through a temporary file and a rename) when it ends, and only then
 * tells cmappserver: without streams, the same line on its stdout, then the
 * end of that pipe; with streams, the end of its stdout, after which
 * cmappserver reads the file. Either way the daemon learns of the exit
 * without waiting for the supervisor's own exit, and never before the
 * status is in the file. It makes its own process group and ignores
 * SIGHUP, SIGINT, SIGQUIT, SIGTERM and SIGPIPE first thing (the application
 * gets them back at their defaults). It loads no
 * module at all (no `%!`, which loads Errno, no `no warnings`, which loads
 * warnings.pm: errno values are Linux's, ENOENT 2 and EAGAIN 11), to start
 * fast and keep its private memory near 0.5 MB.
 *
 * IO "null": the application's stdio is /dev/null. IO "pipes": the
 * supervisor relays the application's stdout and stderr to its own (which
 * go to cmappserver) and its own stdin to the application's, without
 * blocking one stream on another; when cmappserver goes away, output is
 * discarded and stdin ends, so the application runs on; when cmappserver
 * closes one of the outputs on purpose (the manager's side was closed), the
 * application's end is closed too, so its next write fails as in a pipeline. After the
 * application has exited, output still coming from its children is relayed
 * for 2 s more (unless it is waiting for the reader), then cut. When the
 * application's outputs end before it has exited (it closed them), they are
 * closed at once, and the status file comes after.
 */
const _PERL = String.raw`
setpgrp(0, 0);
$SIG{$_} = 'IGNORE' for qw(HUP INT QUIT TERM PIPE);
my $f = shift @ARGV; my $io = shift @ARGV;
my ($ir, $iw, $or, $ow, $er, $ew);
if ($io eq 'pipes') { pipe($ir, $iw) && pipe($or, $ow) && pipe($er, $ew) or die "pipe: $!"; }
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
  $SIG{$_} = 'DEFAULT' for qw(HUP INT QUIT TERM PIPE);
  if ($io eq 'pipes') {
    open(STDIN, '<&', $ir); open(STDOUT, '>&', $ow); open(STDERR, '>&', $ew);
    close($_) for ($ir, $iw, $or, $ow, $er, $ew);
  } else {
    open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null'); open(STDERR, '>', '/dev/null');
  }
  exec { $ARGV[0] } @ARGV;
  exit($! == 2 ? 127 : 126);
}
sub started {
  open(my $sf, '<', "/proc/$_[0]/stat") or return '-';
  my $l = <$sf>; close($sf);
  return '-' unless defined $l && rindex($l, ') ') > 0;
  my @x = split(/ /, substr($l, rindex($l, ') ') + 2));
  return @x > 19 && $x[19] =~ /^\d+$/ ? $x[19] : '-';
}
syswrite(STDOUT, "$pid " . started($pid) . ' ' . started($$) . "\n");
my $pp = getppid();
my ($st, $reaped) = (0, 0);
sub done {
  my $line = ($st & 127) ? 'signal ' . ($st & 127) : 'code ' . ($st >> 8);
  open(my $h, '>', "$f.tmp") or return '';
  (print $h "$line\n") && close($h) && rename("$f.tmp", $f) or return '';
  return $line;
}
if ($io eq 'pipes') {
  close($ir); close($ow); close($ew);
  # [from, to, buffer, from at end, to gone]
  my @s = ([$or, \*STDOUT, '', 0, 0], [$er, \*STDERR, '', 0, 0], [\*STDIN, $iw, '', 0, 0]);
  for my $x (@s) { for my $h ($x->[0], $x->[1]) { my $fl = fcntl($h, 3, 0); fcntl($h, 4, $fl | 2048); } }
  my $grace;
  while (1) {
    last if $s[0][3] && $s[1][3] && $s[0][2] eq '' && $s[1][2] eq '';
    if (!$reaped && waitpid($pid, 1) == $pid) { $st = $?; $reaped = 1; }
    if ($reaped) {
      if ($s[0][2] eq '' && $s[1][2] eq '') { $grace //= time + 2; last if time >= $grace; }
      else { undef $grace; }
    }
    my ($rin, $win) = ('', '');
    for my $x (@s) {
      vec($rin, fileno($x->[0]), 1) = 1 if !$x->[3] && length($x->[2]) < 65536;
      vec($win, fileno($x->[1]), 1) = 1 if length($x->[2]) && !$x->[4];
    }
    my ($r, $w) = ($rin, $win);
    next if select($r, $w, undef, 0.5) < 0;
    for my $x (@s) {
      if (!$x->[3] && vec($r, fileno($x->[0]), 1)) {
        my $n = sysread($x->[0], $x->[2], 65536, length($x->[2]));
        $x->[3] = 1 if defined($n) ? $n == 0 : $! != 11;
      }
      if (length($x->[2]) && !$x->[4] && vec($w, fileno($x->[1]), 1)) {
        my $n = syswrite($x->[1], $x->[2]);
        if (defined $n) { substr($x->[2], 0, $n) = ''; }
        elsif ($! != 11) {
          $x->[4] = 1;
          # cmappserver still there: its reader closed on purpose (the manager's
          # output went away), so close the application's end too, as a pipe would.
          select(undef, undef, undef, 0.2);
          if (getppid() == $pp) { close($x->[0]); $x->[3] = 1; }
        }
      }
      $x->[2] = '' if $x->[4];
    }
    if ($s[2][3] && $s[2][2] eq '' && defined $iw) { close($iw); undef $iw; $s[2][4] = 1; }
  }
  # Its outputs end as it exits: give it a moment to become reapable, so that
  # the status file is there when cmappserver sees the end of our stdout.
  for (1 .. 20) {
    if (waitpid($pid, 1) == $pid) { $st = $?; $reaped = 1; }
    last if $reaped;
    select(undef, undef, undef, 0.001);
  }
  close(STDERR); close(STDIN);
  close(STDOUT) unless $reaped;
}
if (!$reaped) { while (waitpid($pid, 0) != $pid) {} $st = $?; }
my $line = done();
# Told only once it is in the file (a status the file lacks is never reported).
syswrite(STDOUT, "$line\n") if $io ne 'pipes' && $line ne '';
close(STDOUT);
`;

/**
 * The /bin/sh supervisor: argv STATUSFILE MV IO PROGRAM [ARG…]. Prints
 * "PID START SUPERVISOR_START" like the perl one (the start time read with the shell's own
 * `read`, no subprocess), and keeps its stdout open until the status file
 * is written. A shell reports a death by signal N as 128+N, so it writes
 * "status N" and N > 128 is read as a signal; and a shell starts background
 * commands with SIGINT and SIGQUIT ignored, which the application inherits.
 */
const _SH = String.raw`
f=$1; mv=$2; io=$3; shift 3
if [ "$io" = null ]; then "$@" </dev/null >/dev/null 2>&1 &
else exec 3<&0; "$@" <&3 3<&- & fi
pid=$!
started() {
  s=-
  if read -r st < /proc/$1/stat; then
    set -f; set -- ${"$"}{st##*) }
    if [ $# -ge 20 ]; then shift 19; s=$1; fi
  fi
}
started "$pid"; a=$s; started $$
echo "$pid $a $s"
exec 2>/dev/null </dev/null 3<&-
if [ "$io" != null ]; then exec >/dev/null; fi
trap '' HUP INT QUIT TERM PIPE
wait "$pid"; rc=$?
echo "status $rc" > "$f.tmp" && "$mv" "$f.tmp" "$f" && [ "$io" = null ] && echo "status $rc"
exec >/dev/null
`;

/**
 * Absolute paths of the programs cmappserver itself runs. They are found
 * once, at start-up, in the default PATH: never in a request's PATH, which
 * would let a manager substitute its own.
 */
export interface HelperPaths {
  /** perl, or null when not installed. */
  perl: string | null;
  /** util-linux setsid. */
  setsid: string;
  /** util-linux setpriv, or null (then run-as is impossible). */
  setpriv: string | null;
  /** coreutils mv (for the sh supervisor). */
  mv: string;
  /** coreutils cat (to read /proc). */
  cat: string;
}

async function _which(name: string): Promise<string | null> {
  for (const dir of DEFAULT_PATH.split(":")) {
    try {
      const st = await Deno.stat(`${dir}/${name}`);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return `${dir}/${name}`;
    } catch {
      // not there
    }
  }
  return null;
}

/**
 * Finds the helper programs.
 * @throws {Error} naming what is missing (setsid, mv and cat are required)
 */
export async function findHelpers(): Promise<HelperPaths> {
  const [perl, setsid, setpriv, mv, cat] = await Promise.all(
    ["perl", "setsid", "setpriv", "mv", "cat"].map(_which),
  );
  const missing = [["setsid", setsid], ["mv", mv], ["cat", cat]].filter(([, p]) => !p);
  if (missing.length > 0) {
    throw new Error(
      `required programs not found in ${DEFAULT_PATH}: ${missing.map(([n]) => n).join(", ")} ` +
        `(install util-linux and coreutils)`,
    );
  }
  return { perl, setsid: setsid!, setpriv, mv: mv!, cat: cat! };
}

/** A process that was started. */
export interface SpawnedProcess {
  /** The application's pid, which is also its process group and session id. */
  pid: number;
  /**
   * The application's start time in clock ticks since boot, as its
   * supervisor read it (null when it could not).
   */
  pidStart: number | null;
  /** The supervisor's pid. */
  supervisorPid: number;
  /** The supervisor's own start time in clock ticks since boot (null when unknown). */
  supervisorStart: number | null;
  /**
   * Settles with the status once the supervisor has written it (seen at
   * the end of its stdout, or at its exit), or with null when it ended
   * without one.
   */
  exited: Promise<ExitStatus | null>;
  /** The application's streams, when asked for. */
  io: {
    stdout: { reader: Gatherer; first: Uint8Array | null };
    stderr: Gatherer;
    stdin: WritableStream<Uint8Array> | null;
  } | null;
}

/** Why a process could not be started. */
export interface SpawnFailure {
  /** "not_found" (shell 127), "not_executable" (shell 126) or "spawn_failed". */
  code: "not_found" | "not_executable" | "spawn_failed";
  /** One line for the manager. */
  message: string;
}

/** What to start, and how. */
export interface SpawnRequest {
  /** Program and arguments as the manager gave them. */
  argv: string[];
  /**
   * argv[0] resolved to an absolute path (see {@linkcode resolveProgram});
   * the application sees it as its argv[0].
   */
  program: string;
  /** The whole environment of the process. */
  env: Record<string, string>;
  /** Working directory. */
  cwd: string;
  /** Where the supervisor writes the exit status. */
  statusFile: string;
  /** Which supervisor. */
  supervisor: SupervisorKind;
  /** Where the helper programs are. */
  helpers: HelperPaths;
  /** Run as this uid/gid (through setpriv), when set. */
  runAs?: { uid: number; gid: number };
  /** Give its stdout and stderr to cmappserver (else /dev/null). */
  streams?: boolean;
  /** Give its stdin from cmappserver (else /dev/null). */
  stdin?: boolean;
}

function _shortName(name: string): string {
  return name.length > 200 ? `${name.slice(0, 200)}…` : name;
}

/**
 * Resolves a program name the way execvp would, against `path`; returns
 * the absolute path, or why it cannot be run.
 *
 * @example
 * ```ts ignore
 * import { resolveProgram } from "./supervisor.ts";
 * await resolveProgram("sh", DEFAULT_PATH); // "/usr/bin/sh"
 * ```
 */
export async function resolveProgram(
  program: string,
  path: string,
): Promise<string | SpawnFailure> {
  const candidates = program.includes("/")
    ? [program]
    : path.split(":").filter((d) => d.startsWith("/")).map((d) => `${d}/${program}`);
  let sawNotExecutable = false;
  for (const c of candidates) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(c);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) continue;
      if (e instanceof Deno.errors.PermissionDenied) {
        sawNotExecutable = true;
        continue;
      }
      const reason = (e as Error).message.replace(/ \(os error \d+\)[\s\S]*$/, "");
      return { code: "spawn_failed", message: `${_shortName(program)}: ${reason}` };
    }
    if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return c;
    sawNotExecutable = true;
  }
  return sawNotExecutable
    ? { code: "not_executable", message: `${_shortName(program)}: permission denied` }
    : { code: "not_found", message: `${_shortName(program)}: command not found` };
}

/**
 * Parses what a supervisor wrote: "code N", "signal N", or (from the sh
 * supervisor) "status N".
 */
export function parseStatusLine(text: string): ExitStatus | null {
  const m = /^(code|signal|status) (\d+)\s*$/.exec(text);
  if (!m) return null;
  const n = Number(m[2]);
  if (m[1] === "code" && n <= 255) return { code: n };
  if (m[1] === "signal" && n >= 1 && n <= 127) return { signal: n };
  if (m[1] === "status" && n <= 255) return n > 128 ? { signal: n - 128 } : { code: n };
  return null;
}

/** Reads a status file; null when it is absent or unreadable. */
export async function readStatusFile(path: string): Promise<ExitStatus | null> {
  try {
    return parseStatusLine(await Deno.readTextFile(path));
  } catch {
    return null;
  }
}

/**
 * Starts a supervised process. The program must already be resolved
 * (see {@linkcode resolveProgram}).
 */
export async function spawnProcess(req: SpawnRequest): Promise<SpawnedProcess | SpawnFailure> {
  // The application's command line: setpriv switches user when asked, then
  // execs the program (argv[0] becomes its resolved path).
  if (req.runAs && !req.helpers.setpriv) {
    return { code: "spawn_failed", message: "run-as needs util-linux setpriv, not installed" };
  }
  if (req.supervisor === "perl" && !req.helpers.perl) {
    return { code: "spawn_failed", message: "the perl supervisor needs perl, not installed" };
  }
  const app = req.runAs
    ? [
      req.helpers.setpriv!,
      `--reuid=${req.runAs.uid}`,
      `--regid=${req.runAs.gid}`,
      "--init-groups",
      "--",
      req.program,
      ...req.argv.slice(1),
    ]
    : [req.program, ...req.argv.slice(1)];
  const io = req.streams || req.stdin ? "pipes" : "null";
  const [cmd, args] = req.supervisor === "perl"
    ? [req.helpers.perl!, ["-e", _PERL, req.statusFile, io, req.helpers.setsid, ...app]]
    : [
      "/bin/sh",
      [
        "-c",
        _SH,
        "cmapp-supervise",
        req.statusFile,
        req.helpers.mv,
        io,
        req.helpers.setsid,
        ...app,
      ],
    ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      clearEnv: true,
      env: { ...req.env, PATH: req.env.PATH ?? DEFAULT_PATH },
      cwd: req.cwd,
      // A new session for the sh supervisor; the perl one makes its own
      // process group (setpgrp) instead: a detached spawn cannot use
      // posix_spawn and costs ~2 ms more of forking the daemon.
      detached: req.supervisor === "sh",
      stdin: req.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: io === "pipes" ? "piped" : "null",
    }).spawn();
  } catch (e) {
    return {
      code: "spawn_failed",
      message: `cannot start the ${req.supervisor} supervisor: ${(e as Error).message}`,
    };
  }
  // The first line on its stdout is the application's pid and start time;
  // what follows is the application's own output (pipes), or nothing until
  // the end of the pipe, which comes once the status file is written.
  const reader = child.stdout.getReader();
  let head = new Uint8Array(0);
  let nl = -1;
  while (nl < 0 && head.length < 64) {
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done || !value) break;
    const joined = new Uint8Array(head.length + value.length);
    joined.set(head);
    joined.set(value, head.length);
    head = joined;
    nl = head.indexOf(10);
  }
  const [pidText, startText, supStartText] = nl > 0
    ? new TextDecoder().decode(head.subarray(0, nl)).split(" ")
    : ["", undefined, undefined];
  const pid = Number(pidText);
  const pidStart = _ticks(startText);
  const supervisorStart = _ticks(supStartText);
  const first = nl >= 0 ? head.subarray(nl + 1) : null;
  const fromFile = () => readStatusFile(req.statusFile);
  const supervisorEnded = child.status.then(fromFile, fromFile);
  if (!Number.isInteger(pid) || pid <= 0) {
    reader.cancel().catch(() => {});
    child.stderr?.cancel().catch(() => {});
    child.stdin?.close().catch(() => {});
    await supervisorEnded;
    return { code: "spawn_failed", message: `the ${req.supervisor} supervisor failed to start` };
  }
  let stdoutEnded: Promise<ExitStatus | null>;
  let out: Gatherer | null = null;
  if (io === "null") {
    // After the pid line: the status line, once the status file is written.
    const rest = first ?? new Uint8Array(0);
    stdoutEnded = _statusLine(reader, child.stdout, rest).then((tail) =>
      parseStatusLine(tail) ?? fromFile()
    );
  } else {
    // Streams: the application's output, read without an allocation per read.
    reader.releaseLock();
    out = new Gatherer(child.stdout);
    stdoutEnded = out.ended.then(fromFile);
  }
  const exited = new Promise<ExitStatus | null>((resolve) => {
    // The status file is complete before the supervisor closes its stdout
    // (and, without streams, tells it on that pipe): the end of the pipe is
    // the earliest sign of the exit. When the file is not there yet (the
    // application closed its outputs and ran on, the sh supervisor's
    // relay-less pipes, a killed supervisor), the supervisor's own end
    // decides.
    stdoutEnded.then((st) => st && resolve(st as ExitStatus), () => {});
    supervisorEnded.then(resolve);
  });
  if (!out) {
    return { pid, pidStart, supervisorPid: child.pid, supervisorStart, exited, io: null };
  }
  return {
    pid,
    pidStart,
    supervisorPid: child.pid,
    supervisorStart,
    exited,
    io: {
      stdout: { reader: out, first },
      stderr: new Gatherer(child.stderr),
      stdin: req.stdin ? child.stdin : null,
    },
  };
}

/**
 * Reads a control pipe up to its first complete line (the status line, which
 * the supervisor writes only once the status file holds it: nothing after it
 * matters, so the pipe is closed then rather than waiting for its end) or its
 * end, without keeping a large buffer pending (a default reader allocates 64
 * KiB per read): a few bytes at a time, through a BYOB reader when the stream
 * offers one.
 */
async function _statusLine(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  stream: ReadableStream<Uint8Array>,
  head: Uint8Array,
): Promise<string> {
  let text = new TextDecoder().decode(head);
  try {
    reader.releaseLock();
    const byob = stream.getReader({ mode: "byob" });
    let buf = new Uint8Array(32);
    while (!text.includes("\n")) {
      const { value, done } = await byob.read(buf);
      if (done || !value) break;
      if (text.length < 64) text += new TextDecoder().decode(value);
      buf = new Uint8Array(value.buffer);
    }
    await byob.cancel();
  } catch {
    // not a byte stream, or the pipe broke: treat as its end
  }
  return text;
}

/**
 * Sends a signal to a whole process group; false when no such group exists.
 *
 * @example
 * ```ts ignore
 * import { signalGroup } from "./supervisor.ts";
 * signalGroup(pid, "SIGTERM");
 * ```
 */
export function signalGroup(pgid: number, signal: Deno.Signal): boolean {
  try {
    Deno.kill(-pgid, signal);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * Sends a signal to a run's whole session: its process group, and any
 * process that moved to another group inside the session (shells with job
 * control do that). Processes that started a session of their own escape.
 * Never throws: a process may vanish at any moment.
 */
export async function signalSession(sid: number, signal: Deno.Signal): Promise<void> {
  try {
    signalGroup(sid, signal);
  } catch {
    // not ours to signal
  }
  for (const p of (await allProcStats()).values()) {
    if (p.session !== sid || p.pgrp === sid || !isLive(p)) continue;
    try {
      Deno.kill(p.pid, signal);
    } catch {
      // gone
    }
  }
}

export { signalNumber };

/** A start time field of the pid line: clock ticks, or null ("-", missing, garbage). */
function _ticks(text: string | undefined): number | null {
  const n = text === undefined || text === "" ? NaN : Number(text);
  return Number.isSafeInteger(n) && n >= 0 ? n : null;
}
