/**
 * The guest daemon, assembled: a mutual-TLS listener, one connection handler
 * per manager, one run table for all, recorded in the state directory.
 *
 * @module
 */

import {
  type ByteStream,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_PORT,
  encodeFrame,
  encodeMessage,
  MAX_TEXT_LENGTH,
  type RunInfo,
  type ServerMessage,
} from "../protocol/mod.ts";
import { type Identity, listenTls, type TlsListener, type TrustStore } from "../tls/mod.ts";
import { type Logger, silentLogger } from "../log/logger.ts";
import { runInfo, serveConnection, type ServedConnection } from "./connection.ts";
import { DEFAULT_POLICY, type LaunchPolicy } from "./policy.ts";
import { RunTable } from "./runs.ts";
import { RunStore } from "./store.ts";
import { installSupervisor } from "./supervisor_binary.ts";

/** Who a manager is: its address and its certificate's fingerprint. */
interface PeerIdentity {
  address: string;
  fingerprint: string;
}

export { DEFAULT_PORT };
/** Default largest number of monitored processes. */
export const DEFAULT_MAX_PROCESSES = 30;
/** Default largest number of connections at once (see docs/cmappserver.md, "Limits"). */
export const DEFAULT_MAX_CONNECTIONS = 256;
/** Default time allowed for the TLS handshake, and then for the hello, in ms. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Default state directory. */
export const DEFAULT_STATE_DIR = "/var/lib/cmappserver";

/** Options for {@linkcode startServer}. */
export interface ServerOptions {
  /** Our key and certificate. */
  identity: Identity;
  /** The managers allowed in. */
  trust: TrustStore;
  /** Where runs are recorded so that they survive a restart. */
  stateDir: string;
  /** Address to bind; "0.0.0.0" by default. */
  hostname?: string;
  /** Port to bind; 5315 by default, 0 for any free port. */
  port?: number;
  /** Largest number of processes monitored at once; 30 by default. */
  maxProcesses?: number;
  /** Largest number of connections at once (handshaking or not); 256 by default. */
  maxConnections?: number;
  /** Time allowed for the TLS handshake, and then for the hello; 10 s by default. */
  handshakeTimeoutMs?: number;
  /** A connection silent for this long is closed; 120 s by default. */
  idleTimeoutMs?: number;
  /** Largest frame payload accepted; 1 MiB by default. */
  maxFrameSize?: number;
  /** Finished runs kept for late managers; 1000 by default. */
  keepFinished?: number;
  /** How long finished runs are kept; 7 days by default. */
  keepFinishedMs?: number;
  /** Default grace period between SIGTERM and SIGKILL when stopping a run; 10 s by default. */
  stopTimeoutMs?: number;
  /** A run's stdin with no manager to feed it for this long is closed; 30 s by default. */
  stdinGraceMs?: number;
  /** What may be launched; anything, as root's own user, by default. */
  policy?: Partial<LaunchPolicy>;
  /** Where events go; nowhere by default. */
  logger?: Logger;
}

/** What an embedder sees of a server's runs. */
export interface ServerRuns {
  /** How many runs are alive now. */
  readonly running: number;
  /** Every run the server knows, oldest first, as a `list` request tells them. */
  list(): RunInfo[];
}

/** A running cmappserver. */
export interface CmappServer {
  /** Bound address. */
  readonly hostname: string;
  /** Bound port. */
  readonly port: number;
  /** Its runs. */
  readonly runs: ServerRuns;
  /** Replaces the trusted manager certificates for new connections. */
  setTrust(trust: TrustStore): void;
  /**
   * Stops listening, tells every connected manager that the server is
   * shutting down, and closes the connections. Monitored processes are
   * left running (and re-adopted by the next server on the same state
   * directory) unless `stopRuns` is set.
   */
  close(options?: { stopRuns?: boolean }): Promise<void>;
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
 *   stateDir: "/var/lib/cmappserver",
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
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const store = await RunStore.open(options.stateDir);
  let supervisor: string;
  try {
    supervisor = await installSupervisor(store.binDir);
  } catch (e) {
    store.close();
    throw e;
  }
  // The listening socket first, then the runs: re-adopting holds a descriptor per
  // supervisor, and a daemon short of descriptors must still listen. Connections wait
  // for the run table.
  let ready!: (table: RunTable) => void;
  const tableReady = new Promise<RunTable>((r) => ready = r);
  const connections = new Set<ServedConnection>();
  // The pins in force (SIGHUP replaces them): a run's launcher is named by its trusted/ file.
  let trust = options.trust;
  const managerName = (fingerprint: string): string | null => {
    const file = trust.byFingerprint.get(fingerprint)?.file;
    return file ? file.slice(file.lastIndexOf("/") + 1).replace(/\.pem$/, "") : null;
  };
  const serve = (table: RunTable, socket: ByteStream, peer: PeerIdentity) => {
    logger.info(`accepted manager ${peer.address} (${peer.fingerprint})`);
    const conn = serveConnection(socket, peer, {
      table,
      logger,
      maxFrameSize,
      helloTimeoutMs: handshakeTimeoutMs,
      idleTimeoutMs: options.idleTimeoutMs ?? 120_000,
      managerName,
    });
    connections.add(conn);
    conn.done.then(() => connections.delete(conn));
  };
  let listener: TlsListener;
  try {
    listener = await listenTls({
      identity: options.identity,
      trust: options.trust,
      hostname: options.hostname ?? "0.0.0.0",
      port: options.port ?? DEFAULT_PORT,
      handshakeTimeoutMs,
      maxConnections,
      onHandshakeError(address, reason) {
        logger.warn(`rejected connection from ${address}: ${reason}`);
      },
      onListenerEvent: (message) => logger.warn(message),
      onSecureConnection(socket, peer) {
        if (peer.problem || !peer.fingerprint) {
          logger.warn(`rejected manager ${peer.address}: ${peer.refusal}: ${peer.problem}`);
          const refusal: ServerMessage = {
            type: "error",
            code: "unauthorized",
            message: `cmappserver refuses your certificate: ${peer.problem}`.slice(
              0,
              MAX_TEXT_LENGTH,
            ),
          };
          socket.end(encodeFrame(encodeMessage(refusal)));
          setTimeout(() => socket.destroy(), 1000);
          return;
        }
        const who = { address: peer.address, fingerprint: peer.fingerprint };
        void tableReady.then((table) => serve(table, socket, who));
      },
    });
  } catch (e) {
    store.close();
    throw e;
  }
  let table: RunTable;
  try {
    table = await RunTable.open({
      maxProcesses: options.maxProcesses ?? DEFAULT_MAX_PROCESSES,
      keepFinished: options.keepFinished ?? 1000,
      keepFinishedMs: options.keepFinishedMs ?? 7 * 86400_000,
      stopTimeoutMs: options.stopTimeoutMs ?? 10_000,
      stdinGraceMs: options.stdinGraceMs,
      policy: { ...DEFAULT_POLICY, ...options.policy },
      store,
      supervisor,
      logger,
    });
  } catch (e) {
    await listener.close();
    store.close();
    throw e;
  }
  ready(table);
  logger.info(
    `listening on ${listener.hostname}:${listener.port}, ${options.trust.byFingerprint.size} ` +
      `trusted manager(s), up to ${table.maxProcesses} processes, state in ${store.dir}`,
  );
  return {
    hostname: listener.hostname,
    port: listener.port,
    runs: {
      get running() {
        return table.running;
      },
      list: () => table.list().map((r) => runInfo(r, managerName(r.launchedBy))),
    },
    setTrust: (t) => {
      trust = t;
      listener.setTrust(t);
    },
    async close(opts = {}) {
      const closing = listener.close();
      if (opts.stopRuns) await table.stopAll();
      const all = [...connections];
      for (const c of all) {
        c.shutdown(`cmappserver is shutting down; ${table.running} process(es) keep running`);
      }
      // A manager that does not close its side in time is dropped.
      const timer = setTimeout(() => all.forEach((c) => c.destroy()), 2000);
      await Promise.all([closing, ...all.map((c) => c.done)]);
      clearTimeout(timer);
      await table.close();
      await store.synced();
      store.close();
    },
  };
}
