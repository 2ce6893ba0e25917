/**
 * Reads from a byte stream with one read kept ahead, so that a caller can
 * take what the stream already holds without waiting for what it does not:
 * the piece both programs use to merge many small pipe reads into a few
 * large data frames. Knows nothing of frames or processes.
 *
 * @module
 */

/**
 * A reader with one read kept ahead.
 *
 * @example
 * ```ts
 * import { ReadAhead } from "./read_ahead.ts";
 * const r = new ReadAhead(new Blob(["abc"]).stream().getReader());
 * const first = await r.read(); // waits for the first bytes
 * const more = await r.soon(); // null if nothing more is there in this turn
 * ```
 */
export class ReadAhead {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #ahead: Promise<ReadableStreamReadResult<Uint8Array>> | null = null;

  /** Wraps `reader`. */
  constructor(reader: ReadableStreamDefaultReader<Uint8Array>) {
    this.#reader = reader;
  }

  /** The next read, waiting for it (the one kept ahead, if any). */
  read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    const read = this.#ahead ?? this.#reader.read();
    this.#ahead = null;
    return read;
  }

  /**
   * The next read, or null when it does not complete within this turn of
   * the event loop (it is then kept ahead for the next call).
   */
  async soon(): Promise<ReadableStreamReadResult<Uint8Array> | null> {
    const read = this.#ahead ??= this.#reader.read();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = new Promise<null>((r) => timer = setTimeout(() => r(null), 0));
    const r = await Promise.race([read, tick]);
    clearTimeout(timer);
    if (r !== null) this.#ahead = null;
    return r;
  }
}

/**
 * `parts` joined into one buffer of `total` bytes (the part itself when
 * there is only one).
 *
 * @example
 * ```ts
 * import { concatBytes } from "./read_ahead.ts";
 * concatBytes([new Uint8Array([1]), new Uint8Array([2, 3])], 3); // [1, 2, 3]
 * ```
 */
export function concatBytes(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const merged = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    merged.set(p, off);
    off += p.length;
  }
  return merged;
}
