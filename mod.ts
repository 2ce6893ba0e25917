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

// The codec: framing and messages, as docs/PROTOCOL.md defines them.
export {
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  type FrameErrorCode,
} from "./protocol/framing.ts";
export {
  type ClientMessage,
  type CloseStreamMessage,
  type DataMessage,
  decodeClientMessage,
  decodeServerMessage,
  encodeDataPayload,
  encodeMessage,
  type ErrorCode,
  type ErrorMessage,
  type ExitedMessage,
  type ExitStatus,
  type HelloMessage,
  isRunId,
  isRunName,
  type LaunchedMessage,
  type LaunchMessage,
  type ListMessage,
  MAX_ARGV_ENTRIES,
  MAX_ENV_ENTRIES,
  MAX_NAME_LENGTH,
  MAX_RUN_ID_LENGTH,
  MAX_TEXT_LENGTH,
  type Message,
  type PingMessage,
  type PongMessage,
  ProtocolError,
  type ReleasedMessage,
  type ReleaseMessage,
  type ResumeMessage,
  type RunInfo,
  type RunListMessage,
  type RunStatusMessage,
  type ServerHelloMessage,
  type ServerMessage,
  type StatusMessage,
  type StdinClosedMessage,
  type StopMessage,
  type StreamName,
  type WindowMessage,
} from "./protocol/messages.ts";
export {
  DEFAULT_PORT,
  formatVersion,
  negotiateVersion,
  PROTOCOL_VERSION,
  type ProtocolVersion,
  SOFTWARE_VERSION,
} from "./protocol/version.ts";
export { type Features, featuresOf } from "./protocol/features.ts";
// Exit statuses, as a shell and cmappmgr report them.
export { describeExit, shellExitCode, signalName, signalNumber } from "./protocol/exit_status.ts";
export { formatArgv } from "./protocol/format_argv.ts";
export {
  type CmappServer,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_PROCESSES,
  DEFAULT_STATE_DIR,
  type ServerOptions,
  type ServerRuns,
  startServer,
} from "./server/mod.ts";
export type { LaunchPolicy } from "./server/policy.ts";
export { StateDirError } from "./server/store.ts";
export { ProtocolViolation, RequestError, UnknownRunError } from "./server/errors.ts";
export { SupervisorMissingError } from "./server/supervisor_binary.ts";
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
