/**
 * A writer that merges the chunks handed to it while a write is in flight
 * into the next write, so that a stream of small chunks costs a few large
 * writes instead of one write (and, for Deno's stdio, one thread hop) each.
 * Knows nothing of runs or the network.
 *
 * @module
 */

/** What a {@linkcode BatchWriter} writes to: `Deno.stdout`, `Deno.stderr`, a file. */
export interface ByteWriter {
  /** Writes some of `p`; resolves with how many bytes were written. */
  write(p: Uint8Array): Promise<number>;
}

/** Bytes held before {@linkcode BatchWriter.write} waits: also the largest single write. */
const _DEFAULT_LIMIT = 1024 * 1024;

/**
 * Writes chunks in order, merging those that queue up behind a write in
 * flight. `write()` resolves as soon as the chunk is queued while fewer than
 * `limit` bytes are held, and otherwise once the writer has caught up, so a
 * slow reader still slows the producer down and memory stays bounded. A
 * failed write fails every later call (the error is kept); {@linkcode flush}
 * waits until everything queued is written, and must be awaited before the
 * program exits.
 *
 * @example
 * ```ts ignore
 * import { BatchWriter } from "./batch_writer.ts";
 * const out = new BatchWriter(Deno.stdout);
 * await out.write(new TextEncoder().encode("hello "));
 * await out.write(new TextEncoder().encode("world\n"));
 * await out.flush();
 * ```
 */
export class BatchWriter {
  readonly #writer: ByteWriter;
  readonly #limit: number;
  #queue: Uint8Array[] = [];
  /** Bytes queued or being written. */
  #held = 0;
  #pump: Promise<void> | null = null;
  #error: unknown = null;
  #failed = false;
  #waiters: { resolve(): void; reject(e: unknown): void }[] = [];
  /** Where queued chunks are merged: allocated at the first merge, then reused. */
  #merged: Uint8Array | null = null;

  /**
   * A writer that merges the chunks queued while a write is in flight.
   *
   * @param writer where the bytes go
   * @param limit bytes held before `write()` waits, and the largest merged write
   */
  constructor(writer: ByteWriter, limit: number = _DEFAULT_LIMIT) {
    this.#writer = writer;
    this.#limit = limit;
  }

  /** Bytes queued or being written. */
  get held(): number {
    return this.#held;
  }

  /**
   * Queues `bytes` (which must not be modified afterwards).
   * @throws the error of an earlier failed write
   */
  write(bytes: Uint8Array): Promise<void> {
    if (this.#failed) return Promise.reject(this.#error);
    if (bytes.length === 0) return Promise.resolve();
    this.#queue.push(bytes);
    this.#held += bytes.length;
    this.#pump ??= this.#run();
    if (this.#held <= this.#limit) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Resolves once every queued byte is written.
   * @throws the error of a failed write
   */
  async flush(): Promise<void> {
    while (this.#pump) await this.#pump;
    if (this.#failed) throw this.#error;
  }

  async #run(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch: Uint8Array[] = [];
        let size = 0;
        while (
          this.#queue.length > 0 && (size === 0 || size + this.#queue[0].length <= this.#limit)
        ) {
          const c = this.#queue.shift()!;
          batch.push(c);
          size += c.length;
        }
        // One kept buffer (a write completes before the next merge): a new one per write would
        // be garbage that only a collection frees, and the runtime collects it late.
        let rest = batch.length === 1 ? batch[0] : this.#merge(batch, size);
        while (rest.length > 0) rest = rest.subarray(await this.#writer.write(rest));
        this.#held -= size;
        if (this.#held <= this.#limit) this.#release(null);
      }
    } catch (e) {
      this.#failed = true;
      this.#error = e;
      this.#queue = [];
      this.#held = 0;
      this.#release(e);
    } finally {
      this.#pump = null;
    }
  }

  #merge(parts: Uint8Array[], size: number): Uint8Array {
    this.#merged ??= new Uint8Array(this.#limit);
    let off = 0;
    for (const p of parts) {
      this.#merged.set(p, off);
      off += p.length;
    }
    return this.#merged.subarray(0, size);
  }

  #release(error: unknown): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) error === null ? w.resolve() : w.reject(error);
  }
}
