// The OCF agent (dist/ocf/cmapp) under a real one-node Corosync + Pacemaker
// cluster on 127.0.0.1: tests/pacemaker_cluster.sh starts the cluster, puts
// `sleep 100000` under it through a real cmappserver (migration-threshold=3,
// monitor every 2 s), kills the application on the guest three times, and
// checks that Pacemaker restarts it twice (a new pid each time) and then
// leaves it stopped; then tears the cluster down.
//
// Needs root, the packages of .ci/deps.sh, and no cluster already running on
// this machine (one per machine: shared state directories, UDP 5405). It
// wipes /var/lib/pacemaker/cib: for disposable test machines. Skipped, with
// the reason printed, when a prerequisite is missing.
import { testOrSkip } from "./_skip.ts";
import assert from "node:assert/strict";
import { killGroup, makeKeys, mgrArgs, reapUnder, runMgr, startServerProcess } from "./_harness.ts";
import {
  clusterSkipReason,
  killRecorded,
  output,
  runClusterScript,
  writeWrapper,
} from "./_pacemaker.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** Longest the whole cluster script may take (it normally needs under a minute). */
const SCRIPT_TIMEOUT_S = 170;

/**
 * Removes a directory. Retried: the supervisors of killed applications may
 * still be writing their exit status into the server's state directory.
 */
async function removeAll(path: string): Promise<void> {
  for (let i = 0;; i++) {
    try {
      await Deno.remove(path, { recursive: true });
      return;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      if (i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function skipReason(): Promise<string | undefined> {
  const why = await clusterSkipReason();
  if (why) return why;
  for (const daemon of ["corosync", "pacemakerd"]) {
    if ((await output("pgrep", ["-x", daemon])).code === 0) {
      return `${daemon} is already running on this machine (one cluster per machine)`;
    }
  }
  return undefined;
}

const reason = await skipReason();
const NAME = "Pacemaker restarts a cmapp application twice, then stops it (migration-threshold)";

testOrSkip("pacemaker_test", NAME, reason, async () => {
  {
    const keys = await makeKeys();
    const server = await startServerProcess(keys.server);
    // Readable by hacluster (the daemons' logs go below it).
    const w = await Deno.makeTempDir({ prefix: "cmapp-pcmk-" });
    await Deno.chmod(w, 0o755);
    try {
      // The agent runs cmappmgr through this wrapper, as root, with the
      // cluster's bare environment.
      const { code, log } = await runClusterScript("pacemaker_cluster.sh", {
        W: w,
        AGENT: `${ROOT}/dist/ocf/cmapp`,
        GUEST: "127.0.0.1",
        PORT: String(server.port),
        KEYDIR: keys.manager,
        CMAPPMGR: await writeWrapper(w, "cmappmgr"),
      }, SCRIPT_TIMEOUT_S);
      assert.equal(code, 0, "the cluster script failed (its output is above)");
      assert.match(log, /RESULT OK/);
      assert.match(log, /failure 1: restarted by Pacemaker .* new pid \d+/);
      assert.match(log, /failure 2: restarted by Pacemaker .* new pid \d+/);
      assert.match(log, /failure 3: test1 stopped \(migration-threshold reached\)/);
      assert.match(log, /torn down/);
    } finally {
      // Whatever happened to the script: no daemon of ours may survive it.
      await killRecorded(w, /^(corosync|pacemaker)/);
      // The agent's background cmappmgr, and the application on the guest.
      try {
        for await (const e of Deno.readDir(`${w}/state`)) {
          if (!e.name.endsWith(".pid")) continue;
          const pid = +(await Deno.readTextFile(`${w}/state/${e.name}`)).trim();
          if (pid > 1) killGroup(pid);
        }
      } catch {
        // no state directory
      }
      const list = await runMgr(mgrArgs(keys, server, "-list", "-json"));
      if (list.code === 0) {
        for (const r of JSON.parse(list.stdout) as { pid: number; state: string }[]) {
          if (r.state === "running") killGroup(r.pid);
        }
      }
      await server.stop();
      await reapUnder(keys.root.path);
      await Deno.remove(w, { recursive: true });
      await removeAll(keys.root.path);
    }
  }
});
