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
import {
  alive,
  killGroup,
  makeKeys,
  mgrArgs,
  programCommand,
  reapUnder,
  runMgr,
  startServerProcess,
} from "./_harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const TOOLS = [
  "bash",
  "setsid",
  "timeout",
  "pgrep",
  "corosync",
  "corosync-cfgtool",
  "corosync-quorumtool",
  "pacemakerd",
  "crm_mon",
  "cibadmin",
  "crm_attribute",
  "crm_resource",
  "crm_failcount",
];
/** Longest the whole cluster script may take (it normally needs under a minute). */
const SCRIPT_TIMEOUT_S = 170;

function which(cmd: string): boolean {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  return dirs.some((d) => {
    try {
      return d !== "" && Deno.statSync(`${d}/${cmd}`).isFile;
    } catch {
      return false;
    }
  });
}

async function output(cmd: string, args: string[]): Promise<{ code: number; stdout: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

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
  if (Deno.build.os !== "linux") return "Linux only";
  if (Deno.uid() !== 0) return "needs root (corosync, pacemaker)";
  const absent = TOOLS.filter((t) => !which(t));
  if (absent.length) return `not installed: ${absent.join(", ")} (see .ci/deps.sh)`;
  if ((await output("id", ["hacluster"])).code !== 0) return "no hacluster user";
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
    let log = "";
    try {
      // The agent runs cmappmgr through this wrapper, as root, with the
      // cluster's bare environment.
      const argv = [Deno.execPath(), ...programCommand("cmappmgr")]
        .map((s) => `'${s.replaceAll("'", `'\\''`)}'`).join(" ");
      const denoDir = Deno.env.get("DENO_DIR") ??
        JSON.parse((await output(Deno.execPath(), ["info", "--json"])).stdout).denoDir;
      await Deno.writeTextFile(
        `${w}/cmappmgr`,
        `#!/bin/sh\nDENO_DIR='${denoDir}'\nexport DENO_DIR\nexec ${argv} "$@"\n`,
      );
      await Deno.chmod(`${w}/cmappmgr`, 0o755);

      const t0 = performance.now();
      const out = await new Deno.Command("timeout", {
        args: [
          "-k",
          "15",
          String(SCRIPT_TIMEOUT_S),
          "bash",
          `${ROOT}/tests/pacemaker_cluster.sh`,
        ],
        env: {
          W: w,
          AGENT: `${ROOT}/dist/ocf/cmapp`,
          GUEST: "127.0.0.1",
          PORT: String(server.port),
          KEYDIR: keys.manager,
          CMAPPMGR: `${w}/cmappmgr`,
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      log = d.decode(out.stdout) + d.decode(out.stderr);
      console.log(
        `pacemaker_cluster.sh (exit ${out.code}, ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s):\n${log}`,
      );
      assert.equal(out.code, 0, "the cluster script failed (its output is above)");
      assert.match(log, /RESULT OK/);
      assert.match(log, /failure 1: restarted by Pacemaker .* new pid \d+/);
      assert.match(log, /failure 2: restarted by Pacemaker .* new pid \d+/);
      assert.match(log, /failure 3: test1 stopped \(migration-threshold reached\)/);
      assert.match(log, /torn down/);
    } finally {
      // Whatever happened to the script: no daemon of ours may survive it.
      let pids = "";
      try {
        pids = await Deno.readTextFile(`${w}/pids`);
      } catch {
        // the script recorded none
      }
      for (const line of pids.split("\n")) {
        const [what, pid] = line.split(" ");
        if (!pid || !alive(+pid)) continue;
        const comm = (await output("ps", ["-o", "comm=", "-p", pid])).stdout.trim();
        if (/^(corosync|pacemaker)/.test(comm)) {
          console.log(`pacemaker_test: ${what} pid ${pid} (${comm}) left running: SIGKILL`);
          Deno.kill(+pid, "SIGKILL");
        }
      }
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
