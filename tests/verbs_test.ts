// cmappmgr's verbs for scripts and cluster agents: -status NAME (one line or
// JSON, and an exit status to branch on: 0 running, 1 ended with a failure,
// 3 not running), -stop NAME (stop it and wait for its end), -check (the
// options, the configuration file and the keys, without connecting). The
// verbs that connect ride out a short restart of cmappserver.
import assert from "node:assert/strict";
import {
  delay,
  eventually,
  freePort,
  mgrArgs,
  runMgr,
  ServerFixture,
  type ServerProcess,
  startMgrProcess,
} from "./_harness.ts";

const status = (f: ServerFixture, s: ServerProcess, name: string, ...more: string[]) =>
  runMgr(mgrArgs(f.keys, s, "-status", name, ...more));

Deno.test("-status NAME: running 0, ended with 0 or unknown 3, ended otherwise 1", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    const absent = await status(f, s, "nothing");
    assert.equal(absent.code, 3, absent.stderr);
    assert.equal(absent.stdout, "nothing: no run of that name on the guest\n");

    const long = startMgrProcess(mgrArgs(f.keys, s, "-service_name", "web", "--", "sleep", "30"));
    await eventually("web to run", async () => (await status(f, s, "web")).code === 0);
    const running = await status(f, s, "web");
    assert.match(running.stdout, /^web: running, pid \d+ \(run \S+\), since \S+\n$/);
    const json = JSON.parse((await status(f, s, "web", "-json")).stdout);
    assert.equal(json.name, "web");
    assert.equal(json.state, "running");
    assert.equal(json.run.state, "running");

    assert.equal((await runMgr(mgrArgs(f.keys, s, "-service_name", "ok", "true"))).code, 0);
    const ok = await status(f, s, "ok");
    assert.equal(ok.code, 3);
    assert.match(ok.stdout, /^ok: exited with code 0, pid \d+/);
    const five = await runMgr(mgrArgs(f.keys, s, "-service_name", "bad", "sh", "-c", "exit 5"));
    assert.equal(five.code, 5);
    const bad = await status(f, s, "bad");
    assert.equal(bad.code, 1);
    assert.match(bad.stdout, /^bad: exited with code 5/);

    // -stop: the run ends (SIGTERM), its follower gets 143, -status then says how.
    const stopped = await runMgr(mgrArgs(f.keys, s, "-stop", "web"));
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.match(stopped.stdout, /^web: stopped: killed by signal 15, pid \d+/);
    assert.equal((await long.result).code, 143);
    const after = await status(f, s, "web");
    assert.equal(after.code, 1);
    assert.match(after.stdout, /^web: killed by signal 15/);
    // Stopping what does not run is done already.
    const again = await runMgr(mgrArgs(f.keys, s, "-stop", "web"));
    assert.equal(again.code, 0);
    assert.match(again.stdout, /nothing to stop/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-status and -list ride out a restart of cmappserver within -cmappserver_timeout", async () => {
  const f = await ServerFixture.create();
  try {
    const port = String(freePort());
    const first = await f.server("-port", port);
    await first.stop();
    const asking = startMgrProcess(
      mgrArgs(f.keys, first, "-cmappserver_timeout", "20", "-status", "web"),
    );
    const listing = startMgrProcess(mgrArgs(f.keys, first, "-cmappserver_timeout", "20", "-list"));
    await delay(1500);
    await f.server("-port", port);
    const r = await asking.result;
    assert.equal(r.code, 3, r.stderr);
    assert.equal((await listing.result).code, 0);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-check: the options, the file and the keys, without connecting", async () => {
  const f = await ServerFixture.create();
  try {
    // Nothing listens there: a connection would fail (200); -check does not try.
    const where = ["-node", "127.0.0.1", "-port", String(freePort())];
    const good = await runMgr([...where, "-keydir", f.keys.manager, "-check", "--", "true"]);
    assert.deepEqual([good.code, good.stdout, good.stderr], [0, "", ""]);
    const alone = await runMgr([...where, "-keydir", f.keys.manager, "-check"]);
    assert.equal(alone.code, 0, alone.stderr);
    const badValue = await runMgr([...where, "-keydir", f.keys.manager, "-check", "-port", "x"]);
    assert.equal(badValue.code, 2);
    assert.match(badValue.stderr, /port/);
    const conf = `${f.dir}/bad.conf`;
    await Deno.mkdir(f.dir, { recursive: true });
    await Deno.writeTextFile(conf, "cmappserver_timeout = soon\n");
    const badFile = await runMgr([...where, "-keydir", f.keys.manager, "-config", conf, "-check"]);
    assert.equal(badFile.code, 2);
    assert.match(badFile.stderr, /bad\.conf:1: .*cmappserver_timeout/);
    const noKeys = await runMgr([...where, "-keydir", `${f.dir}/none`, "-check"]);
    assert.equal(noKeys.code, 208);
    const twoVerbs = await runMgr([...where, "-keydir", f.keys.manager, "-check", "-list"]);
    assert.equal(twoVerbs.code, 2);
    assert.match(twoVerbs.stderr, /exclude each other/);
    const badName = await runMgr([...where, "-keydir", f.keys.manager, "-status", "bad name!"]);
    assert.equal(badName.code, 2);
    assert.match(badName.stderr, /status must be 1 to 128 characters/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-statusfile: how the run ended, or why cmappmgr failed, in one line", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    await Deno.mkdir(f.dir, { recursive: true });
    const file = `${f.dir}/status`;
    const r = await runMgr(mgrArgs(f.keys, s, "-statusfile", file, "sh", "-c", "exit 3"));
    assert.equal(r.code, 3);
    assert.equal(await Deno.readTextFile(file), "3 exited with code 3\n");
    const k = await runMgr(mgrArgs(f.keys, s, "-statusfile", file, "sh", "-c", "kill -9 $$"));
    assert.equal(k.code, 137);
    assert.equal(await Deno.readTextFile(file), "137 killed by signal 9 (SIGKILL)\n");
    const gone = await runMgr([
      "-node",
      "127.0.0.1",
      "-port",
      String(freePort()),
      "-keydir",
      f.keys.manager,
      "-cmappserver_timeout",
      "1",
      "-statusfile",
      file,
      "true",
    ]);
    assert.equal(gone.code, 200);
    assert.match(await Deno.readTextFile(file), /^200 .*127\.0\.0\.1/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-list: a COMMAND column, the MANAGER's trusted/ file name, and NAME patterns", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    const web = startMgrProcess(
      mgrArgs(
        f.keys,
        s,
        "-service_name",
        "web-1",
        "--",
        "sh",
        "-c",
        "sleep 30",
        "a-long-argument-" + "x".repeat(60),
      ),
    );
    assert.equal((await runMgr(mgrArgs(f.keys, s, "-service_name", "db", "true"))).code, 0);
    await eventually("web-1 to run", async () => (await status(f, s, "web-1")).code === 0);

    const all = await runMgr(mgrArgs(f.keys, s, "-list"));
    assert.equal(all.code, 0, all.stderr);
    const [head, ...rows] = all.stdout.trimEnd().split("\n");
    assert.match(head, /^RUN +NAME +PID +STATE +STARTED +EXIT +MANAGER +COMMAND$/);
    assert.equal(rows.length, 2);
    const webRow = rows.find((r) => / web-1 /.test(r))!;
    // The manager by the name of its certificate's file in the guest's trusted/ (manager.pem).
    assert.match(webRow, / manager +sh -c "sleep 30" a-long-argument-x+…$/);
    assert.ok(webRow.length < 200, "the command is cut short");
    assert.match(rows.find((r) => / db /.test(r))!, / manager +true$/);

    const only = await runMgr(mgrArgs(f.keys, s, "-list", "web*"));
    assert.equal(only.code, 0, only.stderr);
    assert.deepEqual(only.stdout.trimEnd().split("\n").slice(1).map((r) => r.split(/ +/)[1]), [
      "web-1",
    ]);
    const json = JSON.parse((await runMgr(mgrArgs(f.keys, s, "-list", "-json", "d?"))).stdout);
    assert.deepEqual(json.map((r: { name: string }) => r.name), ["db"]);
    assert.equal(json[0].launched_by_name, "manager");
    const none = await runMgr(mgrArgs(f.keys, s, "-list", "nothing*"));
    assert.equal(none.code, 0);
    assert.match(none.stdout, /^RUN +NAME/);
    assert.equal(none.stdout.trimEnd().split("\n").length, 1);

    assert.equal((await runMgr(mgrArgs(f.keys, s, "-stop", "web-1"))).code, 0);
    assert.equal((await web.result).code, 143);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-json: -ping, a run's summary, and errors, each as one JSON document", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    const ping = await runMgr(mgrArgs(f.keys, s, "-ping", "-json"));
    assert.equal(ping.code, 0, ping.stderr);
    const p = JSON.parse(ping.stdout);
    assert.equal(p.reachable, true);
    assert.equal(p.protocol, "1.5");
    assert.match(p.certificate, /^[0-9A-F:]{95}$/);
    assert.equal(typeof p.round_trip_ms, "number");

    // A run: the application's output as ever, then a summary as the last line of stderr.
    const run = await runMgr(
      mgrArgs(f.keys, s, "-json", "-service_name", "j", "--", "sh", "-c", "echo out; exit 3"),
    );
    assert.equal(run.code, 3, run.stderr);
    assert.equal(run.stdout, "out\n");
    const summary = JSON.parse(run.stderr.trimEnd().split("\n").pop()!);
    assert.equal(summary.status, 3);
    assert.deepEqual(summary.exit, { code: 3 });
    assert.equal(summary.name, "j");
    assert.equal(typeof summary.pid, "number");

    // cmappmgr's own failures: an error object with the status, its kind and the message.
    const refused = await runMgr(mgrArgs(f.keys, s, "-json", "--", "/nonexistent/program"));
    assert.equal(refused.code, 127);
    const e127 = JSON.parse(refused.stderr.trimEnd().split("\n").pop()!);
    assert.equal(e127.error.status, 127);
    assert.match(e127.error.message, /not found/);
    const usage = await runMgr(["-node", "127.0.0.1", "-json"]);
    assert.equal(usage.code, 2);
    assert.deepEqual(Object.keys(JSON.parse(usage.stderr).error).sort(), [
      "kind",
      "message",
      "status",
    ]);
    assert.equal(JSON.parse(usage.stderr).error.kind, "usage");
  } finally {
    await f.cleanup();
  }
});
