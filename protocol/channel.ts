/**
 * Messages over any byte stream (OpenSSH's packet layer): each message goes
 * out as one frame in one write; incoming bytes are cut into frames and
 * validated into messages. It keeps the connection's memory bounded: it
 * says when the peer is not reading (senders wait for {@linkcode
 * MessageChannel.whenWritable}), stops reading while too much waits to be
 * written or handled, and gives up on a connection whose buffers pass the
 * limit. Knows nothing of TLS or of what the messages ask for.
 *
 * @module
 */

import {
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  frameInPlace,
} from "./framing.ts";
import { encodeDataPayload, encodeMessage, type Message, ProtocolError } from "./messages.ts";
import { scavenger } from "./_scavenger.ts";

/** The part of a Node.js-style duplex socket a channel uses. */
export interface ByteStream {
  /** Queues bytes; false when the peer is not keeping up. */
  write(data: Uint8Array): boolean;
  /** Bytes queued and not yet handed to the operating system. */
  readonly writableLength?: number;
  /** Stops "data" events (the peer's writes then back up in TCP). */
  pause?(): unknown;
  /** Starts "data" events again. */
  resume?(): unknown;
  /** Half-closes after pending writes. */
  end(): void;
  /** Closes at once. */
  destroy(): void;
  /** Subscribes to the stream's events. */
  on(event: "data", listener: (chunk: Uint8Array) => void): unknown;
  /** Subscribes to the stream's events ("drain": the write queue has emptied). */
  on(event: "end" | "close" | "drain", listener: () => void): unknown;
  /** Subscribes to the stream's events. */
  on(event: "error", listener: (err: Error) => void): unknown;
  /** True once the stream is closed (it will emit no more events). */
  readonly destroyed?: boolean;
}

/** How much a channel lets wait in memory (see docs/PROTOCOL.md, "Limits"). */
export interface ChannelLimits {
  /**
   * Bytes queued for writing beyond which the channel is not writable:
   * senders of data wait for {@linkcode MessageChannel.whenWritable}, and
   * reading pauses, so that no more requests come in to be answered.
   */
  writeHighWater: number;
  /** Bytes of received messages the owner holds (see `hold`) beyond which reading pauses. */
  readHighWater: number;
  /**
   * Everything together (queued for writing, a partial frame received,
   * held by the owner) beyond which the connection is given up: the owner
   * hears {@linkcode BufferLimitError} through `onInvalid`.
   */
  maxBuffered: number;
}

/**
 * The limits for a largest frame of `maxFrameSize`: reading pauses beyond
 * 256 KiB held or queued, and a connection is given up beyond
 * 2 × `maxFrameSize` + 2 MiB (4 MiB with the default 1 MiB frames): a
 * partial frame, one reply of the largest size and what waits besides.
 *
 * @example
 * ```ts
 * import { channelLimits } from "./channel.ts";
 * channelLimits(1024 * 1024).maxBuffered; // 4194304
 * ```
 */
export function channelLimits(maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE): ChannelLimits {
  return {
    writeHighWater: 256 * 1024,
    readHighWater: 256 * 1024,
    maxBuffered: 2 * maxFrameSize + 2 * 1024 * 1024,
  };
}

/**
 * A connection whose buffers passed {@linkcode ChannelLimits.maxBuffered}:
 * a peer that does not read what it asked for, or sends more than it may.
 *
 * @example
 * ```ts
 * import { BufferLimitError } from "./channel.ts";
 * new BufferLimitError(5000000, 4194304).message;
 * // "5000000 bytes buffered for this connection, more than its limit of 4194304"
 * ```
 */
export class BufferLimitError extends Error {
  /** Bytes buffered when the limit was passed. */
  readonly buffered: number;
  /** The limit. */
  readonly limit: number;
  /** Builds the error. */
  constructor(buffered: number, limit: number) {
    super(`${buffered} bytes buffered for this connection, more than its limit of ${limit}`);
    this.name = "BufferLimitError";
    this.buffered = buffered;
    this.limit = limit;
  }
}

/** What a channel reports to its owner. */
export interface ChannelHandlers<In> {
  /** A valid message arrived; `size` is its payload's length in bytes. */
  onMessage(message: In, size: number): void;
  /**
   * The peer broke the framing, sent an invalid message, or let the
   * connection's buffers pass their limit; nothing more is read.
   */
  onInvalid(error: FrameError | ProtocolError | BufferLimitError): void;
  /** The stream is closed; `error` is set when it ended abnormally. Called once. */
  onClose(error: Error | null): void;
}

/** How long a closing channel waits for its last writes before it drops the connection. */
const _CLOSE_GRACE_MS = 2000;
/** Frames smaller than this are gathered into one write per turn. */
const _SMALL_FRAME = 16 * 1024;
/** ... up to this many bytes in one write. */
const _COALESCE_BYTES = 64 * 1024;
/** Requests held at once beyond which reading pauses, whatever their size. */
const _MAX_HELD_MESSAGES = 256;

/**
 * A bidirectional message channel over a byte stream.
 *
 * @example
 * ```ts ignore
 * import { MessageChannel, decodeServerMessage, type ClientMessage } from "./mod.ts";
 * const ch = new MessageChannel<ReturnType<typeof decodeServerMessage>, ClientMessage>(
 *   socket, decodeServerMessage, {
 *     onMessage: (m) => console.log(m),
 *     onInvalid: (e) => console.error(e.message),
 *     onClose: () => {},
 *   });
 * ch.send({ type: "ping", id: 1 });
 * ```
 */
export class MessageChannel<In extends Message, Out extends Message> {
  readonly #stream: ByteStream;
  readonly #decoder: FrameDecoder;
  readonly #decode: (payload: Uint8Array) => In;
  readonly #handlers: ChannelHandlers<In>;
  readonly #maxFrameSize: number;
  readonly #limits: ChannelLimits;
  #invalid = false;
  #closing = false;
  #closed = false;
  #streamError: Error | null = null;
  /** Bytes of received messages the owner still holds: requests (pausing) and data. */
  #held = 0;
  #heldData = 0;
  #paused = false;
  /** One promise for everyone waiting to write (a flood of wake-ups must not pile up waiters). */
  #writable: { promise: Promise<void>; resolve: () => void } | null = null;
  /** Small frames waiting to go out together at the end of this turn. */
  #small: Uint8Array[] = [];
  #smallBytes = 0;
  /** Messages the owner holds (see `hold`): tiny requests cost far more than their bytes. */
  #heldMessages = 0;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Attaches to `stream` and starts handling its events.
   * @param stream the connected byte stream
   * @param decode validator for incoming payloads
   * @param handlers event callbacks
   * @param maxFrameSize largest payload accepted and sent
   * @param limits how much may wait in memory ({@linkcode channelLimits} by default)
   */
  constructor(
    stream: ByteStream,
    decode: (payload: Uint8Array) => In,
    handlers: ChannelHandlers<In>,
    maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE,
    limits: ChannelLimits = channelLimits(maxFrameSize),
  ) {
    this.#stream = stream;
    this.#decode = decode;
    this.#handlers = handlers;
    this.#maxFrameSize = maxFrameSize;
    this.#limits = limits;
    this.#decoder = new FrameDecoder(maxFrameSize);
    stream.on("data", (chunk) => this.#receive(chunk));
    stream.on("drain", () => this.#flow());
    stream.on("end", () => {
      if (this.#invalid || this.#closing) {
        this.#stream.end();
        return;
      }
      try {
        this.#decoder.finish();
      } catch (e) {
        this.#streamError = e as Error;
      }
      // Half-closed by the peer: we have nothing more to say either.
      this.#stream.end();
    });
    stream.on("error", (err) => {
      this.#streamError ??= err;
    });
    const onClose = () => {
      if (this.#closed) return;
      this.#closed = true;
      clearTimeout(this.#closeTimer);
      this.#wakeWriters();
      this.#handlers.onClose(this.#streamError);
    };
    stream.on("close", onClose);
    // A stream that closed before we subscribed will not say so again.
    if (stream.destroyed) queueMicrotask(onClose);
  }

  /** True once the underlying stream has closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes queued for writing. */
  get queued(): number {
    return (this.#stream.writableLength ?? 0) + this.#smallBytes;
  }

  /** Everything this connection holds: queued for writing, a partial frame, held by the owner. */
  get buffered(): number {
    return this.queued + this.#decoder.buffered + this.#held + this.#heldData;
  }

  /** False while more than the write high-water mark waits to be written. */
  get writable(): boolean {
    return this.queued < this.#limits.writeHighWater;
  }

  /** Settles once the channel is writable again, or closed. */
  whenWritable(): Promise<void> {
    if (this.writable || this.#closed) return Promise.resolve();
    if (!this.#writable) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => resolve = r);
      this.#writable = { promise, resolve };
    }
    return this.#writable.promise;
  }

  /**
   * The owner keeps `bytes` of received messages, until {@linkcode
   * release}d: counted against the limit. Requests waiting their turn
   * (`pausing`) also pause reading beyond the read high-water mark; data
   * bounded by flow control on its way to a slow reader does not, so that
   * the requests behind it are still read.
   */
  hold(bytes: number, pausing = true): void {
    if (pausing) {
      this.#held += bytes;
      this.#heldMessages++;
    } else this.#heldData += bytes;
    this.#flow();
  }

  /** The owner let go of a message of `bytes` it held (as it held it). */
  release(bytes: number, pausing = true): void {
    if (pausing) {
      this.#held = Math.max(0, this.#held - bytes);
      this.#heldMessages = Math.max(0, this.#heldMessages - 1);
    } else this.#heldData = Math.max(0, this.#heldData - bytes);
    this.#flow();
  }

  /**
   * Sends one message as one frame in one write. Ignored once the channel
   * is closing. Returns {@linkcode writable}: senders of bulk data wait for
   * {@linkcode whenWritable} when it is false.
   * @throws {FrameError} when the message is larger than the frame limit
   */
  send(message: Out): boolean {
    if (this.#closing || this.#closed) return false;
    // Data frames are built in one allocation, header and payload together.
    const frame = message.type === "data"
      ? frameInPlace(encodeDataPayload(message, FRAME_HEADER_SIZE), this.#maxFrameSize)
      : encodeFrame(encodeMessage(message), this.#maxFrameSize);
    if (frame.length >= _SMALL_FRAME) {
      this.#flush();
      this.#stream.write(frame);
      scavenger.moved(frame.length);
    } else {
      // Small frames sent in the same turn go out in one write: a write costs the runtime far
      // more than its bytes, and a peer that does not read must not make us keep thousands.
      this.#small.push(frame);
      this.#smallBytes += frame.length;
      if (this.#smallBytes >= _COALESCE_BYTES) this.#flush();
      else if (this.#small.length === 1) queueMicrotask(() => this.#flush());
    }
    this.#flow();
    return this.writable;
  }

  /** Writes the small frames waiting, in one write. */
  #flush(): void {
    const n = this.#small.length;
    if (n === 0) return;
    let out = this.#small[0];
    if (n > 1) {
      out = new Uint8Array(this.#smallBytes);
      let off = 0;
      for (const f of this.#small) {
        out.set(f, off);
        off += f.length;
      }
    }
    this.#small = [];
    this.#smallBytes = 0;
    if (!this.#closed) this.#stream.write(out);
    scavenger.moved(out.length);
  }

  /** Sends a last message, then closes once it is written. */
  sendAndClose(message: Out): void {
    this.send(message);
    this.close();
  }

  /**
   * Closes after pending writes. Nothing more is sent, and messages still
   * arriving are dropped. A peer that does not take the last writes within
   * 2 s is dropped.
   */
  close(): void {
    if (this.#closing || this.#closed) return;
    this.#closing = true;
    this.#flush();
    this.#stream.end();
    this.#closeTimer = setTimeout(() => this.#stream.destroy(), _CLOSE_GRACE_MS);
  }

  /** Closes at once, dropping pending writes. */
  destroy(): void {
    this.#closing = true;
    this.#stream.destroy();
  }

  /** Pauses or resumes reading, wakes writers, and enforces the limit. */
  #flow(): void {
    if (this.#closed) return;
    const buffered = this.buffered;
    if (buffered > this.#limits.maxBuffered && !this.#invalid) {
      this.#reject(new BufferLimitError(buffered, this.#limits.maxBuffered));
      return;
    }
    const writable = this.writable;
    const pause = !writable || this.#held >= this.#limits.readHighWater ||
      this.#heldMessages >= _MAX_HELD_MESSAGES;
    if (pause !== this.#paused) {
      this.#paused = pause;
      if (pause) this.#stream.pause?.();
      else {
        this.#stream.resume?.();
        // Frames received before the pause and not cut yet come first.
        if (this.#decoder.buffered > 0) queueMicrotask(() => this.#drain());
      }
    }
    if (writable) this.#wakeWriters();
  }

  #wakeWriters(): void {
    const w = this.#writable;
    this.#writable = null;
    w?.resolve();
  }

  #receive(chunk: Uint8Array): void {
    scavenger.moved(chunk.length);
    if (this.#invalid || this.#closing || this.#closed) return;
    try {
      this.#decoder.append(chunk);
    } catch (e) {
      this.#reject(e as FrameError);
      return;
    }
    this.#drain();
  }

  /**
   * Cuts and hands over the messages received, until reading is paused:
   * the rest of a chunk stays bytes in the decoder (counted) until then.
   */
  #drain(): void {
    while (!this.#paused && !this.#invalid && !this.#closing && !this.#closed) {
      let payload: Uint8Array | null;
      try {
        payload = this.#decoder.next();
      } catch (e) {
        this.#reject(e as FrameError);
        return;
      }
      if (!payload) break;
      let message: In;
      try {
        message = this.#decode(payload);
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        this.#reject(e);
        return;
      }
      this.#handlers.onMessage(message, payload.length);
    }
    this.#flow();
  }

  #reject(error: FrameError | ProtocolError | BufferLimitError): void {
    this.#invalid = true;
    this.#handlers.onInvalid(error);
  }
}
