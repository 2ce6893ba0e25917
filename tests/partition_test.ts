// A network partition between cmappmgr and cmappserver (issue 7), played by
// an in-process TCP relay the test controls (tests/_relay.ts): a blackhole
// shorter than -cmappserver_timeout then healed, one longer, a reset of
// every connection, and a slow link. cmappmgr is pointed at the relay.
//
// The only time bound asserted is the spec: a guest cut off is
// declared lost within -cmappserver_timeout plus two seconds. The figures
// are printed for RELIABILITY.md.
import assert from "node:assert/strict";
import {
  countMatches,
  delay,
  eventually,
  type KeyPair,
  makeKeys,
  type MgrProcess,
  reapRuns,
  reportFigures,
  running,
  type ServerProcess,
  startMgrProcess,
  startServerProcess,
  within,
} from "./_harness.ts";
import { Relay } from "./_relay.ts";
import { MGR_EXIT } from "../cli/exit_codes.ts";

/** One server, one relay in front of it, and what the test starts through them. */
class Fixture {
  readonly keys: KeyPair;
  readonly server: ServerProcess;
  readonly relay: Relay;
  readonly mgrs: MgrProcess[] = [];
  readonly pids = new Set<number>();

  private constructor(keys: KeyPair, server: ServerProcess) {
    this.keys = keys;
    this.server = server;
    this.relay = new Relay(server.port);
  }

  static async create(): Promise<Fixture> {
    const keys = await makeKeys();
    try {
      return new Fixture(keys, await startServerProcess(keys.server));
    } catch (e) {
      await keys.root.cleanup();
      throw e;
    }
  }

  get dir(): string {
    return this.keys.root.path;
  }

  /** cmappmgr through the relay, following `name` (a hostlog in the scratch dir). */
  mgr(name: string, timeout: number, argv: string[]): MgrProcess {
    const m = startMgrProcess([
      "-node",
      "127.0.0.1",
      "-port",
      String(this.relay.port),
      "-keydir",
      this.keys.manager,
      "-syslog",
      "no",
      "-cmappserver_timeout",
      String(timeout),
      "-poll_interval",
      "0.2",
      "-hostlogfile",
      this.hostlog(name),
      "-service_name",
      name,
      "--",
      ...argv,
    ]);
    this.mgrs.push(m);
    return m;
  }

  hostlog(name: string): string {
    return `${this.dir}/${name}.log`;
  }

  /** Waits for cmappmgr's log of `name` to match `re`. */
  async hostlogMatches(name: string, re: RegExp): Promise<void> {
    await eventually(
      `${re} in cmappmgr's log of ${name}`,
      async () => re.test(await Deno.readTextFile(this.hostlog(name)).catch(() => "")),
      60_000,
    );
  }

  /** Waits until `name` runs and its cmappmgr knows; returns the application's pid. */
  async following(name: string): Promise<number> {
    const re = new RegExp(`started run \\S+ \\(${name}\\) pid (\\d+)`);
    await this.server.waitForLog(re, 60_000);
    const pid = Number(re.exec(this.server.log())![1]);
    this.pids.add(pid);
    await this.hostlogMatches(name, /started run/);
    return pid;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.mgrs.map((m) => m.kill()));
    await this.relay.close();
    try {
      await reapRuns([`${this.keys.server}-state`], this.pids);
    } finally {
      await this.server.stop().catch(() => {});
      await this.keys.root.cleanup();
    }
  }
}

/** A shell command that waits for `marker`, then exits `code`. */
function waiter(marker: string, code: number): string[] {
  return ["/bin/sh", "-c", `while [ ! -e ${marker} ]; do sleep 0.1; done; exit ${code}`];
}

Deno.test("partition: a blackhole shorter than the timeout, healed: re-attach, the real code", async () => {
  const f = await Fixture.create();
  try {
    const marker = `${f.dir}/go`;
    const mgr = f.mgr("islet", 8, waiter(marker, 7));
    await f.following("islet");
    const accepted = countMatches(f.server.log(), /accepted manager/);
    f.relay.blackhole();
    await delay(4000);
    assert.ok(!mgr.done, "cmappmgr gave up during a 4 s partition of an 8 s timeout");
    const healedAt = Date.now();
    f.relay.heal();
    await f.hostlogMatches("islet", /re-attached to run \S+ on 127\.0\.0\.1:\d+ \(running\)/);
    const reattachMs = Date.now() - healedAt;
    assert.ok(countMatches(f.server.log(), /accepted manager/) > accepted, f.server.log());
    await Deno.writeTextFile(marker, "");
    const r = await within(mgr.result, 30_000, "cmappmgr to end");
    assert.equal(r.code, 7, r.stderr);
    assert.match(r.stderr, /lost contact with cmappserver/);
    assert.equal(countMatches(f.server.log(), /started run/), 1, f.server.log());
    reportFigures("partition-healed", {
      timeout_s: 8,
      blackhole_s: 4,
      reattach_after_heal_s: (reattachMs / 1000).toFixed(2),
      code: r.code,
    });
  } finally {
    await f.cleanup();
  }
});

Deno.test("partition: a blackhole longer than the timeout: 205 in time, the application runs on", async () => {
  const f = await Fixture.create();
  try {
    const timeout = 3;
    const mgr = f.mgr("castaway", timeout, ["/bin/sleep", "600"]);
    const pid = await f.following("castaway");
    const cutAt = Date.now();
    f.relay.blackhole();
    const r = await within(mgr.result, 60_000, "cmappmgr to give up");
    const took = mgr.endedAt! - cutAt;
    assert.equal(r.code, MGR_EXIT.lost, r.stderr);
    assert.match(r.stderr, /lost: no answer for \d+\.\d s \(timeout 3 s\)/);
    assert.match(r.stderr, /may still be running on the guest/);
    assert.ok(
      took <= timeout * 1000 + 2000,
      `declared lost ${
        (took / 1000).toFixed(2)
      } s after the partition (timeout ${timeout} s + 2 s)`,
    );
    assert.ok(await running(pid), "the application died with the partition");
    f.relay.heal();
    reportFigures("partition-lost", { timeout_s: timeout, detect_s: (took / 1000).toFixed(2) });
  } finally {
    await f.cleanup();
  }
});

Deno.test("partition: every connection reset: cmappmgr reconnects, the real code", async () => {
  const f = await Fixture.create();
  try {
    const marker = `${f.dir}/go`;
    const mgr = f.mgr("bounced", 8, waiter(marker, 9));
    await f.following("bounced");
    const resets = 3;
    const reattachMs: number[] = [];
    for (let i = 1; i <= resets; i++) {
      const before = countMatches(
        await Deno.readTextFile(f.hostlog("bounced")),
        /re-attached to run/,
      );
      const at = Date.now();
      f.relay.reset();
      await eventually(
        "cmappmgr to re-attach",
        async () =>
          countMatches(await Deno.readTextFile(f.hostlog("bounced")), /re-attached to run/) >
            before,
        60_000,
      );
      reattachMs.push(Date.now() - at);
      assert.ok(!mgr.done);
    }
    await Deno.writeTextFile(marker, "");
    const r = await within(mgr.result, 30_000, "cmappmgr to end");
    assert.equal(r.code, 9, r.stderr);
    assert.equal(countMatches(f.server.log(), /started run/), 1, f.server.log());
    reportFigures("partition-reset", {
      resets,
      reattach_s: reattachMs.map((ms) => (ms / 1000).toFixed(2)),
      code: r.code,
    });
  } finally {
    await f.cleanup();
  }
});

Deno.test("partition: a slow link (300 ms each way) is no failure: the real code", async () => {
  const f = await Fixture.create();
  try {
    f.relay.delay(300);
    const marker = `${f.dir}/go`;
    const mgr = f.mgr("slow", 5, waiter(marker, 3));
    await f.following("slow");
    await delay(3000);
    assert.ok(!mgr.done, "cmappmgr gave up on a slow link");
    await Deno.writeTextFile(marker, "");
    const r = await within(mgr.result, 30_000, "cmappmgr to end");
    assert.equal(r.code, 3, r.stderr);
    assert.doesNotMatch(r.stderr, /lost/);
    reportFigures("partition-slow", {
      delay_ms: 300,
      timeout_s: 5,
      code: r.code,
      false_failures: 0,
    });
  } finally {
    await f.cleanup();
  }
});
