/**
 * cmapp-supervise on its own, for the benchmark: a private state directory
 * (checked and locked as cmappserver's), the supervisor installed into it
 * as cmappserver installs it, and one run started, timed and collected
 * through the same calls the daemon makes (`startSupervisor`, then
 * `SupervisorLink.open`, `link.ended`, `link.done()`), with no network and
 * no run table. And the same program started by Deno directly, the floor.
 *
 * The application stamps the time twice (bash's `$EPOCHREALTIME`, a
 * builtin: no process is started around the stamps): once first thing, once
 * last thing before it exits, with a `sleep` between so that it ends after
 * the start has been answered and the control connection is open.
 *
 * @module
 */

import { RunStore } from "../server/store.ts";
import { startSupervisor, SupervisorLink } from "../server/supervisor.ts";
import { installSupervisor } from "../server/supervisor_binary.ts";
import { DEFAULT_PATH, resolveProgram } from "../server/program.ts";
import { reapSupervisors, wallMs } from "./_lib.ts";

/** What one stamped run measured, in ms (wall clock, comparable to $EPOCHREALTIME). */
export interface StampedRun {
  /** Asked to start → the application's first stamp (the application runs). */
  launchMs: number;
  /** Asked to start → the start answered (pid known: startSupervisor resolved, or spawn returned). */
  answeredMs: number;
  /** The application's last stamp (it exits) → its end seen (link.ended, or child.status). */
  exitMs: number;
}

/** A private state directory with cmapp-supervise installed, as cmappserver has them. */
export class SupervisorBench {
  /** The state directory (locked). */
  readonly store: RunStore;
  /** The installed supervisor program. */
  readonly binary: string;
  /** bash, resolved as a launch would resolve it. */
  readonly bash: string;
  #seq = 0;
  readonly #stamps: string;

  private constructor(store: RunStore, binary: string, bash: string, stamps: string) {
    this.store = store;
    this.binary = binary;
    this.bash = bash;
    this.#stamps = stamps;
  }

  /** Opens `dir` as a state directory and installs the supervisor into its bin/. */
  static async open(dir: string): Promise<SupervisorBench> {
    const store = await RunStore.open(`${dir}/state`);
    const binary = await installSupervisor(store.binDir);
    const bash = await resolveProgram("bash", DEFAULT_PATH);
    if (typeof bash !== "string") {
      store.close();
      throw new Error(`bash: ${bash.message}`);
    }
    await Deno.mkdir(`${dir}/stamps`, { recursive: true });
    return new SupervisorBench(store, binary, bash, `${dir}/stamps`);
  }

  /** The application: stamp, sleep, stamp, exit. */
  #script(tag: string, sleepS: number): { args: string[]; first: string; last: string } {
    const first = `${this.#stamps}/${tag}.1`;
    const last = `${this.#stamps}/${tag}.2`;
    return {
      args: [
        "-c",
        `echo $EPOCHREALTIME > ${first}; sleep ${sleepS}; echo $EPOCHREALTIME > ${last}`,
      ],
      first,
      last,
    };
  }

  static async #stamp(f: string): Promise<number> {
    return Number((await Deno.readTextFile(f)).trim().replace(",", ".")) * 1000;
  }

  /** The stamped application started by Deno directly (`Deno.Command().spawn()`, stdio null). */
  async direct(sleepS = 0.1): Promise<StampedRun> {
    const s = this.#script(`d${this.#seq++}`, sleepS);
    const t0 = wallMs();
    const child = new Deno.Command(this.bash, {
      args: s.args,
      env: { PATH: DEFAULT_PATH },
      clearEnv: true,
      cwd: "/",
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const answered = wallMs();
    await child.status;
    const end = wallMs();
    return {
      launchMs: await SupervisorBench.#stamp(s.first) - t0,
      answeredMs: answered - t0,
      exitMs: end - await SupervisorBench.#stamp(s.last),
    };
  }

  /**
   * The stamped application through cmapp-supervise, as cmappserver starts
   * it: `startSupervisor()`, `SupervisorLink.open()`, `await link.ended`,
   * then `link.done()` and `link.close()` (the supervisor exits).
   */
  async supervised(sleepS = 0.1, streams = false): Promise<StampedRun> {
    const id = `b${(this.#seq++).toString(36)}`;
    const s = this.#script(id, sleepS);
    // The run's record, which cmappserver writes before it starts a supervisor (it checks).
    await Deno.writeTextFile(`${this.store.runsDir}/${id}.json`, "{}\n");
    const t0 = wallMs();
    const started = await startSupervisor({
      binary: this.binary,
      runsDir: this.store.runsDir,
      id,
      program: this.bash,
      argv: [this.bash, ...s.args],
      env: { PATH: DEFAULT_PATH },
      cwd: "/",
      streams,
      stdin: false,
      graceMs: 10_000,
    });
    const answered = wallMs();
    if ("code" in started) throw new Error(`cmapp-supervise: ${started.message}`);
    const link = await SupervisorLink.open(this.store.socketPath(id));
    const exit = await link.ended;
    const end = wallMs();
    link.done();
    await link.close();
    if (!exit?.outcome.exit) {
      throw new Error(`cmapp-supervise: run ${id} ended without an exit status`);
    }
    return {
      launchMs: await SupervisorBench.#stamp(s.first) - t0,
      answeredMs: answered - t0,
      exitMs: end - await SupervisorBench.#stamp(s.last),
    };
  }

  /** Ends anything left (there should be nothing) and unlocks the directory. */
  async close(): Promise<number> {
    const left = await reapSupervisors(this.store.dir);
    this.store.close();
    return left;
  }
}
