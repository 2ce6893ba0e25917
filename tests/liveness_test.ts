// cmappmgr gives up on a guest that stays silent past -cmappserver_timeout.
import assert from "node:assert/strict";
import { eventually, makeKeys, mgrArgs, runMgr, startServerProcess } from "./_harness.ts";
import { MGR_EXIT } from "../cli/exit_codes.ts";

Deno.test("a frozen cmappserver is declared lost with its own exit code", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  let frozen = false;
  try {
    const log = `${keys.root.path}/mgr.log`;
    const mgr = runMgr(mgrArgs(
      keys,
      server,
      "-cmappserver_timeout",
      "2",
      "-poll_interval",
      "0.2",
      "-hostlogfile",
      log,
      "/bin/sleep",
      "30",
    ));
    await server.waitForLog(/started run \S+ \(\S+\) pid (\d+)/);
    // Frozen once the manager follows the run (its launch answered), not before.
    await eventually(
      "cmappmgr to have its answer",
      async () => /started run/.test(await Deno.readTextFile(log).catch(() => "")),
    );
    const pid = Number(/started run \S+ \(\S+\) pid (\d+)/.exec(server.log())![1]);
    Deno.kill(server.pid, "SIGSTOP");
    frozen = true;
    const r = await mgr;
    assert.equal(r.code, MGR_EXIT.lost, r.stderr);
    assert.match(r.stderr, /cmappserver at 127\.0\.0\.1:\d+ lost: no answer for \d+\.\d s/);
    assert.match(r.stderr, /may still be running on the guest/);
    Deno.kill(server.pid, "SIGCONT");
    frozen = false;
    Deno.kill(-pid, "SIGKILL");
  } finally {
    if (frozen) Deno.kill(server.pid, "SIGCONT");
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});
