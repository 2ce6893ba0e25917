// A name identifies one command: a launch under a name whose run is running
// (or ended with its exit status unclaimed) with another argv, user, group,
// working directory or environment is refused (cmappmgr exit 209, a message
// naming both commands) instead of silently following the old command.
// -attach says that following whatever runs under the name is intended.
import assert from "node:assert/strict";
import { eventually, mgrArgs, runMgr, ServerFixture, type ServerProcess } from "./_harness.ts";
import { rawJson, type RawPeer, rawPeer } from "./_raw_peer.ts";

const status = (f: ServerFixture, s: ServerProcess, name: string) =>
  runMgr(mgrArgs(f.keys, s, "-status", name));

/** The runs of `name` the guest lists. */
async function runsOf(f: ServerFixture, s: ServerProcess, name: string): Promise<number> {
  const list = await runMgr(mgrArgs(f.keys, s, "-list", "-json"));
  return (JSON.parse(list.stdout) as { name: string }[]).filter((r) => r.name === name).length;
}

Deno.test("a launch under a running name with another command is refused, 209, naming both", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    const web = f.startMgr(mgrArgs(f.keys, s, "-service_name", "web", "--", "sleep", "300"));
    await eventually("web to run", async () => (await status(f, s, "web")).code === 0);

    const other = await runMgr(mgrArgs(f.keys, s, "-service_name", "web", "--", "sleep", "301"));
    assert.equal(other.code, 209, other.stderr);
    assert.match(other.stderr, /web/);
    assert.match(other.stderr, /sleep 300/);
    assert.match(other.stderr, /sleep 301/);
    assert.match(other.stderr, /-attach/);
    await s.waitForLog(/refused: a run named web is running .* another command: sleep 301/);

    // The same command with another environment, working directory or user: refused too.
    const env = await runMgr(
      mgrArgs(f.keys, s, "-service_name", "web", "-env", "MODE=test", "--", "sleep", "300"),
    );
    assert.equal(env.code, 209, env.stderr);
    assert.match(env.stderr, /environment/);
    const cwd = await runMgr(
      mgrArgs(f.keys, s, "-service_name", "web", "-cwd", "/tmp", "--", "sleep", "300"),
    );
    assert.equal(cwd.code, 209, cwd.stderr);

    // Nothing was started or disturbed.
    assert.equal(await runsOf(f, s, "web"), 1);
    assert.equal((await status(f, s, "web")).code, 0);

    // -attach: following whatever runs under the name is intended.
    const follower = f.startMgr(
      mgrArgs(f.keys, s, "-service_name", "web", "-attach", "--", "sleep", "301"),
    );
    await s.waitForLog(/attached to run \S+ \(web\)/);
    // The same command attaches as it always did.
    const same = f.startMgr(mgrArgs(f.keys, s, "-service_name", "web", "--", "sleep", "300"));
    await eventually(
      "two attaches",
      () => Promise.resolve((s.log().match(/attached to run \S+ \(web\)/g) ?? []).length === 2),
    );
    assert.equal((await runMgr(mgrArgs(f.keys, s, "-stop", "web"))).code, 0);
    for (const m of [web, follower, same]) assert.equal((await m.result).code, 143);
    assert.equal(await runsOf(f, s, "web"), 1);
  } finally {
    await f.cleanup();
  }
});

Deno.test("an unclaimed exit status is not handed to another command; -attach or the same one collects it", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    // The follower is killed: the exit status (4) stays unclaimed on the guest.
    const argv = ["sh", "-c", `while [ ! -e ${f.dir}/go ]; do sleep 0.1; done; exit 4`];
    const first = f.startMgr(mgrArgs(f.keys, s, "-service_name", "job", "--", ...argv));
    await eventually("job to run", async () => (await status(f, s, "job")).code === 0);
    await first.kill();
    await Deno.writeTextFile(`${f.dir}/go`, "");
    await eventually("job to end", async () => (await status(f, s, "job")).code === 1);

    const other = await runMgr(mgrArgs(f.keys, s, "-service_name", "job", "--", "true"));
    assert.equal(other.code, 209, other.stderr);
    assert.match(other.stderr, /exit status .* not been collected|unclaimed/);
    assert.equal(await runsOf(f, s, "job"), 1, "nothing started");

    assert.match(other.stderr, /cmappmgr -stop job releases it/);
    const collected = await runMgr(mgrArgs(f.keys, s, "-service_name", "job", "-attach", "true"));
    assert.equal(collected.code, 4, collected.stderr);
    // Collected: the name is free for another command now.
    const next = await runMgr(mgrArgs(f.keys, s, "-service_name", "job", "--", "true"));
    assert.equal(next.code, 0, next.stderr);
    // -stop releases an uncollected exit status, as the message says, and frees the name.
    await Deno.remove(`${f.dir}/go`);
    const again = f.startMgr(mgrArgs(f.keys, s, "-service_name", "job2", "--", ...argv));
    await eventually("job2 to run", async () => (await status(f, s, "job2")).code === 0);
    await again.kill();
    await Deno.writeTextFile(`${f.dir}/go`, "");
    await eventually("job2 to end", async () => (await status(f, s, "job2")).code === 1);
    const released = await runMgr(mgrArgs(f.keys, s, "-stop", "job2"));
    assert.equal(released.code, 0, released.stderr);
    assert.match(released.stdout, /uncollected exit status released/);
    const fresh = await runMgr(mgrArgs(f.keys, s, "-service_name", "job2", "--", "true"));
    assert.equal(fresh.code, 0, fresh.stderr);
  } finally {
    await f.cleanup();
  }
});

Deno.test("on the wire: conflict for 1.5, a 1.4 manager attaches as it always did, attach_any attaches", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  try {
    const s = await f.server();
    const peer = async (minor: number) => {
      const p = await rawPeer(f.keys.manager, s.port);
      peers.push(p);
      await p.hello(minor);
      return p;
    };
    const first = await peer(5);
    first.write(rawJson({ type: "launch", id: 1, name: "w", argv: ["sleep", "300"] }));
    const started = await first.next((m) => m.id === 1);
    assert.equal(started.type, "launched", JSON.stringify(started));
    f.pids.add(started.pid as number);

    const cases = [
      [5, {}, "conflict"],
      [5, { env: { A: "1" } }, "conflict"],
    ] as const;
    for (const [minor, extra, code] of cases) {
      const p = await peer(minor);
      p.write(rawJson({ type: "launch", id: 2, name: "w", argv: ["sleep", "301"], ...extra }));
      const m = await p.next((m) => m.id === 2);
      assert.equal(m.type, "error", JSON.stringify(m));
      assert.equal(m.code, code, JSON.stringify(m));
      assert.match(String(m.message), /sleep 300.*sleep 301|sleep 300.*environment/);
    }
    // A 1.4 manager, which cannot say attach_any, attaches as 1.4 promised.
    const old = await peer(4);
    old.write(rawJson({ type: "launch", id: 4, name: "w", argv: ["sleep", "301"] }));
    const oldAttached = await old.next((m) => m.id === 4);
    assert.equal(oldAttached.type, "launched", JSON.stringify(oldAttached));
    assert.equal(oldAttached.pid, started.pid);
    const any = await peer(5);
    any.write(rawJson({ type: "launch", id: 3, name: "w", argv: ["true"], attach_any: true }));
    const attached = await any.next((m) => m.id === 3);
    assert.equal(attached.type, "launched", JSON.stringify(attached));
    assert.equal(attached.attached, true);
    assert.equal(attached.pid, started.pid);
  } finally {
    for (const p of peers) await p.close();
    await f.cleanup();
  }
});
