/**
 * Test harness: temporary key directories, and the real cmappserver and
 * cmappmgr programs started as child processes on 127.0.0.1.
 *
 * Set CMAPP_BUNDLE_DIR to a directory holding cmappserver.js and
 * cmappmgr.js (from `deno task bundle`) to test the bundles instead of the
 * sources.
 *
 * @module
 */

import { generateIdentity, type GenerateOptions } from "../tls/mod.ts";
import { programCommand } from "../tools/_programs.ts";

export { programCommand };

/** A temporary directory removed by `cleanup`. */
export interface TempDir {
  path: string;
  cleanup(): Promise<void>;
}

/** Makes a temporary directory. */
export async function tempDir(): Promise<TempDir> {
  const path = await Deno.makeTempDir({ prefix: "cmapp-test-" });
  return {
    path,
    async cleanup() {
      // Supervisors of runs a test left (they outlive every cmappserver), and their applications.
      await reapUnder(path);
      await Deno.remove(path, { recursive: true });
    },
  };
}

/** Writes a key directory with a fresh identity; returns its cert PEM. */
export async function writeIdentity(
  dir: string,
  options: Partial<GenerateOptions> = {},
): Promise<{ certPem: string; fingerprint: string }> {
  const id = await generateIdentity({
    commonName: options.commonName ?? "test",
    names: options.names ?? ["127.0.0.1", "localhost"],
    ...options,
  });
  await Deno.mkdir(`${dir}/trusted`, { recursive: true });
  await Deno.writeTextFile(`${dir}/key.pem`, id.keyPem, { mode: 0o600 });
  await Deno.chmod(`${dir}/key.pem`, 0o600);
  await Deno.writeTextFile(`${dir}/cert.pem`, id.certPem);
  return { certPem: id.certPem, fingerprint: id.info.fingerprint };
}

/** Adds a certificate to a key directory's trusted/. */
export async function trust(dir: string, name: string, certPem: string): Promise<void> {
  await Deno.mkdir(`${dir}/trusted`, { recursive: true });
  await Deno.writeTextFile(`${dir}/trusted/${name}.pem`, certPem);
}

/** A server key dir and a manager key dir that trust each other. */
export interface KeyPair {
  root: TempDir;
  server: string;
  manager: string;
}

/** Makes a server and a manager key directory that trust each other. */
export async function makeKeys(options: Partial<GenerateOptions> = {}): Promise<KeyPair> {
  const root = await tempDir();
  const server = `${root.path}/server`;
  const manager = `${root.path}/manager`;
  const s = await writeIdentity(server, { ...options, commonName: "cmappserver@test" });
  const m = await writeIdentity(manager, { ...options, commonName: "cmappmgr@test" });
  await trust(server, "manager", m.certPem);
  await trust(manager, "server", s.certPem);
  return { root, server, manager };
}

/** A running cmappserver child process. */
export interface ServerProcess {
  port: number;
  pid: number;
  /** Everything it has logged so far. */
  log(): string;
  /** Waits until its log matches `pattern` (or fails after `ms`). */
  waitForLog(pattern: RegExp, ms?: number): Promise<void>;
  /** SIGTERM, then waits for it to exit; returns its exit code. */
  stop(): Promise<number>;
  /** Settles when it has exited (on its own), with how. */
  readonly exited: Promise<Deno.CommandStatus>;
}

/** How to start a cmappserver beyond its arguments. */
export interface ServerStart {
  /** Variables added to its environment (e.g. CMAPP_CRASH_AT, LD_PRELOAD for faketime). */
  env?: Record<string, string>;
  /** A command it runs under, e.g. ["prlimit", "--nofile=64:64", "--"]. */
  wrap?: string[];
}

/** A free TCP port on 127.0.0.1 (for a server that must come back on the same one). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Starts cmappserver on 127.0.0.1, on an ephemeral port unless `-port` is given. */
export async function startServerProcess(
  keydir: string,
  extraArgs: string[] = [],
  how: ServerStart = {},
): Promise<ServerProcess> {
  const args = [
    ...programCommand("cmappserver"),
    "-keydir",
    keydir,
    "-bind",
    "127.0.0.1",
    ...(extraArgs.includes("-port") ? [] : ["-port", "0"]),
    "-loglevel",
    "debug",
    ...(extraArgs.includes("-statedir") ? [] : ["-statedir", `${keydir}-state`]),
    ...(extraArgs.includes("-config") ? [] : ["-config", "/dev/null"]),
    ...extraArgs,
  ];
  const [cmd, ...pre] = [...(how.wrap ?? []), Deno.execPath()];
  const child = new Deno.Command(cmd, {
    args: [...pre, ...args],
    env: how.env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const waiters = new Set<() => void>();
  const decoder = new TextDecoder();
  const reading = (async () => {
    for await (const chunk of child.stderr) {
      text += decoder.decode(chunk, { stream: true });
      for (const w of waiters) w();
    }
    for (const w of waiters) w();
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const waitForLog = async (pattern: RegExp, ms = 20_000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!pattern.test(text)) {
      if (exited) throw new Error(`cmappserver exited; log:\n${text}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${pattern} in cmappserver log:\n${text}`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        const w = () => resolve();
        waiters.add(w);
        timer = setTimeout(w, Math.min(left, 200));
      }).finally(() => clearTimeout(timer));
      waiters.clear();
    }
  };
  try {
    await waitForLog(/listening on 127\.0\.0\.1:(\d+)/);
  } catch (e) {
    if (!exited) child.kill("SIGKILL");
    await status;
    await reading;
    throw e;
  }
  const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(text)![1]);
  return {
    port,
    pid: child.pid,
    log: () => text,
    waitForLog,
    exited: status,
    async stop() {
      if (!exited) child.kill("SIGTERM");
      const s = await status;
      await reading;
      return s.code;
    },
  };
}

/** The outcome of one cmappmgr run. */
export interface MgrResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs cmappmgr with `args` to its end. */
export async function runMgr(args: string[], stdin?: string): Promise<MgrResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappmgr"), ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** Runs cmappserver with `args` to its end (keygen, usage errors). */
export async function runServerCli(args: string[]): Promise<MgrResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappserver"), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** cmappmgr arguments that reach `server` with the manager keys of `keys`. */
export function mgrArgs(keys: KeyPair, server: ServerProcess, ...more: string[]): string[] {
  return ["-node", "127.0.0.1", "-port", String(server.port), "-keydir", keys.manager, ...more];
}

/** True while a process (or process group, for a negative id) exists. */
export function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

/** Kills a process group if it still exists. */
export function killGroup(pgid: number): void {
  try {
    Deno.kill(-pgid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** Polls `check` every 50 ms until true, or throws after `ms`. */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  ms = 20_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A raw authenticated TLS connection for sending hand-made bytes. */
export interface RawTls {
  /** Sends bytes as they are. */
  write(bytes: Uint8Array): void;
  /** Resolves with every frame payload received until the server closes. */
  readUntilClose(): Promise<Uint8Array[]>;
  /** Resolves with the first `n` frame payloads (fails if the server closes first). */
  readFrames(n: number): Promise<Uint8Array[]>;
  /** Closes our side. */
  close(): Promise<void>;
}

/** Opens a mutual-TLS connection with the manager keys of `keydir`. */
export async function rawTls(keydir: string, port: number): Promise<RawTls> {
  const { connectTls, loadIdentity, loadTrust } = await import("../tls/mod.ts");
  const { FrameDecoder } = await import("../protocol/mod.ts");
  const { socket } = await connectTls({
    host: "127.0.0.1",
    port,
    identity: await loadIdentity(keydir),
    trust: await loadTrust(keydir),
    timeoutMs: 10_000,
  });
  const frames: Uint8Array[] = [];
  const decoder = new FrameDecoder();
  let notify = () => {};
  let isClosed = false;
  const closed = new Promise<void>((resolve) => {
    socket.on("data", (chunk: Uint8Array) => {
      frames.push(...decoder.push(chunk));
      notify();
    });
    socket.on("close", () => {
      isClosed = true;
      notify();
      resolve();
    });
  });
  return {
    write: (bytes) => void socket.write(bytes),
    async readUntilClose() {
      await closed;
      return frames;
    },
    async readFrames(n) {
      while (frames.length < n) {
        if (isClosed) throw new Error(`connection closed after ${frames.length} of ${n} frames`);
        await new Promise<void>((r) => notify = r);
      }
      return frames.slice(0, n);
    },
    async close() {
      socket.destroy();
      await closed;
    },
  };
}

/** A live process, as `ps` sees it (Deno cannot read /proc without --allow-all). */
export interface Proc {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  stat: string;
  args: string;
}

/** Every live (non-zombie) process. */
export async function processes(): Promise<Proc[]> {
  const out = await new Deno.Command("ps", {
    args: ["-e", "-o", "pid=,ppid=,pgid=,sid=,stat=,args="],
    stdout: "piped",
    stderr: "null",
  }).output();
  const procs: Proc[] = [];
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s?(.*)$/.exec(line);
    if (!m || m[5].startsWith("Z") || m[5].startsWith("X")) continue;
    procs.push({ pid: +m[1], ppid: +m[2], pgid: +m[3], sid: +m[4], stat: m[5], args: m[6] });
  }
  return procs;
}

/**
 * Ends every run supervised under `dir` (a test's directory): the
 * applications (the supervisors' children, by process group), then the
 * supervisors, which outlive cmappserver by design. Waits until they are gone.
 */
export async function reapUnder(dir: string): Promise<void> {
  const all = await processes();
  const sups = all.filter((p) => /cmapp-supervise/.test(p.args) && p.args.includes(dir));
  if (sups.length === 0) return;
  const ids = new Set(sups.map((p) => p.pid));
  for (const p of all) if (ids.has(p.ppid)) killGroup(p.pid);
  for (const p of sups) killGroup(p.pid);
  await eventually("the supervisors under the test's directory to end", async () => {
    const live = new Set((await processes()).map((p) => p.pid));
    return sups.every((p) => !live.has(p.pid));
  });
}

/** A pid that may be a process we started (never init, never this process). */
export function ours(pid: unknown): pid is number {
  return typeof pid === "number" && Number.isInteger(pid) && pid > 1 && pid !== Deno.pid;
}

/**
 * The pids of a run as its files tell them: the application's and its
 * supervisor's (from ID.pid while the supervisor lives; the application's
 * also from ID.exit, and both from a record of 0.1.0).
 */
export function runPids(stateDir: string, id: string): { pid?: number; supervisorPid?: number } {
  const read = (ext: string) => {
    try {
      return Deno.readTextFileSync(`${stateDir}/runs/${id}${ext}`);
    } catch {
      return "";
    }
  };
  const out: { pid?: number; supervisorPid?: number } = {};
  const pidRec = read(".pid").trim().split(" ");
  if (pidRec.length === 5) {
    out.supervisorPid = Number(pidRec[1]);
    out.pid = Number(pidRec[3]);
  }
  const exitPid = /^pid (\d+)$/m.exec(read(".exit"));
  if (exitPid) out.pid ??= Number(exitPid[1]);
  try {
    const r = JSON.parse(read(".json"));
    if (typeof r.pid === "number") out.pid ??= r.pid;
    if (typeof r.supervisorPid === "number") out.supervisorPid ??= r.supervisorPid;
  } catch {
    // damaged (on purpose, in some tests), or gone
  }
  return out;
}

/** The supervisors (and watchers) of a state directory: their argv names its runs/. */
export async function supervisorsOf(stateDir: string): Promise<number[]> {
  return (await processes())
    .filter((p) => /cmapp-supervise/.test(p.args) && p.args.includes(`${stateDir}/runs`))
    .map((p) => p.pid);
}

/**
 * Ends every application recorded in the state directories and every one in
 * `pids`, then their supervisors (which outlive cmappserver, holding each
 * exit status until a cmappserver collects it), and waits for all of them to
 * be gone before the directories are removed.
 */
export async function reapRuns(stateDirs: string[], pids: Set<number>): Promise<void> {
  for (const dir of stateDirs) {
    try {
      for (const e of Deno.readDirSync(`${dir}/runs`)) {
        if (!e.name.endsWith(".json")) continue;
        const { pid } = runPids(dir, e.name.slice(0, -".json".length));
        if (ours(pid)) pids.add(pid);
      }
    } catch {
      // no state directory
    }
  }
  for (const pid of pids) if (ours(pid)) killGroup(pid);
  await eventually(
    "the applications to end",
    async () => {
      const live = new Set((await processes()).map((p) => p.pid));
      return [...pids].every((p) => !live.has(p));
    },
    10_000,
  );
  const supervisors = (await Promise.all(stateDirs.map(supervisorsOf))).flat();
  for (const p of supervisors) if (ours(p)) killGroup(p);
  await eventually(
    "the supervisors to end",
    async () => {
      const live = new Set((await processes()).map((p) => p.pid));
      return supervisors.every((p) => !live.has(p));
    },
    10_000,
  );
}

/** True while the process exists and is not a zombie. */
export async function running(pid: number): Promise<boolean> {
  return (await processes()).some((p) => p.pid === pid);
}

/** Live processes of a session or process group (like `pgrep -s ID` plus `pgrep -g ID`). */
export async function members(id: number): Promise<Proc[]> {
  return (await processes()).filter((p) => p.pgid === id || p.sid === id);
}

/** A cmappmgr child process started by {@linkcode startMgrProcess}. */
export interface MgrProcess {
  pid: number;
  /** Its outcome, once it has exited. */
  result: Promise<MgrResult>;
  /** When it was seen to exit (ms since the epoch), or null while it runs. */
  readonly endedAt: number | null;
  /** True once it has exited. */
  readonly done: boolean;
  /** Sends it a signal (ignored once it is gone). */
  signal(sig: Deno.Signal): void;
  /** SIGKILL unless gone, then waits for it. */
  kill(): Promise<void>;
}

/** Starts cmappmgr with `args` in the background (stdin /dev/null, output captured). */
export function startMgrProcess(args: string[]): MgrProcess {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappmgr"), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let endedAt: number | null = null;
  const d = new TextDecoder();
  const result = child.output().then((out) => {
    endedAt = Date.now();
    return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
  });
  const signal = (sig: Deno.Signal) => {
    if (endedAt !== null) return;
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  };
  return {
    pid: child.pid,
    result,
    get endedAt() {
      return endedAt;
    },
    get done() {
      return endedAt !== null;
    },
    signal,
    async kill() {
      signal("SIGKILL");
      await result.catch(() => {});
    },
  };
}

/** `p`, or a failure naming `what` after `ms` (a bound against hanging, not a timing check). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Occurrences of `re` in `text`. */
export function countMatches(text: string, re: RegExp): number {
  return text.match(new RegExp(re.source, re.flags.includes("g") ? re.flags : re.flags + "g"))
    ?.length ?? 0;
}

/** Min, median, 95th percentile and max of `xs` (all 0 when empty). */
export function summarize(
  xs: number[],
): { n: number; min: number; p50: number; p95: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : 0;
  return { n: s.length, min: s[0] ?? 0, p50: at(0.5), p95: at(0.95), max: s[s.length - 1] ?? 0 };
}

/**
 * Prints a scenario's measured figures as one `RELIABILITY name: {json}`
 * line on stderr (shown even under `deno test -q`), and appends it to the
 * file named by CMAPP_RELIABILITY_OUT when set (RELIABILITY.md's figures).
 */
export function reportFigures(name: string, figures: Record<string, unknown>): void {
  const line = `RELIABILITY ${name}: ${JSON.stringify(figures)}`;
  console.error(line);
  const out = Deno.env.get("CMAPP_RELIABILITY_OUT");
  if (out) Deno.writeTextFileSync(out, line + "\n", { append: true });
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Non-empty lines of a file (0 when it does not exist): counter files. */
export async function countLines(path: string): Promise<number> {
  const text = await Deno.readTextFile(path).catch(() => "");
  return text.split("\n").filter((l) => l !== "").length;
}

/**
 * A shell command that appends a line to `counter`, waits for the file
 * `marker` (looking every `pollSeconds`, no busy loop), then exits `code`;
 * `extra` are its positional arguments (they make the command line differ).
 */
export function waiter(
  counter: string,
  marker: string,
  code: number,
  pollSeconds = 0.05,
  ...extra: string[]
): string[] {
  return [
    "/bin/sh",
    "-c",
    `echo started >> ${counter}; while [ ! -e ${marker} ]; do sleep ${pollSeconds}; done; exit ${code}`,
    "waiter",
    ...extra,
  ];
}

/**
 * Everything a test starts against real cmappserver processes, so that
 * `cleanup` ends it all: cmappmgr processes, servers, every application
 * recorded in the state directory (and its supervisor) or added to `pids`,
 * and the temporary directories. Tests extend it with what else they start
 * ({@linkcode ServerFixture.endOthers}).
 */
export class ServerFixture {
  readonly keys: KeyPair;
  readonly servers: ServerProcess[] = [];
  readonly mgrs: MgrProcess[] = [];
  readonly pids = new Set<number>();

  constructor(keys: KeyPair) {
    this.keys = keys;
  }

  /** A fixture with fresh keys. */
  static async create<T extends ServerFixture>(this: new (keys: KeyPair) => T): Promise<T> {
    return new this(await makeKeys());
  }

  /** A scratch directory for marker and counter files. */
  get dir(): string {
    return this.keys.root.path;
  }

  /** The state directory every server of this fixture uses. */
  get stateDir(): string {
    return `${this.keys.root.path}/state`;
  }

  /** Starts a cmappserver on the fixture's state directory. */
  async server(...extra: string[]): Promise<ServerProcess> {
    return await this.serverWith({}, ...extra);
  }

  /** Starts a cmappserver on the fixture's state directory, with an environment or a wrapper. */
  async serverWith(how: ServerStart, ...extra: string[]): Promise<ServerProcess> {
    const state = extra.includes("-statedir") ? [] : ["-statedir", this.stateDir];
    const s = await startServerProcess(this.keys.server, [...state, ...extra], how);
    this.servers.push(s);
    return s;
  }

  /** Starts cmappmgr with `args` in the background; `cleanup` ends it. */
  startMgr(args: string[]): MgrProcess {
    const m = startMgrProcess(args);
    this.mgrs.push(m);
    return m;
  }

  /** SIGKILL to a cmappserver; waits until it is gone. */
  async crash(server: ServerProcess): Promise<void> {
    Deno.kill(server.pid, "SIGKILL");
    await server.stop().catch(() => {});
    if (await running(server.pid)) throw new Error(`cmappserver ${server.pid} survived SIGKILL`);
  }

  /** What a subclass must end after the managers and before the runs and servers. */
  protected endOthers(): void | Promise<void> {}

  /** Called once everything has ended, before the directories are removed (unmounts). */
  beforeRemove: () => Promise<void> = () => Promise.resolve();

  /** Ends everything the test started. */
  async cleanup(): Promise<void> {
    await Promise.all(this.mgrs.map((m) => m.kill()));
    await this.endOthers();
    try {
      await reapRuns([this.stateDir], this.pids);
    } finally {
      for (const s of this.servers) await s.stop().catch(() => {});
      await this.beforeRemove();
      await this.keys.root.cleanup();
    }
  }
}

/** The runtime's cache directory, as the programs started by tests use it. */
export async function denoDir(): Promise<string> {
  const set = Deno.env.get("DENO_DIR");
  if (set) return set;
  const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
    .output();
  return JSON.parse(new TextDecoder().decode(out.stdout)).denoDir;
}

/**
 * Writes `path`, an executable sh wrapper that `exec`s one of our programs
 * as the tests run it (permission set, runtime flags, the same cache), for
 * callers with a bare environment: init scripts, cluster agents, units.
 */
export async function writeProgramWrapper(
  path: string,
  program: "cmappserver" | "cmappmgr",
): Promise<void> {
  const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const argv = [Deno.execPath(), ...programCommand(program)].map(q).join(" ");
  await Deno.writeTextFile(
    path,
    `#!/bin/sh\nDENO_DIR=${q(await denoDir())}\nexport DENO_DIR\nexec ${argv} "$@"\n`,
  );
  await Deno.chmod(path, 0o755);
}
