// The launch and exit paths in-process: the supervisor's pid line with the
// start time, the exit reported only once the status file holds it, the run
// record in place when a launch returns, release, and the finished-run limit.
import assert from "node:assert/strict";
import { eventually, reapRuns, tempDir } from "./_harness.ts";
import {
  DEFAULT_PATH,
  findHelpers,
  readStatusFile,
  spawnProcess,
  type SupervisorKind,
} from "../server/supervisor.ts";
import { processStartTime, setCatPath } from "../server/procfs.ts";
import { RunStore } from "../server/store.ts";
import { hasEnded, type Run, RunTable } from "../server/runs.ts";
import { DEFAULT_POLICY } from "../server/policy.ts";
import { silentLogger } from "../log/logger.ts";
import type { Gatherer } from "../protocol/read_ahead.ts";

const helpers = await findHelpers();
setCatPath(helpers.cat);
const supervisors: SupervisorKind[] = helpers.perl ? ["perl", "sh"] : ["sh"];

async function _drain(r: Gatherer, first?: Uint8Array | null) {
  let text = first ? new TextDecoder().decode(first) : "";
  for (let c = await r.next(); c; c = await r.next()) text += new TextDecoder().decode(c);
  return text;
}

Deno.test("the supervisor reports the pid with its start time, and the exit once it is in the file", async (t) => {
  const dir = await tempDir();
  try {
    for (const supervisor of supervisors) {
      for (const streams of [false, true]) {
        await t.step(`${supervisor}, ${streams ? "streamed" : "plain"}`, async () => {
          const statusFile = `${dir.path}/${supervisor}-${streams}.exit`;
          const p = await spawnProcess({
            argv: ["sh", "-c", "read x < /dev/null; echo out; echo err >&2; exit 7"],
            program: "/bin/sh",
            env: { PATH: DEFAULT_PATH },
            cwd: "/",
            statusFile,
            supervisor,
            helpers,
            streams,
          });
          if ("code" in p) throw new Error(p.message);
          // Read while it is alive or a zombie: the start time is still there.
          const fromProc = await processStartTime(p.pid);
          const out = p.io ? _drain(p.io.stdout.reader, p.io.stdout.first) : null;
          const err = p.io ? _drain(p.io.stderr) : null;
          const exit = await p.exited;
          assert.deepEqual(exit, { code: 7 });
          // Never reported before the status file holds it.
          assert.deepEqual(await readStatusFile(statusFile), exit);
          assert.ok(p.pidStart !== null && p.pidStart > 0, `pidStart ${p.pidStart}`);
          if (fromProc !== null) assert.equal(p.pidStart, fromProc);
          if (out) assert.equal(await out, "out\n");
          if (err) assert.equal(await err, "err\n");
          await eventually("the supervisor to end", async () => {
            return (await processStartTime(p.supervisorPid)) === null;
          }, 10_000);
        });
      }
    }
    await t.step("a death by signal is reported as such (perl)", async () => {
      if (!helpers.perl) return;
      const p = await spawnProcess({
        argv: ["sh", "-c", "kill -TERM $$"],
        program: "/bin/sh",
        env: { PATH: DEFAULT_PATH },
        cwd: "/",
        statusFile: `${dir.path}/term.exit`,
        supervisor: "perl",
        helpers,
      });
      if ("code" in p) throw new Error(p.message);
      // SIGTERM reaches the application: the supervisor's ignored signals are not inherited.
      assert.deepEqual(await p.exited, { signal: 15 });
      await eventually("the supervisor to end", async () => {
        return (await processStartTime(p.supervisorPid)) === null;
      }, 10_000);
    });
  } finally {
    await dir.cleanup();
  }
});

async function _table(
  stateDir: string,
  keepFinished: number,
  keepFinishedMs = 86400_000,
): Promise<{ table: RunTable; store: RunStore }> {
  const store = await RunStore.open(stateDir);
  const table = await RunTable.open({
    maxProcesses: 100,
    keepFinished,
    keepFinishedMs,
    stopTimeoutMs: 5000,
    policy: DEFAULT_POLICY,
    supervisor: helpers.perl ? "perl" : "sh",
    store,
    spawn: (req) => spawnProcess({ ...req, helpers }),
    logger: silentLogger,
  });
  return { table, store };
}

function _ended(table: RunTable, run: Run): Promise<Run> {
  return new Promise((resolve) => table.onExit(run.id, resolve));
}

Deno.test("a launch returns with its record in place; release with its marker", async () => {
  const dir = await tempDir();
  const state = `${dir.path}/state`;
  const { table, store } = await _table(state, 10);
  const pids = new Set<number>();
  try {
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 3"], name: "rec" }, "test");
    if (!("run" in r)) throw new Error(r.message);
    pids.add(r.run.pid);
    const record = JSON.parse(await Deno.readTextFile(`${state}/runs/${r.run.id}.json`));
    assert.equal(record.pid, r.run.pid);
    assert.equal(typeof record.pidStart, "number");
    const ended = await _ended(table, r.run);
    assert.deepEqual(ended.exit, { code: 3 });
    assert.equal(await table.release(r.run.id), true);
    assert.ok((await Deno.stat(`${state}/runs/${r.run.id}.delivered`)).isFile);
  } finally {
    table.close();
    await store.synced();
    await reapRuns([state], pids);
    await dir.cleanup();
  }
});

Deno.test("beyond keep_finished, received runs are forgotten first, oldest first", async () => {
  const dir = await tempDir();
  const state = `${dir.path}/state`;
  const { table, store } = await _table(state, 3);
  const pids = new Set<number>();
  try {
    const runs: Run[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await table.launch({ argv: ["/bin/sh", "-c", `exit ${i}`], name: `k${i}` }, "t");
      if (!("run" in r)) throw new Error(r.message);
      pids.add(r.run.pid);
      await _ended(table, r.run);
      runs.push(r.run);
    }
    // Five ended, none received: the two oldest went.
    assert.deepEqual(table.list().map((r) => r.name), ["k2", "k3", "k4"]);
    // Received ones go before older unreceived ones.
    await table.release(runs[4].id);
    const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 9"], name: "k5" }, "t");
    if (!("run" in r)) throw new Error(r.message);
    pids.add(r.run.pid);
    await _ended(table, r.run);
    assert.deepEqual(table.list().map((r) => r.name), ["k2", "k3", "k5"]);
    assert.ok(table.list().every(hasEnded));
    await eventually("the forgotten runs' files to be removed", async () => {
      const names: string[] = [];
      for await (const e of Deno.readDir(`${state}/runs`)) names.push(e.name);
      return !names.some((n) => n.startsWith(runs[4].id) || n.startsWith(runs[0].id));
    }, 10_000);
  } finally {
    table.close();
    await store.synced();
    await reapRuns([state], pids);
    await dir.cleanup();
  }
});

Deno.test("beyond keep_finished_for, finished runs are forgotten, received or not", async () => {
  const dir = await tempDir();
  const state = `${dir.path}/state`;
  const { table, store } = await _table(state, 100, 50);
  const pids = new Set<number>();
  try {
    const names: string[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await table.launch({ argv: ["/bin/sh", "-c", "exit 0"], name: `a${i}` }, "t");
      if (!("run" in r)) throw new Error(r.message);
      pids.add(r.run.pid);
      await _ended(table, r.run);
      if (i === 0) await table.release(r.run.id);
      names.push(r.run.name);
      await new Promise((resolve) => setTimeout(resolve, 120));
    }
    // Each end forgets the runs that ended more than 50 ms before it.
    assert.deepEqual(table.list().map((r) => r.name), ["a2"]);
  } finally {
    table.close();
    await store.synced();
    await reapRuns([state], pids);
    await dir.cleanup();
  }
});
