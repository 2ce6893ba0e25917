/**
 * A young-generation collection every few MiB moved through the connections,
 * when the runtime exposes `gc` (both programs run with
 * `--v8-flags=--expose-gc`, tools/_programs.ts RUNTIME_FLAGS). Knows nothing
 * of frames, runs or the network.
 *
 * Why: Deno's TLS hands each read and each write to a fresh native buffer,
 * and V8 looks for dead native buffers only once 64 MB more of them exist (its
 * external-memory limit, which no flag sets). Streaming 256 MiB, cmappmgr
 * peaked at 150 MiB against an idle 55; a scavenge every 2 MiB frees those
 * buffers while they are still young, for 0.1 to 1.5 ms each. Every 1 MiB
 * was worse: the buffers still in flight survive two scavenges and move to
 * the old generation, which only a full collection frees.
 *
 * @module
 */

/** Bytes moved between two scavenges. */
export const SCAVENGE_EVERY = 2 * 1024 * 1024;

type _Gc = (options: { type: "minor" }) => void;

/**
 * Counts bytes moved and runs a scavenge every {@linkcode SCAVENGE_EVERY};
 * does nothing when the runtime has no `gc` (started without `--expose-gc`).
 *
 * @example
 * ```ts
 * import { Scavenger } from "./_scavenger.ts";
 * const gc = new Scavenger();
 * gc.moved(64 * 1024); // a scavenge once 2 MiB have been counted
 * ```
 */
export class Scavenger {
  readonly #gc: _Gc | null;
  #since = 0;

  /** @param gc the collector, `globalThis.gc` by default (absent without --expose-gc) */
  constructor(gc: _Gc | null = (globalThis as { gc?: _Gc }).gc ?? null) {
    this.#gc = gc;
  }

  /** `bytes` more were sent or received. */
  moved(bytes: number): void {
    if (!this.#gc) return;
    this.#since += bytes;
    if (this.#since < SCAVENGE_EVERY) return;
    this.#since = 0;
    this.#gc({ type: "minor" });
  }
}

/** The process's one scavenger: every channel counts into it. */
export const scavenger: Scavenger = new Scavenger();
