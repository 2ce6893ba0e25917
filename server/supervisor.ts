/**
 * Starting and ending guest processes: argv run directly (no shell), each in
 * its own session and process group, with a clean environment; exit status
 * as code or signal. Knows nothing of managers or the network.
 *
 * @module
 */

import { type ExitStatus, signalNumber } from "../protocol/mod.ts";

/** The PATH given to every process unless the request sets one. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** A process that was started. */
export interface SpawnedProcess {
  /** Its pid, which is also its process group and session id. */
  pid: number;
  /** Settles once when it ends. */
  exited: Promise<ExitStatus>;
}

/** Why a process could not be started. */
export interface SpawnFailure {
  /** "not_found" (shell 127), "not_executable" (shell 126) or "spawn_failed". */
  code: "not_found" | "not_executable" | "spawn_failed";
  /** One line for the manager. */
  message: string;
}

/** Options for {@linkcode spawnProcess}. */
export interface SpawnOptions {
  /** The whole environment of the process. */
  env?: Record<string, string>;
  /** Working directory; "/" by default. */
  cwd?: string;
}

/**
 * Starts `argv` in a new session (setsid), with stdin, stdout and stderr on
 * /dev/null and only the given environment.
 *
 * @example
 * ```ts ignore
 * import { spawnProcess } from "./supervisor.ts";
 * const p = spawnProcess(["/bin/sleep", "1"]);
 * if ("pid" in p) console.log(await p.exited); // { code: 0 }
 * ```
 */
export function spawnProcess(
  argv: string[],
  options: SpawnOptions = {},
): SpawnedProcess | SpawnFailure {
  const env = options.env ?? { PATH: DEFAULT_PATH };
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      clearEnv: true,
      env,
      cwd: options.cwd ?? "/",
      detached: true,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (e) {
    const name = argv[0].length > 200 ? `${argv[0].slice(0, 200)}…` : argv[0];
    if (e instanceof Deno.errors.NotFound) {
      return { code: "not_found", message: `${name}: command not found` };
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      return { code: "not_executable", message: `${name}: permission denied` };
    }
    // Deno's message repeats the program name: keep only the reason.
    const reason = (e as Error).message.replace(/^Failed to spawn '[\s\S]*?': /, "");
    return { code: "spawn_failed", message: `${name}: ${reason}` };
  }
  const exited = child.status.then(
    (s): ExitStatus => {
      if (s.signal) {
        const n = signalNumber(s.signal);
        if (n !== null) return { signal: n };
      }
      return { code: s.code & 0xff };
    },
    (e): ExitStatus => {
      // Deno cannot name real-time signals (34..64) and rejects with
      // "Invalid signal: N"; the process has been reaped all the same.
      const n = Number(/signal:? *(\d+)/i.exec(String((e as Error)?.message))?.[1]);
      return n >= 1 && n <= 127 ? { signal: n } : { code: 255 };
    },
  );
  return { pid: child.pid, exited };
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
