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
  | "shutting_down"
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
  "shutting_down",
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
}

/** Asks for the state of a run; also serves as the heartbeat. */
export interface StatusMessage {
  /** Message type. */
  type: "status";
  /** Request id, copied into the reply. */
  id: number;
  /** The run asked about, as named by the server. */
  run: string;
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
export type ClientMessage = HelloMessage | LaunchMessage | StatusMessage | PingMessage;
/** Messages a server sends. */
export type ServerMessage =
  | ServerHelloMessage
  | LaunchedMessage
  | RunStatusMessage
  | ExitedMessage
  | PongMessage
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

function _runId(o: Obj): string {
  const v = _text(o, "run", MAX_RUN_ID_LENGTH);
  if (!/^[A-Za-z0-9._-]+$/.test(v)) {
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
  const o = _parse(payload);
  switch (o.type) {
    case "hello":
      return _hello(o);
    case "launch":
      return { type: "launch", id: _id(o), argv: _argv(o) };
    case "status":
      return { type: "status", id: _id(o), run: _runId(o) };
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
  const o = _parse(payload);
  switch (o.type) {
    case "hello":
      return { ..._hello(o), max_frame: _int(o, "max_frame", 1, 0xffffffff) };
    case "launched":
      return { type: "launched", id: _id(o), run: _runId(o), pid: _int(o, "pid", 1, 0x7fffffff) };
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
  return new TextEncoder().encode(JSON.stringify(message));
}
