/**
 * A run looked up by its name, for scripts and cluster agents: the latest
 * run of the name in a `list`, and how it stands. Knows runs' descriptions,
 * not the network.
 *
 * @module
 */

import type { RunInfo } from "../protocol/mod.ts";

/** How the latest run of a name stands. */
export type NamedRunState =
  /** It is running. */
  | "running"
  /** It ended with exit code 0. */
  | "succeeded"
  /** It ended otherwise: a non-zero code, a signal, or unknown (lost). */
  | "failed"
  /** The guest knows no run of that name (never started, or forgotten). */
  | "absent";

/**
 * The latest run named `name` in `runs` (as `list` gives them, oldest first).
 *
 * @example
 * ```ts
 * import { latestNamed } from "./named_runs.ts";
 * latestNamed([], "web"); // undefined
 * ```
 */
export function latestNamed(runs: readonly RunInfo[], name: string): RunInfo | undefined {
  for (let i = runs.length - 1; i >= 0; i--) if (runs[i].name === name) return runs[i];
  return undefined;
}

/**
 * How a run stands (`absent` for none).
 *
 * @example
 * ```ts
 * import { namedRunState } from "./named_runs.ts";
 * namedRunState(undefined); // "absent"
 * ```
 */
export function namedRunState(info: RunInfo | undefined): NamedRunState {
  if (!info) return "absent";
  if (info.state === "running") return "running";
  return info.exit && "code" in info.exit && info.exit.code === 0 ? "succeeded" : "failed";
}

/**
 * One line saying how the run of `name` stands, e.g. `web: running, pid 4242
 * (run 1-ab12cd34), since 2026-12-07T10:00:00.000Z`.
 *
 * @example
 * ```ts
 * import { describeNamed } from "./named_runs.ts";
 * describeNamed("web", undefined); // "web: no run of that name on the guest"
 * ```
 */
export function describeNamed(name: string, info: RunInfo | undefined): string {
  if (!info) return `${name}: no run of that name on the guest`;
  const which = `pid ${info.pid} (run ${info.run})`;
  if (info.state === "running") return `${name}: running, ${which}, since ${info.started_at}`;
  const how = info.exit
    ? "code" in info.exit
      ? `exited with code ${info.exit.code}`
      : `killed by signal ${info.exit.signal}`
    : `lost: ${info.lost ?? "its exit status is unknown"}`;
  return `${name}: ${how}, ${which}, at ${info.ended_at ?? "?"}`;
}
