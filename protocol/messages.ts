/**
 * Every message of the cmapp protocol, its validation field by field, and
 * its encoding as a frame payload (UTF-8 JSON). Pure: no sockets, no
 * processes.
 *
 * @module
 */

import type { ProtocolVersion } from "./version.ts";

/** Largest number of argv entries in a launch request. */
export const MAX_ARGV_ENTRIES = 4096;
/** Largest run identifier, in characters. */
export const MAX_RUN_ID_LENGTH = 64;
/** Largest free-text field (agent names, error messages), in characters. */
export const MAX_TEXT_LENGTH = 4096;
/** Largest run name, in characters. */
export const MAX_NAME_LENGTH = 128;
/** Largest number of environment variables in a launch request. */
export const MAX_ENV_ENTRIES = 4096;

/** How a process ended: an exit code, or the number of the signal that killed it. */
export type ExitStatus = { code: number } | { signal: number };

/** Why a request or a connection was refused. See docs/PROTOCOL.md. */
export type ErrorCode =
  | "protocol"
  | "version"
  | "unauthorized"
  | "limit"
  | "not_found"
  | "not_executable"
  | "spawn_failed"
  | "unknown_run"
  | "policy"
  | "shutting_down"
  | "conflict"
  | "internal";

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  "protocol",
  "version",
  "unauthorized",
  "limit",
  "not_found",
  "not_executable",
  "spawn_failed",
  "unknown_run",
  "policy",
  "shutting_down",
  "conflict",
  "internal",
]);

/** First message of either side. */
export interface HelloMessage {
  /** Message type. */
  type: "hello";
  /** Protocol version the sender speaks. */
  version: ProtocolVersion;
  /** Free text naming the software, e.g. "cmappmgr 0.1.0". */
  agent: string;
}

/** Server's hello: also states its frame size limit. */
export interface ServerHelloMessage extends HelloMessage {
  /** Largest frame payload the server accepts, in bytes. */
  max_frame: number;
}

/** Asks the server to start a process. */
export interface LaunchMessage {
  /** Message type. */
  type: "launch";
  /** Request id, copied into the reply. */
  id: number;
  /** Program and arguments, run directly (no shell). */
  argv: string[];
  /**
   * Since 1.1: the run's name. A launch under a name that is still running,
   * or whose exit status no manager has received yet, attaches to that run.
   * When absent, the server derives one from argv.
   */
  name?: string;
  /** Since 1.1: the process's whole environment (the server adds PATH if absent). */
  env?: Record<string, string>;
  /** Since 1.1: absolute working directory; "/" by default. */
  cwd?: string;
  /** Since 1.1: user to run as (name or number); the server's policy decides. */
  user?: string;
  /** Since 1.1: group to run as (name or number). */
  group?: string;
  /** Since 1.1: grace period between SIGTERM and SIGKILL when stopped, in ms. */
  stop_timeout_ms?: number;
  /** Since 1.2: send the process's stdout and stderr to this connection (else /dev/null). */
  streams?: boolean;
  /** Since 1.2: the manager sends the process's stdin (else /dev/null). */
  stdin?: boolean;
  /**
   * Since 1.5: attach to the run of this name whatever it runs. Without it,
   * a run of the name with another argv, user, group, cwd or environment
   * refuses the launch (`conflict`).
   */
  attach_any?: boolean;
}

/** Since 1.1: asks the server to stop a run (SIGTERM to its process group, then SIGKILL). */
export interface StopMessage {
  /** Message type. */
  type: "stop";
  /** Request id, copied into the reply. */
  id: number;
  /** The run to stop. */
  run: string;
  /** Grace period before SIGKILL, in ms; the run's own when absent. */
  timeout_ms?: number;
}

/**
 * Since 1.1: tells the server that this manager has received the run's exit
 * status, so that the next launch under its name starts a new run.
 */
export interface ReleaseMessage {
  /** Message type. */
  type: "release";
  /** Request id, copied into the reply. */
  id: number;
  /** The finished run. */
  run: string;
}

/** Since 1.1: asks for every run the server knows. */
export interface ListMessage {
  /** Message type. */
  type: "list";
  /** Request id, copied into the reply. */
  id: number;
}

/** Asks for the state of a run; also serves as the heartbeat. */
export interface StatusMessage {
  /** Message type. */
  type: "status";
  /** Request id, copied into the reply. */
  id: number;
  /** The run asked about, as named by the server. */
  run: string;
  /**
   * Since 1.2: make this connection the receiver of the run's output (and
   * sender of its input), e.g. after reconnecting. Output produced while
   * no connection received it was discarded.
   */
  streams?: boolean;
  /**
   * Since 1.3, with `streams`: output credit, in bytes, for stdout and for
   * stderr each, granted as the connection becomes the receiver (as a
   * `window` of that many bytes would be, but in time for output the server
   * sends before its reply).
   */
  window?: number;
  /**
   * Since 1.4, with `streams`: this connection also feeds the run's stdin
   * (takes it over). Without it, a 1.4 receiver only watches the output and
   * whoever fed stdin goes on; below 1.4 every receiver takes stdin over.
   */
  stdin?: boolean;
}

/** The standard streams of a run. */
export type StreamName = "stdin" | "stdout" | "stderr";

/**
 * Since 1.2: bytes of one of a run's standard streams, sent as a binary
 * frame (see docs/PROTOCOL.md); empty data is the end of the stream.
 */
export interface DataMessage {
  /** Message type. */
  type: "data";
  /** The run. */
  run: string;
  /** stdin (manager to server), stdout or stderr (server to manager). */
  stream: StreamName;
  /** The bytes; empty for end of stream. */
  data: Uint8Array;
}

/**
 * Since 1.2: flow control. The receiver of a stream allows the sender that
 * many more bytes of data.
 */
export interface WindowMessage {
  /** Message type. */
  type: "window";
  /** The run. */
  run: string;
  /** The stream the credit is for. */
  stream: StreamName;
  /** Bytes granted. */
  bytes: number;
}

/**
 * Since 1.3 (server to manager): where a stream resumes for this receiver.
 * Sent once per stream when a connection becomes a run's stream receiver,
 * before any data of that stream. For stdout and stderr: the next data
 * byte is byte `offset` of the stream (bytes before it went to an earlier
 * receiver or were lost: the receiver compares with what it has). For
 * stdin: the application's supervisor has taken `offset` bytes; the
 * manager sends on from there.
 */
export interface ResumeMessage {
  /** Message type. */
  type: "resume";
  /** The run. */
  run: string;
  /** The stream. */
  stream: StreamName;
  /** Bytes of the stream before the next one. */
  offset: number;
}

/**
 * Since 1.2: the manager will not read this stream any more (its own output
 * was closed): the server closes the application's end, as a closed pipe.
 */
export interface CloseStreamMessage {
  /** Message type. */
  type: "close_stream";
  /** The run. */
  run: string;
  /** stdout or stderr. */
  stream: "stdout" | "stderr";
}

/**
 * Since 1.4 (server to manager): this manager no longer feeds the run's
 * stdin: it is closed (by the application, by an end of input, for want
 * of a manager), another manager took it over, or the run has none.
 * Nothing more of it is accepted from this manager.
 */
export interface StdinClosedMessage {
  /** Message type. */
  type: "close_stream";
  /** The run. */
  run: string;
  /** Always stdin. */
  stream: "stdin";
}

/** Liveness probe without side effects. */
export interface PingMessage {
  /** Message type. */
  type: "ping";
  /** Request id, copied into the reply. */
  id: number;
}

/** The process was started. */
export interface LaunchedMessage {
  /** Message type. */
  type: "launched";
  /** Id of the launch request. */
  id: number;
  /** Server-assigned run id. */
  run: string;
  /** Process id on the guest (also its process group and session id). */
  pid: number;
  /** Since 1.1: the run's name. */
  name?: string;
  /** Since 1.1: true when an existing run was attached to instead of starting one. */
  attached?: boolean;
}

/** Since 1.1: answer to a release. */
export interface ReleasedMessage {
  /** Message type. */
  type: "released";
  /** Id of the release request. */
  id: number;
  /** The run released. */
  run: string;
}

/** Since 1.1: what the server knows of one run. */
export interface RunInfo {
  /** Server-assigned run id. */
  run: string;
  /** The run's name. */
  name: string;
  /** Program and arguments. */
  argv: string[];
  /** Process id (and process group id). */
  pid: number;
  /** Whether it is still running. */
  state: "running" | "exited";
  /** Start time, ISO 8601. */
  started_at: string;
  /** End time, ISO 8601, once ended. */
  ended_at?: string;
  /** How it ended, once ended (absent when `lost`). */
  exit?: ExitStatus;
  /** Why its exit status is unknown, when it ended unwatched. */
  lost?: string;
  /** SHA-256 fingerprint of the manager that launched it. */
  launched_by: string;
  /**
   * Since 1.5: the name of that manager's certificate file in the server's
   * trusted/ directory, without ".pem", while it is pinned there.
   */
  launched_by_name?: string;
  /** True once a manager has received its exit status. */
  delivered: boolean;
}

/** Since 1.1: answer to a list request. */
export interface RunListMessage {
  /** Message type. */
  type: "run_list";
  /** Id of the list request. */
  id: number;
  /** Every run known, oldest first. */
  runs: RunInfo[];
}

/** Answer to a status request. */
export interface RunStatusMessage {
  /** Message type. */
  type: "run_status";
  /** Id of the status request. */
  id: number;
  /** The run. */
  run: string;
  /** Its process id on the guest. */
  pid: number;
  /** Whether the process is still running. */
  state: "running" | "exited";
  /** Present exactly when state is "exited". */
  exit?: ExitStatus;
}

/** Pushed, unasked, to the connections following a run when it ends. */
export interface ExitedMessage {
  /** Message type. */
  type: "exited";
  /** The run that ended. */
  run: string;
  /** How it ended. */
  exit: ExitStatus;
}

/** Answer to a ping. */
export interface PongMessage {
  /** Message type. */
  type: "pong";
  /** Id of the ping. */
  id: number;
}

/** A refusal. Without an id it concerns the connection, which is then closed. */
export interface ErrorMessage {
  /** Message type. */
  type: "error";
  /** Id of the refused request; absent when the error concerns the connection. */
  id?: number;
  /** Why, for programs. */
  code: ErrorCode;
  /** Why, in one line for people (at most {@linkcode MAX_TEXT_LENGTH} characters). */
  message: string;
}

/** Messages a manager sends. */
export type ClientMessage =
  | HelloMessage
  | LaunchMessage
  | StatusMessage
  | PingMessage
  | StopMessage
  | ReleaseMessage
  | ListMessage
  | DataMessage
  | WindowMessage
  | CloseStreamMessage;
/** Messages a server sends. */
export type ServerMessage =
  | ServerHelloMessage
  | LaunchedMessage
  | RunStatusMessage
  | ExitedMessage
  | PongMessage
  | ReleasedMessage
  | RunListMessage
  | DataMessage
  | WindowMessage
  | ResumeMessage
  | StdinClosedMessage
  | ErrorMessage;
/** Any message. */
export type Message = ClientMessage | ServerMessage;

/**
 * A payload that is not a valid message.
 *
 * @example
 * ```ts
 * import { decodeClientMessage, ProtocolError } from "./messages.ts";
 * try {
 *   decodeClientMessage(new TextEncoder().encode('{"type":"nope"}'));
 * } catch (e) {
 *   if (e instanceof ProtocolError) console.log(e.message); // unknown message type "nope"
 * }
 * ```
 */
export class ProtocolError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

type Obj = Record<string, unknown>;

function _fail(message: string): never {
  throw new ProtocolError(message);
}

function _int(o: Obj, field: string, min: number, max: number): number {
  const v = o[field];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    _fail(`field "${field}" must be an integer from ${min} to ${max}`);
  }
  return v;
}

function _text(o: Obj, field: string, max: number = MAX_TEXT_LENGTH): string {
  const v = o[field];
  if (typeof v !== "string") _fail(`field "${field}" must be a string`);
  if (v.length > max) _fail(`field "${field}" is longer than ${max} characters`);
  return v;
}

const _RUN_ID = /^[A-Za-z0-9._-]+$/;
const _RUN_NAME = /^[A-Za-z0-9][A-Za-z0-9._@:+-]*$/;

/**
 * True for a valid run id: 1 to {@linkcode MAX_RUN_ID_LENGTH} characters of
 * `A-Z a-z 0-9 . _ -`.
 *
 * @example
 * ```ts
 * import { isRunId } from "./messages.ts";
 * isRunId("0001-9f2a1b3c"); // true
 * isRunId("../x"); // false
 * ```
 */
export function isRunId(v: string): boolean {
  return v.length <= MAX_RUN_ID_LENGTH && _RUN_ID.test(v);
}

/**
 * True for a valid run name: 1 to {@linkcode MAX_NAME_LENGTH} characters of
 * `A-Z a-z 0-9 . _ @ : + -`, starting with a letter or digit.
 *
 * @example
 * ```ts
 * import { isRunName } from "./messages.ts";
 * isRunName("web@guest1"); // true
 * isRunName("bad name!"); // false
 * ```
 */
export function isRunName(v: string): boolean {
  return v.length <= MAX_NAME_LENGTH && _RUN_NAME.test(v);
}

function _runId(o: Obj): string {
  const v = _text(o, "run", MAX_RUN_ID_LENGTH);
  if (!_RUN_ID.test(v)) {
    _fail(`field "run" must be 1 to ${MAX_RUN_ID_LENGTH} characters of A-Z a-z 0-9 . _ -`);
  }
  return v;
}

function _id(o: Obj): number {
  return _int(o, "id", 0, 0xffffffff);
}

function _object(v: unknown, what: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) _fail(`${what} must be an object`);
  return v as Obj;
}

function _version(o: Obj): ProtocolVersion {
  const v = _object(o.version, `field "version"`);
  return { major: _int(v, "major", 0, 65535), minor: _int(v, "minor", 0, 65535) };
}

function _argv(o: Obj): string[] {
  const v = o.argv;
  if (!Array.isArray(v)) _fail(`field "argv" must be an array of strings`);
  if (v.length === 0) _fail(`field "argv" must name a program`);
  if (v.length > MAX_ARGV_ENTRIES) _fail(`field "argv" has more than ${MAX_ARGV_ENTRIES} entries`);
  for (const [i, a] of v.entries()) {
    if (typeof a !== "string") _fail(`argv[${i}] must be a string`);
    if (a.includes("\0")) _fail(`argv[${i}] contains a NUL character`);
  }
  if (v[0] === "") _fail(`argv[0] must not be empty`);
  return v as string[];
}

function _name(o: Obj): string {
  const v = _text(o, "name", MAX_NAME_LENGTH);
  if (!_RUN_NAME.test(v)) {
    _fail(
      `field "name" must be 1 to ${MAX_NAME_LENGTH} characters of A-Z a-z 0-9 . _ @ : + -, ` +
        `starting with a letter or digit`,
    );
  }
  return v;
}

function _env(o: Obj): Record<string, string> {
  const e = _object(o.env, `field "env"`);
  const keys = Object.keys(e);
  if (keys.length > MAX_ENV_ENTRIES) _fail(`field "env" has more than ${MAX_ENV_ENTRIES} entries`);
  const out: Record<string, string> = {};
  for (const k of keys) {
    if (k === "" || k.includes("=") || k.includes("\0")) {
      _fail(`env name ${JSON.stringify(k.slice(0, 64))} is empty or contains "=" or NUL`);
    }
    const v = e[k];
    if (typeof v !== "string") _fail(`env ${k} must be a string`);
    if (v.includes("\0")) _fail(`env ${k} contains a NUL character`);
    out[k] = v;
  }
  return out;
}

function _optional<T>(o: Obj, field: string, read: (o: Obj) => T): T | undefined {
  return o[field] === undefined ? undefined : read(o);
}

const _STREAMS: readonly StreamName[] = ["stdin", "stdout", "stderr"];

function _window(o: Obj): WindowMessage {
  const stream = o.stream;
  if (!_STREAMS.includes(stream as StreamName)) {
    _fail(`field "stream" must be stdin, stdout or stderr`);
  }
  return {
    type: "window",
    run: _runId(o),
    stream: stream as StreamName,
    bytes: _int(o, "bytes", 1, 0x7fffffff),
  };
}

/** First byte of a binary data frame's payload (JSON payloads start with "{"). */
export const DATA_FRAME_TAG = 0x01;

/** The last run id read from a data frame, and its bytes (a stream repeats it). */
let _lastRunId = "";
let _lastRunIdBytes = new Uint8Array(0);

function _dataRunId(payload: Uint8Array, n: number): string {
  if (n === _lastRunIdBytes.length) {
    let same = true;
    for (let i = 0; i < n; i++) {
      if (payload[3 + i] !== _lastRunIdBytes[i]) {
        same = false;
        break;
      }
    }
    if (same) return _lastRunId;
  }
  const bytes = payload.slice(3, 3 + n);
  const run = String.fromCharCode(...bytes);
  if (!/^[A-Za-z0-9._-]+$/.test(run)) _fail("data frame with an invalid run id");
  _lastRunId = run;
  _lastRunIdBytes = bytes;
  return run;
}

function _decodeData(payload: Uint8Array): DataMessage {
  if (payload.length < 4) _fail("data frame too short");
  const stream = _STREAMS[payload[1]];
  if (!stream) _fail(`data frame for unknown stream ${payload[1]}`);
  const n = payload[2];
  if (n === 0 || payload.length < 3 + n) _fail("data frame with a bad run id length");
  const run = _dataRunId(payload, n);
  return { type: "data", run, stream, data: payload.subarray(3 + n) };
}

function _encodeData(m: DataMessage, headroom: number): Uint8Array {
  const out = new Uint8Array(headroom + 3 + m.run.length + m.data.length);
  out[headroom] = DATA_FRAME_TAG;
  out[headroom + 1] = _STREAMS.indexOf(m.stream);
  out[headroom + 2] = m.run.length;
  for (let i = 0; i < m.run.length; i++) out[headroom + 3 + i] = m.run.charCodeAt(i);
  out.set(m.data, headroom + 3 + m.run.length);
  return out;
}

/**
 * Encodes a data message's payload after `headroom` bytes left zero (room
 * for a frame header, see `frameInPlace`), in one allocation and one copy
 * of its bytes.
 *
 * @example
 * ```ts
 * import { encodeDataPayload } from "./messages.ts";
 * const data = new Uint8Array([104, 105]);
 * encodeDataPayload({ type: "data", run: "r1", stream: "stdout", data }, 4);
 * // Uint8Array [0, 0, 0, 0, 1, 1, 2, 114, 49, 104, 105]
 * ```
 */
export function encodeDataPayload(message: DataMessage, headroom: number = 0): Uint8Array {
  return _encodeData(message, headroom);
}

function _launch(o: Obj): LaunchMessage {
  const m: LaunchMessage = { type: "launch", id: _id(o), argv: _argv(o) };
  if (o.streams === true) m.streams = true;
  if (o.stdin === true) m.stdin = true;
  if (o.attach_any === true) m.attach_any = true;
  const name = _optional(o, "name", _name);
  if (name !== undefined) m.name = name;
  const env = _optional(o, "env", _env);
  if (env !== undefined) m.env = env;
  const cwd = _optional(o, "cwd", (x) => _text(x, "cwd"));
  if (cwd !== undefined) {
    // Whether it is acceptable is the server's policy; here only its form.
    if (cwd === "" || cwd.includes("\0")) _fail(`field "cwd" must be a non-empty path without NUL`);
    m.cwd = cwd;
  }
  for (const f of ["user", "group"] as const) {
    const v = _optional(o, f, (x) => _text(x, f, 256));
    if (v !== undefined) {
      if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*\$?$/.test(v)) {
        _fail(`field "${f}" is not a valid ${f} name`);
      }
      m[f] = v;
    }
  }
  const st = _optional(o, "stop_timeout_ms", (x) => _int(x, "stop_timeout_ms", 0, 86_400_000));
  if (st !== undefined) m.stop_timeout_ms = st;
  return m;
}

function _runInfo(v: unknown, i: number): RunInfo {
  const o = _object(v, `runs[${i}]`);
  const state = o.state;
  if (state !== "running" && state !== "exited") _fail(`runs[${i}].state is invalid`);
  const info: RunInfo = {
    run: _runId(o),
    name: _name(o),
    argv: _argv(o),
    pid: _int(o, "pid", 1, 0x7fffffff),
    state,
    started_at: _text(o, "started_at", 64),
    launched_by: _text(o, "launched_by", 128),
    delivered: o.delivered === true,
  };
  if (o.ended_at !== undefined) info.ended_at = _text(o, "ended_at", 64);
  if (o.launched_by_name !== undefined) {
    info.launched_by_name = _text(o, "launched_by_name", 255);
  }
  if (o.lost !== undefined) info.lost = _text(o, "lost");
  else if (state === "exited") info.exit = _exit(o);
  return info;
}

function _exit(o: Obj): ExitStatus {
  const e = _object(o.exit, `field "exit"`);
  const hasCode = e.code !== undefined;
  const hasSignal = e.signal !== undefined;
  if (hasCode === hasSignal) _fail(`field "exit" must have exactly one of "code" or "signal"`);
  return hasCode ? { code: _int(e, "code", 0, 255) } : { signal: _int(e, "signal", 1, 127) };
}

function _parse(payload: Uint8Array): Obj {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
  } catch {
    _fail("payload is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    _fail("payload is not valid JSON");
  }
  const o = _object(value, "message");
  if (typeof o.type !== "string") _fail(`field "type" must be a string`);
  return o;
}

function _hello(o: Obj): HelloMessage {
  return { type: "hello", version: _version(o), agent: _text(o, "agent", 256) };
}

/**
 * Validates a payload received by a server.
 * Unknown fields are ignored (a newer minor version may add some);
 * unknown message types are refused.
 *
 * @throws {ProtocolError}
 * @example
 * ```ts
 * import { decodeClientMessage } from "./messages.ts";
 * const m = decodeClientMessage(new TextEncoder().encode('{"type":"ping","id":1}'));
 * ```
 */
export function decodeClientMessage(payload: Uint8Array): ClientMessage {
  if (payload[0] === DATA_FRAME_TAG) {
    const m = _decodeData(payload);
    if (m.stream !== "stdin") _fail(`a manager may only send stdin data`);
    return m;
  }
  const o = _parse(payload);
  switch (o.type) {
    case "hello":
      return _hello(o);
    case "launch":
      return _launch(o);
    case "stop": {
      const m: StopMessage = { type: "stop", id: _id(o), run: _runId(o) };
      const t = _optional(o, "timeout_ms", (x) => _int(x, "timeout_ms", 0, 86_400_000));
      if (t !== undefined) m.timeout_ms = t;
      return m;
    }
    case "release":
      return { type: "release", id: _id(o), run: _runId(o) };
    case "list":
      return { type: "list", id: _id(o) };
    case "status": {
      const m: StatusMessage = { type: "status", id: _id(o), run: _runId(o) };
      if (o.streams === true) m.streams = true;
      const w = _optional(o, "window", (x) => _int(x, "window", 1, 0x7fffffff));
      if (w !== undefined) m.window = w;
      if (o.stdin === true) m.stdin = true;
      return m;
    }
    case "window":
      return _window(o);
    case "close_stream": {
      const stream = o.stream;
      if (stream !== "stdout" && stream !== "stderr") {
        _fail(`field "stream" must be stdout or stderr`);
      }
      return { type: "close_stream", run: _runId(o), stream };
    }
    case "ping":
      return { type: "ping", id: _id(o) };
    default:
      return _fail(`unknown message type ${JSON.stringify(String(o.type).slice(0, 64))}`);
  }
}

/**
 * Validates a payload received by a manager.
 *
 * @throws {ProtocolError}
 * @example
 * ```ts
 * import { decodeServerMessage } from "./messages.ts";
 * const m = decodeServerMessage(new TextEncoder().encode('{"type":"pong","id":1}'));
 * ```
 */
export function decodeServerMessage(payload: Uint8Array): ServerMessage {
  if (payload[0] === DATA_FRAME_TAG) {
    const m = _decodeData(payload);
    if (m.stream === "stdin") _fail(`a server may only send stdout and stderr data`);
    return m;
  }
  const o = _parse(payload);
  switch (o.type) {
    case "window":
      return _window(o);
    case "resume": {
      const stream = o.stream;
      if (stream !== "stdin" && stream !== "stdout" && stream !== "stderr") {
        _fail(`field "stream" must be stdin, stdout or stderr`);
      }
      return {
        type: "resume",
        run: _runId(o),
        stream,
        offset: _int(o, "offset", 0, Number.MAX_SAFE_INTEGER),
      };
    }
    case "close_stream": {
      if (o.stream !== "stdin") _fail(`field "stream" must be stdin`);
      return { type: "close_stream", run: _runId(o), stream: "stdin" };
    }
    case "hello":
      return { ..._hello(o), max_frame: _int(o, "max_frame", 1, 0xffffffff) };
    case "launched": {
      const m: LaunchedMessage = {
        type: "launched",
        id: _id(o),
        run: _runId(o),
        pid: _int(o, "pid", 1, 0x7fffffff),
      };
      const name = _optional(o, "name", _name);
      if (name !== undefined) m.name = name;
      if (o.attached !== undefined) m.attached = o.attached === true;
      return m;
    }
    case "released":
      return { type: "released", id: _id(o), run: _runId(o) };
    case "run_list": {
      if (!Array.isArray(o.runs)) _fail(`field "runs" must be an array`);
      return { type: "run_list", id: _id(o), runs: o.runs.map(_runInfo) };
    }
    case "run_status": {
      const state = o.state;
      if (state !== "running" && state !== "exited") {
        _fail(`field "state" must be "running" or "exited"`);
      }
      const m: RunStatusMessage = {
        type: "run_status",
        id: _id(o),
        run: _runId(o),
        pid: _int(o, "pid", 1, 0x7fffffff),
        state,
      };
      if (state === "exited") m.exit = _exit(o);
      return m;
    }
    case "exited":
      return { type: "exited", run: _runId(o), exit: _exit(o) };
    case "pong":
      return { type: "pong", id: _id(o) };
    case "error": {
      const code = _text(o, "code", 64);
      const m: ErrorMessage = {
        type: "error",
        // An unknown code from a newer peer is still an error: keep it as "internal".
        code: ERROR_CODES.has(code) ? code as ErrorCode : "internal",
        message: _text(o, "message"),
      };
      if (o.id !== undefined) m.id = _id(o);
      return m;
    }
    default:
      return _fail(`unknown message type ${JSON.stringify(String(o.type).slice(0, 64))}`);
  }
}

/**
 * Encodes a message as a frame payload.
 *
 * @example
 * ```ts
 * import { encodeMessage } from "./messages.ts";
 * encodeMessage({ type: "ping", id: 1 }); // UTF-8 bytes of {"type":"ping","id":1}
 * ```
 */
export function encodeMessage(message: Message): Uint8Array {
  if (message.type === "data") return _encodeData(message, 0);
  return new TextEncoder().encode(JSON.stringify(message));
}
