// Load (issue 7): 200 managers, each on its own authenticated connection,
// polling their run's state every 100 ms for 60 s while runs start and end
// (each manager launches short runs in sequence: `sleep S.R; exit K`, 0.1 to 2.9 s). No
// exit may be missed or wrong, no run lost or doubled. The 200 managers are
// client-API sessions in this one test process (200 cmappmgr processes are
// too heavy for a 2-core CI machine); they speak the same protocol cmappmgr
// does: launch, status polls, the exit notification, release.
//
// Latencies (launch and poll round trips, p50/p95/max) are reported, not
// asserted. CMAPP_LOAD_SECONDS shortens the run (default 60);
// CMAPP_LOAD_MANAGERS changes the number of managers (default 200).
import assert from "node:assert/strict";
import {
  delay,
  makeKeys,
  reapRuns,
  reportFigures,
  startServerProcess,
  summarize,
  within,
} from "./_harness.ts";
import { type Client, connect, LaunchError } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";
import type { ExitStatus } from "../protocol/mod.ts";

const SECONDS = Number(Deno.env.get("CMAPP_LOAD_SECONDS") ?? 60);
const MANAGERS = Number(Deno.env.get("CMAPP_LOAD_MANAGERS") ?? 200);
const POLL_MS = 100;

/** One launched run as a manager saw it. */
interface Seen {
  run: string;
  name: string;
  expected: number;
  polled?: ExitStatus;
  notified?: ExitStatus;
}

/** What all the managers measured and saw. */
interface Tally {
  runs: Seen[];
  launchMs: number[];
  pollMs: number[];
  /** From the run's end (as the poll saw it) back to its launch: the whole round. */
  roundMs: number[];
  failures: string[];
  polls: number;
}

/** Deterministic pseudo-random numbers (so a failure can be replayed). */
function _rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 0x1_0000_0000;
  };
}

function _isCode(e: ExitStatus, code: number): boolean {
  return "code" in e && e.code === code;
}

/** One manager: short runs in sequence until `until`, each polled every 100 ms to its end. */
async function _manager(c: Client, i: number, until: number, tally: Tally): Promise<void> {
  const rand = _rng(i + 1);
  for (let j = 0; Date.now() < until; j++) {
    const expected = Math.floor(rand() * 126);
    const secs = Math.floor(rand() * 3);
    const tenths = 1 + Math.floor(rand() * 9);
    const name = `load-${i}-${j}`;
    const t0 = performance.now();
    let run: string;
    try {
      ({ run } = await c.launch(["/bin/sh", "-c", `sleep ${secs}.${tenths}; exit ${expected}`], {
        name,
      }));
    } catch (e) {
      tally.failures.push(
        `${name}: launch failed: ${e instanceof LaunchError ? e.code : ""} ${e}`,
      );
      return;
    }
    tally.launchMs.push(performance.now() - t0);
    const seen: Seen = { run, name, expected };
    tally.runs.push(seen);
    c.wait(run).then((e) => seen.notified = e);
    for (;;) {
      const p0 = performance.now();
      let st;
      try {
        st = await c.status(run);
      } catch (e) {
        tally.failures.push(`${name}: status failed: ${e}`);
        return;
      }
      const rtt = performance.now() - p0;
      tally.pollMs.push(rtt);
      tally.polls++;
      if (st.state !== "running") {
        seen.polled = st.exit ?? undefined;
        tally.roundMs.push(performance.now() - t0);
        break;
      }
      await delay(Math.max(0, POLL_MS - rtt));
    }
    try {
      await c.release(run);
    } catch (e) {
      tally.failures.push(`${name}: release failed: ${e}`);
      return;
    }
    // A short pause between runs, so that runs start and end all the time.
    await delay(Math.floor(rand() * 1000));
  }
}

Deno.test({
  name: `load: ${MANAGERS} managers polling every 100 ms for ${SECONDS} s while runs start and end`,
  fn: async () => {
    const keys = await makeKeys();
    const stateDir = `${keys.server}-state`;
    const server = await startServerProcess(keys.server, [
      "-max_processes",
      String(MANAGERS * 2),
      "-max_connections",
      String(MANAGERS * 4),
      "-keep_finished",
      "1000000",
    ]);
    const clients: Client[] = [];
    const tally: Tally = {
      runs: [],
      launchMs: [],
      pollMs: [],
      roundMs: [],
      failures: [],
      polls: 0,
    };
    try {
      const identity = await loadIdentity(keys.manager);
      const trust = await loadTrust(keys.manager);
      const c0 = performance.now();
      for (let i = 0; i < MANAGERS; i++) {
        clients.push(
          await connect({
            host: "127.0.0.1",
            port: server.port,
            identity,
            trust,
            timeoutMs: 30_000,
          }),
        );
      }
      const connectS = (performance.now() - c0) / 1000;
      const started = Date.now();
      const until = started + SECONDS * 1000;
      await within(
        Promise.all(clients.map((c, i) => _manager(c, i, until, tally))),
        SECONDS * 1000 + 120_000,
        "the managers to finish",
      );
      const elapsedS = (Date.now() - started) / 1000;

      // Every exit came back, right, both ways (poll and notification).
      assert.deepEqual(tally.failures, [], tally.failures.slice(0, 10).join("\n"));
      let missed = 0;
      let wrong = 0;
      for (const s of tally.runs) {
        if (!s.polled) missed++;
        else if (!_isCode(s.polled, s.expected)) wrong++;
      }
      // The notifications arrive with (or before) the poll that saw the end.
      await delay(200);
      const notified = tally.runs.filter((s) =>
        s.notified !== undefined && _isCode(s.notified, s.expected)
      ).length;
      assert.equal(missed, 0, "runs whose end no poll saw");
      assert.equal(wrong, 0, "runs whose exit status came back wrong");
      assert.equal(notified, tally.runs.length, "runs whose exit notification was missed or wrong");

      // No run lost or doubled: the guest knows each run launched, ended as told (asked run
      // by run: a run_list is cut to one frame), and has recorded no other.
      const perClient = Math.ceil(tally.runs.length / clients.length);
      await Promise.all(clients.map(async (c, k) => {
        for (const s of tally.runs.slice(k * perClient, (k + 1) * perClient)) {
          const st = await c.status(s.run);
          assert.equal(st.state, "exited", `run ${s.name} is ${st.state}`);
          assert.deepEqual(st.exit, { code: s.expected }, `run ${s.name}`);
        }
      }));
      const records = [...Deno.readDirSync(`${stateDir}/runs`)].filter((e) =>
        e.name.endsWith(".json")
      ).length;
      assert.equal(records, tally.runs.length, "the guest recorded a different number of runs");

      const launch = summarize(tally.launchMs);
      const poll = summarize(tally.pollMs);
      const round = summarize(tally.roundMs);
      const ms = (x: number) => Number(x.toFixed(1));
      reportFigures("load", {
        managers: MANAGERS,
        seconds: ms(elapsedS),
        connect_all_s: ms(connectS),
        runs: tally.runs.length,
        runs_per_s: ms(tally.runs.length / elapsedS),
        polls: tally.polls,
        polls_per_s: ms(tally.polls / elapsedS),
        missed_exits: missed,
        wrong_exits: wrong,
        lost_runs: 0,
        runs_recorded: records,
        launch_ms: { p50: ms(launch.p50), p95: ms(launch.p95), max: ms(launch.max) },
        poll_ms: { p50: ms(poll.p50), p95: ms(poll.p95), max: ms(poll.max) },
        launch_to_end_seen_ms: { p50: ms(round.p50), p95: ms(round.p95), max: ms(round.max) },
      });
    } finally {
      for (const c of clients) {
        c.close();
        await c.closed;
      }
      try {
        await reapRuns([stateDir], new Set());
      } finally {
        await server.stop();
        await keys.root.cleanup();
      }
    }
  },
});
