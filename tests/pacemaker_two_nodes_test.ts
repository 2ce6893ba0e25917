// The OCF agent (dist/ocf/cmapp) under a real two-node Corosync + Pacemaker
// cluster, each node and the guest in namespaces of their own
// (tests/pacemaker_two_nodes.sh says how, and what each step checks): a node
// joining, a cleanup and a node rejoining never restart the application; a
// kill in the guest is restarted on the same node with its reason recorded;
// the second kill fails it over to the other node, one copy; a killed node's
// resource is taken over by attaching, with no second copy.
//
// Needs root, network/mount/pid namespaces, and the packages of .ci/deps.sh.
// It touches no cluster state of the machine's own (every daemon's directory
// is bound to one under the test's scratch directory), so it does not mind a
// cluster running here. Skipped, with the reason printed, when a
// prerequisite is missing.
import { testOrSkip } from "./_skip.ts";
import assert from "node:assert/strict";
import { reportFigures } from "./_harness.ts";
import {
  clusterSkipReason,
  killRecorded,
  output,
  runClusterScript,
  writeWrapper,
} from "./_pacemaker.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** Longest the whole script may take (it normally needs about two minutes). */
const SCRIPT_TIMEOUT_S = 600;

async function skipReason(): Promise<string | undefined> {
  const why = await clusterSkipReason(["ip", "unshare", "nsenter"]);
  if (why) return why;
  const ns = await output("unshare", ["--net", "--pid", "--fork", "--mount", "true"]);
  if (ns.code !== 0) return "cannot make network, mount and pid namespaces here";
  return undefined;
}

/** Removes a directory, retrying while the last writers in it die. */
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

const reason = await skipReason();
const NAME = "two Pacemaker nodes: joins, cleanups and rejoins never restart; " +
  "failures restart, then fail over; a dead node's resource is attached to";

testOrSkip("pacemaker_two_nodes_test", NAME, reason, async () => {
  // Readable by hacluster (the daemons' directories are below it).
  const w = await Deno.makeTempDir({ prefix: "cmapp-pcmk2-" });
  await Deno.chmod(w, 0o755);
  try {
    const { code, log } = await runClusterScript("pacemaker_two_nodes.sh", {
      W: w,
      AGENT: `${ROOT}/dist/ocf/cmapp`,
      CMAPPMGR: await writeWrapper(w, "cmappmgr"),
      CMAPPSERVER: await writeWrapper(w, "cmappserver"),
    }, SCRIPT_TIMEOUT_S);
    assert.equal(code, 0, "the cluster script failed (its output is above)");
    assert.match(log, /1\. app1 Started on n1/);
    assert.match(log, /2\. n2 joined and probed app1 as not running .* run untouched/);
    assert.match(log, /3\. killed; counted on n1 .* restarted on n1 .* 'killed by signal 9'/);
    assert.match(log, /4\. killed again; failed over to n2 .* one copy/);
    assert.match(log, /5\. cleanup and refresh: fail-counts cleared, re-probed, run untouched/);
    assert.match(log, /6\. n2 killed; n1 took app1 over .* by attaching to pid \d+; no new run/);
    assert.match(log, /7\. n2 rejoined and probed not running .* run untouched/);
    assert.match(log, /RESULT OK/);
    assert.match(log, /torn down/);
    const figures: Record<string, number> = {};
    for (const m of log.matchAll(/^figure: (\w+) ([\d.]+)$/gm)) figures[`${m[1]}_s`] = +m[2];
    reportFigures("pacemaker two nodes", figures);
  } finally {
    // Whatever happened to the script: pid 1 of each node and of the guest
    // takes every process of its namespace with it.
    await killRecorded(w, /^(bash|unshare)$/);
    const netns = await Deno.readTextFile(`${w}/netns`).catch(() => "");
    for (const ns of netns.split("\n").filter((l) => l !== "")) {
      await output("ip", ["netns", "del", ns]);
    }
    await removeAll(w);
  }
});
