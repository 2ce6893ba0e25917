/**
 * What the Pacemaker tests share: their prerequisites, the wrappers through
 * which the cluster runs cmapp's programs, the cluster scripts' runner, and
 * the clean-up of whatever a killed script left behind.
 *
 * @module
 */
import { writeProgramWrapper } from "./_harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** The programs every cluster test needs. */
export const CLUSTER_TOOLS: readonly string[] = [
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

/** Whether `cmd` is on PATH (or in /usr/sbin, /sbin). */
export function which(cmd: string): boolean {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  return dirs.some((d) => {
    try {
      return d !== "" && Deno.statSync(`${d}/${cmd}`).isFile;
    } catch {
      return false;
    }
  });
}

/** Runs a command to its end; its exit code and stdout (stderr dropped). */
export async function output(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string }> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

/**
 * Why a cluster test cannot run here (root, Linux, the tools, the hacluster
 * user), or undefined when it can.
 */
export async function clusterSkipReason(extraTools: string[] = []): Promise<string | undefined> {
  if (Deno.build.os !== "linux") return "Linux only";
  if (Deno.uid() !== 0) return "needs root (corosync, pacemaker)";
  const absent = [...CLUSTER_TOOLS, ...extraTools].filter((t) => !which(t));
  if (absent.length) return `not installed: ${absent.join(", ")} (see .ci/deps.sh)`;
  if ((await output("id", ["hacluster"])).code !== 0) return "no hacluster user";
  return undefined;
}

/** Writes `dir/PROGRAM`, a wrapper for the cluster's bare environment; returns its path. */
export async function writeWrapper(
  dir: string,
  program: "cmappserver" | "cmappmgr",
): Promise<string> {
  await writeProgramWrapper(`${dir}/${program}`, program);
  return `${dir}/${program}`;
}

/**
 * Runs `tests/SCRIPT` under `timeout` with `env`; prints and returns its
 * whole output and exit code.
 */
export async function runClusterScript(
  script: string,
  env: Record<string, string>,
  timeoutS: number,
): Promise<{ code: number; log: string }> {
  const t0 = performance.now();
  const out = await new Deno.Command("timeout", {
    args: ["-k", "15", String(timeoutS), "bash", `${ROOT}/tests/${script}`],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  const log = d.decode(out.stdout) + d.decode(out.stderr);
  const took = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(`${script} (exit ${out.code}, ${took} s):\n${log}`);
  return { code: out.code, log };
}

/**
 * SIGKILLs what a cluster script recorded in `dir/pids` ("what pid" lines)
 * and still runs, when its command matches `comm`: a script killed by its
 * timeout cannot clean up after itself.
 */
export async function killRecorded(dir: string, comm: RegExp): Promise<void> {
  let pids = "";
  try {
    pids = await Deno.readTextFile(`${dir}/pids`);
  } catch {
    return; // the script recorded none
  }
  for (const line of pids.split("\n")) {
    const [what, pid] = line.split(" ");
    if (!pid) continue;
    const ps = await output("ps", ["-o", "comm=", "-p", pid]);
    const name = ps.stdout.trim();
    if (ps.code === 0 && comm.test(name)) {
      console.log(`${what} pid ${pid} (${name}) left running: SIGKILL`);
      try {
        Deno.kill(+pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
  }
}
