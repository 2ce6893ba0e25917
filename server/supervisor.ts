/**
 * cmappserver's side of cmapp-supervise (docs/cmapp-supervise.md): starting
 * a supervisor for a run, starting a watcher for an application whose
 * supervisor was killed, and the supervisor's socket: the control
 * connection (the run's pid, its exit, kill, stop, close and done) and one
 * connection per stream. Knows nothing of managers or the network.
 *
 * @module
 */

import type { Outcome, StreamCounts } from "./records.ts";
import { parseStatusLine } from "./records.ts";

/** What a supervisor is to start. */
export interface SupervisorSpec {
  /** The installed cmapp-supervise. */
  binary: string;
  /** The state directory's runs/. */
  runsDir: string;
  /** The run's id (its files are runsDir/ID.*). */
  id: string;
  /** Absolute path of the program. */
  program: string;
  /** argv as the application sees it, argv[0] included. */
  argv: string[];
  /** Its whole environment. */
  env: Record<string, string>;
  /** Its working directory. */
  cwd: string;
  /** The identity to take: uid, gid and exactly these supplementary groups. */
  runAs?: { uid: number; gid: number; groups: number[] };
  /** Its stdout and stderr go to the supervisor (else /dev/null). */
  streams: boolean;
  /** Its stdin comes from the supervisor (else /dev/null). */
  stdin: boolean;
  /** Grace between SIGTERM and SIGKILL for what is left of its session when it ends, in ms. */
  graceMs: number;
}

/** A supervisor that started (or a watcher that took over). */
export interface Started {
  /** The application's pid (its process group and session id). */
  pid: number;
  /** The supervisor's pid. */
  supervisorPid: number;
}

/** Why an application could not be started. */
export interface SpawnFailure {
  /** "not_found" (shell 127), "not_executable" (shell 126) or "spawn_failed". */
  code: "not_found" | "not_executable" | "spawn_failed";
  /** One line for the manager. */
  message: string;
}

/** What a supervisor reports when its run has ended. */
export interface SupervisorExit {
  /** True when the supervisor wrote the exit record itself. */
  recorded: boolean;
  /** How the run ended. */
  outcome: Outcome;
  /** The bytes that went through its streams. */
  counts: StreamCounts;
}

const _enc = new TextEncoder();
const _dec = new TextDecoder();

function _envBytes(env: Record<string, string>): Uint8Array {
  const parts = Object.entries(env).map(([k, v]) => `${k}=${v}\0`);
  return _enc.encode(parts.join(""));
}

/** The supervisor's fatal message, without its prefix. */
function _why(stderr: string): string {
  const line = stderr.split("\n").find((l) => l.includes("fatal: ")) ?? stderr.split("\n")[0];
  return line.replace(/^.*fatal: /, "").trim();
}

function _failure(report: string, stderr: string, code: number | null): SpawnFailure {
  const m = /^fail (\S+) (\d+)$/m.exec(report);
  const why = _why(stderr);
  if (!m) {
    return {
      code: "spawn_failed",
      message: `the supervisor failed to start the run` +
        (why ? `: ${why}` : ` (it exited ${code} without a word)`),
    };
  }
  const [stage, errno] = [m[1], Number(m[2])];
  if (stage === "exec" && (errno === 2 || errno === 20)) {
    return { code: "not_found", message: why || "command not found" };
  }
  if (stage === "exec") return { code: "not_executable", message: why || "cannot execute" };
  if (stage === "record") {
    return {
      code: "spawn_failed",
      message: `cannot record the run in the state directory, so it was not started: ${why}`,
    };
  }
  if (stage === "chdir") return { code: "spawn_failed", message: `working directory: ${why}` };
  return { code: "spawn_failed", message: `cannot start it (${stage}): ${why}` };
}

/**
 * Runs the supervisor program and reads its report: its stdout and stderr to
 * their end (it closes them once it has said how the start went). A
 * supervisor that started its run stays our child for the run's life, and is
 * reaped when it exits; one that failed exits at once, and its code is read.
 */
async function _run(binary: string, args: string[], input: Uint8Array | null) {
  const child = new Deno.Command(binary, {
    args,
    clearEnv: true,
    env: {},
    cwd: "/",
    stdin: input ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (input) {
    const w = child.stdin.getWriter();
    await w.write(input).catch(() => {});
    await w.close().catch(() => {});
  }
  const [out, err] = await Promise.all([
    new Response(child.stdout).arrayBuffer(),
    new Response(child.stderr).arrayBuffer(),
  ]);
  const report = _dec.decode(out);
  const running = /^pid \d+ \d+$/m.test(report);
  const status = child.status;
  const code = running ? null : (await status).code;
  return { report, stderr: _dec.decode(err), code };
}

function _started(report: string): Started | null {
  const m = /^pid (\d+) (\d+)$/m.exec(report);
  return m ? { pid: Number(m[1]), supervisorPid: Number(m[2]) } : null;
}

/**
 * Starts a supervisor for a run, which starts the application. Resolves
 * once the application runs (or could not be started: then nothing of it
 * is left behind). The environment goes to the supervisor on its stdin,
 * never in its own environment or argv.
 *
 * @example
 * ```ts ignore
 * import { startSupervisor } from "./supervisor.ts";
 * const r = await startSupervisor({ binary, runsDir, id, program: "/bin/sleep",
 *   argv: ["/bin/sleep", "9"], env: { PATH: "/bin" }, cwd: "/", streams: false, stdin: false });
 * ```
 */
export async function startSupervisor(spec: SupervisorSpec): Promise<Started | SpawnFailure> {
  const env = _envBytes(spec.env);
  const args: string[] = [];
  if (spec.streams) args.push("-o");
  if (spec.stdin) args.push("-i");
  if (spec.runAs) {
    args.push("-u", String(spec.runAs.uid), "-g", String(spec.runAs.gid));
    if (spec.runAs.groups.length > 0) args.push("-G", spec.runAs.groups.join(","));
  }
  args.push("-k", String(Math.round(spec.graceMs)));
  args.push("-d", spec.cwd, "-e", String(env.length), spec.runsDir, spec.id, spec.program);
  args.push(...spec.argv);
  let r;
  try {
    r = await _run(spec.binary, args, env);
  } catch (e) {
    return {
      code: "spawn_failed",
      message: `cannot run the supervisor ${spec.binary}: ${(e as Error).message}`,
    };
  }
  return _started(r.report) ?? _failure(r.report, r.stderr, r.code);
}

/** A record of cmapp 0.1.0: the pids to follow. */
export interface LegacyPids {
  /** The application's pid and start time. */
  pid: number;
  /** Its start time in clock ticks since boot. */
  pidStart: number;
  /** The old supervisor's pid. */
  supervisorPid: number;
  /** Its start time. */
  supervisorStart: number;
  /** The boot they started in. */
  bootId: string;
}

/**
 * Starts a watcher (`cmapp-supervise -w`) for a run whose supervisor is
 * gone, from its pid record (or, for a record of 0.1.0, the pids given):
 * it follows the application if it still runs, and reports it lost when it
 * ends; or reports it lost at once. Either way it then answers on the run's
 * socket like a supervisor.
 *
 * @example
 * ```ts ignore
 * import { startWatcher } from "./supervisor.ts";
 * const r = await startWatcher(binary, runsDir, id);
 * ```
 */
export async function startWatcher(
  binary: string,
  runsDir: string,
  id: string,
  legacy?: LegacyPids,
): Promise<Started | SpawnFailure> {
  const args = ["-w"];
  if (legacy) {
    const l = legacy;
    args.push("-p", `${l.pid}:${l.pidStart}:${l.supervisorPid}:${l.supervisorStart}:${l.bootId}`);
  }
  args.push(runsDir, id);
  let r;
  try {
    r = await _run(binary, args, null);
  } catch (e) {
    return { code: "spawn_failed", message: `cannot run ${binary}: ${(e as Error).message}` };
  }
  return _started(r.report) ?? _failure(r.report, r.stderr, r.code);
}

/** Why a supervisor's socket could not be reached. */
export class LinkError extends Error {
  /**
   * "gone": nobody listens (the supervisor is dead); "retry": it could not
   * be told (out of file descriptors, no answer): ask again later, never
   * conclude anything from it.
   */
  readonly kind: "gone" | "retry";
  /** Builds the error. */
  constructor(kind: "gone" | "retry", message: string) {
    super(message);
    this.name = "LinkError";
    this.kind = kind;
  }
}

/** How long a supervisor may take to answer a greeting before we ask again later. */
const _GREETING_MS = 5000;

/**
 * Connects to a supervisor's socket and greets it; resolves with the answer's
 * first line, waiting at most `timeoutMs` for it (null: as long as it takes).
 */
async function _greet(
  path: string,
  greeting: string,
  timeoutMs: number | null = _GREETING_MS,
): Promise<{ conn: Deno.UnixConn; line: string; rest: Uint8Array }> {
  let conn: Deno.UnixConn;
  try {
    conn = await Deno.connect({ transport: "unix", path });
  } catch (e) {
    if (e instanceof Deno.errors.ConnectionRefused || e instanceof Deno.errors.NotFound) {
      throw new LinkError("gone", `no supervisor listens on ${path}`);
    }
    throw new LinkError("retry", `cannot connect to ${path}: ${(e as Error).message}`);
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const answer = (async () => {
      await conn.write(_enc.encode(greeting + "\n"));
      const buf = new Uint8Array(256);
      let have = 0;
      for (;;) {
        const n = await conn.read(buf.subarray(have));
        if (n === null) throw new LinkError("gone", `the supervisor on ${path} hung up`);
        have += n;
        const nl = buf.subarray(0, have).indexOf(10);
        if (nl >= 0) {
          return { line: _dec.decode(buf.subarray(0, nl)), rest: buf.slice(nl + 1, have) };
        }
        if (have === buf.length) throw new LinkError("gone", `garbage from the supervisor`);
      }
    })();
    const late = new Promise<never>((_, reject) => {
      if (timeoutMs === null) return;
      timer = setTimeout(
        () => reject(new LinkError("retry", `the supervisor on ${path} did not answer`)),
        timeoutMs,
      );
    });
    const r = await Promise.race([answer, late]);
    answer.catch(() => {});
    return { conn, ...r };
  } catch (e) {
    conn.close();
    if (e instanceof LinkError) throw e;
    throw new LinkError("retry", `${path}: ${(e as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

function _counts(o: string, e: string, i: string): StreamCounts {
  const n = (v: string) => /^\d{1,15}$/.test(v) ? Number(v) : null;
  return { stdout: n(o), stderr: n(e), stdin: n(i) };
}

/**
 * The control connection to a run's supervisor.
 *
 * @example
 * ```ts ignore
 * import { SupervisorLink } from "./supervisor.ts";
 * const link = await SupervisorLink.open("/var/lib/cmappserver/runs/1-ab.sock");
 * const exit = await link.ended; // how it ended, or null if the supervisor went away
 * if (exit) link.done();
 * ```
 */
export class SupervisorLink {
  /** The application's pid. */
  readonly pid: number;
  /** The supervisor's pid. */
  readonly supervisorPid: number;
  /** Resolves with the run's end, or null when the connection broke first. */
  readonly ended: Promise<SupervisorExit | null>;
  readonly #conn: Deno.UnixConn;
  #writes: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(conn: Deno.UnixConn, pid: number, supervisorPid: number, rest: Uint8Array) {
    this.#conn = conn;
    this.pid = pid;
    this.supervisorPid = supervisorPid;
    this.ended = this.#read(rest);
  }

  /**
   * Connects and reads the run's pid.
   * @throws {LinkError} "gone" when no supervisor is there, "retry" when it could not be told
   */
  static async open(path: string): Promise<SupervisorLink> {
    const { conn, line, rest } = await _greet(path, "ctl");
    const m = /^run (\d+) (\d+)$/.exec(line);
    if (!m) {
      conn.close();
      throw new LinkError("gone", `unexpected answer from the supervisor on ${path}`);
    }
    return new SupervisorLink(conn, Number(m[1]), Number(m[2]), rest);
  }

  async #read(rest: Uint8Array): Promise<SupervisorExit | null> {
    let text = _dec.decode(rest);
    const buf = new Uint8Array(512);
    try {
      for (;;) {
        const nl = text.indexOf("\n");
        if (nl >= 0) {
          const line = text.slice(0, nl);
          text = text.slice(nl + 1);
          const m = /^exit ([01]) (\S+) (\S+) (\S+) (.+)$/.exec(line);
          const outcome = m && parseStatusLine(m[5]);
          if (m && outcome) {
            return { recorded: m[1] === "1", outcome, counts: _counts(m[2], m[3], m[4]) };
          }
          continue;
        }
        if (text.length > 4096) return null;
        const n = await this.#conn.read(buf);
        if (n === null) return null;
        text += _dec.decode(buf.subarray(0, n));
      }
    } catch {
      return null;
    }
  }

  #send(line: string): void {
    if (this.#closed) return;
    const bytes = _enc.encode(line + "\n");
    this.#writes = this.#writes.then(() => this.#conn.write(bytes)).catch(() => {});
  }

  /** Sends `signal` to the run's process group and session. */
  kill(signal: number): void {
    this.#send(`kill ${signal}`);
  }

  /** SIGTERM to the run's session, then SIGKILL after `graceMs` unless it has ended. */
  stop(graceMs: number): void {
    this.#send(`stop ${Math.max(0, Math.round(graceMs))}`);
  }

  /** Closes the application's end of an output, as a closed pipe. */
  closeOutput(stream: "stdout" | "stderr"): void {
    this.#send(stream === "stdout" ? "close out" : "close err");
  }

  /** The run's end is recorded: the supervisor may exit. */
  done(): void {
    this.#send("done");
  }

  /** Closes the connection (the supervisor and its run go on). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#writes;
    try {
      this.#conn.close();
    } catch {
      // closed already
    }
    await this.ended;
  }
}

/** A stream connection to a supervisor, with where it starts. */
export interface OutputLink {
  /** The connection: the application's bytes, then its end. */
  conn: Deno.UnixConn;
  /** Offset in the stream of its first byte. */
  offset: number;
  /** Bytes the supervisor dropped, in all, while no cmappserver held the stream. */
  dropped: number;
  /** Bytes already read past the header. */
  first: Uint8Array;
}

/**
 * Takes one of the run's outputs from its supervisor.
 * @throws {LinkError}
 */
export async function openOutput(path: string, stream: "stdout" | "stderr"): Promise<OutputLink> {
  const { conn, line, rest } = await _greet(path, stream === "stdout" ? "out" : "err");
  const m = /^@(\d{1,15}) (\d{1,15})$/.exec(line);
  if (!m) {
    conn.close();
    throw new LinkError("gone", `unexpected answer from the supervisor on ${path}`);
  }
  return { conn, offset: Number(m[1]), dropped: Number(m[2]), first: rest };
}

/** The run's stdin through its supervisor. */
export interface InputLink {
  /** The connection. */
  conn: Deno.UnixConn;
  /** Bytes of stdin the supervisor had taken before this connection. */
  accepted: number;
}

/**
 * Takes the run's stdin at its supervisor. Its answer may take as long as
 * the application takes to read what an earlier cmappserver left in the
 * supervisor's socket: `timeoutMs` null waits for it.
 * @throws {LinkError}
 */
export async function openInput(
  path: string,
  timeoutMs: number | null = _GREETING_MS,
): Promise<InputLink> {
  const { conn, line } = await _greet(path, "in", timeoutMs);
  const m = /^@(\d{1,15})$/.exec(line);
  if (!m) {
    conn.close();
    throw new LinkError("gone", `unexpected answer from the supervisor on ${path}`);
  }
  return { conn, accepted: Number(m[1]) };
}

/**
 * Frames stdin bytes for the supervisor: a 4-byte big-endian length, then
 * the bytes; a length of 0 is the end of stdin.
 *
 * @example
 * ```ts
 * import { frameStdin } from "./supervisor.ts";
 * frameStdin(new Uint8Array([104, 105])); // 0 0 0 2 104 105
 * ```
 */
export function frameStdin(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}
