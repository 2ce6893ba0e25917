/**
 * cmapp against OpenSSH, side by side in one run, on 127.0.0.1.
 *
 * Sets up a private sshd (its own config, port and host key; public key
 * authentication for one generated client key) and a real cmappserver
 * (temporary keys and state, -max_processes 2000), then measures both,
 * interleaved (each iteration runs every variant, in rotating order) so
 * that noise from elsewhere on the machine hits both alike:
 *
 *  1. launch to exit of `true` (cmappmgr vs ssh, whole command), and the
 *     launch overhead of cmapp-supervise (asked to start → the application
 *     runs, against Deno starting the same program directly);
 *  2. exit notification latency (the guest writes $EPOCHREALTIME just
 *     before exiting; until the host side returns), also through the client
 *     API, with the pieces of the path measured apart;
 *  3. 30 and 1000 simultaneous `sleep 1; exit K` over one connection, with
 *     memory at the peak, vs sshd with separate and multiplexed sessions;
 *  4. daemon memory: idle, and per monitored process (0, 100, 500 sleeps,
 *     then 100 more with streams), daemon and supervisors (cmapp-supervise
 *     detaches: supervisors are found by their argv, which names the state
 *     directory's runs/); sshd per session;
 *  5. stdout and stdin throughput (1 GiB; -quick: 256 MiB), with CPU time;
 *  6. cmappmgr start-up (-version) and peak memory following a run.
 *
 * Usage: deno run -q --no-prompt -P=cmapp bench/run.ts [-quick] [-only 1,3]
 *        [-no-ssh] [-out DIR] [-keep]
 *
 * Full mode writes bench/results/latest.json, latest.md and latency.svg, and
 * the results table of BENCHMARKS.md (between its markers); -quick writes
 * quick.json, quick.md and quick-latency.svg under bench/results/tmp/
 * (ignored by git). Progress goes to stderr, the table to stdout.
 *
 * @module
 */

import type { Client } from "../manager/mod.ts";
import { PROTOCOL_VERSION, shellExitCode, SOFTWARE_VERSION } from "../protocol/mod.ts";
import { programCommand, ROOT, scriptCommand } from "../tools/_programs.ts";
import {
  cmappClient,
  type CmappKeys,
  type CmappServer,
  makeCmappKeys,
  mgrArgs,
  shq,
  startCmappServer,
  startTlsSender,
} from "./_cmapp.ts";
import {
  capture,
  cpuSeconds,
  delay,
  followSupervisorCpu,
  note,
  pool,
  processTree,
  type ProcMem,
  psRss,
  quantile,
  round,
  summarize,
  timedRun,
  wallMs,
} from "./_lib.ts";
import { type Sshd, type SshMaster, startMaster, startSshd } from "./_sshd.ts";
import { renderMarkdown, renderSvg } from "./_report.ts";
import { type StampedRun, SupervisorBench } from "./_supervise.ts";

// ------------------------------------------------------------------ options

const argv = [...Deno.args];
const flag = (name: string) => {
  const i = argv.findIndex((a) => a === `-${name}` || a === `--${name}`);
  if (i < 0) return false;
  argv.splice(i, 1);
  return true;
};
const opt = (name: string) => {
  const i = argv.findIndex((a) => a === `-${name}` || a === `--${name}`);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const QUICK = flag("quick");
const NO_SSH = flag("no-ssh");
const KEEP = flag("keep");
const ONLY = new Set((opt("only") ?? "1,2,3,4,5,6").split(",").map(Number));
const OUT = opt("out") ?? (QUICK ? `${ROOT}/bench/results/tmp` : `${ROOT}/bench/results`);
if (argv.length > 0) {
  console.error(`bench/run.ts: unknown arguments ${argv.join(" ")}
usage: deno run -q --no-prompt -P=cmapp bench/run.ts [-quick] [-only 1,2,..] [-no-ssh] [-out DIR] [-keep]`);
  Deno.exit(2);
}

/** Sizes of everything, by mode. */
const P = QUICK
  ? {
    launchRuns: 20,
    latencyRuns: 20,
    warmup: 1,
    concurrency: [30],
    sshConcurrency: [30],
    memLevels: [0, 30, 60],
    memStreamRuns: 30,
    sshMemSessions: 5,
    multiConnections: 0,
    multiRuns: 0,
    streamBytes: 256 * 1024 * 1024,
    streamReps: 1,
    versionRuns: 8,
  }
  : {
    launchRuns: 50,
    latencyRuns: 50,
    warmup: 2,
    concurrency: [30, 1000],
    sshConcurrency: [30, 500],
    memLevels: [0, 100, 500],
    memStreamRuns: 100,
    sshMemSessions: 50,
    multiConnections: 10,
    multiRuns: 150,
    streamBytes: 1024 * 1024 * 1024,
    // One GiB is a few seconds: single samples varied by ±15 % between runs.
    streamReps: 3,
    versionRuns: 30,
  };

// ------------------------------------------------------------------ context

interface Ctx {
  tmp: string;
  keys: CmappKeys;
  server: CmappServer;
  client: Client;
  sshd: Sshd | null;
  master: SshMaster | null;
  /** Application pids we launched through cmapp and may have to kill. */
  apps: Set<number>;
}

// deno-lint-ignore no-explicit-any
type Json = any;
const results: Json = {
  meta: {},
  launchToExit: null,
  exitLatency: null,
  concurrency: null,
  memory: null,
  throughput: null,
  cmappmgr: null,
  errors: {},
};

let runSeq = 0;
const runName = (tag: string) => `bench-${tag}-${Date.now().toString(36)}-${runSeq++}`;

/** Rotates a list by `i` (interleaving: each variant takes every position in turn). */
function rotate<T>(list: T[], i: number): T[] {
  const k = i % list.length;
  return [...list.slice(k), ...list.slice(0, k)];
}

/** cmappmgr's whole command line through Deno. */
function mgr(ctx: Ctx, argvRemote: string[], options: string[] = []): [string, string[]] {
  return [Deno.execPath(), mgrArgs(ctx.keys, ctx.server, argvRemote, options)];
}

/** ssh's whole command line; the remote command is one shell string. */
function ssh(ctx: Ctx, remote: string, mux = false): [string, string[]] {
  const base = mux ? ctx.master!.args : ctx.sshd!.sshArgs();
  return ["ssh", [...base, remote]];
}

/** Launch + exit notification through the API on an open connection. */
async function apiRun(
  client: Client,
  argvRemote: string[],
  tag: string,
  streams = false,
): Promise<{ code: number; endWall: number; endPerf: number; run: string }> {
  const { run } = await client.launch(argvRemote, { name: runName(tag), streams });
  if (streams) {
    client.onOutput(run, () => {});
    client.grant(run, "stdout", 1 << 20);
    client.grant(run, "stderr", 1 << 20);
  }
  const exit = await client.wait(run);
  const endWall = wallMs();
  const endPerf = performance.now();
  // Untimed, but awaited so that it does not overlap the next measurement.
  await client.release(run).catch(() => {});
  return { code: shellExitCode(exit), endWall, endPerf, run };
}

// ------------------------------------------------------------ 1. launch to exit

async function launchToExit(ctx: Ctx): Promise<Json> {
  const n = P.launchRuns;
  note(`1. launch to exit: ${n} runs each, interleaved`);
  type V = { name: string; run: () => Promise<number> };
  const fail = (what: string, code: number, err = "") => {
    throw new Error(`${what} exited ${code}: ${err.trim().slice(0, 500)}`);
  };
  const variants: V[] = [
    {
      name: "cmappmgr",
      run: async () => {
        const r = await timedRun(...mgr(ctx, ["true"]));
        if (r.code !== 0) fail("cmappmgr", r.code, r.stderr);
        return r.ms;
      },
    },
    {
      name: "api_connect",
      run: async () => {
        const t0 = performance.now();
        const c = await cmappClient(ctx.keys, ctx.server);
        const r = await apiRun(c, ["true"], "l");
        const ms = r.endPerf - t0;
        c.close();
        await c.closed;
        if (r.code !== 0) fail("api", r.code);
        return ms;
      },
    },
    {
      name: "api_open",
      run: async () => {
        const t0 = performance.now();
        const r = await apiRun(ctx.client, ["true"], "l");
        if (r.code !== 0) fail("api", r.code);
        return r.endPerf - t0;
      },
    },
  ];
  if (ctx.sshd) {
    variants.push({
      name: "ssh",
      run: async () => {
        const r = await timedRun(...ssh(ctx, "true"));
        if (r.code !== 0) fail("ssh", r.code, r.stderr);
        return r.ms;
      },
    });
  }
  if (ctx.master) {
    variants.push({
      name: "ssh_mux",
      run: async () => {
        const r = await timedRun(...ssh(ctx, "true", true));
        if (r.code !== 0) fail("ssh (mux)", r.code, r.stderr);
        return r.ms;
      },
    });
  }
  const samples: Record<string, number[]> = {};
  for (const v of variants) samples[v.name] = [];
  for (let i = -P.warmup; i < n; i++) {
    for (const v of rotate(variants, i + P.warmup)) {
      const ms = await v.run();
      if (i >= 0) samples[v.name].push(round(ms, 3));
    }
  }
  const out: Json = { runs: n, unit: "ms", summary: {}, samples };
  for (const [k, s] of Object.entries(samples)) out.summary[k] = summarize(s);
  out.overhead = await launchOverhead(ctx);
  return out;
}

/**
 * The launch overhead of the supervisor: from asking to start a run until
 * the application runs (its first `$EPOCHREALTIME` stamp), through
 * cmapp-supervise as cmappserver starts it (`startSupervisor()`, no network,
 * no run table), against Deno starting the same bash directly; and, for
 * scale, through the API on the open connection (network, daemon, run
 * record, supervisor). Interleaved, after one warm-up round.
 */
async function launchOverhead(ctx: Ctx): Promise<Json> {
  const n = P.latencyRuns;
  note(`1. launch overhead of cmapp-supervise: ${n} runs each, interleaved`);
  const sb = await SupervisorBench.open(`${ctx.tmp}/launch-overhead`);
  const runs: Record<string, StampedRun[]> = { direct: [], supervised: [], api: [] };
  const dir = `${ctx.tmp}/launch-stamps`;
  await Deno.mkdir(dir, { recursive: true });
  let k = 0;
  const api = async (): Promise<StampedRun> => {
    const f = `${dir}/api-${k++}`;
    const t0 = wallMs();
    const { run } = await ctx.client.launch(
      ["bash", "-c", `echo $EPOCHREALTIME > ${f}; sleep 0.05`],
      { name: runName("o") },
    );
    const answered = wallMs();
    await ctx.client.wait(run);
    await ctx.client.release(run).catch(() => {});
    const ts = Number((await Deno.readTextFile(f)).trim().replace(",", ".")) * 1000;
    return { launchMs: ts - t0, answeredMs: answered - t0, exitMs: NaN };
  };
  const variants: [string, () => Promise<StampedRun>][] = [
    ["direct", () => sb.direct(0.05)],
    ["supervised", () => sb.supervised(0.05)],
    ["api", api],
  ];
  try {
    for (let i = -P.warmup; i < n; i++) {
      for (const [name, run] of rotate(variants, i + P.warmup)) {
        const r = await run();
        if (i >= 0) runs[name].push(r);
      }
    }
  } finally {
    const left = await sb.close();
    if (left > 0) note(`   ${left} supervisor(s) left behind by the launch probe (killed)`);
  }
  const launch = (name: string) => summarize(runs[name].map((r) => round(r.launchMs, 3)));
  const answered = (name: string) => summarize(runs[name].map((r) => round(r.answeredMs, 3)));
  const [d, sv, a] = [launch("direct"), launch("supervised"), launch("api")];
  return {
    runs: n,
    unit: "ms",
    method: "asked to start (harness wall clock) → the application's first stamp " +
      "(bash -c 'echo $EPOCHREALTIME > F; sleep 0.05'); direct: Deno.Command().spawn() of the " +
      "same bash (stdio null, same environment); supervised: startSupervisor() of server/" +
      "supervisor.ts with the installed cmapp-supervise on a private state directory, then " +
      "SupervisorLink.open, link.ended, link.done(); api: client.launch() on the open " +
      "connection (network, daemon, run record synced, supervisor). Overhead = supervised " +
      "quantile − direct quantile",
    direct: d,
    supervised: sv,
    api: a,
    overheadP50Ms: round(sv.p50 - d.p50, 3),
    overheadP95Ms: round(sv.p95 - d.p95, 3),
    apiOverheadP50Ms: round(a.p50 - d.p50, 3),
    answered: {
      directSpawnReturned: answered("direct"),
      startSupervisorResolved: answered("supervised"),
      apiLaunchResolved: answered("api"),
    },
    samples: {
      direct: runs.direct.map((r) => round(r.launchMs, 3)),
      supervised: runs.supervised.map((r) => round(r.launchMs, 3)),
      api: runs.api.map((r) => round(r.launchMs, 3)),
    },
  };
}

// ---------------------------------------------------- 2. exit notification latency

async function exitLatency(ctx: Ctx): Promise<Json> {
  const n = P.latencyRuns;
  note(`2. exit notification latency: ${n} runs each, interleaved`);
  const dir = `${ctx.tmp}/ts`;
  await Deno.mkdir(dir, { recursive: true });
  // bash's $EPOCHREALTIME is a builtin: no process is started after the
  // timestamp is taken, the shell exits right after writing it.
  const stamp = (f: string) => `echo $EPOCHREALTIME > ${f}`;
  const readStamp = async (f: string) => {
    const t = (await Deno.readTextFile(f)).trim().replace(",", ".");
    return Number(t) * 1000;
  };
  // For the API runs: when the supervisor wrote the status file (its mtime).
  const recorded: { stamp: string; file: string; end: number }[] = [];
  type V = { name: string; run: (f: string) => Promise<number> };
  const variants: V[] = [
    {
      name: "cmappmgr",
      run: async (f) => (await timedRun(...mgr(ctx, ["bash", "-c", stamp(f)]))).endWall,
    },
    {
      name: "api",
      run: async (f) => {
        const r = await apiRun(ctx.client, ["bash", "-c", stamp(f)], "x");
        recorded.push({
          stamp: f,
          file: `${ctx.server.stateDir}/runs/${r.run}.exit`,
          end: r.endWall,
        });
        return r.endWall;
      },
    },
    {
      name: "api_streams",
      run: async (f) => (await apiRun(ctx.client, ["bash", "-c", stamp(f)], "x", true)).endWall,
    },
  ];
  if (ctx.sshd) {
    variants.push({
      name: "ssh",
      run: async (f) => (await timedRun(...ssh(ctx, stamp(f)))).endWall,
    });
  }
  if (ctx.master) {
    variants.push({
      name: "ssh_mux",
      run: async (f) => (await timedRun(...ssh(ctx, stamp(f), true))).endWall,
    });
  }
  const samples: Record<string, number[]> = {};
  for (const v of variants) samples[v.name] = [];
  let k = 0;
  for (let i = -P.warmup; i < n; i++) {
    for (const v of rotate(variants, i + P.warmup)) {
      const f = `${dir}/${v.name}-${k++}`;
      const end = await v.run(f);
      const lat = end - await readStamp(f);
      if (i >= 0) samples[v.name].push(round(lat, 3));
    }
  }
  // Where the API's time goes: guest exit → status file written by the
  // supervisor (its mtime) → wait() resolved.
  const toSup: number[] = [];
  const toWait: number[] = [];
  for (const r of recorded.slice(P.warmup)) {
    const m = Number((await capture("stat", ["-c", "%.9Y", r.file])).trim()) * 1000;
    if (!Number.isFinite(m) || m === 0) continue;
    const ts = await readStamp(r.stamp);
    toSup.push(round(m - ts, 3));
    toWait.push(round(r.end - m, 3));
  }
  const diagnostics = await latencyDiagnostics(ctx, stamp, readStamp);
  // The two clocks agree: Date.now() against timeOrigin + performance.now().
  const drift = Date.now() - wallMs();
  const out: Json = {
    runs: n,
    unit: "ms",
    method: "guest: bash -c 'echo $EPOCHREALTIME > FILE' (a builtin, the last thing before " +
      "exit); host: the harness's wall clock (performance.timeOrigin + performance.now()) " +
      "when the cmappmgr/ssh process's exit is seen, or when client.wait() resolves",
    clockDriftMs: round(drift, 3),
    apiBreakdown: {
      guestExitToStatusFile: summarize(toSup),
      statusFileToWaitResolved: summarize(toWait),
      note: "status file time = the mtime of runs/ID.exit (written by cmapp-supervise after " +
        "waitpid, to a temporary name and renamed); the rest is: the supervisor's `exit` line " +
        "on its control socket, cmappserver's exit listener, the notification; the client " +
        "decodes it",
    },
    diagnostics,
    summary: {},
    samples,
  };
  for (const [name, s] of Object.entries(samples)) out.summary[name] = summarize(s);
  return out;
}

/**
 * Pieces of the exit notification path, to say where the time goes:
 * - the protocol round trip on an open connection (ping);
 * - a Deno process seeing its own child's exit (child.status), the floor
 *   for any Deno daemon;
 * - the same through cmapp-supervise, started and followed as cmappserver
 *   does it (startSupervisor, SupervisorLink.open, link.ended), in the
 *   harness: the daemon's path minus the network and the run table;
 * - cmappmgr's timeline from its log file: guest exit → "exited" logged
 *   (after the release round trip) → process exit seen.
 */
async function latencyDiagnostics(
  ctx: Ctx,
  stamp: (f: string) => string,
  readStamp: (f: string) => Promise<number>,
): Promise<Json> {
  const n = QUICK ? 10 : 20;
  const dir = `${ctx.tmp}/diag`;
  await Deno.mkdir(dir, { recursive: true });
  const ping: number[] = [];
  for (let i = 0; i < n * 2; i++) {
    const t0 = performance.now();
    await ctx.client.ping();
    ping.push(round(performance.now() - t0, 3));
  }
  // release: the round trip cmappmgr makes after the exit, before it exits
  // (the server records the delivery with an fsync'd file first).
  const release: number[] = [];
  for (let i = 0; i < n; i++) {
    const { run } = await ctx.client.launch(["true"], { name: runName("r") });
    await ctx.client.wait(run);
    const t0 = performance.now();
    await ctx.client.release(run);
    release.push(round(performance.now() - t0, 3));
  }
  // The application sleeps 0.1 s first, so that it ends after the start was
  // answered and the control connection is open (as in the daemon).
  const direct: number[] = [];
  const sup: number[] = [];
  const sb = await SupervisorBench.open(`${dir}/supervise`);
  try {
    for (let i = 0; i < n; i++) {
      direct.push(round((await sb.direct(0.1)).exitMs, 3));
      sup.push(round((await sb.supervised(0.1)).exitMs, 3));
    }
  } finally {
    const left = await sb.close();
    if (left > 0) note(`   ${left} supervisor(s) left behind by the exit probe (killed)`);
  }
  const logged: number[] = [];
  const after: number[] = [];
  for (let i = 0; i < (QUICK ? 5 : 10); i++) {
    const f = `${dir}/mgr-${i}`;
    const log = `${dir}/mgr-${i}.log`;
    const r = await timedRun(...mgr(ctx, ["bash", "-c", stamp(f)], ["-hostlogfile", log]));
    const text = await Deno.readTextFile(log).catch(() => "");
    const line = text.split("\n").find((l) => / exited with /.test(l));
    if (r.code !== 0 || !line) continue;
    const at = Date.parse(line.split(" ")[0]);
    const ts = await readStamp(f);
    logged.push(round(at - ts, 1));
    after.push(round(r.endWall - at, 1));
  }
  return {
    pingRoundTripMs: summarize(ping),
    releaseRoundTripMs: summarize(release),
    denoSeesChildExitMs: summarize(direct),
    throughSupervisorMs: summarize(sup),
    cmappmgrGuestExitToExitLoggedMs: summarize(logged),
    cmappmgrExitLoggedToProcessExitMs: summarize(after),
    notes: "denoSeesChildExit: bash -c 'sleep 0.1; echo $EPOCHREALTIME > F' started directly " +
      "by the harness (Deno), stamp to child.status; throughSupervisor: the same bash under " +
      "cmapp-supervise (server/supervisor.ts startSupervisor, SupervisorLink.open), stamp to " +
      "link.ended (then link.done(), link.close()); cmappmgr timeline from its -hostlogfile " +
      "(millisecond timestamps): the 'exited' line is written after the release round trip, " +
      "then cmappmgr closes and exits",
  };
}

// ------------------------------------------------------------------ 3. concurrency

/** The memory of cmappserver and of its supervisors, as {@linkcode processTree} reads it. */
function cmappTree(server: CmappServer): Promise<ProcMem[]> {
  // cmapp-supervise detaches (its parent becomes init): its processes are
  // found by argv, which names the state directory's runs/.
  return processTree([server.pid], "^$", `${server.stateDir}/runs`);
}

/** cmappserver's memory and its supervisors', from one sample of {@linkcode cmappTree}. */
function cmappMem(tree: ProcMem[], serverPid: number) {
  const daemon = tree.find((p) => p.pid === serverPid);
  const sups = tree.filter((p) => p.supervisor > 0);
  const plain = sups.filter((p) => p.supervisor === 1);
  const streamed = sups.filter((p) => p.supervisor === 2);
  const parents = new Set(tree.map((p) => p.ppid));
  const s = (l: ProcMem[], f: "rss" | "pss" | "priv") => l.reduce((a, p) => a + p[f], 0);
  return {
    daemonRssKiB: daemon?.rss ?? 0,
    daemonPssKiB: daemon?.pss ?? 0,
    daemonPrivKiB: daemon?.priv ?? 0,
    daemonAnonKiB: daemon?.anon ?? 0,
    supervisors: sups.length,
    /** Supervisors whose application still runs (it is their child). */
    supervising: sups.filter((p) => parents.has(p.pid)).length,
    supervisorsRssKiB: s(sups, "rss"),
    supervisorsPssKiB: s(sups, "pss"),
    supervisorsPrivKiB: s(sups, "priv"),
    plainSupervisors: plain.length,
    plainSupervisorsRssKiB: s(plain, "rss"),
    plainSupervisorsPssKiB: s(plain, "pss"),
    plainSupervisorsPrivKiB: s(plain, "priv"),
    streamSupervisors: streamed.length,
    streamSupervisorsRssKiB: s(streamed, "rss"),
    streamSupervisorsPssKiB: s(streamed, "pss"),
    streamSupervisorsPrivKiB: s(streamed, "priv"),
    sleeping: tree.filter((p) => p.comm === "sleep").length,
  };
}

/** sshd's memory: every sshd process below the listener (the listener apart). */
function sshdMem(tree: ProcMem[], listener: number) {
  const sess = tree.filter((p) => p.comm.startsWith("sshd") && p.pid !== listener);
  const s = (l: ProcMem[], f: "rss" | "pss" | "priv") => l.reduce((a, p) => a + p[f], 0);
  const lst = tree.find((p) => p.pid === listener);
  return {
    listenerRssKiB: lst?.rss ?? 0,
    sshdProcesses: sess.length,
    sshdRssKiB: s(sess, "rss"),
    sshdPssKiB: s(sess, "pss"),
    sshdPrivKiB: s(sess, "priv"),
    sleeping: tree.filter((p) => p.comm === "sleep").length,
  };
}

/** Samples process trees until stopped. */
async function sampler<T>(
  read: () => Promise<ProcMem[]>,
  reduce: (t: ProcMem[]) => T,
  everyMs = 200,
): Promise<{ stop(): Promise<T[]> }> {
  const samples: T[] = [];
  let done = false;
  const loop = (async () => {
    while (!done) {
      samples.push(reduce(await read()));
      await delay(everyMs);
    }
  })();
  await delay(0);
  return {
    async stop() {
      done = true;
      await loop;
      return samples;
    },
  };
}

/** The sample with the highest `k`. */
function peakBy<T extends object, K extends keyof T>(samples: T[], k: K): T | null {
  let best: T | null = null;
  for (const s of samples) if (best === null || s[k] > best[k]) best = s;
  return best;
}

async function cmappConcurrency(ctx: Ctx, n: number, connections = 1): Promise<Json> {
  note(`3. cmapp: ${n} simultaneous runs over ${connections} connection(s)`);
  const clients = await Promise.all(
    Array.from({ length: connections }, () => cmappClient(ctx.keys, ctx.server)),
  );
  const pid = ctx.server.pid;
  const smp = await sampler(() => cmappTree(ctx.server), (t) => ({
    t: performance.now(),
    ...cmappMem(t, pid),
  }));
  const t0 = performance.now();
  let launchedAt = 0;
  let launched = 0;
  const refused: string[] = [];
  const outcomes = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const want = (i * 7) % 256;
      const client = clients[i % connections];
      try {
        const { run } = await client.launch(["sh", "-c", `sleep 1; exit ${want}`], {
          name: runName(`c${n}`),
        });
        if (++launched === n) launchedAt = performance.now();
        const exit = await client.wait(run);
        return { want, got: shellExitCode(exit), run, client, at: performance.now() };
      } catch (e) {
        refused.push((e as Error).message);
        return { want, got: -1, run: "", client, at: performance.now() };
      }
    }),
  );
  const wall = performance.now() - t0;
  const samples = await smp.stop();
  const wrong = outcomes.filter((o) => o.got !== o.want && o.got !== -1).length;
  // (No release: names are unique, and the table forgets the oldest beyond keep_finished.)
  for (const c of clients) {
    c.close();
    await c.closed;
  }
  // Running at once: supervisors whose application still runs (a supervisor
  // stays a moment after its application, until cmappserver has the exit).
  const peak = peakBy(samples, "supervising");
  const exitTimes = outcomes.map((o) => o.at - t0).sort((a, b) => a - b);
  return {
    n,
    connections,
    command: "sh -c 'sleep 1; exit K' (K = 7i mod 256), all launched at once through the API",
    allCorrect: wrong === 0 && refused.length === 0,
    wrongCodes: wrong,
    refused: refused.length,
    refusedExample: refused[0] ?? null,
    wallMs: round(wall),
    allLaunchedMs: round(launchedAt - t0),
    launchesPerSecond: round(n / ((launchedAt - t0) / 1000)),
    firstExitMs: round(exitTimes[0]),
    p50ExitMs: round(quantile(exitTimes, 0.5)),
    lastExitMs: round(exitTimes[exitTimes.length - 1]),
    peakConcurrent: peak?.supervising ?? 0,
    atPeak: peak,
    peakDaemonRssKiB: peakBy(samples, "daemonRssKiB")?.daemonRssKiB ?? 0,
    peakDaemonPssKiB: peakBy(samples, "daemonPssKiB")?.daemonPssKiB ?? 0,
    samples: samples.length,
  };
}

/** sshd's log lines since `from`, by kind (numbers and addresses blanked), most frequent first. */
function logKinds(log: string): Record<string, number> {
  const kinds = new Map<string, number>();
  for (const line of log.split("\n")) {
    if (!line.trim()) continue;
    const k = line.replace(/\d+(\.\d+)*/g, "N").replace(/SHA256:\S+/g, "KEY").slice(0, 140);
    kinds.set(k, (kinds.get(k) ?? 0) + 1);
  }
  return Object.fromEntries([...kinds].sort((a, b) => b[1] - a[1]).slice(0, 12));
}

// Starts n copies of a command at once from a small perl process (fork +
// exec: Deno's spawn is far slower and blocks the harness's event loop while
// it spawns), "{K}" in the arguments replaced by the copy's expected exit
// code; prints when all were started, then "i code seconds" as each ends.
const _LAUNCHER_PERL = String.raw`
use Time::HiRes qw(time);
use POSIX qw(WNOHANG);
$| = 1;
my ($n, $errdir, @cmd) = @ARGV;
my %idx; my $t0 = time;
for my $i (0 .. $n - 1) {
  my $want = ($i * 7) % 256;
  my @c = map { (my $x = $_) =~ s/\{K\}/$want/g; $x } @cmd;
  my $pid = fork();
  die "fork: $!" unless defined $pid;
  if ($pid == 0) {
    open(STDIN, '<', '/dev/null'); open(STDOUT, '>', '/dev/null');
    open(STDERR, '>', "$errdir/$i");
    exec { $c[0] } @c; exit 127;
  }
  $idx{$pid} = $i;
  # Copies that ended meanwhile are reported now, not after the last fork.
  while ((my $done = waitpid(-1, WNOHANG)) > 0) { report($done, $?); }
}
printf "spawned %.6f\n", time - $t0;
while ((my $pid = wait()) > 0) { report($pid, $?); }
sub report {
  my ($pid, $st) = @_;
  printf "%d %d %.6f\n", delete $idx{$pid}, ($st & 127) ? 128 + ($st & 127) : $st >> 8, time - $t0;
}
`;

async function sshConcurrency(ctx: Ctx, n: number, mux: boolean): Promise<Json> {
  note(`3. ssh${mux ? " (one multiplexed connection)" : ""}: ${n} simultaneous sessions`);
  const listener = ctx.sshd!.pid;
  // Reading the memory of hundreds of sshd processes is not free: sample less often.
  const smp = await sampler(() => processTree([listener], "^sshd"), (t) => ({
    t: performance.now(),
    ...sshdMem(t, listener),
  }), mux ? 250 : 1000);
  const logBefore = (await ctx.sshd!.log()).length;
  const errDir = `${ctx.tmp}/ssh-err-${mux ? "mux" : "sep"}-${n}`;
  await Deno.mkdir(errDir, { recursive: true });
  const [cmd, args] = ssh(ctx, "sleep 1; exit {K}", mux);
  const out = await new Deno.Command("perl", {
    args: ["-e", _LAUNCHER_PERL, String(n), errDir, cmd, "-o", "ConnectTimeout=120", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const samples = await smp.stop();
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  const spawnedLine = lines.find((l) => l.startsWith("spawned "));
  const spawnedMs = Number(spawnedLine?.split(" ")[1] ?? NaN) * 1000;
  const outcomes = lines.filter((l) => !l.startsWith("spawned ")).map((l) => {
    const [i, code, t] = l.split(" ").map(Number);
    return { i, want: (i * 7) % 256, got: code, at: t * 1000 };
  });
  if (outcomes.length !== n) {
    throw new Error(
      `launcher reported ${outcomes.length} of ${n}: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  // ssh reports its own failures as 255 (some copies are meant to exit 255).
  const failed = outcomes.filter((o) => o.got === 255 && o.want !== 255);
  const wrong = outcomes.filter((o) => o.got !== o.want && o.got !== 255).length;
  const errs = new Map<string, number>();
  for (const f of failed) {
    const err = (await Deno.readTextFile(`${errDir}/${f.i}`).catch(() => "")).trim();
    const k = err.split("\n")[0].replace(/port \d+/g, "port N").slice(0, 160) ||
      "(exit 255, nothing on stderr)";
    errs.set(k, (errs.get(k) ?? 0) + 1);
  }
  const exitTimes = outcomes.map((o) => o.at).sort((a, b) => a - b);
  const log = (await ctx.sshd!.log()).slice(logBefore);
  return {
    n,
    mode: mux ? "one ControlMaster connection, n ssh mux clients" : "n separate ssh connections",
    command: "ssh ... 'sleep 1; exit K', n copies forked at once by a perl launcher",
    allCorrect: wrong === 0 && failed.length === 0,
    wrongCodes: wrong,
    failed: failed.length,
    failures: Object.fromEntries(errs),
    wallMs: round(exitTimes[exitTimes.length - 1]),
    allSpawnedMs: round(spawnedMs),
    firstExitMs: round(exitTimes[0]),
    p50ExitMs: round(quantile(exitTimes, 0.5)),
    lastExitMs: round(exitTimes[exitTimes.length - 1]),
    peakConcurrent: peakBy(samples, "sleeping")?.sleeping ?? 0,
    peakSshdProcesses: peakBy(samples, "sshdProcesses")?.sshdProcesses ?? 0,
    atPeak: peakBy(samples, "sshdRssKiB"),
    sshdLog: logKinds(log),
    samples: samples.length,
  };
}

async function concurrency(ctx: Ctx): Promise<Json> {
  const out: Json = { cmapp: [], cmappMulti: null, ssh: [], sshMux: [] };
  // Interleaved by size: cmapp n, ssh n, ssh-mux n.
  for (let i = 0; i < P.concurrency.length; i++) {
    out.cmapp.push(await cmappConcurrency(ctx, P.concurrency[i]));
    await delay(500);
    if (ctx.sshd && P.sshConcurrency[i] > 0) {
      out.ssh.push(await sshConcurrency(ctx, P.sshConcurrency[i], false));
      await delay(500);
    }
    if (ctx.master) {
      out.sshMux.push(await sshConcurrency(ctx, P.concurrency[i], true));
      await delay(500);
    }
  }
  // Again over several connections: are launches serialised per connection?
  if (P.multiConnections > 1) {
    out.cmappMulti = await cmappConcurrency(ctx, P.multiRuns, P.multiConnections);
  }
  return out;
}

// ------------------------------------------------------------------ 4. memory

async function median3<T>(fn: () => Promise<T>, key: (t: T) => number): Promise<T> {
  const xs: T[] = [];
  for (let i = 0; i < 3; i++) {
    xs.push(await fn());
    await delay(QUICK ? 100 : 300);
  }
  return xs.sort((a, b) => key(a) - key(b))[1];
}

/** SIGKILL to the applications' process groups (each is its own session). */
function killAll(pids: number[]): void {
  for (const p of pids.splice(0)) {
    for (const id of [-p, p]) {
      try {
        Deno.kill(id, "SIGKILL");
      } catch {
        // gone
      }
    }
  }
}

async function memory(ctx: Ctx): Promise<Json> {
  note(
    `4. memory: a fresh cmappserver, idle then ${P.memLevels.join(", ")} running sleeps, ` +
      `then ${P.memStreamRuns} more with streams`,
  );
  const server = await startCmappServer(ctx.tmp, ctx.keys, "mem");
  const pid = server.pid;
  const measure = () =>
    median3(async () => cmappMem(await cmappTree(server), pid), (m) => m.daemonRssKiB);
  const out: Json = { cmapp: {}, ssh: null, sshMux: null };
  const apps: number[] = [];
  let client: Client | null = null;
  try {
    await delay(1000);
    const idle = await measure();
    out.cmapp.idle = { ...idle, psRssKiB: await psRss(pid) };
    client = await cmappClient(ctx.keys, server);
    const levels: Json[] = [];
    const launchN = async (k: number, streams: boolean) => {
      await pool(k, 32, async () => {
        const r = await client!.launch(["sleep", "600"], { name: runName("m"), streams });
        if (streams) {
          client!.onOutput(r.run, () => {});
          client!.grant(r.run, "stdout", 1 << 20);
          client!.grant(r.run, "stderr", 1 << 20);
        }
        apps.push(r.pid);
      });
    };
    for (const level of P.memLevels) {
      await launchN(level - apps.length, false);
      await delay(QUICK ? 500 : 1000);
      levels.push({ running: apps.length, streams: false, ...await measure() });
      const l = levels.at(-1);
      note(
        `   ${apps.length} sleeps: daemon ${l.daemonRssKiB} KiB RSS, ${l.daemonPssKiB} KiB PSS; ` +
          `${l.supervisors} supervisors, ${l.supervisorsPssKiB} KiB PSS`,
      );
    }
    // A further batch launched with streams, as cmappmgr launches them.
    const base = apps.length;
    await launchN(P.memStreamRuns, true);
    await delay(1000);
    levels.push({ running: apps.length, streams: true, ...await measure() });
    {
      const l = levels.at(-1);
      note(
        `   ${apps.length} sleeps (${apps.length - base} with streams): daemon ${l.daemonRssKiB} ` +
          `KiB RSS, ${l.daemonPssKiB} KiB PSS; ${l.streamSupervisors} supervisors with streams, ` +
          `${l.streamSupervisorsPssKiB} KiB PSS`,
      );
    }
    out.cmapp.levels = levels;
    const l0 = levels[0];
    const slope = (a: Json, b: Json, f: string) => (b[f] - a[f]) / (b.running - a.running);
    // Least squares over the plain levels.
    const fit = (f: string) => {
      const pts = levels.slice(0, P.memLevels.length).map((l) => [l.running, l[f]]);
      const mx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
      const my = pts.reduce((a, p) => a + p[1], 0) / pts.length;
      const sxy = pts.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0);
      const sxx = pts.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
      return sxy / sxx;
    };
    const last = levels[P.memLevels.length - 1];
    const mid = levels[1];
    const top = levels.at(-1);
    // Per supervisor: the plain ones at the last plain level, the streamed
    // ones at the streamed level (PSS shares the binary's pages among all).
    const per = (l: Json, kind: "plain" | "stream", f: "Rss" | "Pss" | "Priv") =>
      l[`${kind}Supervisors`] > 0 ? l[`${kind}Supervisors${f}KiB`] / l[`${kind}Supervisors`] : NaN;
    const streamsDaemonPss = slope(last, top, "daemonPssKiB");
    const streamsDaemonRss = slope(last, top, "daemonRssKiB");
    out.cmapp.perProcess = {
      basis: `levels ${l0.running} → ${last.running} running sleeps (plain runs, no streams)`,
      midRunning: mid.running,
      daemonRssKiB: round(slope(l0, last, "daemonRssKiB")),
      daemonPssKiB: round(slope(l0, last, "daemonPssKiB")),
      daemonRssKiB_0toMid: round(slope(l0, mid, "daemonRssKiB")),
      daemonRssKiB_leastSquares: round(fit("daemonRssKiB")),
      daemonPssKiB_leastSquares: round(fit("daemonPssKiB")),
      // Every run has its supervisor: found by argv, they must number the runs.
      supervisorsFound: last.supervisors,
      supervisorsExpected: last.running,
      supervisorRssKiB: round(per(last, "plain", "Rss")),
      supervisorPssKiB: round(per(last, "plain", "Pss")),
      supervisorPrivKiB: round(per(last, "plain", "Priv")),
      totalPssKiB: round(slope(l0, last, "daemonPssKiB") + per(last, "plain", "Pss")),
      totalRssKiB: round(slope(l0, last, "daemonRssKiB") + per(last, "plain", "Rss")),
      totalPssKiB_leastSquares: round(fit("daemonPssKiB") + per(last, "plain", "Pss")),
      streamsRunsAdded: apps.length - base,
      streamSupervisorsFound: top.streamSupervisors,
      streamsRunDaemonRssKiB: round(streamsDaemonRss),
      streamsRunDaemonPssKiB: round(streamsDaemonPss),
      streamsSupervisorRssKiB: round(per(top, "stream", "Rss")),
      streamsSupervisorPssKiB: round(per(top, "stream", "Pss")),
      streamsSupervisorPrivKiB: round(per(top, "stream", "Priv")),
      streamsTotalPssKiB: round(streamsDaemonPss + per(top, "stream", "Pss")),
      note: "daemon: the growth of cmappserver's RSS/PSS per run added (slope between levels); " +
        "supervisor: the sum over the cmapp-supervise processes of the state directory (found " +
        "by argv, /proc/PID/smaps_rollup) divided by their number; total = daemon slope + " +
        "supervisor. Kernel memory (socket and pipe buffers, page tables, the application's " +
        "own pages) is counted on neither side",
    };
    if (last.supervisors !== last.running || top.streamSupervisors !== apps.length - base) {
      // Every run should have its supervisor: say so, with what the daemon logged.
      const logged = (await server.log()).split("\n").filter((l) => /\b(warn|error)\b/i.test(l));
      out.cmapp.missingSupervisors = {
        plain: `${last.supervisors} found for ${last.running} runs`,
        streamed: `${top.streamSupervisors} found for ${apps.length - base} runs`,
        daemonWarnings: logged.slice(0, 20),
      };
      note(
        `   supervisors found by argv: ${last.supervisors} for ${last.running} plain runs, ` +
          `${top.streamSupervisors} for ${apps.length - base} streamed runs; the daemon ` +
          `logged ${logged.length} warnings/errors`,
      );
    }
    // Every run ended and collected (no supervisor left): what the daemon keeps
    // then is not held per running run (finished runs are kept, a few hundred
    // bytes each), but what its allocator did not give back.
    killAll(apps);
    const t0 = performance.now();
    let left = top.supervisors;
    while (left > 0 && performance.now() - t0 < 60_000) {
      await delay(250);
      left = cmappMem(await cmappTree(server), pid).supervisors;
    }
    await delay(QUICK ? 500 : 1000);
    const after = await measure();
    out.cmapp.afterEnd = {
      collectedMs: round(performance.now() - t0),
      supervisorsLeft: left,
      ...after,
    };
    out.cmapp.perProcess.heldDaemonRssKiB = round(
      (top.daemonRssKiB - after.daemonRssKiB) / top.running,
    );
    out.cmapp.perProcess.heldDaemonPssKiB = round(
      (top.daemonPssKiB - after.daemonPssKiB) / top.running,
    );
    note(
      `   all ${top.running} ended, ${left} supervisors left after ${
        round((performance.now() - t0) / 1000)
      } s: daemon ${after.daemonRssKiB} KiB RSS, ${after.daemonPssKiB} KiB PSS`,
    );
  } finally {
    killAll(apps);
    await delay(500);
    client?.close();
    await server.stop();
  }
  out.denoBaseline = await denoBaseline(ctx);
  if (ctx.sshd) out.ssh = await sshSessionMemory(ctx, false);
  if (ctx.master) out.sshMux = await sshSessionMemory(ctx, true);
  return out;
}

/**
 * What any Deno program costs before doing anything: an idle empty script,
 * and an idle script that has only imported cmappserver's modules (TLS,
 * x509, protocol) without starting a server.
 */
async function denoBaseline(ctx: Ctx): Promise<Json> {
  const idle = `${ctx.tmp}/idle.js`;
  const imports = `${ctx.tmp}/idle-imports.ts`;
  const tlsOnly = `${ctx.tmp}/idle-tls.js`;
  await Deno.writeTextFile(idle, "setTimeout(() => {}, 60_000);\n");
  await Deno.writeTextFile(tlsOnly, 'import "node:tls";\nsetTimeout(() => {}, 60_000);\n');
  await Deno.writeTextFile(
    imports,
    `import * as s from ${JSON.stringify(`${ROOT}/server/mod.ts`)};\n` +
      `import * as t from ${JSON.stringify(`${ROOT}/tls/mod.ts`)};\n` +
      `if (!s.startServer || !t.loadIdentity) Deno.exit(1);\n` +
      `setTimeout(() => {}, 60_000);\n`,
  );
  const one = async (args: string[]) => {
    const child = new Deno.Command(Deno.execPath(), {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    await delay(1500);
    const m = await median3(
      async () => (await processTree([child.pid])).find((p) => p.pid === child.pid)!,
      (p) => p?.rss ?? 0,
    );
    child.kill("SIGKILL");
    await child.status;
    return {
      rssKiB: m?.rss ?? null,
      pssKiB: m?.pss ?? null,
      privKiB: m?.priv ?? null,
      anonKiB: m?.anon ?? null,
    };
  };
  return {
    emptyScript: await one(["run", "-q", "--no-config", idle]),
    nodeTlsImported: await one(["run", "-q", "--no-config", tlsOnly]),
    cmappModulesImported: await one(scriptCommand(imports)),
  };
}

/** sshd's memory with 0 and k idle sessions (`read x`: ends when ssh's stdin closes). */
async function sshSessionMemory(ctx: Ctx, mux: boolean): Promise<Json> {
  const k = P.sshMemSessions;
  note(`4. sshd memory: 0 and ${k} idle sessions${mux ? " over one multiplexed connection" : ""}`);
  const listener = ctx.sshd!.pid;
  const measure = () =>
    median3(
      async () => sshdMem(await processTree([listener], "^sshd"), listener),
      (m) => m.sshdRssKiB,
    );
  const before = await measure();
  const children: Deno.ChildProcess[] = [];
  try {
    const [cmd, args] = ssh(ctx, "read x", mux);
    // Start them a few at a time, then wait until all are in.
    for (let i = 0; i < k; i++) {
      children.push(
        new Deno.Command(cmd, { args, stdin: "piped", stdout: "null", stderr: "null" }).spawn(),
      );
      if (i % 10 === 9) await delay(200);
    }
    const deadline = Date.now() + 60_000;
    let m = await measure();
    const want = mux ? 0 : k;
    while (m.sshdProcesses < want && Date.now() < deadline) {
      await delay(500);
      m = await measure();
    }
    // Mux sessions live inside one sshd process: count their shells instead.
    if (mux) {
      while (Date.now() < deadline) {
        const shells = (await processTree([listener], "^$")).filter((p) =>
          p.comm === "bash"
        ).length;
        if (shells >= k) break;
        await delay(500);
      }
      await delay(500);
      m = await measure();
    }
    return {
      sessions: k,
      mode: mux ? "one ControlMaster connection" : "separate connections",
      idle: before,
      loaded: m,
      perSessionRssKiB: round((m.sshdRssKiB - before.sshdRssKiB) / k),
      perSessionPssKiB: round((m.sshdPssKiB - before.sshdPssKiB) / k),
      perSessionPrivKiB: round((m.sshdPrivKiB - before.sshdPrivKiB) / k),
      note: "sshd processes only (the listener apart); the session's shell is not counted, " +
        "as the application is not counted for cmapp",
    };
  } finally {
    for (const c of children) await c.stdin.close().catch(() => {});
    await Promise.all(children.map((c) => c.status));
  }
}

// ------------------------------------------------------------------ 5. throughput

/**
 * The floor under cmapp's streams: the same TLS stack (node:tls in Deno, the
 * project's listenTls/connectTls, same keys) moving `n` bytes from a child
 * Deno process to the harness, with no cmapp protocol, framing or flow control.
 */
async function rawTls(ctx: Ctx, n: number): Promise<Json> {
  const sender = await startTlsSender(ctx.keys, n);
  const port = sender.port;
  try {
    const { connectTls, loadIdentity, loadTrust } = await import("../tls/mod.ts");
    const out: number[] = [];
    for (let rep = 0; rep < P.streamReps; rep++) {
      const t0 = performance.now();
      const { socket } = await connectTls({
        host: "127.0.0.1",
        port,
        identity: await loadIdentity(ctx.keys.manager),
        trust: await loadTrust(ctx.keys.manager),
        timeoutMs: 10_000,
      });
      let got = 0;
      await new Promise<void>((resolve) => {
        socket.on("data", (c: Uint8Array) => got += c.length);
        socket.on("close", () => resolve());
      });
      const ms = performance.now() - t0;
      if (got < n) throw new Error(`raw TLS: got ${got} of ${n} bytes`);
      out.push(round(n / 1e6 / (ms / 1000)));
      note(`   raw TLS (node:tls in Deno, no cmapp protocol): ${out.at(-1)} MB/s`);
    }
    return { bytes: n, MBps: out, MBps_median: round(quantile(out.sort((a, b) => a - b), 0.5)) };
  } finally {
    await sender.stop();
  }
}

async function throughput(ctx: Ctx): Promise<Json> {
  const N = P.streamBytes;
  note(`5. throughput: ${N / 1024 / 1024} MiB through stdout and stdin, ${P.streamReps} rep(s)`);
  // CPU time of the host program (GNU time, when installed) and of the server
  // side (cmappserver, and its supervisor and the application under it; or
  // the sshd listener, with the children it reaped: per-connection sshd
  // processes and the application).
  const gnuTime = await Deno.stat("/usr/bin/time").then(() => true, () => false);
  const cpuFile = `${ctx.tmp}/cpu.txt`;
  const timed = (cmd: string) =>
    gnuTime ? `/usr/bin/time -f '%U %S' -o ${shq(cpuFile)} ${cmd}` : cmd;
  const mgrCmd = (remote: string[], options: string[] = []) =>
    timed([Deno.execPath(), ...mgrArgs(ctx.keys, ctx.server, remote, options)].map(shq).join(" "));
  const sshCmd = (remote: string) =>
    timed(["ssh", ...ctx.sshd!.sshArgs(), remote].map(shq).join(" "));
  const head = `head -c ${N} /dev/zero`;
  type R = {
    ms: number;
    ok: boolean;
    peakHwmKiB: number | null;
    clientCpuS: number | null;
    detail: string;
  };
  /** A shell pipeline, timed; the host program's peak RSS (VmHWM) sampled meanwhile. */
  const pipeline = async (script: string, comm: string): Promise<R> => {
    let pid = 0;
    let peak: number | null = null;
    let done = false;
    await Deno.remove(cpuFile).catch(() => {});
    const watch = (async () => {
      while (!done) {
        if (pid) {
          for (const p of await processTree([pid], `^${comm}$`)) {
            if (p.comm === comm && p.hwm > (peak ?? 0)) peak = p.hwm;
          }
        }
        await delay(200);
      }
    })();
    const r = await timedRun("sh", ["-c", script], {
      stdout: true,
      onSpawn: (c) => pid = c.pid,
    });
    done = true;
    await watch;
    const count = Number(r.stdout.trim());
    const cpu = gnuTime
      ? (await Deno.readTextFile(cpuFile).catch(() => "")).trim().split(/\s+/).map(Number)
      : [];
    return {
      ms: r.ms,
      ok: r.code === 0 && (script.includes("wc -c") ? count === N : true),
      peakHwmKiB: peak,
      clientCpuS: cpu.length === 2 && cpu.every(Number.isFinite) ? cpu[0] + cpu[1] : null,
      detail: `${r.code} ${r.stdout.trim()} ${r.stderr.trim().slice(0, 300)}`,
    };
  };
  /** An in-process run; the client's CPU is the harness's own. */
  const inProcess = async (fn: () => Promise<boolean>): Promise<R> => {
    const c0 = await cpuSeconds(Deno.pid, false);
    const t0 = performance.now();
    const ok = await fn();
    const ms = performance.now() - t0;
    const c1 = await cpuSeconds(Deno.pid, false);
    return {
      ms,
      ok,
      peakHwmKiB: null,
      clientCpuS: c0 !== null && c1 !== null ? c1 - c0 : null,
      detail: "",
    };
  };
  const apiOut = () =>
    inProcess(async () => {
      let count = 0;
      const { run } = await ctx.client.launch(["head", "-c", String(N), "/dev/zero"], {
        name: runName("so"),
        streams: true,
      });
      ctx.client.onOutput(run, (_s, b) => {
        count += b.length;
      });
      ctx.client.grant(run, "stdout", 1 << 20);
      ctx.client.grant(run, "stderr", 1 << 20);
      const exit = await ctx.client.wait(run);
      await ctx.client.release(run).catch(() => {});
      return shellExitCode(exit) === 0 && count === N;
    });
  const apiIn = () =>
    inProcess(async () => {
      const { run } = await ctx.client.launch(["sh", "-c", "cat > /dev/null"], {
        name: runName("si"),
        streams: true,
        stdin: true,
      });
      ctx.client.onOutput(run, () => {});
      ctx.client.grant(run, "stdout", 1 << 20);
      ctx.client.grant(run, "stderr", 1 << 20);
      const chunk = new Uint8Array(1 << 20);
      for (let sent = 0; sent < N; sent += chunk.length) {
        await ctx.client.sendStdin(run, chunk.subarray(0, Math.min(chunk.length, N - sent)));
      }
      await ctx.client.sendStdin(run, new Uint8Array(0));
      const exit = await ctx.client.wait(run);
      await ctx.client.release(run).catch(() => {});
      return shellExitCode(exit) === 0;
    });
  type V = { name: string; dir: "stdout" | "stdin"; server: number; run: () => Promise<R> };
  const cm = ctx.server.pid;
  const variants: V[] = [
    {
      name: "cmappmgr",
      dir: "stdout",
      server: cm,
      run: () => pipeline(`${mgrCmd(["head", "-c", String(N), "/dev/zero"])} | wc -c`, "deno"),
    },
    { name: "api", dir: "stdout", server: cm, run: apiOut },
    {
      name: "cmappmgr",
      dir: "stdin",
      server: cm,
      run: () =>
        pipeline(`${head} | ${mgrCmd(["sh", "-c", "cat > /dev/null"], ["-stdin"])}`, "deno"),
    },
    { name: "api", dir: "stdin", server: cm, run: apiIn },
  ];
  if (ctx.sshd) {
    const l = ctx.sshd.pid;
    variants.push(
      {
        name: "ssh",
        dir: "stdout",
        server: l,
        run: () => pipeline(`${sshCmd(head)} | wc -c`, "ssh"),
      },
      {
        name: "ssh",
        dir: "stdin",
        server: l,
        run: () => pipeline(`${head} | ${sshCmd("cat > /dev/null")}`, "ssh"),
      },
    );
  }
  const raw: Json = { stdout: {}, stdin: {} };
  for (let rep = 0; rep < P.streamReps; rep++) {
    // stdout variants, then stdin variants, each rotated per rep.
    for (const dir of ["stdout", "stdin"] as const) {
      for (const v of rotate(variants.filter((x) => x.dir === dir), rep)) {
        // cmapp-supervise detaches: its CPU (the relay) and the application's
        // are followed apart and added to cmappserver's.
        const sup = v.server === cm ? await followSupervisorCpu(ctx.server.stateDir) : null;
        const s0 = await cpuSeconds(v.server);
        const r = await v.run();
        await delay(300); // sshd's listener reaps the connection's process
        const s1 = await cpuSeconds(v.server);
        const supS = sup ? await sup.stop() : 0;
        if (!r.ok) throw new Error(`${v.name} ${dir} failed: ${r.detail}`);
        const gib = N / 2 ** 30;
        (raw[dir][v.name] ??= []).push({
          ms: round(r.ms),
          MBps: round(N / 1e6 / (r.ms / 1000)),
          peakHwmKiB: r.peakHwmKiB,
          clientCpuSPerGiB: r.clientCpuS === null ? null : round(r.clientCpuS / gib, 2),
          serverCpuSPerGiB: s0 === null || s1 === null ? null : round((s1 - s0 + supS) / gib, 2),
          supervisorCpuSPerGiB: sup ? round(supS / gib, 2) : null,
        });
        note(`   ${dir} ${v.name}: ${round(N / 1e6 / (r.ms / 1000))} MB/s`);
      }
    }
  }
  const med = (list: Json[], k: string) => {
    const xs = list.map((x: Json) => x[k]).filter((x: Json) => typeof x === "number");
    return xs.length ? round(quantile(xs.sort((a: number, b: number) => a - b), 0.5), 2) : null;
  };
  const summary: Json = {};
  for (const dir of ["stdout", "stdin"]) {
    summary[dir] = {};
    for (const [name, list] of Object.entries(raw[dir] as Record<string, Json[]>)) {
      summary[dir][name] = {
        MBps_median: med(list, "MBps"),
        MBps_best: Math.max(...list.map((x: Json) => x.MBps)),
        clientCpuSPerGiB: med(list, "clientCpuSPerGiB"),
        serverCpuSPerGiB: med(list, "serverCpuSPerGiB"),
        supervisorCpuSPerGiB: med(list, "supervisorCpuSPerGiB"),
        peakHwmKiB: Math.max(0, ...list.map((x: Json) => x.peakHwmKiB ?? 0)) || null,
      };
    }
  }
  let floor: Json = null;
  try {
    floor = await rawTls(ctx, N);
  } catch (e) {
    floor = { error: (e as Error).message };
  }
  return {
    bytes: N,
    reps: P.streamReps,
    unit: "MB/s (10^6 bytes per second), whole command from spawn to exit",
    rawTlsFloor: floor,
    cpu: "CPU seconds per GiB moved: client = the host program (GNU time) or the harness " +
      "(API); server = cmappserver (with the children it reaped) plus its cmapp-supervise " +
      "and the application under it (detached from cmappserver, so polled every 0.2 s, " +
      "each process's own time up to the last poll that saw it), or the sshd listener with " +
      "the children it reaped (so including the application itself, on both sides)",
    commands: {
      cmappmgr_stdout: `cmappmgr ... -- head -c ${N} /dev/zero | wc -c`,
      ssh_stdout: `ssh ... 'head -c ${N} /dev/zero' | wc -c`,
      cmappmgr_stdin: `head -c ${N} /dev/zero | cmappmgr -stdin ... -- sh -c 'cat > /dev/null'`,
      ssh_stdin: `head -c ${N} /dev/zero | ssh ... 'cat > /dev/null'`,
      api: "client.launch(streams) + onOutput counting / sendStdin in 1 MiB chunks, in-process",
    },
    summary,
    raw,
  };
}

// --------------------------------------------------- 6. cmappmgr start-up and memory

async function mgrStartup(ctx: Ctx): Promise<Json> {
  const n = P.versionRuns;
  note(`6. cmappmgr start-up: ${n} runs of -version (and ssh -V, deno on an empty file)`);
  const empty = `${ctx.tmp}/empty.js`;
  await Deno.writeTextFile(empty, "\n");
  const variants: { name: string; cmd: [string, string[]] }[] = [
    {
      name: "cmappmgr_version",
      cmd: [Deno.execPath(), [...programCommand("cmappmgr"), "-version"]],
    },
    { name: "deno_empty", cmd: [Deno.execPath(), ["run", "-q", "--no-config", empty]] },
    { name: "ssh_version", cmd: ["ssh", ["-V"]] },
  ];
  const samples: Record<string, number[]> = {};
  for (const v of variants) samples[v.name] = [];
  // How long a Deno process takes to go, from its last statement (Deno.exit) to
  // its exit seen by the parent: part of every cmappmgr exit notification.
  const exiting = `${ctx.tmp}/exiting.js`;
  const stampFile = `${ctx.tmp}/exiting.stamp`;
  await Deno.writeTextFile(
    exiting,
    `Deno.writeTextFileSync(${JSON.stringify(stampFile)}, ` +
      `String(performance.timeOrigin + performance.now()));\nDeno.exit(0);\n`,
  );
  samples.deno_exit = [];
  for (let i = -P.warmup; i < n; i++) {
    for (const v of rotate(variants, i + P.warmup)) {
      const r = await timedRun(...v.cmd);
      if (r.code !== 0) throw new Error(`${v.name} exited ${r.code}: ${r.stderr}`);
      if (i >= 0) samples[v.name].push(round(r.ms, 3));
    }
    const e = await timedRun(Deno.execPath(), [
      "run",
      "-q",
      "--no-config",
      `--allow-write=${stampFile}`,
      exiting,
    ]);
    const at = Number(await Deno.readTextFile(stampFile));
    if (i >= 0) samples.deno_exit.push(round(e.endWall - at, 3));
  }
  const startup: Json = {};
  for (const [k, s] of Object.entries(samples)) startup[k] = summarize(s);
  // Peak memory of the host side following a 2-second run.
  const peakOf = async (cmd: [string, string[]], comm: string) => {
    let pid = 0;
    let hwm = 0;
    let rss = 0;
    let done = false;
    const watch = (async () => {
      while (!done) {
        if (pid) {
          for (const p of await processTree([pid])) {
            if (p.comm === comm) {
              hwm = Math.max(hwm, p.hwm);
              rss = Math.max(rss, p.rss);
            }
          }
        }
        await delay(100);
      }
    })();
    const r = await timedRun(...cmd, { onSpawn: (c) => pid = c.pid });
    done = true;
    await watch;
    return { code: r.code, peakHwmKiB: hwm, maxSampledRssKiB: rss };
  };
  const following: Json = {
    cmappmgr: await peakOf(mgr(ctx, ["sleep", "2"]), "deno"),
  };
  if (ctx.sshd) following.ssh = await peakOf(ssh(ctx, "sleep 2"), "ssh");
  return { runs: n, unit: "ms", startup, samples, followingSleep2: following };
}

// ------------------------------------------------------------------ main

async function meta(ctx: Ctx | null, sshd: Sshd | null, sshdError: string | null): Promise<Json> {
  const cpuinfo = await capture("cat", ["/proc/cpuinfo"]);
  const meminfo = await capture("cat", ["/proc/meminfo"]);
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? "unknown";
  const memKiB = Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
  const sshV = (await capture("ssh", ["-V"]).catch(() => "not installed")).trim();
  const sshdV = sshd
    ? (await capture("sh", ["-c", "dpkg-query -W openssh-server 2>/dev/null"]))
      .trim()
    : null;
  return {
    date: new Date().toISOString(),
    mode: QUICK ? "quick" : "full",
    machine: {
      nproc: Number((await capture("nproc", [])).trim()),
      memTotalMiB: Math.round(memKiB / 1024),
      cpuModel: model,
      kernel: (await capture("uname", ["-sr"])).trim(),
      loadavgStart: (await capture("cat", ["/proc/loadavg"])).trim(),
    },
    versions: {
      deno: Deno.version.deno,
      v8: Deno.version.v8,
      typescript: Deno.version.typescript,
      ssh: sshV,
      opensshServerPackage: sshdV,
      perl: (await capture("perl", ["-e", "print $^V"])).trim(),
      cmapp: {
        SOFTWARE_VERSION,
        PROTOCOL_VERSION: `${PROTOCOL_VERSION.major}.${PROTOCOL_VERSION.minor}`,
      },
      gitCommit:
        (await capture("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]).catch(() => "?"))
          .trim(),
      gitDirty: (await capture("git", ["-C", ROOT, "status", "--porcelain"]).catch(() => ""))
        .trim().split("\n").filter((l) => l && !l.includes("bench/") && !l.includes("BENCHMARKS"))
        .length > 0,
    },
    cmappserver: ctx ? { args: ctx.server.args.slice(ctx.server.args.indexOf("-keydir")) } : null,
    sshd: sshd
      ? {
        port: sshd.port,
        config: sshd.config,
        notes: sshd.notes,
        start: "/usr/sbin/sshd -D -f CONFIG -E LOG",
      }
      : { error: sshdError },
    cmappmgrProgram: Deno.env.get("CMAPP_BUNDLE_DIR")
      ? `bundle in ${Deno.env.get("CMAPP_BUNDLE_DIR")}`
      : "cli/cmappmgr.ts from source, deno run -P=cmapp",
  };
}

async function main(): Promise<number> {
  const t0 = performance.now();
  const tmp = await Deno.makeTempDir({ prefix: "cmapp-bench-" });
  note(`mode ${QUICK ? "quick" : "full"}; temporary files in ${tmp}`);
  let ctx: Ctx | null = null;
  let sshd: Sshd | null = null;
  let master: SshMaster | null = null;
  let sshdError: string | null = null;
  try {
    if (NO_SSH) sshdError = "skipped (-no-ssh)";
    else {
      const s = await startSshd(`${tmp}/sshd`);
      if ("error" in s) {
        sshdError = s.error;
        note(`NO SSH FIGURES: ${s.error}`);
      } else {
        sshd = s;
        note(`sshd on 127.0.0.1:${s.port} (pid ${s.pid})`);
        const m = await startMaster(s, `${tmp}/sshd`);
        if ("error" in m) note(`no ssh multiplexing figures: ${m.error}`);
        else master = m;
      }
    }
    const keys = await makeCmappKeys(tmp);
    const server = await startCmappServer(tmp, keys, "main");
    note(`cmappserver on 127.0.0.1:${server.port} (pid ${server.pid})`);
    const client = await cmappClient(keys, server);
    ctx = { tmp, keys, server, client, sshd, master, apps: new Set() };
    results.meta = await meta(ctx, sshd, sshdError);
    // Memory first: it uses a fresh daemon and measures idle before anything ran.
    const sections: [number, string, (c: Ctx) => Promise<Json>][] = [
      [4, "memory", memory],
      [1, "launchToExit", launchToExit],
      [2, "exitLatency", exitLatency],
      [6, "cmappmgr", mgrStartup],
      [5, "throughput", throughput],
      [3, "concurrency", concurrency],
    ];
    for (const [num, key, fn] of sections) {
      if (!ONLY.has(num)) continue;
      try {
        results[key] = await fn(ctx);
      } catch (e) {
        results.errors[key] = (e as Error).stack ?? String(e);
        note(`section ${num} (${key}) failed: ${(e as Error).message}`);
      }
    }
    results.meta.machine.loadavgEnd = (await capture("cat", ["/proc/loadavg"])).trim();
    results.meta.durationS = round((performance.now() - t0) / 1000);
  } finally {
    if (ctx) {
      for (const p of ctx.apps) {
        try {
          Deno.kill(p, "SIGKILL");
        } catch {
          // gone
        }
      }
      ctx.client.close();
      await ctx.client.closed;
      await ctx.server.stop();
    }
    await master?.stop();
    await sshd?.stop();
    if (!KEEP) await Deno.remove(tmp, { recursive: true }).catch(() => {});
    else note(`kept ${tmp}`);
  }
  await Deno.mkdir(OUT, { recursive: true });
  const base = QUICK ? "quick" : "latest";
  const svgName = QUICK ? "quick-latency.svg" : "latency.svg";
  await Deno.writeTextFile(`${OUT}/${base}.json`, JSON.stringify(results, null, 2) + "\n");
  await Deno.writeTextFile(`${OUT}/${svgName}`, renderSvg(results));
  const md = renderMarkdown(results);
  await Deno.writeTextFile(`${OUT}/${base}.md`, md);
  if (!QUICK && OUT === `${ROOT}/bench/results`) {
    const doc = `${ROOT}/BENCHMARKS.md`;
    const text = await Deno.readTextFile(doc).catch(() => null);
    const begin = "<!-- results:begin -->";
    const end = "<!-- results:end -->";
    if (text && text.includes(begin) && text.includes(end)) {
      const updated = text.slice(0, text.indexOf(begin) + begin.length) + "\n" + md + "\n" +
        text.slice(text.indexOf(end));
      await Deno.writeTextFile(doc, updated);
      note(`updated the results table in BENCHMARKS.md`);
    }
  }
  // Keep `deno fmt --check` (the check task) happy with what was written.
  const written = [`${OUT}/${base}.json`, `${OUT}/${base}.md`, `${OUT}/${svgName}`];
  if (!QUICK && OUT === `${ROOT}/bench/results`) written.push(`${ROOT}/BENCHMARKS.md`);
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "-q", "--config", `${ROOT}/deno.json`, ...written],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => {});
  note(`wrote ${OUT}/${base}.json, ${base}.md, ${svgName} in ${results.meta.durationS} s`);
  console.log(md);
  return Object.keys(results.errors).length > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
