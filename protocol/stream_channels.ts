/**
 * The stream channels of one connection (OpenSSH's channels.c): for each
 * run's stdin, stdout and stderr, the window each side allows the other,
 * data, end of stream and close. The same table serves both ends: a side
 * *receives* the streams it grants credit for (the server: stdin; a
 * manager: stdout and stderr) and *sends* the others within the credit the
 * peer granted, never faster than the connection drains. Data received
 * beyond the credit given is a {@linkcode CreditError}: the caller closes
 * the connection. Knows nothing of processes or sockets, only messages.
 *
 * @module
 */

import type { DataMessage, StreamName, WindowMessage } from "./messages.ts";

/** Largest credit a window can hold (a `window` message carries at most 2³¹−1). */
const _MAX_WINDOW = 0x7fffffff;

/**
 * Data beyond the credit granted for it, or for a stream that was never
 * granted any: the peer broke flow control.
 *
 * @example
 * ```ts
 * import { CreditError } from "./stream_channels.ts";
 * new CreditError("r1", "stdin", 10, 0).message;
 * // "10 bytes of stdin for run r1 beyond the credit granted (0 bytes left)"
 * ```
 */
export class CreditError extends Error {
  /** The run. */
  readonly run: string;
  /** The stream. */
  readonly stream: StreamName;
  /** Bytes received. */
  readonly bytes: number;
  /** Credit that was left (0 for a stream never opened). */
  readonly credit: number;
  /** Builds the error. */
  constructor(run: string, stream: StreamName, bytes: number, credit: number) {
    super(
      `${bytes} bytes of ${stream} for run ${run} beyond the credit granted (${credit} bytes left)`,
    );
    this.name = "CreditError";
    this.run = run;
    this.stream = stream;
    this.bytes = bytes;
    this.credit = credit;
  }
}

/** The connection under the table: sending, and whether its write queue has room. */
export interface StreamChannelsLink {
  /** Sends a window or data message. */
  send(message: WindowMessage | DataMessage): unknown;
  /** False while the connection's write queue is over its high-water mark. */
  readonly writable: boolean;
  /** Settles once the connection is writable again, or closed. */
  whenWritable(): Promise<void>;
}

interface _Inbound {
  /** Credit the peer still has. */
  credit: number;
  /** The window: credit in flight at most. */
  size: number;
  /** Bytes consumed whose credit has not been given back yet. */
  unreturned: number;
  /** False once we stopped giving credit (the stream is closed on our side). */
  open: boolean;
}

interface _Outbound {
  /** Credit the peer granted and we have not used. */
  credit: number;
  /** One promise for whoever waits for credit (however often they ask). */
  waiting: { promise: Promise<void>; resolve: () => void } | null;
}

function _key(run: string, stream: StreamName): string {
  return `${run}\0${stream}`;
}

/**
 * One connection's stream channels.
 *
 * @example
 * ```ts ignore
 * import { StreamChannels } from "./stream_channels.ts";
 * const streams = new StreamChannels(channel, 64 * 1024);
 * streams.openInbound("r1", "stdout", 1 << 20); // sends the window
 * // on data: streams.received(run, stream, n) (throws CreditError), handle it, then
 * streams.consumed("r1", "stdout", 4096); // credit goes back in batches
 * ```
 */
export class StreamChannels {
  readonly #link: StreamChannelsLink;
  readonly #maxChunk: number;
  readonly #in = new Map<string, _Inbound>();
  readonly #out = new Map<string, _Outbound>();
  #closed = false;

  /**
   * Creates the channel table of one connection.
   *
   * @param link the connection the messages go through
   * @param maxChunk largest data payload sent in one message
   */
  constructor(link: StreamChannelsLink, maxChunk: number) {
    this.#link = link;
    this.#maxChunk = maxChunk;
  }

  // --- streams we receive -------------------------------------------------

  /** Starts receiving a stream: grants the peer `window` bytes (sent now). */
  openInbound(run: string, stream: StreamName, window: number): void {
    this.expectInbound(run, stream, window);
    this.#link.send({ type: "window", run, stream, bytes: window });
  }

  /** Starts receiving a stream whose credit went with a request (status `window`). */
  expectInbound(run: string, stream: StreamName, window: number): void {
    const w = Math.min(window, _MAX_WINDOW);
    this.#in.set(_key(run, stream), { credit: w, size: w, unreturned: 0, open: true });
  }

  /** Grants `bytes` more on a stream we receive, widening its window (sent now). */
  widen(run: string, stream: StreamName, bytes: number): void {
    const c = this.#in.get(_key(run, stream));
    if (!c) return this.openInbound(run, stream, bytes);
    const n = Math.min(bytes, _MAX_WINDOW - c.credit);
    if (n <= 0) return;
    c.credit += n;
    c.size = Math.min(c.size + n, _MAX_WINDOW);
    this.#link.send({ type: "window", run, stream, bytes: n });
  }

  /** True while we receive the stream (opened and not closed on our side). */
  receiving(run: string, stream: StreamName): boolean {
    return this.#in.get(_key(run, stream))?.open === true;
  }

  /**
   * `bytes` of a stream arrived: they must be within the credit given. An
   * end of stream (0 bytes) needs no credit, and may come before any was
   * given: it returns false when the stream is not one we receive (yet).
   * @throws {CreditError} when bytes are beyond the credit (or the stream was never opened)
   */
  received(run: string, stream: StreamName, bytes: number): boolean {
    const c = this.#in.get(_key(run, stream));
    if (bytes === 0) return c !== undefined;
    if (!c || bytes > c.credit) throw new CreditError(run, stream, bytes, c?.credit ?? 0);
    c.credit -= bytes;
    return true;
  }

  /**
   * `bytes` received were handled: their credit goes back to the peer once
   * a quarter of the window waits to be returned (one `window` message per
   * quarter window, not one per chunk). The peer never has more than the
   * window in flight, so it is never left without credit while handled
   * bytes wait here.
   */
  consumed(run: string, stream: StreamName, bytes: number): void {
    const c = this.#in.get(_key(run, stream));
    if (!c || !c.open || bytes <= 0) return;
    c.unreturned += bytes;
    if (c.unreturned * 4 < c.size) return;
    const n = Math.min(c.unreturned, _MAX_WINDOW - c.credit);
    c.unreturned -= n;
    c.credit += n;
    if (n > 0) this.#link.send({ type: "window", run, stream, bytes: n });
  }

  /**
   * Stops giving credit for a stream we received. Data already in flight
   * (within the credit) is still accepted by {@linkcode received}; the
   * caller drops it.
   */
  closeInbound(run: string, stream: StreamName): void {
    const c = this.#in.get(_key(run, stream));
    if (c) c.open = false;
  }

  // --- streams we send ------------------------------------------------------

  /** Starts sending a stream, with `credit` bytes granted already (0: wait for `window`). */
  openOutbound(run: string, stream: StreamName, credit = 0): void {
    const prev = this.#out.get(_key(run, stream));
    const c: _Outbound = { credit: Math.min(credit, _MAX_WINDOW), waiting: prev?.waiting ?? null };
    this.#out.set(_key(run, stream), c);
    this.#wake(c);
  }

  /** The peer granted `bytes` more of a stream we send (ignored for a stream we do not). */
  granted(run: string, stream: StreamName, bytes: number): void {
    const c = this.#out.get(_key(run, stream));
    if (!c) return;
    c.credit = Math.min(c.credit + bytes, _MAX_WINDOW);
    this.#wake(c);
  }

  /** Bytes of a stream that may be sent now: within the credit, while the connection drains. */
  room(run: string, stream: StreamName): number {
    if (this.#closed || !this.#link.writable) return 0;
    return this.#out.get(_key(run, stream))?.credit ?? 0;
  }

  /** Bytes of credit left on a stream we send (whether or not the connection drains). */
  credit(run: string, stream: StreamName): number {
    return this.#out.get(_key(run, stream))?.credit ?? 0;
  }

  /** Settles when there may be room to send: credit came, the connection drained, or closed. */
  whenRoom(run: string, stream: StreamName): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const c = this.#out.get(_key(run, stream));
    if (c && c.credit > 0) return this.#link.whenWritable();
    const out = c ?? { credit: 0, waiting: null };
    if (!c) this.#out.set(_key(run, stream), out);
    if (!out.waiting) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => resolve = r);
      out.waiting = { promise, resolve };
    }
    return out.waiting.promise;
  }

  /**
   * Sends bytes of a stream, in messages of at most the chunk size.
   * @throws {RangeError} beyond the credit (callers check {@linkcode room} first)
   */
  sendData(run: string, stream: StreamName, bytes: Uint8Array): void {
    const c = this.#out.get(_key(run, stream));
    if (!c || bytes.length > c.credit) {
      throw new RangeError(`${bytes.length} bytes of ${stream} for ${run} beyond the credit`);
    }
    c.credit -= bytes.length;
    for (let off = 0; off < bytes.length; off += this.#maxChunk) {
      this.#link.send({
        type: "data",
        run,
        stream,
        data: bytes.subarray(off, off + this.#maxChunk),
      });
    }
  }

  /** Sends the end of a stream (empty data: takes no credit). */
  sendEnd(run: string, stream: StreamName): void {
    this.#link.send({ type: "data", run, stream, data: new Uint8Array(0) });
  }

  // --- the run, the connection ----------------------------------------------

  /** Forgets a run's streams, or one of them (their waiters are woken). */
  forget(run: string, only?: StreamName): void {
    for (const stream of only ? [only] : ["stdin", "stdout", "stderr"] as const) {
      this.#in.delete(_key(run, stream));
      const c = this.#out.get(_key(run, stream));
      this.#out.delete(_key(run, stream));
      if (c) this.#wake(c);
    }
  }

  /** The connection closed: wakes every waiter; nothing more has room. */
  close(): void {
    this.#closed = true;
    for (const c of this.#out.values()) this.#wake(c);
    this.#out.clear();
    this.#in.clear();
  }

  #wake(c: _Outbound): void {
    const w = c.waiting;
    c.waiting = null;
    w?.resolve();
  }
}
