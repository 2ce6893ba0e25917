/**
 * A run's life across everything that can go wrong on the guest (issue 12):
 * cmappserver killed at every step of the launch, exit and release paths;
 * supervisors that cannot be asked (stopped, or cmappserver out of file
 * descriptors); the clock stepped back; a full or read-only state directory;
 * damaged records; a supervisor that fails to start; an unsafe state
 * directory; and runs left by cmappserver 0.1.0. Each ends the same way: the
 * application ran once, and every exit status is the real one or honestly
 * unknown.
 */
import assert from "node:assert/strict";
import {
  countLines,
  eventually,
  freePort,
  makeKeys,
  mgrArgs,
  type MgrProcess,
  runMgr,
  running,
  runPids,
  ServerFixture,
  type ServerProcess,
  waiter,
} from "./_harness.ts";
import { skipOrFail } from "./_skip.ts";
import { type Client, connect, LaunchError } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";

class Fixture extends ServerFixture {
  readonly clients: Client[] = [];

  /** cmappmgr against `port` in the background, following a named run. */
  follow(port: number, name: string, argv: string[], ...more: string[]): MgrProcess {
    return this.startMgr(
      mgrArgs(
        this.keys,
        { port } as ServerProcess,
        "-service_name",
        name,
        "-poll_interval",
        "0.1",
        "-cmappserver_timeout",
        "60",
        ...more,
        "--",
        ...argv,
      ),
    );
  }

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

  /** The runs of a name, as `list` tells them. */
  async runsNamed(server: ServerProcess, name: string) {
    const c = await this.client(server);
    return (await c.list()).filter((r) => r.name === name);
  }

  protected override async endOthers(): Promise<void> {
    for (const c of this.clients) {
      c.close();
      await c.closed;
    }
  }
}

/** Waits for a server killed by a crash point. */
async function crashed(s: ServerProcess): Promise<void> {
  const st = await s.exited;
  assert.equal(st.signal, "SIGKILL", `cmappserver should have crashed:\n${s.log()}`);
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

// ---------------------------------------------------------------- crash points

const LAUNCH_POINTS = [
  "launch.before-record",
  "launch.after-record",
  "launch.after-spawn",
  "launch.after-link",
];
const EXIT_POINTS = ["exit.before-record", "exit.after-record"];
const RELEASE_POINTS = ["release.before-marker", "release.after-marker"];

Deno.test("cmappserver killed at every step of a launch: the application runs once", async (t) => {
  for (const point of LAUNCH_POINTS) {
    await t.step(point, async () => {
      const f = await Fixture.create();
      try {
        const port = freePort();
        const counter = `${f.dir}/counter`;
        const marker = `${f.dir}/go`;
        const argv = waiter(counter, marker, 42);
        const first = await f.serverWith({ env: { CMAPP_CRASH_AT: point } }, "-port", `${port}`);
        const mgr = f.follow(port, "once", argv);
        await crashed(first);
        const second = await f.server("-port", `${port}`);
        await eventually("the application to start", async () => await countLines(counter) >= 1);
        await Deno.writeTextFile(marker, "");
        const r = await mgr.result;
        assert.equal(r.code, 42, r.stderr);
        assert.equal(await countLines(counter), 1, "the application ran twice");
        const runs = await f.runsNamed(second, "once");
        assert.equal(runs.length, 1, JSON.stringify(runs));
        assert.deepEqual(runs[0].exit, { code: 42 });
      } finally {
        await f.cleanup();
      }
    });
  }
});

Deno.test("cmappserver killed on the exit path: the real status, once", async (t) => {
  for (const point of EXIT_POINTS) {
    await t.step(point, async () => {
      const f = await Fixture.create();
      try {
        const port = freePort();
        const counter = `${f.dir}/counter`;
        const marker = `${f.dir}/go`;
        const argv = waiter(counter, marker, 42);
        const first = await f.serverWith({ env: { CMAPP_CRASH_AT: point } }, "-port", `${port}`);
        const mgr = f.follow(port, "ends", argv);
        await eventually("the application to start", async () => await countLines(counter) === 1);
        const { supervisorPid } = runPids(f.stateDir, (await f.runsNamed(first, "ends"))[0].run);
        await Deno.writeTextFile(marker, "");
        await crashed(first);
        const second = await f.server("-port", `${port}`);
        const r = await mgr.result;
        assert.equal(r.code, 42, r.stderr);
        assert.equal(await countLines(counter), 1);
        // Recorded, and collected: its supervisor is gone.
        await eventually(
          "the supervisor to be let go",
          async () => !(await running(supervisorPid!)),
        );
        const again = await runMgr(mgrArgs(f.keys, second, "-service_name", "ends", "--", ...argv));
        assert.equal(again.code, 42, again.stderr);
      } finally {
        await f.cleanup();
      }
    });
  }
});

Deno.test("cmappserver killed while releasing: delivered at least once, started once", async (t) => {
  for (const point of RELEASE_POINTS) {
    await t.step(point, async () => {
      const f = await Fixture.create();
      try {
        const port = freePort();
        const counter = `${f.dir}/counter`;
        const marker = `${f.dir}/go`;
        await Deno.writeTextFile(marker, "");
        const argv = waiter(counter, marker, 42);
        const first = await f.serverWith({ env: { CMAPP_CRASH_AT: point } }, "-port", `${port}`);
        const r = await f.follow(port, "rel", argv).result;
        assert.equal(r.code, 42, r.stderr);
        await crashed(first);
        const second = await f.server("-port", `${port}`);
        const again = await runMgr(mgrArgs(f.keys, second, "-service_name", "rel", "--", ...argv));
        assert.equal(again.code, 42, again.stderr);
        // Before the marker: not delivered, so the status is handed over again (at least
        // once). After it: delivered, so the next launch is a new run.
        assert.equal(await countLines(counter), point === "release.after-marker" ? 2 : 1);
      } finally {
        await f.cleanup();
      }
    });
  }
});

// ------------------------------------------------------ supervisors not answering

Deno.test("supervisors that cannot be asked are taken as running, never lost or doubled", async () => {
  const f = await Fixture.create();
  const stopped: number[] = [];
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    const c1 = await f.client(first);
    const names = ["a", "b", "c"];
    const runs = [];
    for (const n of names) {
      runs.push(await c1.launch(waiter(`${f.dir}/count-${n}`, `${f.dir}/go-${n}`, 7), { name: n }));
    }
    await f.crash(first);
    for (const r of runs) {
      const sup = runPids(f.stateDir, r.run).supervisorPid!;
      Deno.kill(sup, "SIGSTOP");
      stopped.push(sup);
    }
    const second = await f.server("-port", `${port}`);
    await second.waitForLog(/run \S+ \(c\): cannot reach its supervisor .*taken as running/);
    assert.doesNotMatch(second.log(), /lost|never started/);
    // A launch under a name attaches: the pid is known from the pid record.
    const mgr = f.follow(port, "a", waiter(`${f.dir}/count-a`, `${f.dir}/go-a`, 7));
    await second.waitForLog(/attached to run \S+ \(a\)/);
    for (const s of stopped) Deno.kill(s, "SIGCONT");
    await second.waitForLog(/run \S+ \(c\): its supervisor answers again/);
    for (const n of names) await Deno.writeTextFile(`${f.dir}/go-${n}`, "");
    const r = await mgr.result;
    assert.equal(r.code, 7, r.stderr);
    for (const n of names) assert.equal(await countLines(`${f.dir}/count-${n}`), 1);
  } finally {
    for (const s of stopped) {
      try {
        Deno.kill(s, "SIGCONT");
      } catch {
        // gone
      }
    }
    await f.cleanup();
  }
});

Deno.test("out of file descriptors at start: runs wait, then are re-adopted", async () => {
  const f = await Fixture.create();
  try {
    const first = await f.server();
    const c1 = await f.client(first);
    const RUNS = 12;
    const launched = [];
    for (let i = 0; i < RUNS; i++) {
      const argv = waiter(`${f.dir}/n-${i}`, `${f.dir}/go-r${i}`, 3);
      launched.push(await c1.launch(argv, { name: `r${i}` }));
    }
    await f.crash(first);
    // Enough descriptors to start and listen, not enough for a dozen supervisors (the
    // runtime raises a soft limit to the hard one, so both are set).
    const limit = await startingFds(f) + 4;
    const second = await f.serverWith({ wrap: ["prlimit", `--nofile=${limit}:${limit}`, "--"] });
    const log = second.log();
    const unreachable = [...log.matchAll(/\((r\d+)\): cannot reach its supervisor .*open files/g)]
      .map((m) => m[1]);
    const adopted = [...log.matchAll(/re-adopted run \S+ \((r\d+)\)/g)].map((m) => m[1]);
    assert.ok(unreachable.length > 0, `no run was short of descriptors:\n${log}`);
    assert.equal(unreachable.length + adopted.length, RUNS, log);
    assert.doesNotMatch(log, /exit status is unknown|never started/);
    // Runs end as they are adopted: their supervisors are let go, descriptors come free,
    // and the others, asked again every second, answer in turn.
    const released = new Set<string>();
    await eventually("every run to be re-adopted and to end", async () => {
      const text = second.log();
      const linked = [
        ...text.matchAll(/re-adopted run \S+ \((r\d+)\)/g),
        ...text.matchAll(/\((r\d+)\): its supervisor answers again/g),
      ].map((m) => m[1]);
      for (const n of linked.filter((n) => !released.has(n))) {
        released.add(n);
        await Deno.writeTextFile(`${f.dir}/go-${n}`, "");
      }
      const ended = [...text.matchAll(/\((r\d+)\) pid \d+ exited with code 3/g)];
      return new Set(ended.map((m) => m[1])).size === RUNS;
    }, 30_000);
    for (const n of unreachable) {
      assert.match(second.log(), new RegExp(`\\(${n}\\): its supervisor answers`));
    }
    const c2 = await f.client(second);
    const runs = await c2.list();
    assert.equal(runs.length, RUNS);
    for (const r of runs) assert.deepEqual(r.exit, { code: 3 }, JSON.stringify(r));
    for (let i = 0; i < RUNS; i++) assert.equal(await countLines(`${f.dir}/n-${i}`), 1);
  } finally {
    await f.cleanup();
  }
});

/** File descriptors a cmappserver with no runs holds once it listens. */
async function startingFds(f: Fixture): Promise<number> {
  const probe = await f.serverWith({}, "-statedir", `${f.dir}/probe-state`);
  try {
    const out = await new Deno.Command("ls", {
      args: [`/proc/${probe.pid}/fd`],
      stdout: "piped",
    }).output();
    return new TextDecoder().decode(out.stdout).trim().split("\n").length;
  } finally {
    await probe.stop();
  }
}

// ------------------------------------------------------------------- the clock

const FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

Deno.test("a clock stepped back never starts a second copy", async () => {
  if (!(await exists(FAKETIME))) {
    return skipOrFail("lifecycle_test", `${FAKETIME} not found: apt-get install faketime`);
  }
  // Certificates valid since long before the clock goes back to.
  const f = new Fixture(await makeKeys({ notBefore: new Date(Date.now() - 30 * 86400_000) }));
  try {
    const clock = `${f.dir}/clock`;
    await Deno.writeTextFile(clock, "+0\n");
    const env = {
      LD_PRELOAD: FAKETIME,
      FAKETIME_TIMESTAMP_FILE: clock,
      FAKETIME_NO_CACHE: "1",
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    };
    const port = freePort();
    const argv = (n: string) => waiter(`${f.dir}/count-${n}`, `${f.dir}/go-${n}`, 5);
    // A live daemon: one run of "tock" ends and is delivered; the clock goes back a day;
    // the next "tock" runs; a third launch must attach to it, not start another.
    const first = await f.serverWith({ env }, "-port", `${port}`);
    await Deno.writeTextFile(`${f.dir}/go-tock`, "");
    assert.equal((await f.follow(port, "tock", argv("tock")).result).code, 5);
    await Deno.remove(`${f.dir}/go-tock`);
    await Deno.writeTextFile(clock, "-1d\n");
    const log = (n: string) => `${f.dir}/${n}.log`;
    const following = async (n: string) =>
      await eventually(
        `cmappmgr ${n} to follow its run`,
        async () =>
          /started run|attached to run/.test(await Deno.readTextFile(log(n)).catch(() => "")),
      );
    const second = f.follow(port, "tock", argv("tock"), "-hostlogfile", log("second"));
    await eventually("the second run", async () => await countLines(`${f.dir}/count-tock`) === 2);
    const third = f.follow(port, "tock", argv("tock"), "-hostlogfile", log("third"));
    await first.waitForLog(/attached to run \S+ \(tock\)/);
    // Both have their answers (else a launch retried after the run was delivered would
    // rightly start a new one).
    await following("second");
    await following("third");
    // And across a restart under a clock stepped back further: still one copy.
    await f.crash(first);
    await Deno.writeTextFile(clock, "-3d\n");
    const again = await f.serverWith({ env }, "-port", `${port}`);
    const fourth = f.follow(port, "tock", argv("tock"));
    await again.waitForLog(/attached to run \S+ \(tock\)/);
    await Deno.writeTextFile(`${f.dir}/go-tock`, "");
    for (const m of [second, third, fourth]) assert.equal((await m.result).code, 5);
    assert.equal(await countLines(`${f.dir}/count-tock`), 2);
    const runs = await f.runsNamed(again, "tock");
    assert.equal(runs.length, 2);
    assert.ok(runs[0].run < runs[1].run || runs[0].run.length < runs[1].run.length);
  } finally {
    await f.cleanup();
  }
});

// ------------------------------------------------------- full or read-only disk

/** A small tmpfs for the state directory (root only); unmounted by `cleanup`. */
async function smallDisk(
  f: Fixture,
): Promise<
  {
    fill(): Promise<void>;
    free(): Promise<void>;
    ro(on: boolean): Promise<void>;
    cleanup(): Promise<void>;
  } | null
> {
  if (Deno.uid() !== 0) {
    skipOrFail("lifecycle_test", "mounting a tmpfs needs root");
    return null;
  }
  await Deno.mkdir(f.stateDir, { recursive: true });
  const mount = (args: string[]) => new Deno.Command("mount", { args, stderr: "piped" }).output();
  const m = await mount(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", f.stateDir]);
  if (m.code !== 0) {
    skipOrFail("lifecycle_test", `cannot mount a tmpfs: ${new TextDecoder().decode(m.stderr)}`);
    return null;
  }
  const filler = `${f.stateDir}/filler`;
  return {
    async fill() {
      await new Deno.Command("dd", {
        args: ["if=/dev/zero", `of=${filler}`, "bs=64k"],
        stderr: "null",
      }).output();
    },
    async free() {
      await Deno.remove(filler).catch(() => {});
    },
    async ro(on: boolean) {
      const r = await mount(["-o", `remount,${on ? "ro" : "rw"}`, f.stateDir]);
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    },
    async cleanup() {
      await new Deno.Command("umount", { args: ["-l", f.stateDir] }).output();
    },
  };
}

for (const how of ["full", "read-only"] as const) {
  Deno.test(`a ${how} state directory loses no exit status`, async () => {
    const f = await Fixture.create();
    const disk = await smallDisk(f);
    if (!disk) return await f.cleanup();
    f.beforeRemove = () => disk.cleanup();
    try {
      const port = freePort();
      const counter = `${f.dir}/counter`;
      const marker = `${f.dir}/go`;
      const argv = waiter(counter, marker, 42);
      const first = await f.server("-port", `${port}`);
      const mgr = f.follow(port, "held", argv);
      await eventually("the application to start", async () => await countLines(counter) === 1);
      const run = (await f.runsNamed(first, "held"))[0].run;
      const { supervisorPid } = runPids(f.stateDir, run);
      if (how === "full") await disk.fill();
      else await disk.ro(true);
      await Deno.writeTextFile(marker, "");
      const r = await mgr.result;
      assert.equal(r.code, 42, `${r.stderr}\n${first.log()}`);
      await first.waitForLog(/cannot record how it ended .*its supervisor keeps it/);
      assert.ok(await running(supervisorPid!), "the supervisor must hold the status");
      // Restarted meanwhile: the status is still there, from the supervisor.
      await f.crash(first);
      const second = await f.server("-port", `${port}`);
      const st = await (await f.client(second)).status(run);
      assert.deepEqual(st.exit, { code: 42 }, second.log());
      assert.equal(await countLines(counter), 1);
      if (how === "full") {
        // A launch that cannot be recorded is not started, and says why.
        const refused = await runMgr(mgrArgs(f.keys, second, "-service_name", "new", "--", "true"));
        assert.equal(refused.code, 126, refused.stderr);
        assert.match(refused.stderr, /cannot record the run .*not started: .*space/i);
        await disk.free();
      } else {
        await disk.ro(false);
      }
      await second.waitForLog(/its end is recorded now/, 30_000);
      await eventually("the supervisor to be let go", async () => !(await running(supervisorPid!)));
      assert.match(await Deno.readTextFile(`${f.stateDir}/runs/${run}.exit`), /^code 42\n/);
    } finally {
      await f.cleanup();
    }
  });
}

// ----------------------------------------------------------------- bad records

Deno.test("records that parse but hold impossible values are set aside; list works", async () => {
  const f = await Fixture.create();
  try {
    const runs = `${f.stateDir}/runs`;
    await Deno.mkdir(runs, { recursive: true });
    const base = {
      format: 2,
      seq: 1,
      name: "fine",
      argv: ["/bin/true"],
      launchedBy: "AB:CD",
      startedAt: new Date().toISOString(),
      stopTimeoutMs: 1000,
      streams: false,
      stdin: false,
    };
    const bad: Record<string, unknown>[] = [
      { ...base, id: "b1", name: "bad name!" },
      { ...base, id: "b2", startedAt: "yesterday-ish" },
      { ...base, id: "b3", seq: 0 },
      { ...base, id: "b4", argv: [] },
      { ...base, id: "b5", launchedBy: "AB\nforged" },
      { ...base, id: "b6", format: 9 },
      // 0.1.0 records with an impossible pid
      {
        id: "b7",
        name: "old",
        argv: ["x"],
        pid: 0,
        pidStart: 1,
        supervisorPid: 5,
        bootId: "b",
        startedAt: base.startedAt,
        launchedBy: "AB",
        stopTimeoutMs: 5,
      },
    ];
    for (const b of bad) await Deno.writeTextFile(`${runs}/${b.id}.json`, JSON.stringify(b));
    const server = await f.server();
    for (const b of bad) {
      assert.match(server.log(), new RegExp(`set aside a damaged run record: \\S*${b.id}\\.json`));
    }
    const c = await f.client(server);
    assert.deepEqual(await c.list(), []);
    const r = await c.launch(["/bin/sh", "-c", "exit 3"], { name: "fine" });
    assert.deepEqual(await c.wait(r.run), { code: 3 });
    assert.equal((await c.list()).length, 1);
  } finally {
    await f.cleanup();
  }
});

// ------------------------------------------------------- supervisor start fails

Deno.test("a supervisor that fails to start is a spawn_failed answer, and serving goes on", async () => {
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const c = await f.client(server);
    const bin = [...Deno.readDirSync(`${f.stateDir}/bin`)].find((e) =>
      e.name.startsWith("cmapp-supervise-")
    )!.name;
    const path = `${f.stateDir}/bin/${bin}`;
    const good = await Deno.readFile(path);
    await Deno.writeTextFile(path, "#!/bin/sh\nexit 3\n");
    const e = await c.launch(["/bin/true"], { name: "x" }).then(() => null, (e) => e);
    assert.ok(e instanceof LaunchError, String(e));
    assert.equal(e.code, "spawn_failed");
    assert.match(e.message, /supervisor failed to start the run/);
    await Deno.remove(path);
    const e2 = await c.launch(["/bin/true"], { name: "y" }).then(() => null, (e) => e);
    assert.ok(e2 instanceof LaunchError && e2.code === "spawn_failed", String(e2));
    assert.match(e2.message, /cannot run the supervisor/);
    // The same connection serves on; with the supervisor back, launches work.
    await Deno.writeFile(path, good, { mode: 0o700 });
    const ok = await c.launch(["/bin/sh", "-c", "exit 4"], { name: "z" });
    assert.deepEqual(await c.wait(ok.run), { code: 4 });
    assert.deepEqual((await c.list()).map((r) => r.name), ["z"]);
  } finally {
    await f.cleanup();
  }
});

// ------------------------------------------------------------ unsafe state dirs

Deno.test("a state directory others can change is refused at start", async (t) => {
  const cases: [string, (state: string) => Promise<void>, RegExp][] = [
    ["runs/ writable by all", async (s) => {
      await Deno.mkdir(`${s}/runs`, { recursive: true });
      await Deno.chmod(`${s}/runs`, 0o777);
    }, /runs is writable by others \(mode 0777\)/],
    ["the state directory a symlink", async (s) => {
      await Deno.mkdir(`${s}-real`, { recursive: true });
      await Deno.symlink(`${s}-real`, s);
    }, /is not a directory \(a symlink or a file\)/],
    ["a directory above writable by all, not sticky", async (s) => {
      await Deno.mkdir(s, { recursive: true });
      await Deno.chmod(`${s}/..`, 0o777);
    }, /above the state directory .* can be changed by others/],
    ["runs/ a symlink to elsewhere", async (s) => {
      await Deno.mkdir(`${s}-elsewhere`, { recursive: true });
      await Deno.mkdir(s, { recursive: true });
      await Deno.symlink(`${s}-elsewhere`, `${s}/runs`);
    }, /runs is not a directory/],
  ];
  for (const [name, make, message] of cases) {
    await t.step(name, async () => {
      const f = await Fixture.create();
      try {
        const state = `${f.dir}/sub/state`;
        await make(state);
        const e = await f.server("-statedir", state).then(() => null, (e) => e as Error);
        assert.ok(e, "cmappserver must refuse to start");
        assert.match(e.message, message);
        assert.match(e.message, /cannot start serving/);
      } finally {
        await Deno.chmod(`${f.dir}/sub`, 0o755).catch(() => {});
        await f.cleanup();
      }
    });
  }
});

// --------------------------------------------------------------- cmapp 0.1.0

Deno.test("a run left by cmapp 0.1.0 is followed to its recorded end", async () => {
  const f = await Fixture.create();
  const app = new Deno.Command("setsid", { args: ["/bin/sleep", "600"] }).spawn();
  const oldSup = new Deno.Command("/bin/sleep", { args: ["600"] }).spawn();
  try {
    const stat = async (pid: number) => {
      const out = await new Deno.Command("cat", { args: [`/proc/${pid}/stat`], stdout: "piped" })
        .output();
      const t = new TextDecoder().decode(out.stdout);
      return Number(t.slice(t.lastIndexOf(") ") + 2).split(" ")[19]);
    };
    const boot = new TextDecoder().decode(
      (await new Deno.Command("cat", {
        args: ["/proc/sys/kernel/random/boot_id"],
        stdout: "piped",
      }).output()).stdout,
    ).trim();
    await eventually("the application to start", async () => await stat(app.pid) > 0);
    const id = "mk1q2w3e-0a1b2c3d4e5f";
    await Deno.mkdir(`${f.stateDir}/runs`, { recursive: true });
    await Deno.writeTextFile(
      `${f.stateDir}/runs/${id}.json`,
      JSON.stringify({
        id,
        name: "legacy",
        argv: ["/bin/sleep", "600"],
        pid: app.pid,
        pidStart: await stat(app.pid),
        supervisorPid: oldSup.pid,
        supervisorStart: await stat(oldSup.pid),
        bootId: boot,
        startedAt: new Date(Date.now() - 60_000).toISOString(),
        launchedBy: "AB:CD",
        stopTimeoutMs: 10_000,
      }) + "\n",
    );
    const server = await f.server();
    await server.waitForLog(/run mk1q2w3e-0a1b2c3d4e5f \(legacy\).*a watcher follows it/);
    const mgr = f.follow(server.port, "legacy", ["/bin/sleep", "600"]);
    await server.waitForLog(/attached to run mk1q2w3e-0a1b2c3d4e5f \(legacy\)/);
    // The old sh supervisor records "status 137" when its application is killed, then ends.
    app.kill("SIGKILL");
    await app.status;
    await Deno.writeTextFile(`${f.stateDir}/runs/${id}.exit`, "status 137\n");
    oldSup.kill("SIGKILL");
    await oldSup.status;
    const r = await mgr.result;
    assert.equal(r.code, 137, r.stderr);
  } finally {
    for (const p of [app, oldSup]) {
      try {
        p.kill("SIGKILL");
      } catch {
        // gone
      }
      await p.status;
    }
    await f.cleanup();
  }
});

// ---------------------------------------------------------------- from the hostile review

Deno.test("a long run that ends while cmappserver is down is not forgotten by its age", async () => {
  const f = await Fixture.create();
  try {
    const port = freePort();
    const marker = `${f.dir}/go`;
    const argv = waiter(`${f.dir}/counter`, marker, 7);
    const first = await f.server("-port", `${port}`, "-keep_finished_for", "3");
    const c = await f.client(first);
    const r = await c.launch(argv, { name: "long" });
    // It runs longer than keep_finished_for, then ends while no cmappserver is there.
    await new Promise((res) => setTimeout(res, 4000));
    await f.crash(first);
    await Deno.writeTextFile(marker, "");
    await eventually(
      "its exit record",
      async () =>
        /^code 7/.test(await Deno.readTextFile(`${f.stateDir}/runs/${r.run}.exit`).catch(() => "")),
    );
    const second = await f.server("-port", `${port}`, "-keep_finished_for", "3");
    const st = await (await f.client(second)).status(r.run);
    assert.deepEqual(st.exit, { code: 7 });
  } finally {
    await f.cleanup();
  }
});

Deno.test("a supervisor slow to start when cmappserver dies starts nothing twice", async () => {
  const f = await Fixture.create();
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    // A loaded guest: the supervisor takes 2 s to get going.
    const bin = [...Deno.readDirSync(`${f.stateDir}/bin`)]
      .find((e) => e.name.startsWith("cmapp-supervise-"))!.name;
    const real = `${f.dir}/real-supervise`;
    await Deno.copyFile(`${f.stateDir}/bin/${bin}`, real);
    await Deno.chmod(real, 0o700);
    await Deno.writeTextFile(
      `${f.stateDir}/bin/${bin}`,
      `#!/bin/sh\n/bin/sleep 2\nexec ${real} "$@"\n`,
    );
    const counter = `${f.dir}/starts`;
    const argv = ["/bin/sh", "-c", `echo started >> ${counter}; exec /bin/sleep 6017`];
    const c = await f.client(first);
    void c.launch(argv, { name: "singleton" }).catch(() => {});
    await first.waitForLog(/accepted manager/);
    await new Promise((res) => setTimeout(res, 500));
    await f.crash(first); // cmappserver dies while the supervisor is starting
    // The next cmappserver (its supervisor program installed again, unwrapped) decides.
    const second = await f.server("-port", `${port}`);
    const c2 = await f.client(second);
    const r2 = await c2.launch(argv, { name: "singleton" });
    f.pids.add(r2.pid);
    await new Promise((res) => setTimeout(res, 3000)); // the slow supervisor has had its chance
    assert.equal(await countLines(counter), 1, second.log());
    const running = (await c2.list()).filter((r) =>
      r.name === "singleton" && r.state === "running"
    );
    assert.equal(running.length, 1, JSON.stringify(running));
  } finally {
    await f.cleanup();
  }
});
