/**
 * The soak (issue 7): a real cmappserver (keys and state in a temporary
 * directory) runs runs continuously for 10 minutes, started and followed
 * by client-API managers (with a reconnection now and then) and by real
 * cmappmgr processes (streamed output, a new connection each), while the
 * daemon's resident memory (VmRSS, /proc/PID/status) and open file
 * descriptors (/proc/PID/fd) are sampled every few seconds.
 *
 * "Flat" is checked at three quiet points with the same connections open
 * and no run active: after the warm-up (a fifth of the time, at least 60
 * s), half way through the rest, and at the end.
 *
 * - file descriptors: the count at the end is no more than after warm-up;
 * - memory: VmRSS at the end is within max(4 MiB, 5 %) above the half-way
 *   point's. A leak grows all the time; V8 sizing its heap for the load
 *   grows once, early (a step of about 35 MiB just after the warm-up in a
 *   10-minute soak, gone when the young generation is capped): the second
 *   half is the part that tells them apart. The growth from warm-up to
 *   half way is reported too.
 *
 * The server keeps 200 finished runs (`-keep_finished 200`) so that its
 * run table reaches its steady size during the warm-up. Exits 0 when both
 * are flat and every run came back with its exit code, 1 otherwise.
 *
 * Run with `deno task soak` (or `npx -y deno@2.9.6 task soak`), options
 * `-minutes N` (default 10), `-managers N` (default 20), `-sample SECS`
 * (default 5). Deno refuses /proc without --allow-all: it is read through
 * `cat` and `ls`, as server/procfs.ts does.
 *
 * @module
 */

import { makeKeys, mgrArgs, reapRuns, runMgr, startServerProcess } from "../tests/_harness.ts";
import { type Client, connect } from "../manager/mod.ts";
import { type Identity, loadIdentity, loadTrust, type TrustStore } from "../tls/mod.ts";
import type { ExitStatus } from "../protocol/mod.ts";

/** A bad command line. */
class SoakUsageError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "SoakUsageError";
  }
}

function _options(args: string[]): { minutes: number; managers: number; sample: number } {
  const o = { minutes: 10, managers: 20, sample: 5 };
  for (let i = 0; i < args.length; i += 2) {
    const name = args[i].replace(/^--?/, "");
    const value = Number(args[i + 1]);
    if (!(name in o) || !Number.isFinite(value) || value <= 0) {
      throw new SoakUsageError(
        `usage: soak [-minutes N] [-managers N] [-sample SECS] (bad: ${args[i]} ${args[i + 1]})`,
      );
    }
    o[name as keyof typeof o] = value;
  }
  return o;
}

async function _sh(script: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("/bin/sh", {
    args: ["-c", script, "sh", ...args],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(out.stdout);
}

/** One sample of the daemon. */
interface Sample {
  at: number;
  rssKiB: number;
  fds: number;
  active: number;
  runs: number;
  note: string;
}

async function _sample(pid: number, active: number, runs: number, note = ""): Promise<Sample> {
  const [status, fds] = await Promise.all([
    _sh('cat "/proc/$1/status"', String(pid)),
    _sh('ls "/proc/$1/fd" | wc -l', String(pid)),
  ]);
  const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1] ?? NaN);
  return { at: Date.now(), rssKiB: rss, fds: Number(fds.trim()), active, runs, note };
}

function _delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function _isCode(e: ExitStatus, code: number): boolean {
  return "code" in e && e.code === code;
}

/** Lets the workers be paused at a run boundary (for a quiet sample). */
class _Gate {
  paused = false;
  idle = 0;
  #resume: Promise<void> = Promise.resolve();
  #open: () => void = () => {};

  async checkpoint(): Promise<void> {
    if (!this.paused) return;
    this.idle++;
    await this.#resume;
    this.idle--;
  }

  /** Pauses the workers and waits until all `n` are at a boundary. */
  async pause(n: number): Promise<void> {
    this.paused = true;
    this.#resume = new Promise((r) => this.#open = r);
    while (this.idle < n) await _delay(50);
  }

  resume(): void {
    this.paused = false;
    this.#open();
  }
}

/** What the workers have done. */
interface Counts {
  runs: number;
  active: number;
  reconnects: number;
  failures: string[];
}

async function main(): Promise<number> {
  const opts = _options(Deno.args);
  const totalMs = opts.minutes * 60_000;
  const warmMs = Math.max(60_000, totalMs / 5);
  const midMs = warmMs + (totalMs - warmMs) / 2;
  const keys = await makeKeys();
  const stateDir = `${keys.server}-state`;
  const server = await startServerProcess(keys.server, [
    "-max_processes",
    String(opts.managers * 2 + 10),
    "-keep_finished",
    "200",
  ]);
  const identity: Identity = await loadIdentity(keys.manager);
  const trust: TrustStore = await loadTrust(keys.manager);
  const dial = () => connect({ host: "127.0.0.1", port: server.port, identity, trust });
  const counts: Counts = { runs: 0, active: 0, reconnects: 0, failures: [] };
  const gate = new _Gate();
  const clients = new Set<Client>();
  let stopping = false;

  // Client-API managers: a run, polled every second and waited for, released;
  // every 25th run on a new connection.
  const apiWorker = async (i: number) => {
    let c = await dial();
    clients.add(c);
    for (let j = 0; !stopping; j++) {
      await gate.checkpoint();
      if (stopping) break;
      if (j > 0 && j % 25 === 0) {
        c.close();
        await c.closed;
        clients.delete(c);
        c = await dial();
        clients.add(c);
        counts.reconnects++;
      }
      const code = (i * 7 + j) % 126;
      const tenths = 1 + ((i + j) % 9);
      counts.active++;
      try {
        const { run } = await c.launch(["/bin/sh", "-c", `sleep 0.${tenths}; exit ${code}`], {
          name: `soak-${i}-${j}`,
        });
        const exit = c.wait(run);
        let st = await c.status(run);
        while (st.state === "running") {
          const tick = await Promise.race([exit.then(() => true), _delay(1000).then(() => false)]);
          st = await c.status(run);
          if (tick && st.state === "running") throw new Error(`run ${run} notified but running`);
        }
        const e = await exit;
        if (!_isCode(e, code) || !st.exit || !_isCode(st.exit, code)) {
          counts.failures.push(`soak-${i}-${j}: exit ${JSON.stringify(e)}, expected ${code}`);
        }
        await c.release(run);
        counts.runs++;
      } catch (e) {
        counts.failures.push(`soak-${i}-${j}: ${e}`);
        if (c.isClosed) {
          clients.delete(c);
          c = await dial();
          clients.add(c);
        }
      } finally {
        counts.active--;
      }
    }
    clients.delete(c);
    c.close();
    await c.closed;
  };

  // Real cmappmgr processes: streamed output, one connection each.
  const cliWorker = async () => {
    for (let j = 0; !stopping; j++) {
      await gate.checkpoint();
      if (stopping) break;
      const code = j % 100;
      counts.active++;
      try {
        const out = await runMgr([
          ...mgrArgs(keys, server, "-syslog", "no", "-service_name", `soak-cli-${j}`),
          "--",
          "/bin/sh",
          "-c",
          `echo out-${j}; echo err-${j} >&2; exit ${code}`,
        ]);
        if (out.code !== code || out.stdout !== `out-${j}\n`) {
          counts.failures.push(
            `soak-cli-${j}: exit ${out.code} (expected ${code}), stdout ${
              JSON.stringify(out.stdout)
            }, stderr ${JSON.stringify(out.stderr)}`,
          );
        }
        counts.runs++;
      } finally {
        counts.active--;
      }
    }
  };

  const samples: Sample[] = [];
  const row = (s: Sample) =>
    console.log(
      [
        `${((s.at - t0) / 1000).toFixed(0).padStart(6)}`,
        `${(s.rssKiB / 1024).toFixed(1).padStart(8)}`,
        `${String(s.fds).padStart(5)}`,
        `${String(s.active).padStart(6)}`,
        `${String(s.runs).padStart(7)}`,
        s.note,
      ].join("  "),
    );
  const workers = opts.managers + 1;
  const quiet = async (note: string): Promise<Sample> => {
    await gate.pause(workers);
    await _delay(1000);
    const s = await _sample(server.pid, counts.active, counts.runs, note);
    samples.push(s);
    row(s);
    gate.resume();
    return s;
  };

  const t0 = Date.now();
  console.log(
    `soak: ${opts.minutes} min, ${opts.managers} API managers + 1 cmappmgr loop, ` +
      `cmappserver pid ${server.pid}; warm-up ${(warmMs / 1000).toFixed(0)} s`,
  );
  console.log("     s   RSS MiB    fds  active     runs");
  const running = [
    ...Array.from({ length: opts.managers }, (_, i) => apiWorker(i)),
    cliWorker(),
  ];
  let warm: Sample | null = null;
  let mid: Sample | null = null;
  let end: Sample;
  try {
    while (Date.now() - t0 < totalMs) {
      await _delay(Math.min(opts.sample * 1000, Math.max(0, totalMs - (Date.now() - t0))));
      if (!warm && Date.now() - t0 >= warmMs) {
        warm = await quiet("quiet: after warm-up");
        continue;
      }
      if (warm && !mid && Date.now() - t0 >= midMs) {
        mid = await quiet("quiet: half way");
        continue;
      }
      const s = await _sample(server.pid, counts.active, counts.runs);
      samples.push(s);
      row(s);
    }
    end = await quiet("quiet: end");
  } finally {
    stopping = true;
    gate.resume();
    await Promise.allSettled(running);
    for (const c of clients) {
      c.close();
      await c.closed;
    }
    const runsLeft = [...Deno.readDirSync(`${stateDir}/runs`)].length;
    await reapRuns([stateDir], new Set());
    const code = await server.stop();
    if (code !== 0) counts.failures.push(`cmappserver exited ${code}:\n${server.log()}`);
    await keys.root.cleanup();
    console.log(`state directory files at the end: ${runsLeft}`);
  }
  warm ??= samples[0];
  mid ??= warm;
  const rssLimit = mid.rssKiB + Math.max(4 * 1024, mid.rssKiB * 0.05);
  const fdsFlat = end.fds <= warm.fds;
  const rssFlat = end.rssKiB <= rssLimit;
  const elapsed = (Date.now() - t0) / 1000;
  console.log(
    `\nruns: ${counts.runs} in ${elapsed.toFixed(0)} s (${
      (counts.runs / elapsed).toFixed(1)
    }/s), reconnects ${counts.reconnects}, failures ${counts.failures.length}`,
  );
  console.log(
    `fds: ${warm.fds} after warm-up, ${end.fds} at the end: ${fdsFlat ? "flat" : "GREW"}`,
  );
  const mib = (kib: number) => (kib / 1024).toFixed(1);
  console.log(
    `RSS: ${mib(warm.rssKiB)} MiB after warm-up, ${mib(mid.rssKiB)} MiB half way, ${
      mib(end.rssKiB)
    } MiB at the end (limit ${mib(rssLimit)} MiB): second half ${rssFlat ? "flat" : "GREW"}`,
  );
  for (const f of counts.failures.slice(0, 10)) console.log(`failure: ${f}`);
  return fdsFlat && rssFlat && counts.failures.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (e) {
    if (!(e instanceof SoakUsageError)) throw e;
    console.error(e.message);
    Deno.exit(2);
  }
}
