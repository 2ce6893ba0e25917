/**
 * The formats of a run's files in the state directory, in one place: the run
 * record (`ID.json`, written by cmappserver before the run starts), the exit
 * record (`ID.exit`, written by the run's supervisor, or by cmappserver when
 * the supervisor could not) and the pid record (`ID.pid`, written by the
 * supervisor before the application runs). Parsing, validation and
 * formatting; no I/O. docs/cmappserver.md and docs/cmapp-supervise.md
 * describe the files.
 *
 * @module
 */

import { type ExitStatus, isRunId, isRunName } from "../protocol/mod.ts";

/** The run record format this code writes. */
export const RECORD_FORMAT = 2;

/** What cmappserver records of a run before starting it. */
export interface RunRecord {
  /** Always {@linkcode RECORD_FORMAT}. */
  format: 2;
  /** Server-assigned id, unique across restarts. */
  id: string;
  /** Order of the launches on this state directory: larger is later, whatever the clock says. */
  seq: number;
  /** The run's name. */
  name: string;
  /** Program and arguments as the manager asked. */
  argv: string[];
  /** Fingerprint of the manager that launched it. */
  launchedBy: string;
  /** Wall-clock start time, ISO 8601: shown, never used to order anything. */
  startedAt: string;
  /** Grace period between SIGTERM and SIGKILL, in ms. */
  stopTimeoutMs: number;
  /** Its stdout and stderr go to cmappserver. */
  streams: boolean;
  /** Its stdin comes from cmappserver. */
  stdin: boolean;
  /**
   * Digest of what it runs as, besides argv: user, group, working directory
   * and environment as asked ({@linkcode launchSpec}). Absent in records of
   * earlier versions, whose runs are then compared by argv alone.
   */
  spec?: string;
}

/**
 * A record written by cmapp 0.1.0, whose perl or sh supervisor may still
 * be running: followed through a watcher (see docs/cmapp-supervise.md).
 */
export interface LegacyRunRecord {
  /** Records of 0.1.0 carry no format field. */
  format: 1;
  /** Server-assigned id. */
  id: string;
  /** Assigned when loaded, in start-time order (0.1.0 kept no sequence). */
  seq: number;
  /** The run's name. */
  name: string;
  /** Program and arguments. */
  argv: string[];
  /** Fingerprint of the launching manager. */
  launchedBy: string;
  /** Start time, ISO 8601. */
  startedAt: string;
  /** Grace period between SIGTERM and SIGKILL, in ms. */
  stopTimeoutMs: number;
  /** The application's pid. */
  pid: number;
  /** Its start time in clock ticks since boot, when known. */
  pidStart: number | null;
  /** The old supervisor's pid. */
  supervisorPid: number;
  /** Its start time, when known. */
  supervisorStart: number | null;
  /** The boot it started in. */
  bootId: string;
}

/** A record as found on disk. */
export type AnyRunRecord = RunRecord | LegacyRunRecord;

/** How a run ended: a status, or why none is known. */
export type Outcome = { exit: ExitStatus; lost?: undefined } | { exit?: undefined; lost: string };

/** Bytes that went through a run's streams, when it had them. */
export interface StreamCounts {
  /** Bytes the application wrote to its stdout; null when it had no streams. */
  stdout: number | null;
  /** Bytes it wrote to its stderr. */
  stderr: number | null;
  /** Bytes of stdin its supervisor took from cmappserver. */
  stdin: number | null;
}

/** The exit record, `ID.exit`. */
export interface ExitRecord {
  /** How it ended. */
  outcome: Outcome;
  /** The application's pid, when recorded. */
  pid: number | null;
  /** Stream byte counts. */
  counts: StreamCounts;
}

/** The pid record, `ID.pid`: written by the supervisor before the application runs. */
export interface PidRecord {
  /** The boot it was written in. */
  bootId: string;
  /** The supervisor's pid. */
  supervisorPid: number;
  /** Its start time in clock ticks since boot. */
  supervisorStart: number;
  /** The application's pid (also its process group and session). */
  pid: number;
  /** Its start time in clock ticks since boot. */
  pidStart: number;
}

/** A record that cannot be used: unparseable, or holding values no run can have. */
export class RecordError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "RecordError";
  }
}

/** No run is told to wait longer than a year between SIGTERM and SIGKILL. */
const _MAX_STOP_MS = 365 * 86_400_000;
/** Linux's largest pid_max. */
const _MAX_PID = 4_194_304;

type _Obj = Record<string, unknown>;

function _bad(what: string): never {
  throw new RecordError(`invalid run record: ${what}`);
}

function _int(o: _Obj, field: string, min: number, max: number): number {
  const v = o[field];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) _bad(field);
  return v;
}

function _nullableTicks(o: _Obj, field: string): number | null {
  const v = o[field];
  if (v === null || v === undefined) return null;
  return _int(o, field, 0, Number.MAX_SAFE_INTEGER);
}

function _date(o: _Obj, field: string): string {
  const v = o[field];
  if (typeof v !== "string" || v.length > 64 || Number.isNaN(Date.parse(v))) _bad(field);
  return v;
}

function _common(o: _Obj, id: string) {
  if (o.id !== id || typeof o.id !== "string" || !isRunId(o.id)) _bad("id");
  if (typeof o.name !== "string" || !isRunName(o.name)) _bad("name");
  const argv = o.argv;
  if (
    !Array.isArray(argv) || argv.length === 0 || argv.length > 4096 ||
    argv.some((a) => typeof a !== "string" || a.includes("\0")) || argv[0] === ""
  ) _bad("argv");
  const by = o.launchedBy;
  // deno-lint-ignore no-control-regex
  if (typeof by !== "string" || by.length > 256 || /[\x00-\x1f\x7f]/.test(by)) _bad("launchedBy");
  return {
    id,
    name: o.name,
    argv: argv as string[],
    launchedBy: by,
    startedAt: _date(o, "startedAt"),
    stopTimeoutMs: _int(o, "stopTimeoutMs", 0, _MAX_STOP_MS),
  };
}

/**
 * Parses and checks a run record. A record of 0.1.0 (no `format`) comes
 * back as a {@linkcode LegacyRunRecord} with `seq` 0, for the caller to
 * number.
 *
 * @throws {RecordError} when it is not JSON, or any value is out of its range
 * @example
 * ```ts ignore
 * import { parseRunRecord } from "./records.ts";
 * const r = parseRunRecord(await Deno.readTextFile("runs/1-ab.json"), "1-ab");
 * ```
 */
export function parseRunRecord(text: string, id: string): AnyRunRecord {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new RecordError(`unparseable run record: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) _bad("not an object");
  const o = v as _Obj;
  const common = _common(o, id);
  if (o.format === undefined) {
    const bootId = o.bootId;
    if (typeof bootId !== "string" || bootId.length > 64) _bad("bootId");
    return {
      format: 1,
      seq: 0,
      ...common,
      pid: _int(o, "pid", 2, _MAX_PID),
      pidStart: _nullableTicks(o, "pidStart"),
      supervisorPid: _int(o, "supervisorPid", 2, _MAX_PID),
      supervisorStart: _nullableTicks(o, "supervisorStart"),
      bootId,
    };
  }
  if (o.format !== RECORD_FORMAT) _bad(`format ${JSON.stringify(o.format)}`);
  if (typeof o.streams !== "boolean") _bad("streams");
  if (typeof o.stdin !== "boolean") _bad("stdin");
  if (o.spec !== undefined && (typeof o.spec !== "string" || !/^[0-9a-f]{1,64}$/.test(o.spec))) {
    _bad("spec");
  }
  return {
    format: 2,
    seq: _int(o, "seq", 1, Number.MAX_SAFE_INTEGER),
    ...common,
    streams: o.streams,
    stdin: o.stdin,
    ...(o.spec === undefined ? {} : { spec: o.spec as string }),
  };
}

/** What a launch asks to run as, besides argv. */
export interface LaunchContext {
  /** User to run as. */
  user?: string;
  /** Group to run as. */
  group?: string;
  /** Working directory ("/" when absent). */
  cwd?: string;
  /** The whole environment (none when absent). */
  env?: Record<string, string>;
}

/**
 * A digest of a launch's user, group, working directory and environment, so
 * that a later launch under the same name can be told apart without keeping
 * the environment (which may hold secrets) in the record.
 *
 * @example
 * ```ts
 * import { launchSpec } from "./records.ts";
 * (await launchSpec({ cwd: "/srv" })) === (await launchSpec({ cwd: "/srv", env: {} })); // true
 * ```
 */
export async function launchSpec(c: LaunchContext): Promise<string> {
  const env = Object.entries(c.env ?? {}).sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0);
  const text = JSON.stringify([c.user ?? null, c.group ?? null, c.cwd ?? "/", env]);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest, 0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The text of a run record.
 *
 * @example
 * ```ts ignore
 * import { formatRunRecord } from "./records.ts";
 * await Deno.writeTextFile("runs/1-ab.json", formatRunRecord(record));
 * ```
 */
export function formatRunRecord(r: RunRecord): string {
  return JSON.stringify(r) + "\n";
}

/**
 * Parses a status line: `code N`, `signal N`, `lost REASON`, or the sh
 * supervisor's `status N` of 0.1.0 (N > 128 a signal). Null for anything else.
 *
 * @example
 * ```ts
 * import { parseStatusLine } from "./records.ts";
 * parseStatusLine("code 200"); // { exit: { code: 200 } }
 * parseStatusLine("signal 9"); // { exit: { signal: 9 } }
 * parseStatusLine("lost the guest was restarted while it ran"); // { lost: "the guest …" }
 * ```
 */
export function parseStatusLine(line: string): Outcome | null {
  const lost = /^lost (.+)$/.exec(line);
  if (lost) return { lost: lost[1].trim().slice(0, 1000) || "unknown" };
  const m = /^(code|signal|status) (\d{1,3})$/.exec(line.trim());
  if (!m) return null;
  const n = Number(m[2]);
  if (m[1] === "code" && n <= 255) return { exit: { code: n } };
  if (m[1] === "signal" && n >= 1 && n <= 127) return { exit: { signal: n } };
  if (m[1] === "status" && n <= 255) return { exit: n > 128 ? { signal: n - 128 } : { code: n } };
  return null;
}

/**
 * The status line of an outcome.
 *
 * @example
 * ```ts
 * import { formatStatusLine } from "./records.ts";
 * formatStatusLine({ exit: { signal: 15 } }); // "signal 15"
 * ```
 */
export function formatStatusLine(o: Outcome): string {
  if (o.lost !== undefined) return `lost ${o.lost.replace(/[\r\n]+/g, " ")}`;
  return "code" in o.exit ? `code ${o.exit.code}` : `signal ${o.exit.signal}`;
}

function _count(v: string | undefined): number | null {
  if (v === undefined || !/^\d{1,15}$/.test(v)) return null;
  return Number(v);
}

/**
 * Parses an exit record: the status line first, then `pid N`, `out N`,
 * `err N`, `in N` lines in any order (`-` for none; unknown lines are
 * skipped). Null when the status line is not one.
 *
 * @example
 * ```ts
 * import { parseExitRecord } from "./records.ts";
 * parseExitRecord("code 3\npid 42\nout 8\nerr 0\nin -\n");
 * // { outcome: { exit: { code: 3 } }, pid: 42, counts: { stdout: 8, stderr: 0, stdin: null } }
 * ```
 */
export function parseExitRecord(text: string): ExitRecord | null {
  const lines = text.split("\n");
  const outcome = parseStatusLine(lines[0]);
  if (!outcome) return null;
  const fields = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const [k, v] = l.split(" ");
    if (k && v !== undefined && !fields.has(k)) fields.set(k, v);
  }
  const pid = _count(fields.get("pid"));
  return {
    outcome,
    pid: pid !== null && pid > 1 && pid <= _MAX_PID ? pid : null,
    counts: {
      stdout: _count(fields.get("out")),
      stderr: _count(fields.get("err")),
      stdin: _count(fields.get("in")),
    },
  };
}

/**
 * The text of an exit record.
 *
 * @example
 * ```ts
 * import { formatExitRecord } from "./records.ts";
 * formatExitRecord({ outcome: { exit: { code: 0 } }, pid: 42,
 *   counts: { stdout: null, stderr: null, stdin: null } });
 * // "code 0\npid 42\nout -\nerr -\nin -\n"
 * ```
 */
export function formatExitRecord(r: ExitRecord): string {
  const n = (v: number | null) => v === null ? "-" : String(v);
  return `${formatStatusLine(r.outcome)}\npid ${n(r.pid)}\nout ${n(r.counts.stdout)}\n` +
    `err ${n(r.counts.stderr)}\nin ${n(r.counts.stdin)}\n`;
}

/**
 * Parses a pid record: `BOOTID SUPPID SUPSTART PID PIDSTART`. Null when malformed.
 *
 * @example
 * ```ts
 * import { parsePidRecord } from "./records.ts";
 * parsePidRecord("5b1f… 100 2000 101 2001\n")?.pid; // 101
 * ```
 */
export function parsePidRecord(text: string): PidRecord | null {
  const f = text.trim().split(" ");
  if (f.length !== 5 || !/^[0-9a-f-]{1,64}$/.test(f[0])) return null;
  const [sp, ss, p, ps] = f.slice(1).map((x) => /^\d{1,20}$/.test(x) ? Number(x) : NaN);
  if (![sp, ss, p, ps].every(Number.isSafeInteger) || p <= 1 || p > _MAX_PID) return null;
  return { bootId: f[0], supervisorPid: sp, supervisorStart: ss, pid: p, pidStart: ps };
}
