/**
 * One manager's connection: the hello exchange, then requests (launch,
 * status, stop, release, list, ping) against the run table, answered in
 * order, and exit notifications pushed back. Sees only messages; the socket
 * under it is any byte stream.
 *
 * @module
 */

import {
  type ByteStream,
  type ClientMessage,
  decodeClientMessage,
  DEFAULT_MAX_FRAME_SIZE,
  encodeMessage,
  type ErrorCode,
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
} from "../protocol/mod.ts";
import type { Logger } from "../log/logger.ts";
import { hasEnded, type Run, type RunTable } from "./runs.ts";
import type { StreamSink } from "./streams.ts";

/** Largest data frame payload sent, in bytes. */
const _DATA_CHUNK = 64 * 1024;
/** stdin credit granted to a manager at a time, in bytes. */
const _STDIN_WINDOW = 1024 * 1024;

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

/** What the server tells of a run in a list. */
export function runInfo(run: Run): RunInfo {
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
  if (run.endedAt) info.ended_at = run.endedAt.toISOString();
  if (run.exit) info.exit = run.exit;
  if (run.lost) info.lost = run.lost;
  return info;
}

/**
 * Serves one authenticated manager until the connection closes. Never
 * throws on input: anything invalid gets an error message and the
 * connection is closed.
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
  const { table, logger } = ctx;
  const who = `manager ${peer.address} (${peer.fingerprint.slice(0, 23)}…)`;
  const unsubscribe = new Map<string, () => void>();
  // Data frames stay well within the frame limit (header, run id).
  const dataChunk = Math.min(_DATA_CHUNK, ctx.maxFrameSize - 128);
  /** The runs whose streams this connection receives, with the sink it gave them. */
  const sinks = new Map<string, { run: Run; sink: StreamSink }>();
  /** Stdin bytes written into each run's pipe whose credit is not yet given back. */
  const stdinUnreturned = new Map<string, number>();
  let hello = false;
  let features: Features = NO_FEATURES;
  let queue = Promise.resolve();
  let stdinQueue = Promise.resolve();
  let done!: () => void;
  const finished = new Promise<void>((r) => done = r);

  const error = (id: number | undefined, code: ErrorCode, message: string) => {
    const m: ServerMessage = { type: "error", code, message: _clip(message) };
    if (id !== undefined) m.id = id;
    channel.send(m);
  };

  /**
   * Sends the run's end to this manager; a 1.0 manager cannot release, so
   * sending counts. The receiver of its output first learns where each
   * output really ended, when its last bytes could not be relayed.
   */
  const sendEnd = (run: Run) => {
    if (current(run.id) && features.resume) {
      for (const t of run.io?.tailLosses() ?? []) {
        channel.send({ type: "resume", run: run.id, stream: t.stream, offset: t.offset });
      }
    }
    if (run.exit) channel.send({ type: "exited", run: run.id, exit: run.exit });
    if (!features.release && run.exit) void table.release(run.id);
  };

  const follow = (run: Run) => {
    if (unsubscribe.has(run.id) || hasEnded(run)) return;
    unsubscribe.set(
      run.id,
      table.onExit(run.id, async (r) => {
        unsubscribe.delete(r.id);
        // The receiver of the output gets all of it before the exit status.
        if (r.io && current(r.id)) await r.io.drained(2000);
        sendEnd(r);
      }),
    );
  };

  /** This connection's hold on a run's streams, while it is still the receiver. */
  const current = (run: string) => {
    const mine = sinks.get(run);
    return mine && mine.run.io?.sink === mine.sink ? mine : undefined;
  };

  /**
   * Makes this connection the receiver of the run's streams, with `credit`
   * for each output. Stdin's credit comes once its supervisor has handed it
   * over (told with its `resume`).
   */
  const takeStreams = (run: Run, credit?: number) => {
    if (!run.io || current(run.id)) return;
    const sink: StreamSink = {
      resume: (stream, offset) => {
        if (features.resume) channel.send({ type: "resume", run: run.id, stream, offset });
        if (stream === "stdin") {
          stdinUnreturned.set(run.id, 0);
          channel.send({ type: "window", run: run.id, stream: "stdin", bytes: _STDIN_WINDOW });
        }
      },
      data: (stream, bytes) => {
        if (bytes.length === 0) {
          channel.send({ type: "data", run: run.id, stream, data: bytes });
          return;
        }
        for (let off = 0; off < bytes.length; off += dataChunk) {
          channel.send({
            type: "data",
            run: run.id,
            stream,
            data: bytes.subarray(off, off + dataChunk),
          });
        }
      },
    };
    run.io.attach(sink);
    sinks.set(run.id, { run, sink });
    if (credit) {
      run.io.grant("stdout", credit);
      run.io.grant("stderr", credit);
    }
  };

  const lostMessage = (run: Run) =>
    `run ${run.id} (${run.name}) ended but its exit status is unknown: ${run.lost}`;

  let closing = false;
  /** True once the connection has closed. */
  let gone = false;
  const handle = async (m: ClientMessage): Promise<void> => {
    // Nothing behind a refusal is acted on.
    if (closing) return;
    if (!hello) {
      if (m.type !== "hello") return refuse("protocol", `expected hello first, got ${m.type}`);
      const v = negotiateVersion(PROTOCOL_VERSION, m.version);
      if (!v) {
        return refuse(
          "version",
          `protocol version ${formatVersion(m.version)} (${m.agent}) is not compatible with ` +
            `this cmappserver, which speaks ${formatVersion(PROTOCOL_VERSION)}: upgrade the ` +
            `side with the older major version`,
        );
      }
      clearTimeout(helloTimer);
      hello = true;
      features = featuresOf(v);
      logger.debug(`${who}: hello from ${m.agent}, protocol ${formatVersion(v)}`);
      channel.send({
        type: "hello",
        version: { ...PROTOCOL_VERSION },
        agent: SERVER_AGENT,
        max_frame: ctx.maxFrameSize,
      });
      return;
    }
    switch (m.type) {
      case "hello":
        return refuse("protocol", "hello sent twice");
      case "ping":
        channel.send({ type: "pong", id: m.id });
        return;
      case "launch": {
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
        }, peer.fingerprint);
        if ("code" in r) {
          logger.warn(`${who}: launch of ${JSON.stringify(m.argv)} refused: ${r.message}`);
          return error(m.id, r.code, r.message);
        }
        const { run, attached } = r;
        if (attached) {
          logger.info(
            `${who}: attached to run ${run.id} (${run.name}) pid ${run.pid}` +
              (hasEnded(run) ? ", which has ended" : ", still running") +
              ` instead of starting ${JSON.stringify(m.argv)}`,
          );
        } else {
          logger.info(
            `${who}: started run ${run.id} (${run.name}) pid ${run.pid}: ${JSON.stringify(m.argv)}`,
          );
        }
        const reply: ServerMessage = { type: "launched", id: m.id, run: run.id, pid: run.pid };
        if (features.names) {
          reply.name = run.name;
          reply.attached = attached;
        }
        if (gone) return; // the manager left while it was being started: nothing to send it
        channel.send(reply);
        if (m.streams || m.stdin) takeStreams(run);
        if (!hasEnded(run)) follow(run);
        else if (run.io && current(run.id)) {
          // It ended before we answered (short runs often do): its output
          // still goes first, once the manager's credit arrives. Not awaited,
          // since that credit comes through this connection's queue.
          const io = run.io;
          void io.drained(2000).then(() => sendEnd(run));
        } else sendEnd(run);
        return;
      }
      case "status": {
        const r = table.get(m.run);
        if (!r) {
          return error(
            m.id,
            "unknown_run",
            `no run ${m.run} on this cmappserver (finished and forgotten, or never started here)`,
          );
        }
        if (r.lost) {
          void table.release(r.id);
          return error(m.id, "unknown_run", lostMessage(r));
        }
        // A manager taking the streams of a run that has ended (1.3) learns where each ended;
        // the credit it sends along lets what is left of the output come before the reply.
        if (m.streams && (!hasEnded(r) || features.resume)) takeStreams(r, m.window);
        // The receiver of the output gets all of it before the exit status.
        if (r.exit && r.io && current(r.id)) await r.io.drained(2000);
        if (r.exit && current(r.id) && features.resume) {
          for (const t of r.io?.tailLosses() ?? []) {
            channel.send({ type: "resume", run: r.id, stream: t.stream, offset: t.offset });
          }
        }
        channel.send(
          r.exit
            ? { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "exited", exit: r.exit }
            : { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "running" },
        );
        if (r.exit && !features.release) void table.release(r.id);
        follow(r);
        return;
      }
      case "window": {
        const mine = current(m.run);
        if (mine && m.stream !== "stdin") mine.run.io?.grant(m.stream, m.bytes);
        return;
      }
      case "close_stream": {
        current(m.run)?.run.io?.closeOutput(m.stream);
        return;
      }
      case "data": {
        const mine = current(m.run);
        if (!mine?.run.io) return;
        const n = m.data.length;
        if (await mine.run.io.writeStdin(m.data) && n > 0) {
          // Credit goes back in batches of half the window (the manager
          // never has more than the window in flight, so it is never stuck).
          const owed = (stdinUnreturned.get(m.run) ?? 0) + n;
          if (owed * 2 < _STDIN_WINDOW) {
            stdinUnreturned.set(m.run, owed);
          } else {
            stdinUnreturned.set(m.run, 0);
            channel.send({ type: "window", run: m.run, stream: "stdin", bytes: owed });
          }
        }
        return;
      }
      case "stop": {
        const r = table.get(m.run);
        if (!r) return error(m.id, "unknown_run", `no run ${m.run} on this cmappserver`);
        if (!hasEnded(r)) {
          logger.info(`${who}: stop run ${r.id} (${r.name})`);
          table.stop(r.id, m.timeout_ms);
          follow(r);
        }
        if (r.lost) return error(m.id, "unknown_run", lostMessage(r));
        channel.send(
          r.exit
            ? { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "exited", exit: r.exit }
            : { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "running" },
        );
        return;
      }
      case "release": {
        const r = table.get(m.run);
        if (!r || !(await table.release(r.id))) {
          return error(m.id, "unknown_run", `no finished run ${m.run} to release`);
        }
        logger.debug(`${who}: released run ${r.id} (${r.name})`);
        channel.send({ type: "released", id: m.id, run: r.id });
        return;
      }
      case "list": {
        const runs = table.list().map(runInfo);
        // Keep the answer within one frame: drop the oldest finished runs first.
        let reply: ServerMessage = { type: "run_list", id: m.id, runs };
        // (and within the 1 MiB every manager accepts, whatever this server's max_frame).
        const limit = Math.min(ctx.maxFrameSize, DEFAULT_MAX_FRAME_SIZE);
        while (encodeMessage(reply).length > limit && runs.length > 0) {
          const i = runs.findIndex((r) => r.state === "exited");
          runs.splice(i >= 0 ? i : 0, 1);
          reply = { type: "run_list", id: m.id, runs };
        }
        channel.send(reply);
        return;
      }
    }
  };

  const refuse = (code: "protocol" | "version", message: string) => {
    closing = true;
    logger.warn(`${who}: ${message}; closing`);
    channel.sendAndClose({ type: "error", code, message: _clip(message) });
  };

  let idleTimer: ReturnType<typeof setTimeout> | undefined;
  const resetIdle = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      logger.warn(`${who}: silent for ${ctx.idleTimeoutMs} ms; closing`);
      channel.destroy();
    }, ctx.idleTimeoutMs);
  };

  const channel = new MessageChannel<ClientMessage, ServerMessage>(stream, decodeClientMessage, {
    onMessage: (m) => {
      resetIdle();
      // stdin may wait on a slow application: it has a queue of its own, so
      // that polls are still answered meanwhile (flow control bounds it).
      if (m.type === "data") {
        stdinQueue = stdinQueue.then(() => handle(m)).catch(() => {});
        return;
      }
      // Flow control is not a request: credit given back must not wait behind a request that
      // waits for that very credit (a status reply held until the output has drained).
      if (m.type === "window" || m.type === "close_stream") {
        if (hello && !closing) void handle(m);
        else queue = queue.then(() => handle(m)).catch(() => {});
        return;
      }
      // Requests are answered in the order they came.
      queue = queue.then(() => handle(m)).catch((e) => {
        closing = true;
        logger.error(`${who}: internal error: ${(e as Error).stack ?? e}`);
        channel.sendAndClose({ type: "error", code: "internal", message: "internal error" });
      });
    },
    onInvalid: (e) => queue = queue.then(() => refuse("protocol", e.message)),
    onClose: (err) => {
      gone = true;
      clearTimeout(helloTimer);
      clearTimeout(idleTimer);
      for (const u of unsubscribe.values()) u();
      unsubscribe.clear();
      for (const { run, sink } of sinks.values()) run.io?.detach(sink);
      sinks.clear();
      stdinUnreturned.clear();
      logger.info(`${who}: disconnected${err ? ` (${err.message})` : ""}`);
      queue.then(() => done());
    },
  }, ctx.maxFrameSize);

  const helloTimer = setTimeout(() => {
    logger.warn(`${who}: no hello within ${ctx.helloTimeoutMs} ms; closing`);
    channel.destroy();
  }, ctx.helloTimeoutMs);
  resetIdle();

  return {
    done: finished,
    shutdown: (message) => channel.sendAndClose({ type: "error", code: "shutting_down", message }),
    destroy: () => channel.destroy(),
  };
}

/** Keeps free text within the protocol's limit (a long argv[0] must not break a reply). */
function _clip(text: string): string {
  return text.length <= MAX_TEXT_LENGTH ? text : `${text.slice(0, MAX_TEXT_LENGTH - 1)}…`;
}
