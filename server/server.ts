/**
 * The guest daemon, assembled: a mutual-TLS listener, one connection handler
 * per manager, one run table for all.
 *
 * @module
 */

import {
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  encodeMessage,
  MAX_TEXT_LENGTH,
  type ServerMessage,
} from "../protocol/mod.ts";
import { type Identity, listenTls, type TlsListener, type TrustStore } from "../tls/mod.ts";
import { type Logger, silentLogger } from "../log/logger.ts";
import { serveConnection, type ServedConnection } from "./connection.ts";
import { describeRunEnd, RunTable } from "./runs.ts";
import { spawnProcess } from "./supervisor.ts";

/** The port cmappserver listens on unless told otherwise. */
export const DEFAULT_PORT = 5315;
/** Default largest number of monitored processes. */
export const DEFAULT_MAX_PROCESSES = 30;
/** Default time allowed for the TLS handshake and the hello, in ms. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/** Options for {@linkcode startServer}. */
export interface ServerOptions {
  /** Our key and certificate. */
  identity: Identity;
  /** The managers allowed in. */
  trust: TrustStore;
  /** Address to bind; "0.0.0.0" by default. */
  hostname?: string;
  /** Port to bind; 5315 by default, 0 for any free port. */
  port?: number;
  /** Largest number of processes monitored at once; 30 by default. */
  maxProcesses?: number;
  /** Time allowed for the TLS handshake and the hello; 10 s by default. */
  handshakeTimeoutMs?: number;
  /** Largest frame payload accepted; 1 MiB by default. */
  maxFrameSize?: number;
  /** Where events go; nowhere by default. */
  logger?: Logger;
}

/** A running cmappserver. */
export interface CmappServer {
  /** Bound address. */
  readonly hostname: string;
  /** Bound port. */
  readonly port: number;
  /** The run table. */
  readonly runs: RunTable;
  /** Replaces the trusted manager certificates for new connections. */
  setTrust(trust: TrustStore): void;
  /**
   * Stops listening, tells every connected manager that the server is
   * shutting down, and closes the connections. Monitored processes are
   * left running, as when a connection drops.
   */
  close(): Promise<void>;
}

/**
 * Starts a cmappserver in this process.
 *
 * @example
 * ```ts ignore
 * import { startServer } from "./server.ts";
 * import { loadIdentity, loadTrust } from "../tls/mod.ts";
 * const server = await startServer({
 *   identity: await loadIdentity("/etc/cmappserver"),
 *   trust: await loadTrust("/etc/cmappserver", "manager"),
 *   hostname: "127.0.0.1",
 *   port: 0,
 * });
 * console.log(server.port);
 * await server.close();
 * ```
 */
export async function startServer(options: ServerOptions): Promise<CmappServer> {
  const logger = options.logger ?? silentLogger;
  const maxFrameSize = options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE;
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  const table = new RunTable({
    maxProcesses: options.maxProcesses ?? DEFAULT_MAX_PROCESSES,
    spawn: (argv) => spawnProcess(argv),
    onEnded: (run) => logger.info(describeRunEnd(run)),
  });
  const connections = new Set<ServedConnection>();
  const listener: TlsListener = await listenTls({
    identity: options.identity,
    trust: options.trust,
    hostname: options.hostname ?? "0.0.0.0",
    port: options.port ?? DEFAULT_PORT,
    handshakeTimeoutMs,
    onHandshakeError(address, reason) {
      logger.warn(`rejected connection from ${address}: ${reason}`);
    },
    onSecureConnection(socket, peer) {
      if (peer.problem || !peer.fingerprint) {
        logger.warn(`rejected manager ${peer.address}: ${peer.problem}`);
        const refusal: ServerMessage = {
          type: "error",
          code: "unauthorized",
          message: `cmappserver refuses your certificate: ${peer.problem}`.slice(
            0,
            MAX_TEXT_LENGTH,
          ),
        };
        socket.end(encodeFrame(encodeMessage(refusal)));
        setTimeout(() => socket.destroy(), 1000).unref?.();
        return;
      }
      logger.info(`accepted manager ${peer.address} (${peer.fingerprint})`);
      const conn = serveConnection(socket, {
        address: peer.address,
        fingerprint: peer.fingerprint,
      }, {
        table,
        logger,
        maxFrameSize,
        helloTimeoutMs: handshakeTimeoutMs,
      });
      connections.add(conn);
      conn.done.then(() => connections.delete(conn));
    },
  });
  logger.info(
    `listening on ${listener.hostname}:${listener.port}, ${options.trust.byFingerprint.size} ` +
      `trusted manager(s), up to ${table.maxProcesses} processes`,
  );
  return {
    hostname: listener.hostname,
    port: listener.port,
    runs: table,
    setTrust: (t) => listener.setTrust(t),
    async close() {
      const closing = listener.close();
      const all = [...connections];
      for (const c of all) {
        c.shutdown(`cmappserver is shutting down; ${table.running} process(es) keep running`);
      }
      // A manager that does not close its side in time is dropped.
      const timer = setTimeout(() => all.forEach((c) => c.destroy()), 2000);
      await Promise.all([closing, ...all.map((c) => c.done)]);
      clearTimeout(timer);
    },
  };
}
