/**
 * Reads a byte stream in gathered chunks: to one read it adds what the
 * stream already holds, without waiting for what it does not, so that many
 * small pipe reads go out as a few large data frames. The piece both
 * programs use for a run's output (cmappserver) and for stdin (cmappmgr).
 * Knows nothing of frames or processes.
 *
 * @module
 */

/** Default size of a gathered chunk, and of the buffers behind it: 64 KiB. */
export const DEFAULT_GATHER_BYTES = 64 * 1024;

/** The first read's buffer; it grows fourfold each time a read fills it. */
const _FIRST_READ = 4096;

/**
 * A gathering reader. On a byte stream (a pipe's, a file's) it reads with
 * a BYOB reader into one buffer it keeps, and gathers into a second one, so
 * that reading allocates nothing; on any other stream it takes the chunks
 * as they come. A chunk returned by {@linkcode Gatherer.next} is valid only
 * until the next call (copy it to keep it).
 *
 * @example
 * ```ts
 * import { Gatherer } from "./read_ahead.ts";
 * const g = new Gatherer(new Blob(["abc"]).stream());
 * const chunk = await g.next(1024); // "abc" as bytes: waits for the first, takes what is there
 * await g.next(1024); // null: the end
 * ```
 */
export class Gatherer {
  readonly #byob: ReadableStreamBYOBReader | null = null;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  readonly #size: number;
  /** Where BYOB reads land (handed back by each read). */
  #buf: Uint8Array;
  /** Where a chunk made of several reads is gathered (made the first time it is needed). */
  #acc: Uint8Array | null;
  /** A read started while gathering that did not complete at once. */
  #ahead: Promise<Uint8Array | null> | null = null;
  /** Bytes of a default reader's chunk beyond what was asked for. */
  #leftover: Uint8Array | null = null;
  #eof = false;
  #resolveEnded!: () => void;
  /** Resolves once the end of the stream has been read, or the stream was cancelled. */
  readonly ended: Promise<void>;

  /**
   * Takes the stream's lock.
   * @param stream what to read
   * @param size largest chunk {@linkcode next} returns
   */
  constructor(stream: ReadableStream<Uint8Array>, size: number = DEFAULT_GATHER_BYTES) {
    this.#size = size;
    this.ended = new Promise((r) => this.#resolveEnded = r);
    try {
      this.#byob = stream.getReader({ mode: "byob" });
    } catch {
      // Not a byte stream.
      this.#reader = stream.getReader();
    }
    // Small at first, grown while reads fill it: an idle stream (a daemon's stderr, most of
    // the time) holds 4 KiB, not 128.
    this.#buf = new Uint8Array(this.#byob ? Math.min(size, _FIRST_READ) : 0);
    this.#acc = null;
  }

  /**
   * Waits for the next bytes, adds what the stream already holds (reads
   * that complete within this turn of the event loop), up to `limit`
   * bytes. Resolves null at the end of the stream.
   * @param limit largest chunk wanted, at most the size given to the constructor
   * @throws what the stream's read throws (a broken pipe)
   */
  async next(limit: number = this.#size): Promise<Uint8Array | null> {
    limit = Math.max(1, Math.min(limit, this.#size));
    const ahead = this.#ahead;
    this.#ahead = null;
    if (!ahead && this.#eof) return null;
    let first = await (ahead ?? this.#read(limit));
    if (first === null) return null;
    if (first.length > limit) {
      // A read kept ahead was asked for more than this call wants.
      this.#leftover = first.subarray(limit);
      first = first.subarray(0, limit);
    }
    if (first.length === limit || this.#eof) return first;
    // A read about to start reuses the buffer `first` may be in: move it first.
    const acc = this.#acc ??= new Uint8Array(this.#size);
    acc.set(first, 0);
    let total = first.length;
    while (total < limit && !this.#eof) {
      const more = await this.#soon(limit - total);
      if (!more) break;
      acc.set(more, total);
      total += more.length;
    }
    return acc.subarray(0, total);
  }

  /** Stops reading: the stream is cancelled (a pipe's read end closed). */
  async cancel(): Promise<void> {
    this.#eof = true;
    this.#resolveEnded();
    await (this.#byob ?? this.#reader)!.cancel().catch(() => {});
  }

  /** Gives the stream's lock back (a read still pending is abandoned). */
  release(): void {
    (this.#byob ?? this.#reader)!.releaseLock();
  }

  /** One read of at most `max` bytes, or null at the end. */
  async #read(max: number): Promise<Uint8Array | null> {
    const left = this.#leftover;
    if (left) {
      this.#leftover = left.length > max ? left.subarray(max) : null;
      return left.length > max ? left.subarray(0, max) : left;
    }
    if (this.#byob) {
      const { value, done } = await this.#byob.read(this.#buf.subarray(0, max));
      // The buffer comes back (moved) with the result; keep it for the next read, larger if
      // this read filled it (up to the chunk size).
      const cap = value?.buffer.byteLength ?? 0;
      if (value && (value.length < cap || cap >= this.#size)) {
        this.#buf = new Uint8Array(value.buffer);
      } else {
        this.#buf = new Uint8Array(Math.min(this.#size, Math.max(_FIRST_READ, cap * 4)));
      }
      if (done || !value) return this.#end();
      return value;
    }
    const { value, done } = await this.#reader!.read();
    if (done) return this.#end();
    if (value.length > max) {
      this.#leftover = value.subarray(max);
      return value.subarray(0, max);
    }
    return value;
  }

  #end(): null {
    this.#eof = true;
    this.#resolveEnded();
    return null;
  }

  /**
   * The next read if it completes within this turn; otherwise undefined,
   * and it is kept ahead for the next call. Null at the end.
   */
  async #soon(max: number): Promise<Uint8Array | null | undefined> {
    const read = this.#read(max);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = new Promise<undefined>((r) => timer = setTimeout(() => r(undefined), 0));
    const r = await Promise.race([read, tick]);
    clearTimeout(timer);
    if (r === undefined) {
      this.#ahead = read;
      read.catch(() => {}); // its failure, if any, is seen by the next call
    }
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
