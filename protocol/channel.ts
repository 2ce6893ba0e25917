/**
 * Messages over any byte stream: each message goes out as one frame in one
 * write; incoming bytes are cut into frames and validated into messages.
 * Knows nothing of TLS or of what the messages ask for.
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

/** The part of a Node.js-style duplex socket a channel uses. */
export interface ByteStream {
  /** Queues bytes; false when the peer is not keeping up. */
  write(data: Uint8Array): boolean;
  /** Half-closes after pending writes. */
  end(): void;
  /** Closes at once. */
  destroy(): void;
  /** Subscribes to the stream's events. */
  on(event: "data", listener: (chunk: Uint8Array) => void): unknown;
  /** Subscribes to the stream's events. */
  on(event: "end" | "close", listener: () => void): unknown;
  /** Subscribes to the stream's events. */
  on(event: "error", listener: (err: Error) => void): unknown;
  /** True once the stream is closed (it will emit no more events). */
  readonly destroyed?: boolean;
}

/** What a channel reports to its owner. */
export interface ChannelHandlers<In> {
  /** A valid message arrived. */
  onMessage(message: In): void;
  /** The peer broke the framing or sent an invalid message; nothing more is read. */
  onInvalid(error: FrameError | ProtocolError): void;
  /** The stream is closed; `error` is set when it ended abnormally. Called once. */
  onClose(error: Error | null): void;
}

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
  #invalid = false;
  #closing = false;
  #closed = false;
  #streamError: Error | null = null;

  /**
   * Attaches to `stream` and starts handling its events.
   * @param stream the connected byte stream
   * @param decode validator for incoming payloads
   * @param handlers event callbacks
   * @param maxFrameSize largest payload accepted and sent
   */
  constructor(
    stream: ByteStream,
    decode: (payload: Uint8Array) => In,
    handlers: ChannelHandlers<In>,
    maxFrameSize: number = DEFAULT_MAX_FRAME_SIZE,
  ) {
    this.#stream = stream;
    this.#decode = decode;
    this.#handlers = handlers;
    this.#maxFrameSize = maxFrameSize;
    this.#decoder = new FrameDecoder(maxFrameSize);
    stream.on("data", (chunk) => this.#receive(chunk));
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

  /**
   * Sends one message as one frame in one write. Ignored once the channel
   * is closing.
   * @throws {FrameError} when the message is larger than the frame limit
   */
  send(message: Out): void {
    if (this.#closing || this.#closed) return;
    // Data frames are built in one allocation, header and payload together.
    this.#stream.write(
      message.type === "data"
        ? frameInPlace(encodeDataPayload(message, FRAME_HEADER_SIZE), this.#maxFrameSize)
        : encodeFrame(encodeMessage(message), this.#maxFrameSize),
    );
  }

  /** Sends a last message, then closes once it is written. */
  sendAndClose(message: Out): void {
    this.send(message);
    this.close();
  }

  /**
   * Closes after pending writes. Nothing more is sent, and messages still
   * arriving are dropped.
   */
  close(): void {
    if (this.#closing || this.#closed) return;
    this.#closing = true;
    this.#stream.end();
  }

  /** Closes at once, dropping pending writes. */
  destroy(): void {
    this.#closing = true;
    this.#stream.destroy();
  }

  #receive(chunk: Uint8Array): void {
    if (this.#invalid || this.#closing || this.#closed) return;
    let payloads: Uint8Array[];
    try {
      payloads = this.#decoder.push(chunk);
    } catch (e) {
      this.#reject(e as FrameError);
      return;
    }
    for (const payload of payloads) {
      let message: In;
      try {
        message = this.#decode(payload);
      } catch (e) {
        if (!(e instanceof ProtocolError)) throw e;
        this.#reject(e);
        return;
      }
      this.#handlers.onMessage(message);
      if (this.#invalid || this.#closing || this.#closed) return;
    }
    const deferred = this.#decoder.error;
    if (deferred) this.#reject(deferred);
  }

  #reject(error: FrameError | ProtocolError): void {
    this.#invalid = true;
    this.#handlers.onInvalid(error);
  }
}
