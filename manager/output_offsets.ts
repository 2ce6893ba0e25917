/**
 * Counts a run's output across reconnections and, from the offset each new
 * connection resumes at (protocol 1.3, `resume`), finds what was lost
 * (bytes the guest had to drop, or that were in flight in a cmappserver
 * that died) or would be repeated (skipped), so that the output handed on
 * is exact and every loss is counted and told.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";

type _Out = "stdout" | "stderr";

/**
 * One run's output offsets.
 *
 * @example
 * ```ts ignore
 * import { OutputOffsets } from "./output_offsets.ts";
 * const o = new OutputOffsets(logger, false);
 * o.resume("stdout", 0);
 * const fresh = o.take("stdout", bytes); // what was not seen before
 * ```
 */
export class OutputOffsets {
  readonly #logger: Logger;
  /** Bytes of each stream handed on so far (its offset on the guest). */
  readonly #received = { stdout: 0, stderr: 0 };
  /** Bytes still to skip (already handed on) before new ones come. */
  readonly #skip = { stdout: 0, stderr: 0 };
  /** The first resume of each stream places us, without a loss (we attached to a run already going). */
  readonly #placeFirst: Set<_Out>;
  /** Bytes lost, per stream. */
  readonly lost = { stdout: 0, stderr: 0 };

  /**
   * @param logger where a loss is reported
   * @param attached true when this manager attached to a run it did not start: the output
   *   before it attached is not a loss
   */
  constructor(logger: Logger, attached: boolean) {
    this.#logger = logger;
    this.#placeFirst = new Set(attached ? ["stdout", "stderr"] : []);
  }

  /** The next bytes of `stream` start at `offset`. */
  resume(stream: _Out, offset: number): void {
    const have = this.#received[stream];
    if (this.#placeFirst.delete(stream)) {
      if (offset > 0) this.#logger.info(`${stream}: attached at byte ${offset} of it`);
      this.#received[stream] = offset;
      this.#skip[stream] = 0;
      return;
    }
    if (offset > have) {
      const n = offset - have;
      this.lost[stream] += n;
      this.#logger.warn(
        `${n} bytes of the application's ${stream} were lost (bytes ${have} to ${offset - 1}): ` +
          `no cmappserver or cmappmgr was there to take them`,
      );
      this.#received[stream] = offset;
      this.#skip[stream] = 0;
    } else {
      this.#skip[stream] = have - offset;
    }
  }

  /** Counts `bytes` of `stream`; returns the part not handed on before. */
  take(stream: _Out, bytes: Uint8Array): Uint8Array {
    const skip = Math.min(this.#skip[stream], bytes.length);
    if (skip > 0) this.#skip[stream] -= skip;
    const fresh = skip > 0 ? bytes.subarray(skip) : bytes;
    this.#received[stream] += fresh.length;
    return fresh;
  }
}
