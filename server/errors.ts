/**
 * The errors a connection handler raises: a request refused (answered with
 * an error reply; the connection goes on), and a peer that broke the
 * protocol (told why, logged, and the connection closed).
 *
 * @module
 */

import type { ErrorCode } from "../protocol/mod.ts";

/**
 * A request the server refuses: the manager gets an `error` reply with this
 * code and message, and the connection goes on.
 *
 * @example
 * ```ts
 * import { RequestError } from "./errors.ts";
 * const e = new RequestError("limit", "too many");
 * e.code; // "limit"
 * ```
 */
export class RequestError extends Error {
  /** The protocol's error code for the reply. */
  readonly code: ErrorCode;
  /** Builds the error. */
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "RequestError";
    this.code = code;
  }
}

/**
 * A request about a run this server does not know (finished and forgotten,
 * never started here), or whose exit status is lost.
 *
 * @example
 * ```ts
 * import { UnknownRunError } from "./errors.ts";
 * new UnknownRunError("no run 7-ab on this cmappserver").code; // "unknown_run"
 * ```
 */
export class UnknownRunError extends RequestError {
  /** Builds the error. */
  constructor(message: string) {
    super("unknown_run", message);
    this.name = "UnknownRunError";
  }
}

/**
 * A peer that broke the protocol (a message out of turn, data beyond its
 * credit, buffers past the connection's limit) or speaks an incompatible
 * version: it is told why, the reason is logged, and the connection closes.
 *
 * @example
 * ```ts
 * import { ProtocolViolation } from "./errors.ts";
 * new ProtocolViolation("protocol", "hello sent twice").code; // "protocol"
 * ```
 */
export class ProtocolViolation extends Error {
  /** "protocol", or "version" for an incompatible version. */
  readonly code: "protocol" | "version";
  /** Builds the error. */
  constructor(code: "protocol" | "version", message: string) {
    super(message);
    this.name = "ProtocolViolation";
    this.code = code;
  }
}
