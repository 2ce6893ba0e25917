/**
 * One manager's connection: the hello exchange, then launch, status and ping
 * requests against the run table, and exit notifications pushed back.
 * Sees only messages; the socket under it is any byte stream.
 *
 * @module
 */

import {
  type ByteStream,
  type ClientMessage,
  decodeClientMessage,
  formatVersion,
  MAX_TEXT_LENGTH,
  MessageChannel,
  negotiateVersion,
  PROTOCOL_VERSION,
  type ServerMessage,
  SOFTWARE_VERSION,
} from "../protocol/mod.ts";
import type { Logger } from "../log/logger.ts";
import type { Run, RunTable } from "./runs.ts";

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
  let ready = false;
  let done!: () => void;
  const finished = new Promise<void>((r) => done = r);

  const follow = (run: Run) => {
    if (unsubscribe.has(run.id)) return;
    unsubscribe.set(
      run.id,
      table.onExit(run.id, (r) => {
        unsubscribe.delete(r.id);
        if (r.exit) channel.send({ type: "exited", run: r.id, exit: r.exit });
      }),
    );
  };

  const handle = (m: ClientMessage) => {
    if (!ready) {
      if (m.type !== "hello") {
        refuse("protocol", `expected hello first, got ${m.type}`);
        return;
      }
      const v = negotiateVersion(PROTOCOL_VERSION, m.version);
      if (!v) {
        refuse(
          "version",
          `protocol version ${formatVersion(m.version)} (${m.agent}) is not compatible with ` +
            `this cmappserver, which speaks ${formatVersion(PROTOCOL_VERSION)}: upgrade the ` +
            `side with the older major version`,
        );
        return;
      }
      clearTimeout(helloTimer);
      ready = true;
      logger.debug(`${who}: hello from ${m.agent}, protocol ${formatVersion(m.version)}`);
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
        refuse("protocol", "hello sent twice");
        return;
      case "ping":
        channel.send({ type: "pong", id: m.id });
        return;
      case "launch": {
        const r = table.launch(m.argv, peer.fingerprint);
        if ("code" in r) {
          logger.warn(`${who}: launch of ${JSON.stringify(m.argv)} refused: ${r.message}`);
          channel.send({ type: "error", id: m.id, code: r.code, message: _clip(r.message) });
          return;
        }
        logger.info(`${who}: started run ${r.id} pid ${r.pid}: ${JSON.stringify(m.argv)}`);
        channel.send({ type: "launched", id: m.id, run: r.id, pid: r.pid });
        follow(r);
        return;
      }
      case "status": {
        const r = table.get(m.run);
        if (!r) {
          channel.send({
            type: "error",
            id: m.id,
            code: "unknown_run",
            message: `no run ${m.run} on this cmappserver (finished long ago, or the server ` +
              `was restarted)`,
          });
          return;
        }
        const reply: ServerMessage = r.exit
          ? { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "exited", exit: r.exit }
          : { type: "run_status", id: m.id, run: r.id, pid: r.pid, state: "running" };
        channel.send(reply);
        if (!r.exit) follow(r);
        return;
      }
    }
  };

  const refuse = (code: "protocol" | "version", message: string) => {
    logger.warn(`${who}: ${message}; closing`);
    channel.sendAndClose({ type: "error", code, message: _clip(message) });
  };

  const channel = new MessageChannel<ClientMessage, ServerMessage>(stream, decodeClientMessage, {
    onMessage: (m) => {
      try {
        handle(m);
      } catch (e) {
        logger.error(`${who}: internal error: ${(e as Error).stack ?? e}`);
        channel.sendAndClose({ type: "error", code: "internal", message: "internal error" });
      }
    },
    onInvalid: (e) => refuse("protocol", e.message),
    onClose: (err) => {
      clearTimeout(helloTimer);
      for (const u of unsubscribe.values()) u();
      unsubscribe.clear();
      logger.info(`${who}: disconnected${err ? ` (${err.message})` : ""}`);
      done();
    },
  }, ctx.maxFrameSize);

  const helloTimer = setTimeout(() => {
    logger.warn(`${who}: no hello within ${ctx.helloTimeoutMs} ms; closing`);
    channel.destroy();
  }, ctx.helloTimeoutMs);

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
