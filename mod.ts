/**
 * cmapp: run and watch applications inside virtual machines from the host,
 * over mutually authenticated TLS, and get their exit codes back.
 *
 * This module is the library face: the wire protocol codec, a cmappserver
 * you can start in-process, and the client API that cmappmgr is built on.
 *
 * @example Run a command on a guest and wait for its exit status
 * ```ts ignore
 * import { connect, loadIdentity, loadTrust } from "./mod.ts";
 *
 * const client = await connect({
 *   host: "guest1",
 *   port: 5315,
 *   identity: await loadIdentity("/etc/cmappmgr"),
 *   trust: await loadTrust("/etc/cmappmgr", "server"),
 * });
 * const { run } = await client.launch(["/opt/app/bin/server", "--flag"]);
 * const exit = await client.wait(run); // { code: 0 } or { signal: 9 }
 * client.close();
 * ```
 *
 * @example Start a server in-process
 * ```ts ignore
 * import { loadIdentity, loadTrust, startServer } from "./mod.ts";
 *
 * const server = await startServer({
 *   identity: await loadIdentity("/etc/cmappserver"),
 *   trust: await loadTrust("/etc/cmappserver", "manager"),
 *   hostname: "127.0.0.1",
 *   port: 0,
 * });
 * console.log(`listening on port ${server.port}`);
 * await server.close();
 * ```
 *
 * @example Encode and decode frames
 * ```ts
 * import { decodeClientMessage, encodeFrame, encodeMessage, FrameDecoder } from "./mod.ts";
 *
 * const bytes = encodeFrame(encodeMessage({ type: "ping", id: 1 }));
 * const [payload] = new FrameDecoder().push(bytes);
 * decodeClientMessage(payload); // { type: "ping", id: 1 }
 * ```
 *
 * @module
 */

export * from "./protocol/mod.ts";
export {
  type CmappServer,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_PROCESSES,
  DEFAULT_PORT,
  DEFAULT_STATE_DIR,
  type ServerOptions,
  startServer,
} from "./server/mod.ts";
export type {
  ExitListener,
  Refusal,
  Run,
  RunLaunchOptions,
  RunTable,
  RunTableOptions,
} from "./server/runs.ts";
export type { LaunchPolicy, LaunchRequest } from "./server/policy.ts";
export { StateDirError } from "./server/store.ts";
export { ProtocolViolation, RequestError, UnknownRunError } from "./server/errors.ts";
export type { RunLock, RunStore, StoredRun } from "./server/store.ts";
export type {
  AnyRunRecord,
  ExitRecord,
  LegacyRunRecord,
  Outcome,
  PidRecord,
  RunRecord,
  StreamCounts,
} from "./server/records.ts";
export type { ProgramFailure } from "./server/program.ts";
export type {
  OutputSource,
  RunStreams,
  RunStreamsOptions,
  StdinSource,
  StreamSink,
} from "./server/streams.ts";
export { SupervisorMissingError } from "./server/supervisor_binary.ts";
export type { SpawnFailure } from "./server/supervisor.ts";
export {
  Client,
  connect,
  type ConnectOptions,
  type Launched,
  LaunchError,
  type LaunchOptions,
  ManagerError,
  type ManagerErrorKind,
  runCommand,
  type RunCommandOptions,
  type RunIO,
  type RunOutcome,
  type StreamEvents,
} from "./manager/mod.ts";
export {
  CertificateError,
  type CertificateInfo,
  type GeneratedIdentity,
  generateIdentity,
  type GenerateOptions,
  type Identity,
  type KeyAlgorithm,
  KeyDirError,
  KeygenError,
  loadIdentity,
  loadTrust,
  type TrustStore,
  writeKeyDir,
  type WriteKeyDirOptions,
} from "./tls/mod.ts";
export { createLogger, type Logger, type LoggerOptions, type LogLevel } from "./log/logger.ts";
export type { LogSink } from "./log/sinks.ts";
