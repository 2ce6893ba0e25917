/**
 * One manager's connection: the hello exchange, then requests (launch,
 * status, stop, release, list, ping) against the run table, answered in
 * order by one handler per message type, and exit notifications pushed
 * back; stream messages (window, close_stream, data) go to the
 * connection's stream link at once. Sees only messages; the socket under
 * it is any byte stream.
 *
 * @module
 */

import {
  BufferLimitError,
  type ByteStream,
  type ClientMessage,
  CreditError,
  decodeClientMessage,
  DEFAULT_MAX_FRAME_SIZE,
  encodeMessage,
  type Features,
  featuresOf,
  formatVersion,
  MAX_TEXT_LENGTH,
  MessageChannel,
  negotiateVersion,
  NO_FEATURES,
  PROTOCOL_VERSION,
  type RunInfo,
  type ServerMessage,
  SOFTWARE_VERSION,
  StreamChannels,
} from "../protocol/mod.ts";
import type { Logger } from "../log/logger.ts";
import { hasEnded, type Run, type RunTable } from "./runs.ts";
import { ProtocolViolation, RequestError, UnknownRunError } from "./errors.ts";
import { StreamLink } from "./_stream_link.ts";

/** Largest data frame payload sent, in bytes. */
const _DATA_CHUNK = 64 * 1024;
/** How long the output of a run that ended may keep coming before its status goes out, in ms. */
const _DRAIN_MS = 2000;

/** Agent string sent in the server's hello. */
export const SERVER_AGENT = `cmappserver ${SOFTWARE_VERSION}`;

/** What a connection needs from the server. */
export interface ConnectionContext {
  /** The run table shared by all connections. */
  table: RunTable;
  /** Where events are logged. */
  logger: Logger;
  /** Largest frame payload accepted. */
  maxFrameSize: number;
  /** The hello must arrive within this long after the TLS handshake. */
  helloTimeoutMs: number;
  /** A connection silent for this long is closed (managers poll more often). */
  idleTimeoutMs: number;
  /** The trusted/ file name (without .pem) of a manager's certificate, if pinned now. */
  managerName?(fingerprint: string): string | null;
}

/** A connection being served. */
export interface ServedConnection {
  /** Settles when the connection has closed. */
  done: Promise<void>;
  /** Tells the manager the server is going away, then closes. */
  shutdown(message: string): void;
  /** Drops the connection at once. */
  destroy(): void;
}

/** What the server tells of a run in a list; `managerName` names its launcher when known. */
export function runInfo(run: Run, managerName: string | null = null): RunInfo {
  const info: RunInfo = {
    run: run.id,
    name: run.name,
    argv: [...run.argv],
    pid: run.pid,
    state: hasEnded(run) ? "exited" : "running",
    started_at: run.startedAt.toISOString(),
    launched_by: run.launchedBy,
    delivered: run.delivered,
  };
  if (managerName) info.launched_by_name = managerName;
  if (run.endedAt) info.ended_at = run.endedAt.toISOString();
  if (run.exit) info.exit = run.exit;
  if (run.lost) info.lost = run.lost;
  return info;
}

/**
 * Serves one authenticated manager until the connection closes. Never
 * throws on input: a refused request gets an error reply; a peer that
 * breaks the protocol is told why and the connection is closed.
 *
 * @example
 * ```ts ignore
 * import { serveConnection } from "./connection.ts";
 * serveConnection(socket, { address: "127.0.0.1:4000", fingerprint: "AB:…" }, context);
 * ```
 */
export function serveConnection(
  stream: ByteStream,
  peer: { address: string; fingerprint: string },
  ctx: ConnectionContext,
): ServedConnection {
  return new _Connection(stream, peer, ctx).served;
}

type _Type = ClientMessage["type"];
type _Of<T extends _Type> = Extract<ClientMessage, { type: T }>;
/** A handler per message type: requests are answered in order; stream messages at once. */
type _Dispatch = { [T in _Type]: (m: _Of<T>) => void | Promise<void> };

class _Connection {
  readonly served: ServedConnection;
  readonly #ctx: ConnectionContext;
  readonly #peer: { address: string; fingerprint: string };
  readonly #who: string;
  readonly #channel: MessageChannel<ClientMessage, ServerMessage>;
  readonly #streams: StreamChannels;
  readonly #link: StreamLink;
  readonly #unsubscribe = new Map<string, () => void>();
  readonly #dispatch: _Dispatch;
  #features: Features = NO_FEATURES;
  #hello = false;
  /** Set once a refusal is on its way: nothing after it is acted on. */
  #closing = false;
  /** Set once the connection has closed. */
  #gone = false;
  #queue: Promise<void> = Promise.resolve();
  #helloTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    stream: ByteStream,
    peer: { address: string; fingerprint: string },
    ctx: ConnectionContext,
  ) {
    this.#ctx = ctx;
    this.#peer = peer;
    this.#who = `manager ${peer.address} (${peer.fingerprint.slice(0, 23)}…)`;
    let done!: () => void;
    const finished = new Promise<void>((r) => done = r);
    this.#channel = new MessageChannel<ClientMessage, ServerMessage>(stream, decodeClientMessage, {
      onMessage: (m, size) => this.#receive(m, size),
      onInvalid: (e) => {
        const v = new ProtocolViolation("protocol", e.message);
        // A peer past the buffer limit is not reading: no use answering what came before.
        if (e instanceof BufferLimitError) this.#violation(v);
        else this.#queue = this.#queue.then(() => this.#violation(v));
      },
      onClose: (err) => {
        this.#closed(err);
        this.#queue.then(() => done());
      },
    }, ctx.maxFrameSize);
    // Data frames stay well within the frame limit (header, run id).
    this.#streams = new StreamChannels(
      this.#channel,
      Math.min(_DATA_CHUNK, ctx.maxFrameSize - 128),
    );
    this.#link = new StreamLink({
      channel: this.#channel,
      streams: this.#streams,
      features: () => this.#features,
    });
    this.#dispatch = {
      hello: (m) => this.#onHello(m),
      ping: (m) => void this.#channel.send({ type: "pong", id: m.id }),
      launch: (m) => this.#onLaunch(m),
      status: (m) => this.#onStatus(m),
      stop: (m) => this.#onStop(m),
      release: (m) => this.#onRelease(m),
      list: (m) => this.#onList(m),
      window: (m) => this.#link.window(m),
      close_stream: (m) => this.#link.closeStream(m),
      data: (m) => this.#link.data(m),
    };
    this.#helloTimer = setTimeout(() => {
      ctx.logger.warn(`${this.#who}: no hello within ${ctx.helloTimeoutMs} ms; closing`);
      this.#channel.destroy();
    }, ctx.helloTimeoutMs);
    this.#resetIdle();
    this.served = {
      done: finished,
      shutdown: (message) =>
        this.#channel.sendAndClose({ type: "error", code: "shutting_down", message }),
      destroy: () => this.#channel.destroy(),
    };
  }

  /**
   * Routes a message: stream messages at once (credit given back must not
   * wait behind a request that waits for that very credit; stdin is
   * checked against its credit in the order it came); requests in order,
   * each once the connection drains, so that answers never pile up for a
   * peer that does not read them.
   */
  #receive(m: ClientMessage, size: number): void {
    this.#resetIdle();
    if (this.#closing) return;
    if (this.#hello && (m.type === "window" || m.type === "close_stream" || m.type === "data")) {
      try {
        this.#handle(m);
      } catch (e) {
        this.#failed(e);
      }
      return;
    }
    this.#channel.hold(size);
    this.#queue = this.#queue.then(async () => {
      await this.#channel.whenWritable();
      try {
        if (!this.#closing && !this.#gone) await this.#handle(m);
      } catch (e) {
        this.#failed(e, m);
      } finally {
        this.#channel.release(size);
      }
    });
  }

  #handle(m: ClientMessage): void | Promise<void> {
    if (!this.#hello && m.type !== "hello") {
      throw new ProtocolViolation("protocol", `expected hello first, got ${m.type}`);
    }
    const handler = this.#dispatch[m.type] as (m: ClientMessage) => void | Promise<void>;
    return handler(m);
  }

  /** A handler failed: a refused request is answered; anything else closes the connection. */
  #failed(e: unknown, m?: ClientMessage): void {
    if (e instanceof RequestError) {
      const id = m && "id" in m ? m.id : undefined;
      this.#error(id, e);
      return;
    }
    if (e instanceof ProtocolViolation) return this.#violation(e);
    if (e instanceof CreditError) {
      return this.#violation(new ProtocolViolation("protocol", e.message));
    }
    this.#closing = true;
    this.#ctx.logger.error(`${this.#who}: internal error: ${(e as Error).stack ?? e}`);
    this.#channel.sendAndClose({ type: "error", code: "internal", message: "internal error" });
  }

  #error(id: number | undefined, e: RequestError): void {
    const m: ServerMessage = { type: "error", code: e.code, message: _clip(e.message) };
    if (id !== undefined) m.id = id;
    this.#channel.send(m);
  }

  /** The peer broke the protocol: it is told why, the reason is logged, the connection closed. */
  #violation(e: ProtocolViolation): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#ctx.logger.warn(`${this.#who}: ${e.message}; closing`);
    this.#channel.sendAndClose({ type: "error", code: e.code, message: _clip(e.message) });
  }

  #onHello(m: _Of<"hello">): void {
    if (this.#hello) throw new ProtocolViolation("protocol", "hello sent twice");
    const v = negotiateVersion(PROTOCOL_VERSION, m.version);
    if (!v) {
      throw new ProtocolViolation(
        "version",
        `protocol version ${formatVersion(m.version)} (${m.agent}) is not compatible with ` +
          `this cmappserver, which speaks ${formatVersion(PROTOCOL_VERSION)}: upgrade the ` +
          `side with the older major version`,
      );
    }
    clearTimeout(this.#helloTimer);
    this.#hello = true;
    this.#features = featuresOf(v);
    this.#ctx.logger.debug(`${this.#who}: hello from ${m.agent}, protocol ${formatVersion(v)}`);
    this.#channel.send({
      type: "hello",
      version: { ...PROTOCOL_VERSION },
      agent: SERVER_AGENT,
      max_frame: this.#ctx.maxFrameSize,
    });
  }

  async #onLaunch(m: _Of<"launch">): Promise<void> {
    const unreserve = m.stdin ? this.#link.reserveStdin() : () => {};
    try {
      await this.#launch(m, m.stdin === true);
    } finally {
      unreserve();
    }
  }

  async #launch(m: _Of<"launch">, stdinReserved: boolean): Promise<void> {
    const { table, logger } = this.#ctx;
    const r = await table.launch({
      argv: m.argv,
      name: m.name,
      env: m.env,
      cwd: m.cwd,
      user: m.user,
      group: m.group,
      stopTimeoutMs: m.stop_timeout_ms,
      streams: m.streams,
      stdin: m.stdin,
      // A manager below 1.5 was promised that a launch under a running name attaches, and has no
      // way to ask for it: it keeps that promise.
      attachAny: m.attach_any || !this.#features.conflicts,
    }, this.#peer.fingerprint);
    if ("code" in r) {
      logger.warn(`${this.#who}: launch of ${JSON.stringify(m.argv)} refused: ${r.message}`);
      throw new RequestError(r.code, r.message);
    }
    const { run, attached } = r;
    logger.info(
      attached
        ? `${this.#who}: attached to run ${run.id} (${run.name}) pid ${run.pid}` +
          (hasEnded(run) ? ", which has ended" : ", still running") +
          ` instead of starting ${JSON.stringify(m.argv)}`
        : `${this.#who}: started run ${run.id} (${run.name}) pid ${run.pid}: ` +
          JSON.stringify(m.argv),
    );
    const reply: ServerMessage = { type: "launched", id: m.id, run: run.id, pid: run.pid };
    if (this.#features.names) {
      reply.name = run.name;
      reply.attached = attached;
    }
    if (this.#gone) return; // the manager left while it was being started: nothing to send it
    this.#channel.send(reply);
    if (m.streams || m.stdin) this.#link.take(run, 0, m.stdin === true, stdinReserved);
    if (!hasEnded(run)) this.#follow(run);
    else if (run.io && this.#link.current(run.id)) {
      // It ended before we answered (short runs often do): its output still goes first, once
      // the manager's credit arrives. Not awaited: that credit comes after this reply.
      void run.io.drained(_DRAIN_MS).then(() => this.#sendEnd(run));
    } else this.#sendEnd(run);
  }

  async #onStatus(m: _Of<"status">): Promise<void> {
    const r = this.#known(m.run);
    // A manager taking the streams of a run that has ended (1.3) learns where each ended; the
    // credit it sends along lets what is left of the output come before the reply.
    if (m.streams && (!hasEnded(r) || this.#features.resume)) {
      // 1.4 says whether the receiver feeds stdin; before, every receiver took it over.
      this.#link.take(r, m.window, this.#features.stdinClose ? m.stdin === true : true);
    }
    // The receiver of the output gets all of it before the exit status.
    if (r.exit && r.io && this.#link.current(r.id)) await r.io.drained(_DRAIN_MS);
    if (r.exit) this.#link.sendTailLosses(r);
    this.#channel.send(_statusReply(m.id, r));
    if (r.exit && !this.#features.release) void this.#ctx.table.release(r.id);
    this.#follow(r);
  }

  #onStop(m: _Of<"stop">): void {
    const r = this.#ctx.table.get(m.run);
    if (!r) throw new UnknownRunError(`no run ${m.run} on this cmappserver`);
    if (!hasEnded(r)) {
      this.#ctx.logger.info(`${this.#who}: stop run ${r.id} (${r.name})`);
      this.#ctx.table.stop(r.id, m.timeout_ms);
      this.#follow(r);
    }
    if (r.lost) throw new UnknownRunError(_lostMessage(r));
    this.#channel.send(_statusReply(m.id, r));
  }

  async #onRelease(m: _Of<"release">): Promise<void> {
    const r = this.#ctx.table.get(m.run);
    if (!r || !(await this.#ctx.table.release(r.id))) {
      throw new UnknownRunError(`no finished run ${m.run} to release`);
    }
    this.#ctx.logger.debug(`${this.#who}: released run ${r.id} (${r.name})`);
    this.#channel.send({ type: "released", id: m.id, run: r.id });
  }

  #onList(m: _Of<"list">): void {
    const name = this.#ctx.managerName ?? (() => null);
    const runs = this.#ctx.table.list().map((r) => runInfo(r, name(r.launchedBy)));
    // Keep the answer within one frame (and within the 1 MiB every manager accepts, whatever
    // this server's max_frame): drop the oldest finished runs first.
    let reply: ServerMessage = { type: "run_list", id: m.id, runs };
    const limit = Math.min(this.#ctx.maxFrameSize, DEFAULT_MAX_FRAME_SIZE);
    while (encodeMessage(reply).length > limit && runs.length > 0) {
      const i = runs.findIndex((r) => r.state === "exited");
      runs.splice(i >= 0 ? i : 0, 1);
      reply = { type: "run_list", id: m.id, runs };
    }
    this.#channel.send(reply);
  }

  /**
   * A run the table knows and whose status is not lost.
   * @throws {UnknownRunError}
   */
  #known(id: string): Run {
    const r = this.#ctx.table.get(id);
    if (!r) {
      throw new UnknownRunError(
        `no run ${id} on this cmappserver (finished and forgotten, or never started here)`,
      );
    }
    if (r.lost) {
      void this.#ctx.table.release(r.id);
      throw new UnknownRunError(_lostMessage(r));
    }
    return r;
  }

  /** Pushes the run's end to this manager when it comes. */
  #follow(run: Run): void {
    if (this.#unsubscribe.has(run.id) || hasEnded(run)) return;
    this.#unsubscribe.set(
      run.id,
      this.#ctx.table.onExit(run.id, async (r) => {
        this.#unsubscribe.delete(r.id);
        // The receiver of the output gets all of it before the exit status.
        if (r.io && this.#link.current(r.id)) await r.io.drained(_DRAIN_MS);
        this.#sendEnd(r);
      }),
    );
  }

  /**
   * Sends the run's end to this manager; a 1.0 manager cannot release, so
   * sending counts. The receiver of its output first learns where each
   * output really ended, when its last bytes could not be relayed.
   */
  #sendEnd(run: Run): void {
    this.#link.sendTailLosses(run);
    if (run.exit) this.#channel.send({ type: "exited", run: run.id, exit: run.exit });
    if (!this.#features.release && run.exit) void this.#ctx.table.release(run.id);
  }

  #resetIdle(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      this.#ctx.logger.warn(`${this.#who}: silent for ${this.#ctx.idleTimeoutMs} ms; closing`);
      this.#channel.destroy();
    }, this.#ctx.idleTimeoutMs);
  }

  #closed(err: Error | null): void {
    this.#gone = true;
    clearTimeout(this.#helloTimer);
    clearTimeout(this.#idleTimer);
    for (const u of this.#unsubscribe.values()) u();
    this.#unsubscribe.clear();
    this.#link.close();
    this.#ctx.logger.info(`${this.#who}: disconnected${err ? ` (${err.message})` : ""}`);
  }
}

function _statusReply(id: number, r: Run): ServerMessage {
  return r.exit
    ? { type: "run_status", id, run: r.id, pid: r.pid, state: "exited", exit: r.exit }
    : { type: "run_status", id, run: r.id, pid: r.pid, state: "running" };
}

function _lostMessage(run: Run): string {
  return `run ${run.id} (${run.name}) ended but its exit status is unknown: ${run.lost}`;
}

/** Keeps free text within the protocol's limit (a long argv[0] must not break a reply). */
function _clip(text: string): string {
  return text.length <= MAX_TEXT_LENGTH ? text : `${text.slice(0, MAX_TEXT_LENGTH - 1)}…`;
}
