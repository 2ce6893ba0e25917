/**
 * The run table: every process started for a manager, its state, and its
 * exit status kept for managers that come back for it. Knows nothing of
 * TLS or frames.
 *
 * @module
 */

import { describeExit, type ExitStatus } from "../protocol/mod.ts";
import type { SpawnedProcess, SpawnFailure } from "./supervisor.ts";

/** One monitored process. */
export interface Run {
  /** Server-assigned identifier, unique across restarts. */
  readonly id: string;
  /** What was started. */
  readonly argv: readonly string[];
  /** Process id (and process group id). */
  readonly pid: number;
  /** When it was started. */
  readonly startedAt: Date;
  /** Fingerprint of the manager that launched it. */
  readonly launchedBy: string;
  /** How it ended, once it has. */
  exit: ExitStatus | null;
  /** When it ended, once it has. */
  endedAt: Date | null;
}

/** Launch refused because the table is full. */
export interface LimitRefusal {
  /** Always "limit". */
  code: "limit";
  /** One line for the manager. */
  message: string;
}

/** Options for {@linkcode RunTable}. */
export interface RunTableOptions {
  /** Largest number of processes running at once. */
  maxProcesses: number;
  /** How many finished runs to keep for late managers (oldest dropped first). */
  maxFinished?: number;
  /** Starts a process. */
  spawn(argv: string[]): SpawnedProcess | SpawnFailure;
  /** Told of every run that ends, before the run's own listeners. */
  onEnded?: (run: Run) => void;
}

/** Listener told when a run ends. */
export type ExitListener = (run: Run) => void;

/**
 * Runs by id, with the process limit and bounded memory of finished runs.
 *
 * @example
 * ```ts ignore
 * import { RunTable } from "./runs.ts";
 * import { spawnProcess } from "./supervisor.ts";
 * const table = new RunTable({ maxProcesses: 30, spawn: spawnProcess });
 * const r = table.launch(["/bin/true"], "AB:CD");
 * ```
 */
export class RunTable {
  readonly #options: Required<RunTableOptions>;
  readonly #runs = new Map<string, Run>();
  readonly #finished: string[] = [];
  readonly #listeners = new Map<string, Set<ExitListener>>();
  #running = 0;

  /**
   * Creates an empty table.
   * @param options limits and the spawn function
   */
  constructor(options: RunTableOptions) {
    this.#options = { maxFinished: 1000, onEnded: () => {}, ...options };
  }

  /** Number of runs whose process is alive. */
  get running(): number {
    return this.#running;
  }

  /** The most processes that may run at once. */
  get maxProcesses(): number {
    return this.#options.maxProcesses;
  }

  /** Every run known, oldest first. */
  list(): Run[] {
    return [...this.#runs.values()];
  }

  /** A run by id. */
  get(id: string): Run | undefined {
    return this.#runs.get(id);
  }

  /** Starts a process, or says why not. */
  launch(argv: string[], launchedBy: string): Run | SpawnFailure | LimitRefusal {
    if (this.#running >= this.#options.maxProcesses) {
      return {
        code: "limit",
        message: `cmappserver is already monitoring ${this.#running} processes, its limit ` +
          `(-max_processes ${this.#options.maxProcesses})`,
      };
    }
    const p = this.#options.spawn(argv);
    if (!("pid" in p)) return p;
    const run: Run = {
      id: _newRunId(),
      argv: [...argv],
      pid: p.pid,
      startedAt: new Date(),
      launchedBy,
      exit: null,
      endedAt: null,
    };
    this.#runs.set(run.id, run);
    this.#running++;
    p.exited.then((exit) => this.#ended(run, exit));
    return run;
  }

  /**
   * Calls `listener` once when the run ends (at once if it has ended).
   * Returns a function that cancels it.
   */
  onExit(id: string, listener: ExitListener): () => void {
    const run = this.#runs.get(id);
    if (!run) return () => {};
    if (run.exit) {
      queueMicrotask(() => listener(run));
      return () => {};
    }
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  #ended(run: Run, exit: ExitStatus): void {
    run.exit = exit;
    run.endedAt = new Date();
    this.#running--;
    this.#finished.push(run.id);
    while (this.#finished.length > this.#options.maxFinished) {
      this.#runs.delete(this.#finished.shift()!);
    }
    this.#options.onEnded(run);
    const set = this.#listeners.get(run.id);
    this.#listeners.delete(run.id);
    for (const l of set ?? []) l(run);
  }
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
 * describeRunEnd(run); // "run lq3-9f2a… pid 4242 exited with code 0"
 * ```
 */
export function describeRunEnd(run: Run): string {
  return `run ${run.id} pid ${run.pid} ${run.exit ? describeExit(run.exit) : "still running"}`;
}
