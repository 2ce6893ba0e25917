/**
 * The run table: every process started for a manager, by id and by name;
 * attaching instead of starting a second copy; the process limit, reserved
 * before the first await; exit statuses kept until a manager has received
 * them; stopping; and re-adopting, from the state directory and the
 * supervisors' sockets, the runs of an earlier cmappserver. Runs are
 * ordered by a sequence number, never by the clock. Knows nothing of TLS or
 * frames.
 *
 * @module
 */

import { describeExit, type ExitStatus, formatArgv } from "../protocol/mod.ts";
import type { Logger } from "../log/logger.ts";
import { crashPoint } from "./_crash.ts";
import { type LaunchPolicy, type LaunchRequest, prepareLaunch } from "./policy.ts";
import type { ProgramFailure } from "./program.ts";
import {
  type AnyRunRecord,
  type ExitRecord,
  launchSpec,
  type Outcome,
  RECORD_FORMAT,
  type RunRecord,
  type StreamCounts,
} from "./records.ts";
import type { RunLock, RunStore, StoredRun } from "./store.ts";
import { RunStreams, STDIN_GRACE_MS } from "./streams.ts";
import {
  LinkError,
  openInput,
  openOutput,
  type OutputLink,
  startSupervisor,
  startWatcher,
  type SupervisorExit,
  SupervisorLink,
} from "./supervisor.ts";

/** One monitored process. */
export interface Run {
  /** Server-assigned identifier, unique across restarts. */
  readonly id: string;
  /** Launch order on this state directory. */
  readonly seq: number;
  /** Its name: runs are attached to by name. */
  readonly name: string;
  /** What was started. */
  readonly argv: readonly string[];
  /** Process id (and process group id); 0 while not known yet. */
  pid: number;
  /** When it was started (wall clock: shown only). */
  readonly startedAt: Date;
  /** Fingerprint of the manager that launched it. */
  readonly launchedBy: string;
  /** Grace period between SIGTERM and SIGKILL, in ms. */
  readonly stopTimeoutMs: number;
  /** How it ended, once it has. */
  exit: ExitStatus | null;
  /** Why its exit status is unknown, when it ended unwatched. */
  lost: string | null;
  /** When it ended, once it has (wall clock: shown only). */
  endedAt: Date | null;
  /** True once a manager has received how it ended. */
  delivered: boolean;
  /** True when it was started by an earlier cmappserver. */
  readonly adopted: boolean;
  /** Its standard streams, while this daemon holds them. */
  io: RunStreams | null;
  /** True while its supervisor could not be asked (it is taken as running meanwhile). */
  unconfirmed: boolean;
}

/** True once a run has ended (with a known status or not). */
export function hasEnded(run: Run): boolean {
  return run.exit !== null || run.lost !== null;
}

/** A launch refused by a limit, the policy, or a run of its name that runs something else. */
export interface Refusal {
  /** "limit", "policy" or "conflict". */
  code: "limit" | "policy" | "conflict";
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
  /** A run's stdin with no manager to feed it for this long is closed, in ms (30 s by default). */
  stdinGraceMs?: number;
  /** What may be launched. */
  policy: LaunchPolicy;
  /** Where runs are recorded. */
  store: RunStore;
  /** The installed supervisor program. */
  supervisor: string;
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
  /** Attach to a run of the name whatever it runs (else another command is a conflict). */
  attachAny?: boolean;
}

/** Listener told when a run ends. */
export type ExitListener = (run: Run) => void;

/** How often a supervisor that could not be asked is asked again, in ms. */
const _RETRY_MS = 1000;
/** How often an exit status that could not be recorded is tried again, in ms. */
const _RECORD_RETRY_MS = 5000;

/** What the table keeps of each run beside the run itself. */
interface _Slot {
  run: Run;
  record: AnyRunRecord;
  link: SupervisorLink | null;
  /** When it ended, on the monotonic clock (ms); for the age limit. */
  endedTick: number | null;
  /** Stream byte counts from its exit record, for receivers attaching after the end. */
  counts: StreamCounts | null;
  /** A stop asked for while the supervisor could not be reached. */
  pendingStop: number | null;
  /** The exit record is not on disk yet (the state directory is full or read-only). */
  unrecorded: ExitRecord | null;
  /** Something is being done about it (resolving, recording): not twice at once. */
  busy: boolean;
}

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
  readonly #slots = new Map<string, _Slot>();
  readonly #byName = new Map<string, Run>();
  readonly #listeners = new Map<string, Set<ExitListener>>();
  readonly #launching = new Map<string, Promise<unknown>>();
  readonly #stopTimers = new Map<string, ReturnType<typeof setTimeout>>();
  readonly #retryTimers = new Map<string, ReturnType<typeof setTimeout>>();
  /** Finished runs whose status no manager has received, in the order they ended. */
  readonly #undelivered = new Set<Run>();
  /** Finished runs whose status was received, in the order it was. */
  readonly #delivered = new Set<Run>();
  /** Every finished run, in the order they ended (for the age limit). */
  readonly #byEnd = new Set<Run>();
  /** Runs not ended, and slots reserved for launches under way. */
  #live = 0;
  #starting = 0;
  #seq = 1;
  #closed = false;

  private constructor(options: RunTableOptions) {
    this.#o = options;
  }

  /**
   * Opens the table: reads the runs recorded in the state directory by an
   * earlier cmappserver and resolves each one through its supervisor.
   */
  static async open(options: RunTableOptions): Promise<RunTable> {
    const table = new RunTable(options);
    await table.#recover();
    return table;
  }

  /** Number of runs not known to have ended. */
  get running(): number {
    return this.#live;
  }

  /** The most processes that may run at once. */
  get maxProcesses(): number {
    return this.#o.maxProcesses;
  }

  /** Every run known, in launch order. */
  list(): Run[] {
    return [...this.#slots.values()].map((s) => s.run).sort((a, b) => a.seq - b.seq);
  }

  /** A run by id. */
  get(id: string): Run | undefined {
    return this.#slots.get(id)?.run;
  }

  /** The stream byte counts recorded at a run's end, when it had streams. */
  finalCounts(id: string): StreamCounts | null {
    return this.#slots.get(id)?.counts ?? null;
  }

  /**
   * Starts a process, or attaches to the run of the same name when it is
   * still running or its exit status has not been received by a manager.
   * The process limit is checked and a slot reserved before anything is
   * awaited, and given back on every failure.
   */
  async launch(
    req: RunLaunchOptions,
    launchedBy: string,
  ): Promise<{ run: Run; attached: boolean } | Refusal | ProgramFailure> {
    const name = req.name ?? await deriveName(req.argv);
    const spec = await launchSpec(req);
    // One launch per name at a time: a second one waits, then attaches.
    for (;;) {
      const busy = this.#launching.get(name);
      if (busy) {
        await busy.catch(() => {});
        continue;
      }
      const existing = this.#byName.get(name);
      if (!existing || (hasEnded(existing) && existing.delivered)) break;
      if (existing.pid !== 0) {
        const conflict = req.attachAny ? null : this.#conflict(existing, req.argv, spec);
        return conflict ?? { run: existing, attached: true };
      }
      await this.#confirmed(existing); // then look again: it may have been forgotten
    }
    if (this.#live + this.#starting >= this.#o.maxProcesses) {
      return {
        code: "limit",
        message: `cmappserver is already monitoring ${this.#live + this.#starting} processes, ` +
          `its limit (max_processes ${this.#o.maxProcesses})`,
      };
    }
    this.#starting++;
    const slot = { held: true };
    const work = this.#start(req, name, launchedBy, slot);
    this.#launching.set(name, work);
    try {
      return await work;
    } finally {
      if (slot.held) this.#starting--;
      this.#launching.delete(name);
    }
  }

  /**
   * Why a launch of `argv` (with `spec`) may not attach to `run` of the same
   * name: it runs another command, or the same one otherwise (records of
   * earlier versions, without a spec, are compared by argv alone).
   */
  #conflict(run: Run, argv: readonly string[], spec: string): Refusal | null {
    const record = this.#slots.get(run.id)?.record;
    const theirs = record?.format === RECORD_FORMAT ? record.spec : undefined;
    const sameArgv = argv.length === run.argv.length && argv.every((a, i) => a === run.argv[i]);
    if (sameArgv && (theirs === undefined || theirs === spec)) return null;
    const ended = hasEnded(run);
    const what = ended
      ? `ended (${run.exit ? describeExit(run.exit) : "how is unknown"}) and its exit status ` +
        `has not been collected`
      : `is running (pid ${run.pid}, since ${run.startedAt.toISOString()})`;
    const differs = sameArgv
      ? `the same command with another user, group, working directory or environment`
      : `another command: ${formatArgv(argv)}`;
    const todo = ended
      ? `Collect its exit status first (cmappmgr -stop ${run.name} releases it), or attach to ` +
        `it (cmappmgr -attach)`
      : `Stop it first (cmappmgr -stop ${run.name}), or attach to it as it is (cmappmgr -attach)`;
    return {
      code: "conflict",
      message: `a run named ${run.name} ${what}: ${formatArgv(run.argv)}; this launch asks for ` +
        `${differs}. ${todo}`,
    };
  }

  /** Starts a run in a reserved slot (`reserved.held` until the run is in the table). */
  async #start(
    req: RunLaunchOptions,
    name: string,
    launchedBy: string,
    reserved: { held: boolean },
  ): Promise<{ run: Run; attached: boolean } | Refusal | ProgramFailure> {
    const prepared = await prepareLaunch(req, this.#o.policy);
    if ("code" in prepared) return prepared;
    const seq = this.#seq++;
    const record: RunRecord = {
      format: RECORD_FORMAT,
      id: _newRunId(seq),
      seq,
      name,
      argv: [...req.argv],
      launchedBy,
      startedAt: new Date().toISOString(),
      stopTimeoutMs: req.stopTimeoutMs ?? this.#o.stopTimeoutMs,
      streams: !!(req.streams || req.stdin),
      stdin: !!req.stdin,
      spec: await launchSpec(req),
    };
    const { id } = record;
    crashPoint("launch.before-record");
    try {
      await this.#o.store.writeRecord(record);
    } catch (e) {
      return {
        code: "spawn_failed",
        message: `cannot record the run in ${this.#o.store.dir}, so it was not started: ` +
          (e as Error).message,
      };
    }
    crashPoint("launch.after-record");
    const started = await startSupervisor({
      binary: this.#o.supervisor,
      runsDir: this.#o.store.runsDir,
      id,
      program: prepared.program,
      argv: [prepared.program, ...prepared.argv.slice(1)],
      env: prepared.env,
      cwd: prepared.cwd,
      runAs: prepared.runAs,
      streams: record.streams,
      stdin: record.stdin,
      graceMs: record.stopTimeoutMs,
    });
    if ("code" in started) {
      // It never ran, and its supervisor left nothing behind but what we wrote.
      await this.#o.store.remove(id).catch(() => {});
      return started;
    }
    crashPoint("launch.after-spawn");
    const slot = this.#add(record, started.pid, false);
    this.#starting--;
    reserved.held = false;
    await this.#link(slot);
    crashPoint("launch.after-link");
    return { run: slot.run, attached: false };
  }

  /**
   * Stops a run: SIGTERM to its process group and session, then SIGKILL
   * after the grace period (the supervisor does both, so a restart of
   * cmappserver does not interrupt it). Returns false when the run is
   * unknown or already ended.
   */
  stop(id: string, timeoutMs?: number): boolean {
    const slot = this.#slots.get(id);
    if (!slot || hasEnded(slot.run)) return false;
    const { run } = slot;
    const grace = timeoutMs ?? run.stopTimeoutMs;
    this.#o.logger.info(
      `run ${run.id} (${run.name}) pid ${run.pid}: stopping (SIGTERM, SIGKILL after ${grace} ms)`,
    );
    if (slot.link) slot.link.stop(grace);
    else slot.pendingStop = grace;
    if (!this.#stopTimers.has(id)) {
      this.#stopTimers.set(
        id,
        setTimeout(() => {
          this.#stopTimers.delete(id);
          if (!hasEnded(run)) {
            this.#o.logger.warn(
              `run ${run.id} (${run.name}): still alive after ${grace} ms; SIGKILL`,
            );
          }
        }, grace),
      );
    }
    return true;
  }

  /** Stops every running run and waits until they have all ended. */
  async stopAll(): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const { run } of this.#slots.values()) {
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
    const run = this.#slots.get(id)?.run;
    if (!run || !hasEnded(run)) return false;
    if (run.delivered) return true;
    run.delivered = true;
    this.#undelivered.delete(run);
    this.#delivered.add(run);
    crashPoint("release.before-marker");
    await this.#o.store.markDelivered(id).catch((e) =>
      this.#o.logger.error(`run ${id}: cannot record its delivery: ${(e as Error).message}`)
    );
    crashPoint("release.after-marker");
    this.#prune();
    return true;
  }

  /**
   * Calls `listener` once when the run ends (at once if it has ended).
   * Returns a function that cancels it.
   */
  onExit(id: string, listener: ExitListener): () => void {
    const run = this.#slots.get(id)?.run;
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

  /**
   * Lets go of every run (connections to supervisors, timers); processes
   * and supervisors are left alone, for the next cmappserver.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const t of [...this.#stopTimers.values(), ...this.#retryTimers.values()]) {
      clearTimeout(t);
    }
    this.#stopTimers.clear();
    this.#retryTimers.clear();
    const links: Promise<void>[] = [];
    for (const slot of this.#slots.values()) {
      slot.run.io?.close();
      if (slot.link) links.push(slot.link.close());
      slot.link = null;
    }
    await Promise.all(links);
  }

  // ---------- runs in the table ----------

  #add(record: AnyRunRecord, pid: number, adopted: boolean): _Slot {
    const run: Run = {
      id: record.id,
      seq: record.seq,
      name: record.name,
      argv: record.argv,
      pid,
      startedAt: new Date(record.startedAt),
      launchedBy: record.launchedBy,
      stopTimeoutMs: record.stopTimeoutMs,
      exit: null,
      lost: null,
      endedAt: null,
      delivered: false,
      adopted,
      io: null,
      unconfirmed: false,
    };
    const slot: _Slot = {
      run,
      record,
      link: null,
      endedTick: null,
      counts: null,
      pendingStop: null,
      unrecorded: null,
      busy: false,
    };
    this.#slots.set(run.id, slot);
    const prev = this.#byName.get(run.name);
    if (!prev || prev.seq < run.seq) this.#byName.set(run.name, run);
    this.#live++;
    this.#seq = Math.max(this.#seq, record.seq + 1);
    return slot;
  }

  /** Takes a run off the table (it never started: nothing of it runs). */
  #drop(slot: _Slot): void {
    const { run } = slot;
    this.#slots.delete(run.id);
    if (!hasEnded(run)) this.#live--;
    if (this.#byName.get(run.name) === run) {
      this.#byName.delete(run.name);
      let best: Run | undefined;
      for (const s of this.#slots.values()) {
        if (s.run.name === run.name && (!best || best.seq < s.run.seq)) best = s.run;
      }
      if (best) this.#byName.set(run.name, best);
    }
  }

  /** Marks a run ended: bookkeeping, log, listeners, retention. */
  #finish(slot: _Slot, outcome: Outcome, pid: number | null, counts: StreamCounts | null): void {
    const { run } = slot;
    if (hasEnded(run)) return;
    if (pid && !run.pid) run.pid = pid;
    run.exit = outcome.exit ?? null;
    run.lost = outcome.exit ? null : outcome.lost;
    run.endedAt = new Date();
    run.unconfirmed = false;
    slot.endedTick = performance.now();
    slot.counts = counts;
    if (counts) run.io?.setFinal(counts);
    this.#endedStreams(slot);
    this.#live--;
    (run.delivered ? this.#delivered : this.#undelivered).add(run);
    this.#byEnd.add(run);
    clearTimeout(this.#stopTimers.get(run.id));
    this.#stopTimers.delete(run.id);
    this.#o.logger.info(describeRunEnd(run));
    const set = this.#listeners.get(run.id);
    this.#listeners.delete(run.id);
    for (const l of set ?? []) l(run);
    this.#prune();
  }

  /**
   * A run that had streams and ended without this daemon holding them: a
   * receiver attaching is told where each ended, so it can tell what it missed.
   */
  #endedStreams(slot: _Slot): void {
    const { run, record, counts } = slot;
    if (run.io || !counts || record.format !== 2 || !record.streams) return;
    run.io = RunStreams.ended(counts);
  }

  /** Resolves once the run's supervisor has been asked and its pid is known. */
  async #confirmed(run: Run): Promise<void> {
    while (run.pid === 0 && !hasEnded(run) && !this.#closed && this.#slots.has(run.id)) {
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  // ---------- supervisors ----------

  /**
   * Connects to a run's supervisor: its control connection, then (for a
   * run that has them and has not ended) its streams. A supervisor that
   * cannot be asked now is asked again later, and the run counts as
   * running meanwhile; one that is gone is replaced by what its files say.
   */
  async #link(slot: _Slot): Promise<void> {
    const { run } = slot;
    const path = this.#o.store.socketPath(run.id);
    let link: SupervisorLink;
    try {
      link = await SupervisorLink.open(path);
    } catch (e) {
      if (e instanceof LinkError && e.kind === "gone") return await this.#gone(slot);
      return this.#retry(slot, e as Error);
    }
    if (this.#closed) return void await link.close();
    slot.link = link;
    run.pid = link.pid;
    if (run.unconfirmed) {
      this.#o.logger.info(`run ${run.id} (${run.name}): its supervisor answers again; re-adopted`);
    }
    run.unconfirmed = false;
    this.#clearRetry(`${run.id}:link`);
    if (slot.pendingStop !== null) {
      link.stop(slot.pendingStop);
      slot.pendingStop = null;
    }
    // The streams first: a run that has ended hands over what it holds of its output, and is
    // let go (done) only once they are taken.
    if (slot.record.format === 2 && slot.record.streams && !run.io) {
      await this.#takeStreams(slot, link);
    }
    link.ended.then((exit) => this.#linkEnded(slot, link, exit));
  }

  /**
   * Takes the run's outputs from its supervisor (retried every second while
   * it cannot), then its stdin, which may take longer: the supervisor hands
   * stdin over once what an earlier cmappserver left in its socket is read,
   * and an application that does not read its stdin may delay that for ever;
   * the outputs never wait for it.
   */
  async #takeStreams(slot: _Slot, link: SupervisorLink): Promise<void> {
    const { run } = slot;
    const path = this.#o.store.socketPath(run.id);
    let out: OutputLink | null = null;
    let err: OutputLink | null = null;
    try {
      out = await openOutput(path, "stdout");
      err = await openOutput(path, "stderr");
    } catch (e) {
      try {
        out?.conn.close();
      } catch {
        // closed already
      }
      if (slot.link !== link || this.#closed) return;
      this.#o.logger.warn(
        `run ${run.id} (${run.name}): cannot take its streams yet (${(e as Error).message}); ` +
          `asked again every second`,
      );
      this.#later(`${run.id}:streams`, _RETRY_MS, () => {
        if (slot.link === link && !run.io) void this.#takeStreams(slot, link);
      });
      return;
    }
    for (const [name, o] of [["stdout", out], ["stderr", err]] as const) {
      if (o.dropped > 0) {
        this.#o.logger.warn(
          `run ${run.id} (${run.name}): ${o.dropped} bytes of its ${name} were discarded by its ` +
            `supervisor while no cmappserver was there`,
        );
      }
    }
    const withStdin = slot.record.format === 2 && slot.record.stdin;
    const io = new RunStreams({
      stdout: out,
      stderr: err,
      stdin: withStdin ? "later" : null,
      closeOutput: (stream) => slot.link?.closeOutput(stream),
      stdinGraceMs: this.#o.stdinGraceMs,
      onStdinAbandoned: () =>
        this.#o.logger.info(
          `run ${run.id} (${run.name}): no manager has fed its stdin for ` +
            `${(this.#o.stdinGraceMs ?? STDIN_GRACE_MS) / 1000} s; closing it (the application ` +
            `reads its end)`,
        ),
    });
    run.io = io;
    if (!withStdin) return;
    openInput(path, null).then(
      (input) => io.setStdin(input),
      (e) => {
        if (slot.link === link && !this.#closed) {
          this.#o.logger.warn(`run ${run.id} (${run.name}): cannot take its stdin: ${e.message}`);
        }
        io.setStdin(null);
      },
    );
  }

  #linkEnded(slot: _Slot, link: SupervisorLink, exit: SupervisorExit | null): void {
    if (slot.link !== link || this.#closed) return;
    if (exit) {
      void this.#ended(slot, exit);
      return;
    }
    // The connection broke without an exit: the supervisor died (or was killed).
    slot.link = null;
    void link.close();
    this.#o.logger.warn(`run ${slot.run.id} (${slot.run.name}): its supervisor went away`);
    void this.#link(slot);
  }

  /** The supervisor reported the end: record it (unless it did), then let it go. */
  async #ended(slot: _Slot, exit: SupervisorExit): Promise<void> {
    const { run } = slot;
    const record: ExitRecord = { outcome: exit.outcome, pid: run.pid || null, counts: exit.counts };
    this.#finish(slot, exit.outcome, run.pid, exit.counts);
    crashPoint("exit.before-record");
    if (!exit.recorded) await this.#record(slot, record);
    else this.#release(slot);
  }

  /** Writes an exit record the supervisor could not; until it is on disk the supervisor keeps it. */
  async #record(slot: _Slot, record: ExitRecord): Promise<void> {
    try {
      await this.#o.store.writeExit(slot.run.id, record);
    } catch (e) {
      if (!slot.unrecorded) {
        this.#o.logger.error(
          `run ${slot.run.id} (${slot.run.name}): cannot record how it ended in ` +
            `${this.#o.store.dir}: ${(e as Error).message}; its supervisor keeps it until it ` +
            `can be recorded (tried again every ${_RECORD_RETRY_MS / 1000} s)`,
        );
      }
      slot.unrecorded = record;
      this.#later(`${slot.run.id}:record`, _RECORD_RETRY_MS, () => {
        if (slot.unrecorded && this.#slots.has(slot.run.id)) void this.#record(slot, record);
      });
      return;
    }
    if (slot.unrecorded) {
      this.#o.logger.info(`run ${slot.run.id} (${slot.run.name}): its end is recorded now`);
    }
    slot.unrecorded = null;
    this.#release(slot);
  }

  /** The end is on disk: the supervisor may go, once its streams are taken. */
  #release(slot: _Slot): void {
    crashPoint("exit.after-record");
    if (slot.record.format === 2 && slot.record.streams && !slot.run.io && slot.link) {
      // It still holds output for us (the streams could not be taken yet): later.
      this.#later(`${slot.run.id}:release`, _RETRY_MS, () => this.#release(slot));
      return;
    }
    const link = slot.link;
    slot.link = null;
    if (link) {
      link.done();
      void link.close();
    }
  }

  /**
   * No supervisor answers: what do the run's files say? Decided under the
   * run's lock, which a supervisor holds for its life: a held lock means one
   * is alive (if only starting), and while we hold it none can start.
   */
  async #gone(slot: _Slot): Promise<void> {
    const { run, record } = slot;
    const store = this.#o.store;
    let lock: RunLock | null;
    try {
      lock = await store.lockRun(run.id);
    } catch (e) {
      return this.#retry(slot, e as Error);
    }
    if (!lock) {
      return this.#retry(
        slot,
        new Error("its supervisor holds the run's lock and does not answer"),
      );
    }
    try {
      const exit = await store.readExit(run.id);
      if (exit) return this.#finish(slot, exit.outcome, exit.pid, exit.counts);
      const pids = record.format === 1 ? null : await store.readPid(run.id);
      if (record.format === 2 && !pids) {
        if (run.pid === 0) {
          // No supervisor and no pid record: its application never ran (docs/cmapp-supervise.md).
          this.#o.logger.info(
            `run ${run.id} (${run.name}) was never started (cmappserver stopped while starting ` +
              `it); forgotten`,
          );
          this.#drop(slot);
          const held = lock;
          lock = null;
          await held.discard().catch(() => {});
          return;
        }
        return await this.#lose(slot, "its supervisor and its pid record disappeared while it ran");
      }
      if (pids && !run.pid) run.pid = pids.pid;
    } finally {
      lock?.release();
    }
    // The watcher takes the run's lock itself.
    const legacy = record.format === 1
      ? {
        pid: record.pid,
        pidStart: record.pidStart ?? 0,
        supervisorPid: record.supervisorPid,
        supervisorStart: record.supervisorStart ?? 0,
        bootId: record.bootId,
      }
      : undefined;
    const w = await startWatcher(this.#o.supervisor, store.runsDir, run.id, legacy);
    if ("code" in w) return this.#retry(slot, new Error(w.message));
    this.#o.logger.warn(
      `run ${run.id} (${run.name}) pid ${w.pid}: its supervisor was gone; a watcher follows it ` +
        `(its exit status will not be known)`,
    );
    await this.#link(slot);
  }

  async #lose(slot: _Slot, why: string): Promise<void> {
    const record: ExitRecord = {
      outcome: { lost: why },
      pid: slot.run.pid || null,
      counts: { stdout: null, stderr: null, stdin: null },
    };
    this.#finish(slot, record.outcome, null, null);
    await this.#record(slot, record);
  }

  /** Asks the supervisor again later: nothing is concluded from a failure to ask. */
  #retry(slot: _Slot, e: Error): void {
    const { run } = slot;
    if (this.#closed || !this.#slots.has(run.id)) return;
    if (!run.unconfirmed) {
      this.#o.logger.warn(
        `run ${run.id} (${run.name}): cannot reach its supervisor (${e.message}); taken as ` +
          `running, asked again until it answers`,
      );
    }
    run.unconfirmed = true;
    this.#later(`${run.id}:link`, _RETRY_MS, () => void this.#link(slot));
  }

  /** Runs `f` in `ms`, once, under `key` (a run id and what for: one timer each). */
  #later(key: string, ms: number, f: () => void): void {
    this.#clearRetry(key);
    if (this.#closed) return;
    this.#retryTimers.set(
      key,
      setTimeout(() => {
        this.#retryTimers.delete(key);
        if (!this.#closed) f();
      }, ms),
    );
  }

  #clearRetry(key: string): void {
    clearTimeout(this.#retryTimers.get(key));
    this.#retryTimers.delete(key);
  }

  #clearRetries(id: string): void {
    for (const what of ["link", "record", "streams", "release"]) this.#clearRetry(`${id}:${what}`);
  }

  // ---------- retention ----------

  /**
   * Forgets finished runs beyond the age limit (oldest end first), then
   * beyond the count limit: received ones first, in the order they were
   * received, then unreceived ones, oldest end first. Amortised O(1).
   * Ages are measured on the monotonic clock, so a clock step forgets nothing.
   */
  #prune(): void {
    const now = performance.now();
    const head = (set: Set<Run>) => set.values().next().value as Run | undefined;
    for (let r = head(this.#byEnd); r; r = head(this.#byEnd)) {
      const tick = this.#slots.get(r.id)?.endedTick ?? now;
      if (now - tick <= this.#o.keepFinishedMs) break;
      this.#forget(r);
    }
    let excess = this.#byEnd.size - this.#o.keepFinished;
    for (const set of [this.#delivered, this.#undelivered]) {
      for (let r = head(set); excess > 0 && r; r = head(set), excess--) this.#forget(r);
    }
  }

  #forget(run: Run): void {
    const slot = this.#slots.get(run.id);
    this.#byEnd.delete(run);
    this.#delivered.delete(run);
    this.#undelivered.delete(run);
    this.#slots.delete(run.id);
    this.#clearRetries(run.id);
    run.io?.close();
    if (slot?.link) {
      // forgotten: nothing of it is wanted any more, recorded or not
      slot.link.done();
      void slot.link.close();
      slot.link = null;
    }
    if (this.#byName.get(run.name) === run) this.#byName.delete(run.name);
    this.#o.store.remove(run.id).catch(() => {});
  }

  // ---------- recovery ----------

  async #recover(): Promise<void> {
    const { runs, damaged } = await this.#o.store.loadAll();
    for (const d of damaged) this.#o.logger.warn(`state: set aside a damaged run record: ${d}`);
    const open: _Slot[] = [];
    for (const stored of runs) {
      const slot = this.#add(stored.record, stored.exit?.pid ?? stored.pid?.pid ?? 0, true);
      slot.run.delivered = stored.delivered;
      if (stored.exit) {
        this.#finishRecovered(slot, stored);
        if (stored.socket) open.push(slot); // its supervisor may be waiting to be let go
      } else {
        open.push(slot);
      }
    }
    // Finished runs came in launch order; an age is known only from the clock, once, here.
    this.#prune();
    await _eachLimited(open, 32, async (slot) => {
      // A finished run with a socket: its supervisor waits to hand over the end and what it
      // held of the output.
      await this.#link(slot);
      if (!hasEnded(slot.run) && slot.link) {
        this.#o.logger.info(
          `state: re-adopted run ${slot.run.id} (${slot.run.name}) pid ${slot.run.pid}, ` +
            `started ${slot.record.startedAt}`,
        );
      }
    });
  }

  #finishRecovered(slot: _Slot, stored: StoredRun): void {
    const { run } = slot;
    const exit = stored.exit!;
    run.exit = exit.outcome.exit ?? null;
    run.lost = exit.outcome.exit ? null : exit.outcome.lost;
    slot.counts = exit.counts;
    this.#live--;
    if (!stored.socket) this.#endedStreams(slot); // else its supervisor hands them over
    // Its age from when its exit was recorded (not from its start: a long run that ended
    // during the restart is young); the clock is read this once.
    const ended = stored.exitTime ?? new Date();
    run.endedAt = ended;
    const ageMs = Math.max(0, Date.now() - ended.getTime());
    slot.endedTick = performance.now() - Math.min(ageMs, this.#o.keepFinishedMs);
    (run.delivered ? this.#delivered : this.#undelivered).add(run);
    this.#byEnd.add(run);
  }
}

/** Runs `f` over `items`, at most `limit` at a time. */
async function _eachLimited<T>(items: T[], limit: number, f: (x: T) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await f(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
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

/** A run id: its sequence number (base 36) and 32 random bits. */
function _newRunId(seq: number): string {
  const rand = crypto.getRandomValues(new Uint8Array(4));
  return `${seq.toString(36)}-${Array.from(rand, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/**
 * One line describing how a run ended, for logs.
 *
 * @example
 * ```ts ignore
 * describeRunEnd(run); // "run 1a-9f2a… (web) pid 4242 exited with code 0"
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
