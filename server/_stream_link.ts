/**
 * One connection's hold on runs' standard streams: it becomes a run's
 * receiver (a {@linkcode StreamSink} over the connection's stream
 * channels), sends output within the manager's credit and as fast as the
 * connection drains, and feeds stdin within the credit it gave. Knows
 * messages and runs' streams, not requests.
 *
 * @module
 */

import type {
  ClientMessage,
  CloseStreamMessage,
  DataMessage,
  Features,
  MessageChannel,
  ServerMessage,
  StreamChannels,
  WindowMessage,
} from "../protocol/mod.ts";
import { hasEnded, type Run } from "./runs.ts";
import type { RunStreams, StreamSink } from "./streams.ts";
import { RequestError } from "./errors.ts";

/** stdin credit a receiver gets per run, in bytes. */
export const STDIN_WINDOW = 256 * 1024;
/** Runs whose stdin one connection may feed at once (its inbound data stays bounded). */
export const MAX_STDIN_PER_CONNECTION = 4;

/** What the link needs from its connection. */
export interface StreamLinkContext {
  /** The connection's messages. */
  channel: MessageChannel<ClientMessage, ServerMessage>;
  /** Its stream channels (windows, data). */
  streams: StreamChannels;
  /** What the peer's version can do. */
  features(): Features;
}

/**
 * The runs whose streams a connection receives.
 *
 * @example
 * ```ts ignore
 * const link = new StreamLink({ channel, streams, features: () => features });
 * link.take(run);          // this connection receives the run's output from now on
 * link.data(message);      // stdin from the manager (throws CreditError beyond its credit)
 * ```
 */
export class StreamLink {
  readonly #c: StreamLinkContext;
  readonly #sinks = new Map<string, { run: Run; sink: StreamSink }>();
  /** Runs whose stdin this connection feeds or is about to (credit opened or coming). */
  readonly #feeding = new Set<string>();
  /** Launches with stdin under way, counted against the limit before their run exists. */
  #reserved = 0;
  #stdinWrites: Promise<void> = Promise.resolve();
  #closed = false;

  /** Starts with no runs. */
  constructor(context: StreamLinkContext) {
    this.#c = context;
  }

  /** This connection's hold on a run's streams, while it is still the receiver. */
  current(runId: string): { run: Run; sink: StreamSink } | undefined {
    const mine = this.#sinks.get(runId);
    return mine && mine.run.io?.sink === mine.sink ? mine : undefined;
  }

  /**
   * Takes, before anything is awaited, one of the stdin streams this
   * connection may feed, for a launch under way. Call the function it
   * returns once the launch is over, whatever its outcome: by then a run
   * it made this connection the receiver of ({@linkcode take}) holds its
   * own slot.
   * @throws {RequestError} "limit" when it feeds the most it may already
   */
  reserveStdin(): () => void {
    this.#pruneFeeding();
    const used = this.#feeding.size + this.#reserved;
    if (used >= MAX_STDIN_PER_CONNECTION) {
      throw new RequestError(
        "limit",
        `this connection already feeds the stdin of ${used} runs, the most one ` +
          `connection may (${MAX_STDIN_PER_CONNECTION}): feed this one from another connection`,
      );
    }
    this.#reserved++;
    let held = true;
    return () => {
      if (held) this.#reserved--;
      held = false;
    };
  }

  /**
   * Makes this connection the receiver of the run's streams, with `credit`
   * for each output (1.3 `status` `window`; otherwise it comes with
   * `window` messages). Stdin's credit comes once its supervisor has
   * handed it over (told with its `resume`), if this connection may feed
   * one more: `reserved` when a launch took the slot ({@linkcode reserveStdin}).
   */
  take(run: Run, credit = 0, feedsStdin = true, reserved = false): void {
    if (!run.io || this.current(run.id) || this.#closed) return;
    const { channel, streams } = this.#c;
    const id = run.id;
    this.#pruneFeeding();
    const room = this.#feeding.size + this.#reserved < MAX_STDIN_PER_CONNECTION;
    const feeds = feedsStdin && run.io.hasStdin && (reserved || room);
    if (feeds) this.#feeding.add(id);
    streams.openOutbound(id, "stdout", credit);
    streams.openOutbound(id, "stderr", credit);
    const sink: StreamSink = {
      resume: (stream, offset) => {
        if (this.#c.features().resume) channel.send({ type: "resume", run: id, stream, offset });
        if (stream === "stdin" && this.#feeding.has(id)) {
          streams.openInbound(id, "stdin", STDIN_WINDOW);
        } else if (stream === "stdin") sink.stdinClosed();
      },
      room: (stream) => streams.room(id, stream),
      whenRoom: (stream) => streams.whenRoom(id, stream),
      data: (stream, bytes) => {
        if (bytes.length === 0) streams.sendEnd(id, stream);
        else streams.sendData(id, stream, bytes);
      },
      stdinClosed: () => {
        if (this.#sinks.get(id)?.sink !== sink) return;
        this.#feeding.delete(id);
        streams.closeInbound(id, "stdin");
        if (this.#c.features().stdinClose) {
          channel.send({ type: "close_stream", run: id, stream: "stdin" });
        }
      },
    };
    this.#sinks.set(id, { run, sink });
    run.io.attach(sink, feeds);
  }

  /** Runs that have ended, or whose stdin this connection no longer holds, free their slot. */
  #pruneFeeding(): void {
    for (const id of this.#feeding) {
      const mine = this.#sinks.get(id);
      if (!mine || hasEnded(mine.run) || mine.run.io?.stdinSink !== mine.sink) {
        this.#feeding.delete(id);
      }
    }
  }

  /**
   * A run whose output has ended: tells its receiver where each output
   * really ended when its last bytes could not be relayed (1.3).
   */
  sendTailLosses(run: Run): void {
    if (!this.current(run.id) || !this.#c.features().resume) return;
    for (const t of run.io?.tailLosses() ?? []) {
      this.#c.channel.send({ type: "resume", run: run.id, stream: t.stream, offset: t.offset });
    }
  }

  /** The manager grants output credit. */
  window(m: WindowMessage): void {
    if (m.stream === "stdin") return;
    this.#c.streams.granted(m.run, m.stream, m.bytes);
    this.current(m.run)?.run.io?.poke();
  }

  /** The manager will not read an output any more: the application's end is closed. */
  closeStream(m: CloseStreamMessage): void {
    this.current(m.run)?.run.io?.closeOutput(m.stream);
  }

  /**
   * stdin from the manager: within the credit given (checked now, in the
   * order it came), written to the run's supervisor in order, credit given
   * back once written. Bytes for a run this connection no longer receives
   * (another manager took it over) are dropped.
   * @throws {CreditError} beyond the credit, or for a stream never given
   */
  data(m: DataMessage): void {
    const { streams, channel } = this.#c;
    if (m.stream !== "stdin") {
      // A manager sends only stdin: output "data" has no credit here.
      streams.received(m.run, m.stream, m.data.length);
      return;
    }
    const n = m.data.length;
    if (!streams.received(m.run, "stdin", n)) {
      // An end of stdin before its window (a manager may send it at once): honoured when this
      // connection is the one to feed the run, whenever its stdin is handed over.
      if (this.#feeding.has(m.run)) this.#stdinOf(m.run)?.endStdin();
      return;
    }
    channel.hold(n, false);
    this.#stdinWrites = this.#stdinWrites.then(async () => {
      // Checked again now, in order: a manager that took stdin over since gets it from the offset
      // it was told, so nothing queued here may still reach the application.
      const io = streams.receiving(m.run, "stdin") ? this.#stdinOf(m.run) : undefined;
      const ok = io ? await io.writeStdin(m.data) : false;
      if (ok && n > 0) streams.consumed(m.run, "stdin", n);
      if (n === 0) this.#feeding.delete(m.run);
    }).catch(() => {
      // writeStdin reports failures as false; nothing else here throws
    }).finally(() => channel.release(n, false));
  }

  /** The run's streams, while this connection feeds its stdin. */
  #stdinOf(runId: string): RunStreams | undefined {
    const mine = this.#sinks.get(runId);
    if (this.#closed || !mine || mine.run.io?.stdinSink !== mine.sink) return undefined;
    return mine.run.io;
  }

  /** The connection closed: every run it received goes on holding its output for another. */
  close(): void {
    this.#closed = true;
    for (const { run, sink } of this.#sinks.values()) run.io?.detach(sink);
    this.#sinks.clear();
    this.#feeding.clear();
    this.#c.streams.close();
  }
}
