/**
 * A small probe of cmappserver's launch and exit paths, in-process, through
 * the server's own RunTable, RunStore and cmapp-supervise (installed into a
 * private state directory as the daemon installs it; no network, no
 * cmappmgr start-up). Prints medians and p95s:
 *
 * - launch overhead: asked to start → the application runs (its first
 *   `$EPOCHREALTIME` stamp), for the same bash started by Deno directly
 *   (`Deno.Command().spawn()`, the floor), through cmapp-supervise
 *   (`startSupervisor()`), and through `RunTable.launch()` (run record
 *   written and synced, supervisor, control connection); interleaved. The
 *   overhead is each path's p50 (p95) minus the direct one's;
 * - answered: `startSupervisor()` alone until it resolves (pid known), and
 *   `RunTable.launch()` one at a time until it resolves;
 * - burst: 60 `sleep 1` launched at once, launches answered per second;
 * - exit: guest exit (the application's last stamp; it sleeps first so that
 *   it ends after the launch has returned) → Deno sees its own child's exit
 *   (the floor), → `link.ended` through cmapp-supervise, and → the run
 *   table's exit listener, plain and streamed runs (streamed: also until
 *   its outputs have drained, which is when the exit is sent);
 * - release: `RunTable.release()`.
 *
 * ```sh
 * deno run -q --no-prompt -P=cmapp bench/_launch_probe.ts [-n 40]
 * ```
 *
 * @module
 */

import { RunStore } from "../server/store.ts";
import { type Run, RunTable } from "../server/runs.ts";
import { installSupervisor } from "../server/supervisor_binary.ts";
import { DEFAULT_POLICY } from "../server/policy.ts";
import { silentLogger } from "../log/logger.ts";
import { reapSupervisors, wallMs } from "./_lib.ts";
import { SupervisorBench } from "./_supervise.ts";

function _arg(name: string, def: string): string {
  const i = Deno.args.indexOf(`-${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : def;
}

function _q(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

function _stats(xs: number[]): string {
  return `p50 ${_q(xs, 0.5).toFixed(2)} ms, p95 ${_q(xs, 0.95).toFixed(2)} ms (n=${xs.length})`;
}

const _pad = (s: string) => s.padEnd(50);

const n = Number(_arg("n", "40"));
const tmp = await Deno.makeTempDir({ prefix: "cmapp-probe-" });
const store = await RunStore.open(`${tmp}/state`);
const sb = await SupervisorBench.open(`${tmp}/alone`);
const table = await RunTable.open({
  maxProcesses: 2000,
  keepFinished: 100000,
  keepFinishedMs: 86400_000,
  stopTimeoutMs: 10_000,
  policy: DEFAULT_POLICY,
  store,
  supervisor: await installSupervisor(store.binDir),
  logger: silentLogger,
});
const ended = (run: Run) => new Promise<number>((r) => table.onExit(run.id, () => r(wallMs())));
const stamp = (f: string) => `echo $EPOCHREALTIME > ${f}`;
const readStamp = async (f: string) =>
  Number((await Deno.readTextFile(f)).trim().replace(",", ".")) * 1000;

try {
  // warm up
  for (let i = 0; i < 5; i++) {
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 0"], name: `w${i}` }, "probe");
    if ("run" in r) await ended(r.run);
    await sb.direct(0);
    await sb.supervised(0);
  }

  {
    // Asked to start → the application runs, three ways, interleaved.
    const direct: number[] = [];
    const sup: number[] = [];
    const tab: number[] = [];
    const supAnswered: number[] = [];
    const tabAnswered: number[] = [];
    const viaTable = async (i: number) => {
      const f = `${tmp}/launch-${i}`;
      const t0 = wallMs();
      const r = await table.launch(
        { argv: ["bash", "-c", `${stamp(f)}; sleep 0.05`], name: `o${i}` },
        "probe",
      );
      const answered = wallMs() - t0;
      if (!("run" in r)) throw new Error(r.message);
      await ended(r.run);
      tab.push(await readStamp(f) - t0);
      tabAnswered.push(answered);
      await table.release(r.run.id);
    };
    for (let i = 0; i < n; i++) {
      const order = [
        async () => direct.push((await sb.direct(0.05)).launchMs),
        async () => {
          const r = await sb.supervised(0.05);
          sup.push(r.launchMs);
          supAnswered.push(r.answeredMs);
        },
        () => viaTable(i),
      ];
      for (let k = 0; k < order.length; k++) await order[(i + k) % order.length]();
    }
    const over = (xs: number[], p: number) => (_q(xs, p) - _q(direct, p)).toFixed(2);
    console.log(`${_pad("asked → app runs, Deno spawns it directly:")}${_stats(direct)}`);
    console.log(`${_pad("asked → app runs, through cmapp-supervise:")}${_stats(sup)}`);
    console.log(`${_pad("asked → app runs, RunTable.launch():")}${_stats(tab)}`);
    console.log(
      `${_pad("launch overhead of cmapp-supervise:")}p50 ${over(sup, 0.5)} ms, p95 ${
        over(sup, 0.95)
      } ms (limit 2 ms)`,
    );
    console.log(
      `${_pad("launch overhead of RunTable.launch():")}p50 ${over(tab, 0.5)} ms, p95 ${
        over(tab, 0.95)
      } ms`,
    );
    console.log(`${_pad("startSupervisor() resolved (pid known):")}${_stats(supAnswered)}`);
    console.log(`${_pad("RunTable.launch() resolved:")}${_stats(tabAnswered)}`);
  }

  const launch: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 0"], name: `l${i}` }, "probe");
    launch.push(performance.now() - t0);
    if ("run" in r) await ended(r.run);
  }
  console.log(`${_pad("RunTable.launch of sh -c 'exit 0', one at a time:")}${_stats(launch)}`);

  {
    const k = 60;
    const t0 = performance.now();
    const rs = await Promise.all(
      Array.from(
        { length: k },
        (_, i) => table.launch({ argv: ["/bin/sleep", "1"], name: `b${i}` }, "probe"),
      ),
    );
    const ms = performance.now() - t0;
    console.log(
      `burst of ${k} launches at once: all answered in ${ms.toFixed(0)} ms (${
        (k / ms * 1000).toFixed(1)
      }/s)`,
    );
    await Promise.all(rs.map((r) => "run" in r ? ended(r.run) : 0));
  }

  {
    const direct: number[] = [];
    const sup: number[] = [];
    for (let i = 0; i < n; i++) {
      direct.push((await sb.direct(0.1)).exitMs);
      sup.push((await sb.supervised(0.1)).exitMs);
    }
    console.log(`${_pad("exit → Deno sees its own child's exit (floor):")}${_stats(direct)}`);
    console.log(`${_pad("exit → link.ended through cmapp-supervise:")}${_stats(sup)}`);
  }

  for (const streams of [false, true]) {
    const exit: number[] = [];
    const drained: number[] = [];
    const release: number[] = [];
    for (let i = 0; i < n; i++) {
      const f = `${tmp}/stamp-${streams}-${i}`;
      const r = await table.launch(
        {
          argv: ["bash", "-c", `sleep 0.1; ${stamp(f)}`],
          name: `e${streams}${i}`,
          streams,
        },
        "probe",
      );
      if (!("run" in r)) throw new Error(r.message);
      const run = r.run;
      if (run.io) {
        // A receiver that always has room (credit and a draining connection).
        run.io.attach({
          resume: () => {},
          room: () => 1 << 20,
          whenRoom: () => Promise.resolve(),
          data: () => {},
          stdinClosed: () => {},
        });
      }
      const at = await ended(run);
      if (run.io) await run.io.drained(2000);
      const dr = wallMs();
      const ts = await readStamp(f);
      exit.push(at - ts);
      if (run.io) drained.push(dr - ts);
      const t0 = performance.now();
      await table.release(run.id);
      release.push(performance.now() - t0);
    }
    const what = streams ? "streamed" : "plain";
    console.log(`${_pad(`exit → table's exit listener, ${what}:`)}${_stats(exit)}`);
    if (streams) {
      console.log(`${_pad("exit → listener and outputs drained, streamed:")}${_stats(drained)}`);
    }
    console.log(`${_pad(`RunTable.release, ${what}:`)}${_stats(release)}`);
  }
} finally {
  await table.close();
  store.close();
  // Supervisors exit once told `done`; give the last ones a moment, then end any left.
  await new Promise((r) => setTimeout(r, 300));
  const left = await reapSupervisors(store.dir) + await sb.close();
  if (left > 0) console.log(`${left} supervisor(s) were left behind (killed)`);
  await Deno.remove(tmp, { recursive: true });
}
