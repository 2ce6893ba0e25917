// Runs on the guest: the process limit, and processes outliving connections.
import assert from "node:assert/strict";
import { alive, killGroup, makeKeys, reapRuns, startServerProcess } from "./_harness.ts";
import { connect, LaunchError, ManagerError } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";

async function client(keydir: string, port: number) {
  return await connect({
    host: "127.0.0.1",
    port,
    identity: await loadIdentity(keydir),
    trust: await loadTrust(keydir),
  });
}

async function closeClient(c: Awaited<ReturnType<typeof client>>) {
  c.close();
  await c.closed;
}

Deno.test("the 31st concurrent process is refused and nothing else is disturbed", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  const pids: number[] = [];
  const c = await client(keys.manager, server.port);
  try {
    const runs: string[] = [];
    for (let i = 0; i < 30; i++) {
      const r = await c.launch(["/bin/sleep", "600"], { name: `sleeper-${i}` });
      assert.equal(r.attached, false);
      runs.push(r.run);
      pids.push(r.pid);
    }
    const refused = await c.launch(["/bin/sleep", "600"], { name: "one-too-many" }).then(
      () => null,
      (e) => e,
    );
    assert.ok(refused instanceof LaunchError, String(refused));
    assert.equal(refused.code, "limit");
    assert.match(refused.message, /already monitoring 30 processes.*max_processes 30/);
    // All 30 still run, and the connection still works.
    for (const run of runs) assert.equal((await c.status(run)).state, "running");
    for (const pid of pids) assert.ok(alive(pid));
    // A slot frees when one ends, and its exit is reported.
    const ended = c.wait(runs[0]);
    killGroup(pids[0]);
    assert.deepEqual(await ended, { signal: 9 });
    const again = await c.launch(["/bin/sh", "-c", "exit 4"]);
    assert.deepEqual(await c.wait(again.run), { code: 4 });
  } finally {
    // Supervisors write exit statuses into the state directory: let them finish first.
    await reapRuns([`${keys.server}-state`], new Set(pids));
    await closeClient(c);
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("a dropped connection never kills the process; a new one re-attaches", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  const dir = keys.root.path;
  let pid = 0;
  try {
    const first = await client(keys.manager, server.port);
    // The process waits for a file we create, then exits 9.
    const r = await first.launch([
      "/bin/sh",
      "-c",
      `while [ ! -e ${dir}/go ]; do sleep 0.05; done; exit 9`,
    ]);
    pid = r.pid;
    first.destroy();
    await first.closed;
    await server.waitForLog(/disconnected/);
    assert.ok(alive(pid), "process died with its connection");
    const second = await client(keys.manager, server.port);
    try {
      const st = await second.status(r.run);
      assert.equal(st.state, "running");
      assert.equal(st.pid, pid);
      const exit = second.wait(r.run);
      await Deno.writeTextFile(`${dir}/go`, "");
      assert.deepEqual(await exit, { code: 9 });
      // The finished run stays known, with its status.
      const after = await second.status(r.run);
      assert.equal(after.state, "exited");
      assert.deepEqual(after.exit, { code: 9 });
      // An unknown run is an error for that request only.
      const unknown = await second.status("no-such-run").then(() => null, (e) => e);
      assert.ok(unknown instanceof LaunchError);
      assert.equal(unknown.code, "unknown_run");
      await second.ping();
    } finally {
      await closeClient(second);
    }
  } finally {
    await reapRuns([`${keys.server}-state`], new Set(pid ? [pid] : []));
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("SIGTERM to cmappserver tells managers and leaves processes running", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  let pid = 0;
  try {
    const c = await client(keys.manager, server.port);
    const r = await c.launch(["/bin/sleep", "600"]);
    pid = r.pid;
    assert.equal(await server.stop(), 0);
    await c.closed;
    // The manager was told why, as a retryable loss, not a protocol error.
    assert.ok(c.serverError instanceof ManagerError);
    assert.equal(c.serverError.kind, "lost");
    assert.match(c.serverError.message, /shutting down; 1 process\(es\) keep running/);
    assert.match(server.log(), /SIGTERM: closing; 1 monitored process\(es\) keep running/);
    assert.ok(alive(pid), "the process must outlive cmappserver");
  } finally {
    await reapRuns([`${keys.server}-state`], new Set(pid ? [pid] : []));
    await keys.root.cleanup();
  }
});
