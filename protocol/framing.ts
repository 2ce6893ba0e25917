/**
 * Frame codec: a byte stream cut into frames, each a 4-byte big-endian
 * unsigned length followed by that many payload bytes. This layer knows
 * nothing about what a payload means.
 *
 * @module
 */

/** Size of the length prefix that precedes every frame, in bytes. */
export const FRAME_HEADER_SIZE = 4;

/** Default largest payload accepted or sent: 1 MiB. */
export const DEFAULT_MAX_FRAME_SIZE = 1024 * 1024;

/** Why a frame was refused. */
export type FrameErrorCode = "empty" | "oversize" | "truncated";

/**
 * A byte stream that does not follow the framing rules.
 *
 * @example
 * ```ts
 * import { FrameDecoder, FrameError } from "./framing.ts";
 * try {
 *   new FrameDecoder().push(new Uint8Array([0, 0, 0, 0]));
 * } catch (e) {
 *   if (e instanceof FrameError) console.log(e.code); // "empty"
 * }
 * ```
 */
export class FrameError extends Error {
  /** Machine-readable reason. */
  readonly code: FrameErrorCode;
  /** Builds the error. */
  constructor(code: FrameErrorCode, message: string) {
    super(message);
    this.name = "FrameError";
    this.code = code;
  }
}

function _checkLength(length: number, maxFrameSize: number): void {
  if (length === 0) throw new FrameError("empty", "frame length 0 is not allowed");
  if (length > maxFrameSize) {
    throw new FrameError(
      "oversize",
      `frame length ${length} exceeds the maximum of ${maxFrameSize} bytes`,
    );
  }
}

/**
 * Encodes one payload as one frame (header and payload in a single buffer,
 * so that it can go out in a single write).
 *
 * @example
 * ```ts
 * import { encodeFrame } from "./framing.ts";
 * encodeFrame(new TextEncoder().encode("hi")); // Uint8Array [0, 0, 0, 2, 104, 105]
 * ```
 */
export function encodeFrame(
  payload: Uint8Array,
  maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE,
): Uint8Array {
  _checkLength(payload.length, maxFrameSize);
  const frame = new Uint8Array(FRAME_HEADER_SIZE + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length, false);
  frame.set(payload, FRAME_HEADER_SIZE);
  return frame;
}

/**
 * Turns a buffer whose payload starts at {@linkcode FRAME_HEADER_SIZE} into a
 * frame by writing the length prefix into its first 4 bytes, so that a
 * payload encoded with room for the header needs no second copy.
 *
 * @param buffer the header room followed by the payload
 * @param maxFrameSize largest payload allowed
 * @returns `buffer`, now a whole frame
 * @throws {FrameError} on an empty or oversize payload
 * @example
 * ```ts
 * import { frameInPlace } from "./framing.ts";
 * frameInPlace(new Uint8Array([0, 0, 0, 0, 104, 105])); // Uint8Array [0, 0, 0, 2, 104, 105]
 * ```
 */
export function frameInPlace(
  buffer: Uint8Array,
  maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE,
): Uint8Array {
  const length = buffer.length - FRAME_HEADER_SIZE;
  _checkLength(Math.max(length, 0), maxFrameSize);
  new DataView(buffer.buffer, buffer.byteOffset, FRAME_HEADER_SIZE).setUint32(0, length, false);
  return buffer;
}

/**
 * Incremental frame decoder: feed it chunks as they arrive, get whole
 * payloads back. A bad length is refused as soon as its 4 bytes are in,
 * before any buffer for the payload is allocated; after an error the
 * decoder is unusable and the connection should be closed.
 *
 * @example
 * ```ts
 * import { encodeFrame, FrameDecoder } from "./framing.ts";
 * const d = new FrameDecoder();
 * const f = encodeFrame(new Uint8Array([1, 2, 3]));
 * d.push(f.subarray(0, 5)); // []
 * d.push(f.subarray(5)); // [Uint8Array [1, 2, 3]]
 * ```
 */
export class FrameDecoder {
  readonly #maxFrameSize: number;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #failed: FrameError | null = null;

  /**
   * Creates a decoder with an empty buffer.
   * @param maxFrameSize largest payload accepted, in bytes
   * @throws {RangeError} when `maxFrameSize` is not an integer from 1 to 2³²−1
   */
  constructor(maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE) {
    if (!Number.isInteger(maxFrameSize) || maxFrameSize < 1 || maxFrameSize > 0xffffffff) {
      throw new RangeError(`invalid maximum frame size: ${maxFrameSize}`);
    }
    this.#maxFrameSize = maxFrameSize;
  }

  /** Bytes received but not yet returned as a payload. */
  get buffered(): number {
    return this.#buffered;
  }

  /**
   * Adds received bytes; returns every payload now complete, in order.
   * When a bad length follows complete frames in the same chunk, those
   * frames are returned first and the error is thrown by the next call to
   * `push()` or `finish()` (and is visible at once as {@linkcode error}).
   * @throws {FrameError} on a zero or oversize length
   */
  push(chunk: Uint8Array): Uint8Array[] {
    this.append(chunk);
    const out: Uint8Array[] = [];
    for (;;) {
      let payload: Uint8Array | null;
      try {
        payload = this.next();
      } catch (e) {
        if (out.length === 0) throw e;
        return out;
      }
      if (!payload) return out;
      out.push(payload);
    }
  }

  /**
   * Adds received bytes without cutting them yet (see {@linkcode next}): a
   * reader that must stop between frames keeps the rest here as bytes.
   * @throws {FrameError} after an error
   */
  append(chunk: Uint8Array): void {
    if (this.#failed) throw this.#failed;
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
  }

  /**
   * The next complete payload, or null until more bytes come.
   * @throws {FrameError} on a zero or oversize length (then on every call)
   */
  next(): Uint8Array | null {
    if (this.#failed) throw this.#failed;
    if (this.#buffered < FRAME_HEADER_SIZE) return null;
    const header = this.#peek(FRAME_HEADER_SIZE);
    const length = ((header[0] << 24) | (header[1] << 16) | (header[2] << 8) | header[3]) >>> 0;
    try {
      _checkLength(length, this.#maxFrameSize);
    } catch (e) {
      this.#failed = e as FrameError;
      this.#chunks = [];
      this.#buffered = 0;
      throw e;
    }
    if (this.#buffered < FRAME_HEADER_SIZE + length) return null;
    this.#take(FRAME_HEADER_SIZE);
    return this.#take(length);
  }

  /** The framing error met so far, if any; the decoder is unusable after one. */
  get error(): FrameError | null {
    return this.#failed;
  }

  /**
   * Declares the end of the stream.
   * @throws {FrameError} "truncated" when a partial frame is pending
   */
  finish(): void {
    if (this.#failed) throw this.#failed;
    if (this.#buffered > 0) {
      throw new FrameError(
        "truncated",
        `stream ended inside a frame (${this.#buffered} bytes pending)`,
      );
    }
  }

  #peek(n: number): Uint8Array {
    const first = this.#chunks[0];
    if (first.length >= n) return first.subarray(0, n);
    const out = new Uint8Array(n);
    let off = 0;
    for (const c of this.#chunks) {
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (off === n) break;
    }
    return out;
  }

  #take(n: number): Uint8Array {
    this.#buffered -= n;
    const first = this.#chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      // A view, no copy, unless a small payload would pin a much larger
      // receive buffer (a queued message must not hold on to 4 times its size).
      return n * 4 >= first.buffer.byteLength ? out : out.slice();
    }
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const c = this.#chunks[0];
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    return out;
  }
}
