/**
 * Exit statuses: Linux signal numbers and names, and the shell convention
 * for turning a status into one exit code (128+N for signal N).
 *
 * @module
 */

import type { ExitStatus } from "./messages.ts";

const _SIGNALS: readonly string[] = [
  "",
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGILL",
  "SIGTRAP",
  "SIGABRT",
  "SIGBUS",
  "SIGFPE",
  "SIGKILL",
  "SIGUSR1",
  "SIGSEGV",
  "SIGUSR2",
  "SIGPIPE",
  "SIGALRM",
  "SIGTERM",
  "SIGSTKFLT",
  "SIGCHLD",
  "SIGCONT",
  "SIGSTOP",
  "SIGTSTP",
  "SIGTTIN",
  "SIGTTOU",
  "SIGURG",
  "SIGXCPU",
  "SIGXFSZ",
  "SIGVTALRM",
  "SIGPROF",
  "SIGWINCH",
  "SIGIO",
  "SIGPWR",
  "SIGSYS",
];

/**
 * The Linux number of a signal name ("SIGKILL" or "KILL"), or null.
 *
 * @example
 * ```ts
 * import { signalNumber } from "./exit_status.ts";
 * signalNumber("SIGKILL"); // 9
 * ```
 */
export function signalNumber(name: string): number | null {
  const n = name.startsWith("SIG") ? name : `SIG${name}`;
  const i = _SIGNALS.indexOf(n);
  if (i > 0) return i;
  const rt = /^SIGRTMIN(?:\+(\d+))?$/.exec(n);
  if (rt) {
    const n = 34 + Number(rt[1] ?? 0);
    return n <= 64 ? n : null;
  }
  return null;
}

/**
 * The Linux name of a signal number, or "signal N" when it has none.
 *
 * @example
 * ```ts
 * import { signalName } from "./exit_status.ts";
 * signalName(15); // "SIGTERM"
 * ```
 */
export function signalName(signal: number): string {
  return _SIGNALS[signal] || `signal ${signal}`;
}

/**
 * The exit code a shell would report for this status: the code itself, or
 * 128+N for signal N.
 *
 * @example
 * ```ts
 * import { shellExitCode } from "./exit_status.ts";
 * shellExitCode({ signal: 9 }); // 137
 * ```
 */
export function shellExitCode(status: ExitStatus): number {
  return "code" in status ? status.code : 128 + status.signal;
}

/**
 * One human line for a status.
 *
 * @example
 * ```ts
 * import { describeExit } from "./exit_status.ts";
 * describeExit({ signal: 9 }); // "killed by signal 9 (SIGKILL)"
 * ```
 */
export function describeExit(status: ExitStatus): string {
  return "code" in status
    ? `exited with code ${status.code}`
    : `killed by signal ${status.signal} (${signalName(status.signal)})`;
}
