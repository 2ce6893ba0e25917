// Faults at scale (issue 7): cmappserver killed with SIGKILL under 30 runs
// and started again, cmappmgr killed with SIGKILL ten times on one run, and
// cmappserver frozen (SIGSTOP) under ten managers, beyond and inside the
// timeout. Real processes, real TLS on 127.0.0.1.
//
// The only time bound asserted is the spec: a manager declares the
// guest lost within its -cmappserver_timeout plus two seconds. The figures
// (time to detect, runs survived) are printed for RELIABILITY.md.
import assert from "node:assert/strict";
import {
  countLines,
  countMatches,
  delay,
  eventually,
  killGroup,
  mgrArgs,
  type MgrProcess,
  type MgrResult,
  reportFigures,
  running,
  runPids,
  ServerFixture,
  type ServerProcess,
  summarize,
  waiter,
  within,
} from "./_harness.ts";
import { MGR_EXIT } from "../cli/exit_codes.ts";

/** The bound on detection: the manager's timeout plus this. */
const SLACK_MS = 2000;

/** A server fixture that can also freeze servers (thawed again by `cleanup`). */
class Fixture extends ServerFixture {
  readonly frozen = new Set<number>();

  mgr(server: ServerProcess, ...args: string[]): MgrProcess {
    return this.startMgr(mgrArgs(this.keys, server, "-syslog", "no", ...args));
  }

  /**
   * cmappmgr following `argv` under `name` (-service_name), polling every
   * 0.2 s, giving up after `timeout` s; with `hostlog`, logging to
   * `<dir>/<name>.log`.
   */
  follow(
    server: ServerProcess,
    name: string,
    timeout: number,
    argv: string[],
    hostlog = true,
  ): MgrProcess {
    return this.mgr(
      server,
      "-cmappserver_timeout",
      String(timeout),
      "-poll_interval",
      "0.2",
      ...(hostlog ? ["-hostlogfile", `${this.dir}/${name}.log`] : []),
      "-service_name",
      name,
      "--",
      ...argv,
    );
  }

  freeze(server: ServerProcess): void {
    Deno.kill(server.pid, "SIGSTOP");
    this.frozen.add(server.pid);
  }

  thaw(server: ServerProcess): void {
    Deno.kill(server.pid, "SIGCONT");
    this.frozen.delete(server.pid);
  }

  protected override endOthers(): void {
    for (const pid of this.frozen) {
      try {
        Deno.kill(pid, "SIGCONT");
      } catch {
        // gone
      }
    }
  }
}

/** A shell command: appends to `counter`, waits for `marker`, exits `code` (0.3 s polls: 30 at once). */
function slowWaiter(counter: string, marker: string, code: number): string[] {
  return waiter(counter, marker, code, 0.3);
}

/** Waits until the server has logged `re` at least `n` times. */
async function logged(server: ServerProcess, re: RegExp, n: number, ms = 60_000): Promise<void> {
  await eventually(
    `${n} × ${re} in the cmappserver log`,
    () => countMatches(server.log(), re) >= n,
    ms,
  );
}

/** The run id and pid the server logged for the run named `name`. */
function startedRun(server: ServerProcess, name: string): { run: string; pid: number } {
  const m = new RegExp(`started run (\\S+) \\(${name}\\) pid (\\d+)`).exec(server.log());
  assert.ok(m, `no start of ${name} in:\n${server.log()}`);
  return { run: m[1], pid: Number(m[2]) };
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(2);
}

/** Asserts every manager exited 205 within its timeout plus SLACK_MS of `since`; returns the delays. */
async function assertAllLost(
  mgrs: MgrProcess[],
  since: number,
  timeoutSecs: number,
): Promise<number[]> {
  const results: MgrResult[] = await within(
    Promise.all(mgrs.map((m) => m.result)),
    timeoutSecs * 1000 + 60_000,
    "every cmappmgr to give up",
  );
  const delays: number[] = [];
  results.forEach((r, i) => {
    assert.equal(r.code, MGR_EXIT.lost, `manager ${i}: ${r.stderr}`);
    assert.match(r.stderr, /lost: no answer for/);
    const took = mgrs[i].endedAt! - since;
    delays.push(took);
    assert.ok(
      took <= timeoutSecs * 1000 + SLACK_MS,
      `manager ${i} declared the guest lost ${seconds(took)} s after the fault ` +
        `(timeout ${timeoutSecs} s + ${SLACK_MS / 1000} s)`,
    );
  });
  return delays;
}

const RUNS = 30;

Deno.test({
  name: "kill -9 of cmappserver under 30 runs: every cmappmgr exits 205 in time; " +
    "a restarted cmappserver re-adopts the runs and re-attaching managers get true exit codes",
  fn: async () => {
    const f = await Fixture.create();
    try {
      const timeout = 5;
      const first = await f.server();
      const name = (i: number) => `crash-${i}`;
      const code = (i: number) => 10 + i;
      const argv = (i: number) => slowWaiter(`${f.dir}/counter-${i}`, `${f.dir}/go-${i}`, code(i));
      const follow = (server: ServerProcess, i: number) =>
        f.follow(server, name(i), timeout, argv(i));
      // Started a few at a time, so that on a loaded machine no cmappmgr runs out of its
      // timeout before its first answer; each one has the launch's answer and follows its run.
      const firstMgrs: MgrProcess[] = [];
      const learned = (i: number) =>
        eventually(
          `cmappmgr ${i} to learn its run started`,
          async () => {
            if (firstMgrs[i].done) {
              assert.fail(`cmappmgr ${i}: ${(await firstMgrs[i].result).stderr}`);
            }
            return /started run/.test(
              await Deno.readTextFile(`${f.dir}/${name(i)}.log`).catch(() => ""),
            );
          },
          60_000,
        );
      for (let i = 0; i < RUNS; i += 6) {
        const batch = Array.from({ length: Math.min(6, RUNS - i) }, (_, k) => i + k);
        for (const k of batch) firstMgrs.push(follow(first, k));
        for (const k of batch) await learned(k);
      }
      const runs = Array.from({ length: RUNS }, (_, i) => startedRun(first, name(i)));
      for (const r of runs) f.pids.add(r.pid);
      assert.equal(countMatches(first.log(), /started run/), RUNS, first.log());

      const killedAt = Date.now();
      await f.crash(first);
      const delays = await assertAllLost(firstMgrs, killedAt, timeout);
      for (const r of runs) assert.ok(await running(r.pid), `run ${r.run} died with cmappserver`);

      // While no cmappserver runs: runs 0-13 end (their supervisors record how);
      // run 14 ends with nobody to record it (supervisor killed first): lost.
      const endedWhileDown = 14;
      const lostOne = 14;
      for (let i = 0; i < endedWhileDown; i++) await Deno.writeTextFile(`${f.dir}/go-${i}`, "");
      const sup = runPids(f.stateDir, runs[lostOne].run).supervisorPid!;
      Deno.kill(sup, "SIGKILL");
      await eventually("the supervisor to die", async () => !(await running(sup)));
      killGroup(runs[lostOne].pid);
      for (let i = 0; i < endedWhileDown; i++) {
        await eventually(
          `run ${i}'s exit status to be recorded`,
          async () =>
            (await Deno.readTextFile(`${f.stateDir}/runs/${runs[i].run}.exit`).catch(() => ""))
              .trim() !== "",
        );
      }
      await eventually("the lost run to end", async () => !(await running(runs[lostOne].pid)));

      const second = await f.server();
      const readopted = countMatches(second.log(), /state: re-adopted run/);
      assert.equal(readopted, RUNS - endedWhileDown - 1, second.log());
      for (let i = lostOne + 1; i < RUNS; i++) {
        assert.match(
          second.log(),
          new RegExp(`state: re-adopted run ${runs[i].run} \\(${name(i)}\\) pid ${runs[i].pid}`),
        );
      }
      assert.match(second.log(), new RegExp(`run ${runs[lostOne].run} .*exit status is unknown`));

      const reattachedAt = Date.now();
      const secondMgrs = Array.from({ length: RUNS }, (_, i) => follow(second, i));
      await logged(second, /attached to run/, RUNS, 120_000);
      for (let i = lostOne + 1; i < RUNS; i++) await Deno.writeTextFile(`${f.dir}/go-${i}`, "");
      const results = await within(
        Promise.all(secondMgrs.map((m) => m.result)),
        120_000,
        "the re-attached managers to end",
      );
      let trueCodes = 0;
      results.forEach((r, i) => {
        if (i === lostOne) {
          assert.equal(r.code, MGR_EXIT.runLost, r.stderr);
          assert.match(r.stderr, /exit status is unknown/);
        } else {
          assert.equal(r.code, code(i), `manager ${i}: ${r.stderr}`);
          trueCodes++;
        }
      });
      // No second copy of anything.
      assert.equal(countMatches(second.log(), /started run/), 0, second.log());
      for (let i = 0; i < RUNS; i++) assert.equal(await countLines(`${f.dir}/counter-${i}`), 1);
      const d = summarize(delays);
      reportFigures("server-kill-9", {
        runs: RUNS,
        timeout_s: timeout,
        detect_s: { min: seconds(d.min), p50: seconds(d.p50), max: seconds(d.max) },
        readopted,
        ended_while_down: endedWhileDown,
        lost: 1,
        true_codes: trueCodes,
        reattach_all_s: seconds(Math.max(...secondMgrs.map((m) => m.endedAt!)) - reattachedAt),
        extra_copies: 0,
      });
    } finally {
      await f.cleanup();
    }
  },
});

Deno.test({
  name: "kill -9 of cmappmgr ten times on one run: it runs on, no extra copy, the real code",
  fn: async () => {
    const f = await Fixture.create();
    try {
      const server = await f.server();
      const counter = `${f.dir}/counter`;
      const marker = `${f.dir}/go`;
      const argv = slowWaiter(counter, marker, 42);
      const follow = () => f.follow(server, "phoenix", 10, argv, false);
      let mgr = follow();
      await logged(server, /started run \S+ \(phoenix\)/, 1);
      const { run, pid } = startedRun(server, "phoenix");
      f.pids.add(pid);
      const kills = 10;
      for (let k = 1; k <= kills; k++) {
        // Attached and following: the server has answered its launch.
        await logged(server, /attached to run \S+ \(phoenix\)|started run \S+ \(phoenix\)/, k);
        await delay(300);
        if (mgr.done) assert.fail(`cmappmgr ${k} ended early: ${(await mgr.result).stderr}`);
        await mgr.kill();
        assert.ok(await running(pid), `the application died with cmappmgr ${k}`);
        if (k === kills) {
          // The last time, the application ends while no manager follows it.
          await Deno.writeTextFile(marker, "");
          await eventually("the application to end", async () => !(await running(pid)));
        }
        mgr = follow();
      }
      const r = await within(mgr.result, 60_000, "the last cmappmgr to end");
      assert.equal(r.code, 42, r.stderr);
      assert.equal(await countLines(counter), 1, "a second copy was started");
      assert.equal(countMatches(server.log(), /started run/), 1, server.log());
      assert.equal(
        countMatches(server.log(), new RegExp(`attached to run ${run} \\(phoenix\\)`)),
        kills,
        server.log(),
      );
      reportFigures("manager-kill-9", {
        kills,
        extra_copies: 0,
        lost_codes: 0,
        final_code: r.code,
      });
    } finally {
      await f.cleanup();
    }
  },
});

const FROZEN = 10;

Deno.test({
  name: "cmappserver frozen (SIGSTOP) under ten managers: resumed inside the timeout, " +
    "no false failure; frozen beyond it, all declared lost in time",
  fn: async (t) => {
    const f = await Fixture.create();
    try {
      const server = await f.server();
      const follow = (prefix: string, i: number, timeout: number, code: number) =>
        f.follow(
          server,
          `${prefix}-${i}`,
          timeout,
          slowWaiter(`${f.dir}/counter-${prefix}-${i}`, `${f.dir}/go-${prefix}-${i}`, code),
        );
      const following = async (prefix: string) => {
        await logged(server, new RegExp(`started run \\S+ \\(${prefix}-`), FROZEN);
        for (let i = 0; i < FROZEN; i++) {
          f.pids.add(startedRun(server, `${prefix}-${i}`).pid);
          await eventually(
            `cmappmgr ${prefix}-${i} to learn its run started`,
            async () =>
              /started run/.test(
                await Deno.readTextFile(`${f.dir}/${prefix}-${i}.log`).catch(() => ""),
              ),
          );
        }
      };

      await t.step("frozen 3 s of an 8 s timeout, then resumed: every real code", async () => {
        const mgrs = Array.from({ length: FROZEN }, (_, i) => follow("nap", i, 8, 20 + i));
        await following("nap");
        f.freeze(server);
        await delay(3000);
        const early = mgrs.filter((m) => m.done).length;
        f.thaw(server);
        assert.equal(early, 0, "a manager gave up on a guest frozen 3 s of an 8 s timeout");
        for (let i = 0; i < FROZEN; i++) await Deno.writeTextFile(`${f.dir}/go-nap-${i}`, "");
        const results = await within(
          Promise.all(mgrs.map((m) => m.result)),
          60_000,
          "the managers to end",
        );
        results.forEach((r, i) => {
          assert.equal(r.code, 20 + i, r.stderr);
          assert.doesNotMatch(r.stderr, /lost: no answer/);
        });
        reportFigures("server-sigstop-resumed", {
          managers: FROZEN,
          frozen_s: 3,
          false_failures: 0,
        });
      });

      await t.step("frozen beyond a 3 s timeout: every manager exits 205 in time", async () => {
        const timeout = 3;
        const mgrs = Array.from({ length: FROZEN }, (_, i) => follow("ice", i, timeout, 0));
        await following("ice");
        const frozenAt = Date.now();
        f.freeze(server);
        let delays: number[];
        try {
          delays = await assertAllLost(mgrs, frozenAt, timeout);
        } finally {
          f.thaw(server);
        }
        for (let i = 0; i < FROZEN; i++) {
          assert.ok(await running(startedRun(server, `ice-${i}`).pid), "an application died");
        }
        const d = summarize(delays);
        reportFigures("server-sigstop-lost", {
          managers: FROZEN,
          timeout_s: timeout,
          detect_s: { min: seconds(d.min), p50: seconds(d.p50), max: seconds(d.max) },
        });
      });
    } finally {
      await f.cleanup();
    }
  },
});
