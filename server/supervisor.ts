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

/** The PATH given to every process unless the request sets one. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Which program supervises each run. */
export type SupervisorKind = "perl" | "sh";

/**
 * The perl supervisor. argv: STATUSFILE PROGRAM [ARG…], where PROGRAM is
 * util-linux setsid (and the rest the application's command). Prints the
 * application's pid on stdout, then writes "code N" or "signal N" to
 * STATUSFILE (through a temporary file and a rename) when it ends. It loads
 * no module, to keep its private memory near 0.5 MB.
 */
const _PERL = String.raw`
my $f = shift @ARGV;
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
  open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null'); open(STDERR, '>', '/dev/null');
  { no warnings; exec { $ARGV[0] } @ARGV; }
  exit($!{ENOENT} ? 127 : 126);
}
print "$pid\n"; close(STDOUT);
$SIG{$_} = 'IGNORE' for qw(HUP INT QUIT TERM PIPE);
while (waitpid($pid, 0) != $pid) {}
my $st = $?;
my $line = ($st & 127) ? 'signal ' . ($st & 127) : 'code ' . ($st >> 8);
open(my $h, '>', "$f.tmp") or exit 1;
print $h "$line\n"; close($h);
rename("$f.tmp", $f);
`;

/**
 * The /bin/sh supervisor: argv STATUSFILE PROGRAM [ARG…]. A shell reports a death by signal N as 128+N, so it writes
 * "status N" and N > 128 is read as a signal; and a shell starts background
 * commands with SIGINT and SIGQUIT ignored, which the application inherits.
 */
const _SH = String.raw`
f=$1; shift
setsid "$@" </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid"
exec >/dev/null
trap '' HUP INT QUIT TERM PIPE
wait "$pid"; rc=$?
echo "status $rc" > "$f.tmp" && sync "$f.tmp" 2>/dev/null; mv "$f.tmp" "$f"
`;

/** Finds the default supervisor: perl when installed, else sh. */
export async function detectSupervisor(): Promise<SupervisorKind> {
  for (const dir of DEFAULT_PATH.split(":")) {
    try {
      const st = await Deno.stat(`${dir}/perl`);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return "perl";
    } catch {
      // not there
    }
  }
  return "sh";
}

/** A process that was started. */
export interface SpawnedProcess {
  /** The application's pid, which is also its process group and session id. */
  pid: number;
  /** The supervisor's pid. */
  supervisorPid: number;
  /** Settles when the supervisor has ended (with the status, if it wrote one). */
  exited: Promise<ExitStatus | null>;
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
  /** Run as this uid/gid (through setpriv), when set. */
  runAs?: { uid: number; gid: number };
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
  const app = req.runAs
    ? [
      "setpriv",
      `--reuid=${req.runAs.uid}`,
      `--regid=${req.runAs.gid}`,
      "--init-groups",
      "--",
      req.program,
      ...req.argv.slice(1),
    ]
    : [req.program, ...req.argv.slice(1)];
  const [cmd, args] = req.supervisor === "perl"
    ? ["perl", ["-e", _PERL, req.statusFile, "setsid", ...app]]
    : ["/bin/sh", ["-c", _SH, "cmapp-supervise", req.statusFile, ...app]];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      clearEnv: true,
      env: { ...req.env, PATH: req.env.PATH ?? DEFAULT_PATH },
      cwd: req.cwd,
      detached: true,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
  } catch (e) {
    return {
      code: "spawn_failed",
      message: `cannot start the ${req.supervisor} supervisor: ${(e as Error).message}`,
    };
  }
  // The first line on its stdout is the application's pid.
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (text.includes("\n")) break;
  }
  const pid = Number(text.trim());
  const exited = child.status.then(
    () => readStatusFile(req.statusFile),
    () => readStatusFile(req.statusFile),
  );
  if (!Number.isInteger(pid) || pid <= 0) {
    await exited;
    return { code: "spawn_failed", message: `the ${req.supervisor} supervisor failed to start` };
  }
  return { pid, supervisorPid: child.pid, exited };
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
 */
export async function signalSession(sid: number, signal: Deno.Signal): Promise<void> {
  signalGroup(sid, signal);
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // rest[2] is the process group, rest[3] the session.
      if (Number(rest[3]) === sid && Number(rest[2]) !== sid) Deno.kill(Number(e.name), signal);
    } catch {
      // gone, or not ours to read
    }
  }
}

/**
 * The start time of a process (clock ticks since boot, /proc/PID/stat
 * field 22), which tells a process from a later one that reused its pid.
 * Null when there is no such process.
 */
export async function processStartTime(pid: number): Promise<number | null> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // Fields after the command name, which is in parentheses and may hold spaces.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (rest[0] === "Z" || rest[0] === "X") return null;
    return Number(rest[19]);
  } catch {
    return null;
  }
}

/** This boot's id: processes recorded under another boot are gone. */
export async function bootId(): Promise<string> {
  try {
    return (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim();
  } catch {
    return "unknown";
  }
}

export { signalNumber };
