// The daemon's runs with real processes: attaching by name, exit statuses
// kept across restarts and crashes of cmappserver, stopping, the state
// directory, the run list, lost runs and stop_on_exit.
//
// Deno refuses /proc to programs without --allow-all; cmappserver reads it
// through `cat` (server/procfs.ts). The re-adoption, stop and stop_on_exit
// tests below guard that.
import assert from "node:assert/strict";
import {
  countLines,
  eventually,
  killGroup,
  members,
  mgrArgs,
  type MgrProcess,
  processes,
  running,
  runPids,
  ServerFixture,
  type ServerProcess,
  waiter,
} from "./_harness.ts";
import { type Client, connect, LaunchError } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";
import type { ExitStatus } from "../protocol/mod.ts";
import { deriveName } from "../server/runs.ts";

/** Live session leaders whose command line mentions `token`: the applications started. */
async function leadersMentioning(token: string): Promise<number[]> {
  return (await processes()).filter((p) =>
    p.pid === p.sid && p.args.includes(token) && !/cmapp-supervise/.test(p.args)
  ).map((p) => p.pid);
}

/** A server fixture with client-API connections too (closed by `cleanup`). */
class Fixture extends ServerFixture {
  readonly clients: Client[] = [];

  async client(server: ServerProcess): Promise<Client> {
    const c = await connect({
      host: "127.0.0.1",
      port: server.port,
      identity: await loadIdentity(this.keys.manager),
      trust: await loadTrust(this.keys.manager),
    });
    this.clients.push(c);
    return c;
  }

  /** Starts cmappmgr against `server` in the background. */
  mgr(server: ServerProcess, ...args: string[]): MgrProcess {
    return this.startMgr(mgrArgs(this.keys, server, "-poll_interval", "0.1", ...args));
  }

  /** The pids of run `id`, as its files tell them. */
  record(id: string): { pid: number; supervisorPid: number } {
    const { pid, supervisorPid } = runPids(this.stateDir, id);
    if (!pid || !supervisorPid) throw new Error(`no pid record for run ${id}`);
    return { pid, supervisorPid };
  }

  protected override async endOthers(): Promise<void> {
    for (const c of this.clients) {
      c.close();
      await c.closed;
    }
  }
}

/**
 * Kills a run's supervisor, then the application, while no cmappserver
 * watches: nobody records how it ended.
 */
async function killBehindItsBack(supervisorPid: number, pid: number): Promise<void> {
  Deno.kill(supervisorPid, "SIGKILL");
  await eventually("the supervisor to die", async () => !(await running(supervisorPid)));
  killGroup(pid);
  await eventually("the application to die", async () => !(await running(pid)));
}

/**
 * The run's exit, or a failure when the connection closes first (a server
 * that died must fail the test, not leave it waiting with its cleanup undone).
 */
function waitExit(c: Client, run: string): Promise<ExitStatus> {
  const exit = Promise.race([
    c.wait(run),
    c.closed.then((e) => {
      throw new Error(
        `connection closed before run ${run} ended: ${
          e?.message ?? c.serverError?.message ?? "closed"
        }`,
      );
    }),
  ]);
  exit.catch(() => {}); // reported when awaited
  return exit;
}

Deno.test("two cmappmgr with one -service_name share one process and both get its exit", async () => {
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const counter = `${f.dir}/counter`;
    const marker = `${f.dir}/go`;
    const argv = waiter(counter, marker, 7);
    const a = f.mgr(server, "-service_name", "svc", "--", ...argv);
    const b = f.mgr(server, "-service_name", "svc", "--", ...argv);
    await server.waitForLog(/attached to run \S+ \(svc\)/);
    const c = await f.client(server);
    const runs = (await c.list()).filter((r) => r.name === "svc");
    assert.equal(runs.length, 1, JSON.stringify(runs));
    assert.equal(runs[0].state, "running");
    const first = runs[0].run;
    f.pids.add(runs[0].pid);
    await eventually("the application to start", async () => await countLines(counter) === 1);
    assert.deepEqual(await leadersMentioning(counter), [runs[0].pid]);
    assert.equal(server.log().match(/started run \S+ \(svc\)/g)?.length, 1, server.log());

    await Deno.writeTextFile(marker, "");
    const [ra, rb] = await Promise.all([a.result, b.result]);
    assert.equal(ra.code, 7, ra.stderr);
    assert.equal(rb.code, 7, rb.stderr);
    assert.equal(await countLines(counter), 1);

    // Both received it, so the name is free: the next launch starts a new run.
    const third = await f.mgr(server, "-service_name", "svc", "--", ...argv).result;
    assert.equal(third.code, 7, third.stderr);
    assert.equal(await countLines(counter), 2);
    const after = (await c.list()).filter((r) => r.name === "svc");
    assert.equal(after.length, 2, JSON.stringify(after));
    assert.ok(after.some((r) => r.run === first));
    const second = after.find((r) => r.run !== first)!;
    assert.deepEqual(second.exit, { code: 7 });
    assert.match(server.log(), new RegExp(`started run ${second.run} \\(svc\\)`));
  } finally {
    await f.cleanup();
  }
});

Deno.test("without -service_name the same command attaches to itself, another does not", async () => {
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const counter = `${f.dir}/counter`;
    const marker = `${f.dir}/go`;
    const argv = waiter(counter, marker, 3);
    const other = waiter(counter, marker, 3, 0.05, "other-argument");
    const a = f.mgr(server, "--", ...argv);
    await server.waitForLog(/started run/);
    const b = f.mgr(server, "--", ...argv);
    await server.waitForLog(/attached to run/);
    const c = f.mgr(server, "--", ...other);
    await eventually(
      "the second application to start",
      async () => await countLines(counter) === 2,
    );

    const client = await f.client(server);
    let list = await client.list();
    await eventually(
      "both runs to be listed",
      async () => (list = await client.list()).length >= 2,
    );
    list.forEach((r) => f.pids.add(r.pid));
    assert.equal(list.length, 2, JSON.stringify(list));
    const name = await deriveName(argv);
    const otherName = await deriveName(other);
    assert.notEqual(name, otherName);
    assert.match(name, /^sh-[0-9a-f]{8}$/);
    assert.deepEqual(list.map((r) => r.name).sort(), [name, otherName].sort());
    assert.deepEqual(list.find((r) => r.name === otherName)!.argv, other);
    assert.equal(server.log().match(/attached to run/g)?.length, 1, server.log());

    await Deno.writeTextFile(marker, "");
    for (const m of [a, b, c]) {
      const r = await m.result;
      assert.equal(r.code, 3, r.stderr);
    }
    assert.equal(await countLines(counter), 2);
  } finally {
    await f.cleanup();
  }
});

Deno.test("an exit status survives a restart of cmappserver and is handed to the next cmappmgr", async () => {
  const f = await Fixture.create();
  try {
    const counter = `${f.dir}/counter`;
    const marker = `${f.dir}/go`;
    const argv = waiter(counter, marker, 9);
    const first = await f.server();
    const c = await f.client(first);
    const r = await c.launch(argv, { name: "survivor" });
    f.pids.add(r.pid);
    assert.equal(r.attached, false);
    assert.equal(r.name, "survivor");
    await eventually("the application to start", async () => await countLines(counter) === 1);
    assert.equal(await first.stop(), 0);
    await c.closed;
    assert.ok(await running(r.pid), "the application must outlive cmappserver");

    // It ends while no cmappserver runs; its supervisor records how.
    await Deno.writeTextFile(marker, "");
    await eventually("the application to end", async () => !(await running(r.pid)));
    await eventually(
      "its supervisor to record the exit status",
      async () =>
        (await Deno.readTextFile(`${f.stateDir}/runs/${r.run}.exit`).catch(() => "")).trim() !==
          "",
    );

    const second = await f.server();
    const attach = await f.mgr(second, "-service_name", "survivor", "--", ...argv).result;
    assert.equal(attach.code, 9, attach.stderr);
    assert.equal(await countLines(counter), 1, "a second copy was started");
    assert.match(second.log(), new RegExp(`attached to run ${r.run} \\(survivor\\)`));
    assert.doesNotMatch(second.log(), /started run/);

    // Delivered now: the next launch under the name starts a new run.
    const again = await f.mgr(second, "-service_name", "survivor", "--", ...argv).result;
    assert.equal(again.code, 9, again.stderr);
    assert.equal(await countLines(counter), 2);
    const started = /started run (\S+) \(survivor\)/.exec(second.log());
    assert.ok(started, second.log());
    assert.notEqual(started[1], r.run);
  } finally {
    await f.cleanup();
  }
});

Deno.test({
  name: "after a SIGKILL of cmappserver the application runs on and is re-adopted",
  fn: async () => {
    const f = await Fixture.create();
    try {
      const marker = `${f.dir}/go`;
      const first = await f.server();
      const c1 = await f.client(first);
      const r = await c1.launch(waiter(`${f.dir}/counter`, marker, 5), { name: "crashy" });
      f.pids.add(r.pid);
      await f.crash(first);
      await c1.closed;
      assert.ok(await running(r.pid), "the application died with cmappserver");

      const second = await f.server();
      assert.match(
        second.log(),
        new RegExp(`state: re-adopted run ${r.run} \\(crashy\\) pid ${r.pid}`),
      );
      const c2 = await f.client(second);
      const st = await c2.status(r.run);
      assert.equal(st.state, "running");
      assert.equal(st.pid, r.pid);
      const exit = waitExit(c2, r.run);
      await Deno.writeTextFile(marker, "");
      assert.deepEqual(await exit, { code: 5 });
      const after = await c2.status(r.run);
      assert.equal(after.state, "exited");
      assert.deepEqual(after.exit, { code: 5 });
    } finally {
      await f.cleanup();
    }
  },
});

Deno.test({
  name: "stop kills a SIGTERM-ignoring application and all of its children",
  fn: async () => {
    const f = await Fixture.create();
    try {
      const server = await f.server();
      const c = await f.client(server);
      const r = await c.launch([
        "/bin/sh",
        "-c",
        'trap "" TERM; sleep 1000 & sleep 1000 & wait',
      ], { name: "stubborn" });
      f.pids.add(r.pid);
      // The shell and its two sleeps, all in the run's session and process group.
      await eventually("the children to start", async () => (await members(r.pid)).length === 3);
      const exit = waitExit(c, r.run);
      const st = await c.stop(r.run, 300);
      assert.equal(st.state, "running");
      assert.deepEqual(await exit, { signal: 9 });
      await server.waitForLog(/still alive after 300 ms; SIGKILL/);
      await eventually(
        "no process of the run to remain",
        async () => (await members(r.pid)).length === 0,
      );
      const after = await c.status(r.run);
      assert.deepEqual(after.exit, { signal: 9 });
    } finally {
      await f.cleanup();
    }
  },
});

Deno.test("damaged run records are set aside and the server still starts", async () => {
  const f = await Fixture.create();
  try {
    const runs = `${f.stateDir}/runs`;
    await Deno.mkdir(runs, { recursive: true });
    await Deno.writeTextFile(`${runs}/x1.json`, "\u0000{garbage\n");
    await Deno.writeTextFile(`${runs}/x1.exit`, "code 3\n");
    // Valid JSON, but its id is not the file's and its pid is a string.
    await Deno.writeTextFile(
      `${runs}/x2.json`,
      JSON.stringify({
        id: "x3",
        name: "fake",
        argv: ["/bin/true"],
        pid: "12",
        pidStart: null,
        supervisorPid: 0,
        bootId: "b",
        startedAt: new Date().toISOString(),
        launchedBy: "AB",
        stopTimeoutMs: 1000,
      }),
    );
    const server = await f.server();
    assert.match(server.log(), /set aside a damaged run record: \S*x1\.json/);
    assert.match(server.log(), /set aside a damaged run record: \S*x2\.json/);
    const remaining = [...Deno.readDirSync(runs)].map((e) => e.name);
    assert.deepEqual(remaining.filter((n) => n.startsWith("x")), []);
    const damaged = [...Deno.readDirSync(`${f.stateDir}/damaged`)].map((e) => e.name).sort();
    assert.equal(damaged.length, 3, damaged.join(" "));
    assert.ok(damaged.some((n) => n.startsWith("x1.json")));
    assert.ok(damaged.some((n) => n.startsWith("x1.exit")));
    assert.ok(damaged.some((n) => n.startsWith("x2.json")));

    const c = await f.client(server);
    assert.deepEqual(await c.list(), []);
    const r = await c.launch(["/bin/sh", "-c", "exit 3"], { name: "fine" });
    f.pids.add(r.pid);
    assert.deepEqual(await waitExit(c, r.run), { code: 3 });
  } finally {
    await f.cleanup();
  }
});

Deno.test("list tells every run's name, pid, state, start, exit, launcher and delivery", async () => {
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const c = await f.client(server);
    const fingerprint = (await loadIdentity(f.keys.manager)).info.fingerprint;
    const before = Date.now();
    const live = await c.launch(["/bin/sleep", "600"], { name: "live" });
    f.pids.add(live.pid);
    const done = await c.launch(["/bin/sh", "-c", "exit 4"], { name: "done" });
    f.pids.add(done.pid);
    assert.deepEqual(await waitExit(c, done.run), { code: 4 });

    const list = await c.list();
    assert.equal(list.length, 2, JSON.stringify(list));
    const l = list.find((r) => r.run === live.run)!;
    const d = list.find((r) => r.run === done.run)!;
    assert.equal(l.name, "live");
    assert.equal(l.pid, live.pid);
    assert.equal(l.state, "running");
    assert.deepEqual(l.argv, ["/bin/sleep", "600"]);
    assert.equal(l.exit, undefined);
    assert.equal(l.ended_at, undefined);
    assert.equal(l.launched_by, fingerprint);
    assert.equal(l.delivered, false);
    assert.equal(d.name, "done");
    assert.equal(d.pid, done.pid);
    assert.equal(d.state, "exited");
    assert.deepEqual(d.exit, { code: 4 });
    assert.equal(d.launched_by, fingerprint);
    assert.equal(d.delivered, false);
    for (const r of [l, d]) {
      const t = Date.parse(r.started_at);
      assert.ok(t >= before - 1000 && t <= Date.now() + 1000, r.started_at);
    }
    assert.ok(Date.parse(d.ended_at!) >= Date.parse(d.started_at), d.ended_at);
    assert.ok(list.indexOf(l) < list.indexOf(d), "oldest first");

    await c.release(done.run);
    const released = (await c.list()).find((r) => r.run === done.run)!;
    assert.equal(released.delivered, true);
    // Only a finished run can be released.
    const refused = await c.release(live.run).then(() => null, (e) => e);
    assert.ok(refused instanceof LaunchError, String(refused));
    assert.equal(refused.code, "unknown_run");
  } finally {
    await f.cleanup();
  }
});

Deno.test("a pid reused by another process is not taken for the run's application", async () => {
  const f = await Fixture.create();
  const impostor = new Deno.Command("/bin/sleep", { args: ["600"] }).spawn();
  try {
    const first = await f.server();
    const c1 = await f.client(first);
    const r = await c1.launch(["/bin/sleep", "600"], { name: "reused" });
    f.pids.add(r.pid);
    const pidFile = `${f.stateDir}/runs/${r.run}.pid`;
    const [boot, sup, supStart, pid, start] = (await Deno.readTextFile(pidFile)).trim().split(" ");
    assert.equal(Number(pid), r.pid);
    await f.crash(first);
    await c1.closed;
    await killBehindItsBack(Number(sup), r.pid);
    // As if the kernel had given the application's pid to an unrelated process.
    await Deno.writeTextFile(pidFile, `${boot} ${sup} ${supStart} ${impostor.pid} ${start}\n`);

    const second = await f.server();
    await second.waitForLog(new RegExp(`run ${r.run} \\(reused\\).*exit status is unknown`));
    assert.doesNotMatch(second.log(), /re-adopted/);
    assert.ok(await running(impostor.pid), "the impostor must not be touched");
  } finally {
    impostor.kill("SIGKILL");
    await impostor.status;
    await f.cleanup();
  }
});

Deno.test("a run that ended with nobody to record it is reported lost (207)", async () => {
  const f = await Fixture.create();
  try {
    const argv = ["/bin/sleep", "600"];
    const first = await f.server();
    const c1 = await f.client(first);
    const r = await c1.launch(argv, { name: "doomed" });
    f.pids.add(r.pid);
    const rec = f.record(r.run);
    assert.equal(rec.pid, r.pid);
    await f.crash(first);
    await c1.closed;
    // The supervisor first, so that nobody sees the application end.
    await killBehindItsBack(rec.supervisorPid, r.pid);

    const second = await f.server();
    await second.waitForLog(new RegExp(`run ${r.run} \\(doomed\\).*exit status is unknown`));
    const mgr = await f.mgr(second, "-service_name", "doomed", "--", ...argv).result;
    assert.equal(mgr.code, 207, mgr.stderr);
    assert.match(mgr.stderr, /exit status is unknown/);
    assert.match(second.log(), new RegExp(`attached to run ${r.run} \\(doomed\\)`));
    assert.doesNotMatch(second.log(), /started run/);

    const c2 = await f.client(second);
    const e = await c2.status(r.run).then(() => null, (e) => e);
    assert.ok(e instanceof LaunchError, String(e));
    assert.equal(e.code, "unknown_run");
    assert.match(e.message, /exit status is unknown/);
  } finally {
    await f.cleanup();
  }
});

Deno.test({
  name: "-stop_on_exit yes stops the applications when cmappserver is stopped",
  fn: async () => {
    const f = await Fixture.create();
    try {
      const server = await f.server("-stop_on_exit", "yes");
      const c = await f.client(server);
      const polite = await c.launch(["/bin/sleep", "600"], { name: "polite" });
      f.pids.add(polite.pid);
      const stubborn = await c.launch(
        ["/bin/sh", "-c", 'trap "" TERM; sleep 1000 & wait'],
        { name: "stubborn", stopTimeoutMs: 300 },
      );
      f.pids.add(stubborn.pid);
      await eventually(
        "the child to start",
        async () => (await members(stubborn.pid)).length === 2,
      );
      assert.equal(await server.stop(), 0);
      await c.closed;
      assert.match(server.log(), /SIGTERM: stopping 2 monitored process\(es\), then exiting/);
      for (const pid of [polite.pid, stubborn.pid]) {
        assert.ok(!(await running(pid)), `pid ${pid} outlived cmappserver`);
      }
      await eventually(
        "no process of either run to remain",
        async () =>
          (await members(polite.pid)).length === 0 && (await members(stubborn.pid)).length === 0,
      );
      const exitOf = (id: string) =>
        Deno.readTextFileSync(`${f.stateDir}/runs/${id}.exit`).split("\n")[0];
      assert.equal(exitOf(polite.run), "signal 15");
      assert.equal(exitOf(stubborn.run), "signal 9");
    } finally {
      await f.cleanup();
    }
  },
});
