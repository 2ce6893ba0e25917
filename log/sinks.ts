/**
 * Where log lines go: stderr, a log file (reopened on SIGHUP, falling back
 * to stderr when it cannot be written), and syslog (facility daemon, through
 * util-linux `logger`, so no unstable Deno API is needed).
 *
 * @module
 */

import { fstatSync } from "node:fs";
import type { LogLevel } from "./logger.ts";

/** A destination for formatted log lines. */
export interface LogSink {
  /** Writes one line (without newline) logged at `level`. */
  write(line: string, level: LogLevel, message: string): void;
  /** Reopens the destination (log rotation). */
  reopen?(): void;
  /** Flushes and releases it. */
  close?(): Promise<void>;
}

const _enc = new TextEncoder();

/** Writes lines to stderr. */
export const stderrSink: LogSink = {
  write(line) {
    try {
      let bytes = _enc.encode(line + "\n");
      while (bytes.length > 0) bytes = bytes.subarray(Deno.stderr.writeSync(bytes));
    } catch {
      // stderr closed: nowhere left to report to.
    }
  },
};

/**
 * Appends lines to a file. When the file cannot be opened or written, the
 * lines go to stderr instead, with one line saying so; each reopen tries the
 * file again.
 *
 * @example
 * ```ts ignore
 * import { FileSink } from "./sinks.ts";
 * const sink = new FileSink("/var/log/cmappserver.log");
 * Deno.addSignalListener("SIGHUP", () => sink.reopen());
 * ```
 */
export class FileSink implements LogSink {
  /** The file's path. */
  readonly path: string;
  #file: Deno.FsFile | null = null;
  #failed = false;

  /** Opens `path` for appending (mode 0640, created if missing). */
  constructor(path: string) {
    this.path = path;
    this.reopen();
  }

  /** True while lines go to stderr because the file cannot be written. */
  get fallingBack(): boolean {
    return this.#file === null;
  }

  /** Closes and opens the file again (after rotation). */
  reopen(): void {
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = null;
    try {
      this.#file = Deno.openSync(this.path, { append: true, create: true, mode: 0o640 });
      this.#failed = false;
    } catch (e) {
      this.#fail(e as Error);
    }
  }

  /** Writes one line. */
  write(line: string): void {
    if (this.#file) {
      try {
        let bytes = _enc.encode(line + "\n");
        while (bytes.length > 0) bytes = bytes.subarray(this.#file.writeSync(bytes));
        return;
      } catch (e) {
        this.#fail(e as Error);
      }
    }
    stderrSink.write(line, "info", line);
  }

  /** Closes the file. */
  close(): Promise<void> {
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = null;
    return Promise.resolve();
  }

  #fail(e: Error): void {
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = null;
    if (this.#failed) return;
    this.#failed = true;
    stderrSink.write(
      `${new Date().toISOString()} log file ${this.path} cannot be written (${e.message}); ` +
        `logging to stderr instead`,
      "error",
      "",
    );
  }
}

const _SEVERITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
const _FACILITY_DAEMON = 3;

let _journal: boolean | undefined;

/**
 * True when stderr is the systemd journal: `JOURNAL_STREAM` names the device
 * and inode of what fd 2 is (systemd sets it for a unit's stdout and stderr;
 * a child whose stderr was redirected elsewhere inherits the variable but
 * not the stream, so the variable alone is not enough). Computed once.
 *
 * @example
 * ```ts
 * import { stderrIsJournal } from "./sinks.ts";
 * if (stderrIsJournal()) console.error("<6>lines get the journal's priority prefix");
 * ```
 */
export function stderrIsJournal(): boolean {
  if (_journal !== undefined) return _journal;
  _journal = false;
  const m = /^(\d+):(\d+)$/.exec(Deno.env.get("JOURNAL_STREAM") ?? "");
  if (!m) return _journal;
  try {
    // node:fs, because fstat of an open descriptor needs no permission there.
    const st = fstatSync(2);
    _journal = String(st.dev) === m[1] && String(st.ino) === m[2];
  } catch {
    // stderr closed: not the journal
  }
  return _journal;
}

/**
 * Writes lines to stderr when it is the journal: each with its sd-daemon
 * priority prefix (`<4>` for a warning…), without the timestamp, program and
 * pid the journal records itself.
 */
export const journalSink: LogSink = {
  write(_line, level, message) {
    stderrSink.write(`<${_SEVERITY[level]}>${level}: ${message}`, level, message);
  },
};

/** {@linkcode journalSink} when stderr is the journal, else {@linkcode stderrSink}. */
export function stderrLogSink(): LogSink {
  return stderrIsJournal() ? journalSink : stderrSink;
}

/**
 * Prefixes each line of a message for stderr with the journal's priority
 * when stderr is the journal (`<3>` for errors); otherwise returns it as is.
 *
 * @example
 * ```ts
 * import { forStderr } from "./sinks.ts";
 * forStderr("cmappmgr: cannot connect\n", "error"); // "<3>cmappmgr: …" under journald
 * ```
 */
export function forStderr(text: string, level: LogLevel): string {
  if (!stderrIsJournal()) return text;
  return text.replace(/^(?=.)/gm, `<${_SEVERITY[level]}>`);
}

/**
 * Sends lines to syslog (facility daemon) through one long-running
 * `logger --prio-prefix` process. When `logger` is missing or exits (no
 * /dev/log), it says so once on stderr, unless made `optional`, and drops
 * further lines. (Whether /dev/log exists cannot be asked under the
 * programs' permission set: Deno wants all permissions for anything in
 * /dev. `logger` finds out.)
 *
 * @example
 * ```ts ignore
 * import { SyslogSink } from "./sinks.ts";
 * const sink = new SyslogSink("cmappserver");
 * ```
 */
export class SyslogSink implements LogSink {
  readonly #tag: string;
  readonly #optional: boolean;
  #child: Deno.ChildProcess | null = null;
  #writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  #dead = false;

  /**
   * A sink that hands each line to `logger`, started once and kept running.
   *
   * @param tag the syslog tag, e.g. "cmappserver"
   * @param optional true when syslog was not asked for explicitly: a host
   *   without it is then not worth a warning
   */
  constructor(tag: string, optional = false) {
    this.#tag = tag;
    this.#optional = optional;
  }

  /**
   * Starts the logger process now rather than at the first line: the first
   * process a Deno program starts costs it tens of milliseconds, better spent
   * while it waits for the network than when a run's exit is being reported.
   */
  warm(): void {
    if (!this.#dead && !this.#writer) this.#start();
  }

  /** Writes one message at its level's severity. */
  write(_line: string, level: LogLevel, message: string): void {
    if (this.#dead) return;
    if (!this.#writer) this.#start();
    const pri = _FACILITY_DAEMON * 8 + _SEVERITY[level];
    this.#writer?.write(_enc.encode(`<${pri}>${message.replaceAll("\n", " ")}\n`)).catch(() =>
      this.#die("logger stopped")
    );
  }

  /**
   * Hands the last lines over and lets the logger process finish on its own:
   * they are in its pipe, and it sends them and exits once it reads the end
   * (waiting for it would add its exit to every cmappmgr's).
   */
  async close(): Promise<void> {
    const w = this.#writer;
    const c = this.#child;
    this.#writer = null;
    this.#child = null;
    this.#dead = true;
    await w?.close().catch(() => {});
    c?.unref();
  }

  #start(): void {
    try {
      this.#child = new Deno.Command("logger", {
        args: ["--prio-prefix", "-t", this.#tag, `--id=${Deno.pid}`],
        stdin: "piped",
        stdout: "null",
        stderr: "null",
      }).spawn();
    } catch (e) {
      this.#die(`cannot start logger: ${(e as Error).message}`);
      return;
    }
    this.#writer = this.#child.stdin.getWriter();
    this.#child.status.then((s) => {
      if (!this.#dead) this.#die(`logger exited with status ${s.code} (is there a /dev/log?)`);
    });
  }

  #die(reason: string): void {
    if (this.#dead) return;
    this.#dead = true;
    this.#writer = null;
    if (this.#optional) return;
    stderrLogSink().write(
      `${new Date().toISOString()} syslog disabled: ${reason}`,
      "warn",
      `syslog disabled: ${reason}`,
    );
  }
}
