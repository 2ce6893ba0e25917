/**
 * The run table: every process started for a manager, by id and by name;
 * attaching instead of starting a second copy; exit statuses kept until a
 * manager has received them; stopping; and re-adopting the runs of a
 * previous daemon from the state directory. Knows nothing of TLS or frames.
 *
 * @module
 */

import { describeExit, type ExitStatus } from "../protocol/mod.ts";
import type { Logger } from "../log/logger.ts";
import { type LaunchPolicy, type LaunchRequest, prepareLaunch } from "./policy.ts";
import type { RunRecord, RunStore } from "./store.ts";
import { RunStreams } from "./streams.ts";
import { bootId, isLive, processStartTime, type ProcStat, procStats } from "./procfs.ts";
import {
  readStatusFile,
  signalSession,
  type SpawnedProcess,
  type SpawnFailure,
  type SpawnRequest,
  type SupervisorKind,
} from "./supervisor.ts";

/** One monitored process. */
export interface Run {
  /** Server-assigned identifier, unique across restarts. */
  readonly id: string;
  /** Its name: runs are attached to by name. */
  readonly name: string;
  /** What was started. */
  readonly argv: readonly string[];
  /** Process id (and process group id). */
  readonly pid: number;
  /** When it was started. */
  readonly startedAt: Date;
  /** Fingerprint of the manager that launched it. */
  readonly launchedBy: string;
  /** Grace period between SIGTERM and SIGKILL, in ms. */
  readonly stopTimeoutMs: number;
  /** How it ended, once it has. */
  exit: ExitStatus | null;
  /** Why its exit status is unknown, when it ended unwatched. */
  lost: string | null;
  /** When it ended, once it has. */
  endedAt: Date | null;
  /** True once a manager has received how it ended. */
  delivered: boolean;
  /** True when it was started by an earlier cmappserver. */
  readonly adopted: boolean;
  /** Its standard streams, when a manager asked for them at launch. */
  readonly io: RunStreams | null;
}

/** True once a run has ended (with a known status or not). */
export function hasEnded(run: Run): boolean {
  return run.exit !== null || run.lost !== null;
}

/** A launch refused by a limit or the policy. */
export interface Refusal {
  /** "limit" or "policy". */
  code: "limit" | "policy";
  /** One line for the manager. */
  message: string;
}

/** Options for {@linkcode RunTable}. */
export interface RunTableOptions {
  /** Largest number of processes running at once. */
  maxProcesses: number;
  /** Finished runs kept for late managers, at most (oldest delivered ones go first). */
  keepFinished: number;
  /** Finished runs are forgotten after this long, in ms. */
  keepFinishedMs: number;
  /** Default grace period between SIGTERM and SIGKILL, in ms. */
  stopTimeoutMs: number;
  /** What may be launched. */
  policy: LaunchPolicy;
  /** Which supervisor runs each process. */
  supervisor: SupervisorKind;
  /** Where runs are recorded. */
  store: RunStore;
  /** Starts a process (see supervisor.ts); the helper paths are the caller's to add. */
  spawn(req: Omit<SpawnRequest, "helpers">): Promise<SpawnedProcess | SpawnFailure>;
  /** Where events go. */
  logger: Logger;
}

/** A launch request with its naming and stopping options. */
export interface RunLaunchOptions extends LaunchRequest {
  /** The run's name; derived from argv when absent. */
  name?: string;
  /** Grace period between SIGTERM and SIGKILL for this run, in ms. */
  stopTimeoutMs?: number;
  /** Capture stdout and stderr for a manager. */
  streams?: boolean;
  /** Let a manager feed stdin. */
  stdin?: boolean;
}

/** Listener told when a run ends. */
export type ExitListener = (run: Run) => void;

/**
 * Runs by id and name, with the process limit, the policy, persistence and
 * bounded memory of finished runs.
 *
 * @example
 * ```ts ignore
 * import { RunTable } from "./runs.ts";
 * const table = await RunTable.open(options);
 * const r = await table.launch({ argv: ["/bin/true"], name: "web" }, "AB:CD…");
 * ```
 */
export class RunTable {
  readonly #o: RunTableOptions;
  readonly #runs = new Map<string, Run>();
  readonly #byName = new Map<string, Run>();
  readonly #listeners = new Map<string, Set<ExitListener>>();
  readonly #launching = new Map<string, Promise<unknown>>();
  readonly #stopTimers = new Map<string, ReturnType<typeof setTimeout>>();
  /** Finished runs whose status no manager has received, in the order they ended. */
  readonly #undelivered = new Set<Run>();
  /** Finished runs whose status was received, in the order it was. */
  readonly #delivered = new Set<Run>();
  /** Every finished run, in the order they ended (for the age limit). */
  readonly #byEnd = new Set<Run>();
  /** Runs watched by polling, with their supervisor's pid. */
  readonly #watched = new Map<Run, RunRecord>();
  #running = 0;
  #boot = "unknown";
  #poller: ReturnType<typeof setInterval> | null = null;
  #closed = false;

  private constructor(options: RunTableOptions) {
    this.#o = options;
  }

  /**
   * Opens the table: re-adopts the runs recorded in the state directory by
   * an earlier cmappserver, and starts watching those still running.
   */
  static async open(options: RunTableOptions): Promise<RunTable> {
    const table = new RunTable(options);
    table.#boot = await bootId();
    await table.#recover();
    return table;
  }

  /** Number of runs whose process is alive. */
  get running(): number {
    return this.#running;
  }

  /** The most processes that may run at once. */
  get maxProcesses(): number {
    return this.#o.maxProcesses;
  }

  /** Every run known, oldest first. */
  list(): Run[] {
    return [...this.#runs.values()].sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime());
  }

  /** A run by id. */
  get(id: string): Run | undefined {
    return this.#runs.get(id);
  }

  /**
   * Starts a process, or attaches to the run of the same name when it is
   * still running or its exit status has not been received by a manager.
   */
  async launch(
    req: RunLaunchOptions,
    launchedBy: string,
  ): Promise<{ run: Run; attached: boolean } | Refusal | SpawnFailure> {
    const name = req.name ?? await deriveName(req.argv);
    // One launch per name at a time: a second one waits, then attaches.
    for (;;) {
      const busy = this.#launching.get(name);
      if (!busy) break;
      await busy.catch(() => {});
    }
    const existing = this.#byName.get(name);
    if (existing && (!hasEnded(existing) || !existing.delivered)) {
      return { run: existing, attached: true };
    }
    if (this.#running >= this.#o.maxProcesses) {
      return {
        code: "limit",
        message: `cmappserver is already monitoring ${this.#running} processes, its limit ` +
          `(max_processes ${this.#o.maxProcesses})`,
      };
    }
    const work = this.#start(req, name, launchedBy);
    this.#launching.set(name, work);
    try {
      return await work;
    } finally {
      this.#launching.delete(name);
    }
  }

  async #start(
    req: RunLaunchOptions,
    name: string,
    launchedBy: string,
  ): Promise<{ run: Run; attached: boolean } | Refusal | SpawnFailure> {
    const prepared = await prepareLaunch(req, this.#o.policy);
    if ("code" in prepared) return prepared;
    const id = _newRunId();
    const p = await this.#o.spawn({
      argv: prepared.argv,
      program: prepared.program,
      env: prepared.env,
      cwd: prepared.cwd,
      statusFile: this.#o.store.statusFile(id),
      supervisor: this.#o.supervisor,
      runAs: prepared.runAs,
      streams: req.streams,
      stdin: req.stdin,
    });
    if ("code" in p) return p;
    const run: Run = {
      id,
      name,
      argv: [...req.argv],
      pid: p.pid,
      startedAt: new Date(),
      launchedBy,
      stopTimeoutMs: req.stopTimeoutMs ?? this.#o.stopTimeoutMs,
      exit: null,
      lost: null,
      endedAt: null,
      delivered: false,
      adopted: false,
      io: p.io ? new RunStreams(p.io) : null,
    };
    const record: RunRecord = {
      id,
      name,
      argv: run.argv as string[],
      pid: p.pid,
      // From the supervisor's first line; a supervisor that could not read it
      // (or an older one) leaves it to /proc, through a subprocess.
      pidStart: p.pidStart ?? await processStartTime(p.pid),
      supervisorPid: p.supervisorPid,
      supervisorStart: p.supervisorStart,
      bootId: this.#boot,
      startedAt: run.startedAt.toISOString(),
      launchedBy,
      stopTimeoutMs: run.stopTimeoutMs,
    };
    this.#add(run);
    try {
      // In place before the reply, so a restarted cmappserver re-adopts it;
      // synced to disk after it (see RunStore).
      await this.#o.store.write(record);
    } catch (e) {
      this.#o.logger.error(
        `run ${id}: cannot record it in ${this.#o.store.dir}: ${(e as Error).message}; ` +
          `it will not survive a restart of cmappserver`,
      );
    }
    p.exited.then(async (exit) => {
      if (exit) return this.#finish(run, exit, null);
      // The supervisor ended without a status: watch the process itself.
      if (await processStartTime(run.pid) !== null) this.#watch(run, record);
      else this.#finish(run, null, "its supervisor ended without recording an exit status");
    });
    return { run, attached: false };
  }

  /**
   * Stops a run: SIGTERM to its process group, then SIGKILL after the grace
   * period. Returns false when the run is unknown or already ended.
   */
  stop(id: string, timeoutMs?: number): boolean {
    const run = this.#runs.get(id);
    if (!run || hasEnded(run)) return false;
    const grace = timeoutMs ?? run.stopTimeoutMs;
    this.#o.logger.info(
      `run ${run.id} (${run.name}) pid ${run.pid}: stopping (SIGTERM, SIGKILL after ${grace} ms)`,
    );
    void signalSession(run.pid, "SIGTERM");
    if (!this.#stopTimers.has(id)) {
      const timer = setTimeout(() => {
        this.#stopTimers.delete(id);
        if (!hasEnded(run)) {
          this.#o.logger.warn(
            `run ${run.id} (${run.name}): still alive after ${grace} ms; SIGKILL`,
          );
          void signalSession(run.pid, "SIGKILL");
        }
      }, grace);
      this.#stopTimers.set(id, timer);
    }
    return true;
  }

  /** Stops every running run and waits until they have all ended. */
  async stopAll(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const run of this.#runs.values()) {
      if (hasEnded(run)) continue;
      waits.push(new Promise((resolve) => this.onExit(run.id, () => resolve())));
      this.stop(run.id);
    }
    await Promise.all(waits);
  }

  /**
   * Records that a manager has received the run's exit status. Resolves
   * once the marker file exists (what a restarted cmappserver reads), before
   * it is synced to disk: losing it in a crash of the guest only means the
   * status is delivered once more, which at-least-once allows.
   */
  async release(id: string): Promise<boolean> {
    const run = this.#runs.get(id);
    if (!run || !hasEnded(run)) return false;
    if (run.delivered) return true;
    run.delivered = true;
    this.#undelivered.delete(run);
    this.#delivered.add(run);
    await this.#o.store.markDelivered(id).catch((e) =>
      this.#o.logger.error(`run ${id}: cannot record its delivery: ${(e as Error).message}`)
    );
    this.#prune();
    return true;
  }

  /**
   * Calls `listener` once when the run ends (at once if it has ended).
   * Returns a function that cancels it.
   */
  onExit(id: string, listener: ExitListener): () => void {
    const run = this.#runs.get(id);
    if (!run) return () => {};
    if (hasEnded(run)) {
      queueMicrotask(() => listener(run));
      return () => {};
    }
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Stops background work (watchers, timers); processes are left alone. */
  close(): void {
    this.#closed = true;
    if (this.#poller !== null) clearInterval(this.#poller);
    this.#poller = null;
    for (const t of this.#stopTimers.values()) clearTimeout(t);
    this.#stopTimers.clear();
  }

  #add(run: Run): void {
    this.#runs.set(run.id, run);
    const prev = this.#byName.get(run.name);
    if (!prev || prev.startedAt <= run.startedAt) this.#byName.set(run.name, run);
    if (!hasEnded(run)) this.#running++;
    else {
      (run.delivered ? this.#delivered : this.#undelivered).add(run);
      this.#byEnd.add(run);
    }
  }

  #finish(run: Run, exit: ExitStatus | null, lost: string | null): void {
    if (hasEnded(run)) return;
    run.exit = exit;
    run.lost = exit ? null : lost;
    run.endedAt = new Date();
    this.#running--;
    (run.delivered ? this.#delivered : this.#undelivered).add(run);
    this.#byEnd.add(run);
    this.#watched.delete(run);
    const timer = this.#stopTimers.get(run.id);
    if (timer !== undefined) {
      // It was being stopped: whatever is left of its session goes too.
      clearTimeout(timer);
      void signalSession(run.pid, "SIGKILL");
    }
    this.#stopTimers.delete(run.id);
    this.#o.logger.info(describeRunEnd(run));
    if (!exit) {
      this.#o.store.writeExit(run.id, `lost ${lost}`).catch(() => {});
    }
    const set = this.#listeners.get(run.id);
    this.#listeners.delete(run.id);
    for (const l of set ?? []) l(run);
    this.#prune();
  }

  /**
   * Forgets finished runs beyond the age limit (oldest end first), then
   * beyond the count limit: received ones first, in the order they were
   * received, then unreceived ones, oldest end first. Amortised O(1): every
   * set is kept in its order (runs end, and are received, in time order), so
   * only their heads are looked at.
   */
  #prune(): void {
    const now = Date.now();
    const head = (set: Set<Run>) => set.values().next().value as Run | undefined;
    for (let r = head(this.#byEnd); r; r = head(this.#byEnd)) {
      if (now - r.endedAt!.getTime() <= this.#o.keepFinishedMs) break;
      this.#forget(r);
    }
    let excess = this.#byEnd.size - this.#o.keepFinished;
    for (const set of [this.#delivered, this.#undelivered]) {
      for (let r = head(set); excess > 0 && r; r = head(set), excess--) this.#forget(r);
    }
  }

  #forget(run: Run): void {
    this.#byEnd.delete(run);
    this.#delivered.delete(run);
    this.#undelivered.delete(run);
    this.#runs.delete(run.id);
    run.io?.close();
    if (this.#byName.get(run.name) === run) this.#byName.delete(run.name);
    this.#o.store.remove(run.id).catch(() => {});
  }

  async #recover(): Promise<void> {
    const { runs, damaged } = await this.#o.store.loadAll();
    for (const d of damaged) {
      this.#o.logger.warn(`state: set aside a damaged run record: ${d}`);
    }
    // One read of /proc for every process the records name.
    const procs = await procStats(
      runs.filter((r) => !r.exit).flatMap(({ record }) => [record.pid, record.supervisorPid]),
    );
    const startOf = (pid: number) => {
      const st = procs.get(pid);
      return isLive(st) ? st.startTime : null;
    };
    // A pid alone could be a later, unrelated process: compare start times
    // where the record has one.
    const supervisorAlive = (r: RunRecord) =>
      _isSupervisor(procs.get(r.supervisorPid), r.supervisorStart);
    for (const { record, exit, delivered } of runs) {
      const lostLine = await Deno.readTextFile(this.#o.store.statusFile(record.id)).catch(() => "");
      const run: Run = {
        id: record.id,
        name: record.name,
        argv: record.argv,
        pid: record.pid,
        startedAt: new Date(record.startedAt),
        launchedBy: record.launchedBy,
        stopTimeoutMs: record.stopTimeoutMs,
        exit,
        lost: !exit && lostLine.startsWith("lost ") ? lostLine.slice(5).trim() : null,
        endedAt: null,
        delivered,
        adopted: true,
        io: null,
      };
      if (hasEnded(run)) {
        const st = await Deno.stat(this.#o.store.statusFile(record.id)).catch(() => null);
        run.endedAt = st?.mtime ?? new Date();
        this.#add(run);
        continue;
      }
      this.#add(run);
      if (record.bootId !== this.#boot) {
        this.#finish(run, null, "the guest was restarted while it ran");
        continue;
      }
      const alive = record.pidStart !== null && startOf(record.pid) === record.pidStart;
      if (alive || supervisorAlive(record)) {
        this.#o.logger.info(
          `state: re-adopted run ${run.id} (${run.name}) pid ${run.pid}, started ${record.startedAt}`,
        );
        this.#watch(run, record);
      } else {
        const late = await readStatusFile(this.#o.store.statusFile(record.id));
        if (late) this.#finish(run, late, null);
        else {
          this.#finish(
            run,
            null,
            "it ended while no supervisor was there to record how",
          );
        }
      }
    }
    // Recovered runs came in start order: put the finished ones in end order.
    for (const set of [this.#delivered, this.#undelivered, this.#byEnd]) {
      const sorted = [...set].sort((x, y) => x.endedAt!.getTime() - y.endedAt!.getTime());
      set.clear();
      for (const r of sorted) set.add(r);
    }
    this.#prune();
  }

  /** Watches a run this daemon is not the parent of (re-adopted ones). */
  #watch(run: Run, record: RunRecord): void {
    this.#watched.set(run, record);
    if (this.#poller !== null || this.#closed) return;
    let busy = false;
    this.#poller = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        const watched = [...this.#watched];
        // One read of /proc per tick for all of them, not two per run.
        const procs = await procStats(watched.flatMap(([r, rec]) => [r.pid, rec.supervisorPid]));
        for (const [r, record] of watched) {
          const exit = await readStatusFile(this.#o.store.statusFile(r.id));
          if (exit) {
            this.#finish(r, exit, null);
            continue;
          }
          const appAlive = isLive(procs.get(r.pid));
          const supAlive = _isSupervisor(procs.get(record.supervisorPid), record.supervisorStart);
          if (!appAlive && !supAlive) {
            const late = await readStatusFile(this.#o.store.statusFile(r.id));
            this.#finish(
              r,
              late,
              "it ended while no supervisor was there to record how",
            );
          }
        }
        if (this.#watched.size === 0 && this.#poller !== null) {
          clearInterval(this.#poller);
          this.#poller = null;
        }
      } finally {
        busy = false;
      }
    }, 250);
  }
}

/**
 * The name of a run launched without one: the program's base name and a
 * short hash of the whole argv, so the same command attaches to itself and
 * different ones do not.
 *
 * @example
 * ```ts
 * import { deriveName } from "./runs.ts";
 * await deriveName(["/bin/sleep", "60"]); // "sleep-…"
 * ```
 */
export async function deriveName(argv: readonly string[]): Promise<string> {
  const base = (argv[0].split("/").pop() || "run").replace(/[^A-Za-z0-9._@:+-]/g, "_")
    .replace(/^[^A-Za-z0-9]+/, "").slice(0, 100) || "run";
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(argv))),
  );
  const hex = Array.from(digest.subarray(0, 4), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${base}-${hex}`;
}

function _newRunId(): string {
  const rand = crypto.getRandomValues(new Uint8Array(6));
  return `${Date.now().toString(36)}-${
    Array.from(rand, (b) => b.toString(16).padStart(2, "0")).join("")
  }`;
}

/**
 * One line describing how a run ended, for logs.
 *
 * @example
 * ```ts ignore
 * describeRunEnd(run); // "run lq3-9f2a… (web) pid 4242 exited with code 0"
 * ```
 */
export function describeRunEnd(run: Run): string {
  const how = run.exit
    ? describeExit(run.exit)
    : run.lost
    ? `ended, but its exit status is unknown: ${run.lost}`
    : "still running";
  return `run ${run.id} (${run.name}) pid ${run.pid} ${how}`;
}

/** Whether a process is a run's supervisor still alive: live and, when known, the same start time. */
function _isSupervisor(st: ProcStat | undefined, start: number | null | undefined): boolean {
  return isLive(st) && (start === null || start === undefined || st.startTime === start);
}
