/**
 * A small probe of cmappserver's launch and exit paths, in-process, through
 * the server's own RunTable, RunStore and spawnProcess (no network, no
 * cmappmgr start-up). Prints medians and p95s:
 *
 * - launch: `RunTable.launch()` of `/bin/true`-like runs, one at a time;
 * - spawn: `spawnProcess()` alone until it returns (the pid line);
 * - burst: 60 `sleep 1` launched at once, launches answered per second;
 * - exit: guest exit (`bash -c 'sleep 0.1; echo $EPOCHREALTIME > F'`; the sleep
 *   so that it ends after the launch has returned) → Deno sees its own
 *   child's exit (the floor), → `spawnProcess().exited`, and → the run
 *   table's exit listener, plain and streamed runs (streamed: also until
 *   its outputs have drained, which is when the exit is sent);
 * - release: `RunTable.release()`.
 *
 * ```sh
 * deno run -q --no-prompt -P=cmapp bench/_launch_probe.ts [-n 40] [-supervisor perl|sh]
 * ```
 *
 * @module
 */

import { RunStore } from "../server/store.ts";
import { type Run, RunTable } from "../server/runs.ts";
import { findHelpers, spawnProcess, type SupervisorKind } from "../server/supervisor.ts";
import { setCatPath } from "../server/procfs.ts";
import { DEFAULT_POLICY } from "../server/policy.ts";
import { silentLogger } from "../log/logger.ts";
import { wallMs } from "./_lib.ts";

function _arg(name: string, def: string): string {
  const i = Deno.args.indexOf(`-${name}`);
  return i >= 0 && i + 1 < Deno.args.length ? Deno.args[i + 1] : def;
}

function _stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return `p50 ${q(0.5).toFixed(2)} ms, p95 ${q(0.95).toFixed(2)} ms (n=${s.length})`;
}

const n = Number(_arg("n", "40"));
const supervisor = _arg("supervisor", "perl") as SupervisorKind;
const tmp = await Deno.makeTempDir({ prefix: "cmapp-probe-" });
const helpers = await findHelpers();
setCatPath(helpers.cat);
const store = await RunStore.open(`${tmp}/state`);
const table = await RunTable.open({
  maxProcesses: 2000,
  keepFinished: 100000,
  keepFinishedMs: 86400_000,
  stopTimeoutMs: 10_000,
  policy: DEFAULT_POLICY,
  supervisor,
  store,
  spawn: (req) => spawnProcess({ ...req, helpers }),
  logger: silentLogger,
});
const ended = (run: Run) => new Promise<number>((r) => table.onExit(run.id, () => r(wallMs())));

try {
  // warm up
  for (let i = 0; i < 5; i++) {
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 0"], name: `w${i}` }, "probe");
    if ("run" in r) await ended(r.run);
  }

  const spawn: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const p = await spawnProcess({
      argv: ["true"],
      program: "/bin/true",
      env: { PATH: "/usr/bin:/bin" },
      cwd: "/",
      statusFile: `${tmp}/s${i}.exit`,
      supervisor,
      helpers,
    });
    spawn.push(performance.now() - t0);
    if (!("code" in p)) await p.exited;
  }
  console.log(`spawnProcess (supervisor started, pid known):   ${_stats(spawn)}`);

  const launch: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 0"], name: `l${i}` }, "probe");
    launch.push(performance.now() - t0);
    if ("run" in r) await ended(r.run);
  }
  console.log(`RunTable.launch, one at a time:                 ${_stats(launch)}`);

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
      const f = `${tmp}/direct-${i}`;
      const c = new Deno.Command("bash", { args: ["-c", `sleep 0.1; echo $EPOCHREALTIME > ${f}`] })
        .spawn();
      await c.status;
      direct.push(wallMs() - Number((await Deno.readTextFile(f)).trim()) * 1000);
      const g = `${tmp}/sup-${i}`;
      const p = await spawnProcess({
        argv: ["bash", "-c", `sleep 0.1; echo $EPOCHREALTIME > ${g}`],
        program: "/bin/bash",
        env: { PATH: "/usr/bin:/bin" },
        cwd: "/",
        statusFile: `${g}.exit`,
        supervisor,
        helpers,
      });
      if ("code" in p) continue;
      await p.exited;
      sup.push(wallMs() - Number((await Deno.readTextFile(g)).trim()) * 1000);
    }
    console.log(`exit → Deno sees its own child's exit (floor):  ${_stats(direct)}`);
    console.log(`exit → spawnProcess().exited (supervisor hop):  ${_stats(sup)}`);
  }

  for (const streams of [false, true]) {
    const exit: number[] = [];
    const drained: number[] = [];
    const release: number[] = [];
    for (let i = 0; i < n; i++) {
      const f = `${tmp}/stamp-${streams}-${i}`;
      const r = await table.launch(
        {
          argv: ["bash", "-c", `sleep 0.1; echo $EPOCHREALTIME > ${f}`],
          name: `e${streams}${i}`,
          streams,
        },
        "probe",
      );
      if (!("run" in r)) throw new Error(r.message);
      const run = r.run;
      if (run.io) {
        run.io.attach({ data: () => {} });
        run.io.grant("stdout", 1 << 20);
        run.io.grant("stderr", 1 << 20);
      }
      const at = await ended(run);
      if (run.io) await run.io.drained(2000);
      const dr = wallMs();
      const ts = Number((await Deno.readTextFile(f)).trim()) * 1000;
      exit.push(at - ts);
      if (run.io) drained.push(dr - ts);
      const t0 = performance.now();
      await table.release(run.id);
      release.push(performance.now() - t0);
    }
    const what = streams ? "streamed" : "plain";
    console.log(
      `exit → table's exit listener, ${what}:${" ".repeat(9 - what.length)}        ${_stats(exit)}`,
    );
    if (streams) console.log(`exit → listener and outputs drained, streamed:  ${_stats(drained)}`);
    console.log(
      `RunTable.release, ${what}:${" ".repeat(9 - what.length)}                    ${
        _stats(release)
      }`,
    );
  }
} finally {
  table.close();
  // let supervisors finish writing
  await new Promise((r) => setTimeout(r, 300));
  await Deno.remove(tmp, { recursive: true });
}
