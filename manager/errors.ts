/**
 * The ways a manager can fail, as one error class with a kind.
 *
 * @module
 */

/** Categories of manager failure, each with its own cmappmgr exit code. */
export type ManagerErrorKind =
  /** No connection to cmappserver could be made in time. */
  | "unreachable"
  /** cmappserver's certificate is not trusted (not pinned, expired, wrong name). */
  | "server_untrusted"
  /** cmappserver refused our certificate. */
  | "rejected"
  /** cmappserver sent something invalid, or the TLS session failed oddly. */
  | "protocol"
  /** cmappserver speaks an incompatible protocol major version. */
  | "version"
  /** cmappserver stopped answering for longer than the timeout. */
  | "lost"
  /** cmappserver refused to start the process (e.g. its process limit). */
  | "refused"
  /** cmappserver no longer knows the run (restarted without its record). */
  | "run_lost";

/**
 * A failure of the manager side, with a one-line message for the user.
 *
 * @example
 * ```ts
 * import { ManagerError } from "./errors.ts";
 * const e = new ManagerError("lost", "guest1:5315 did not answer for 30 s");
 * e.kind; // "lost"
 * ```
 */
export class ManagerError extends Error {
  /** The category. */
  readonly kind: ManagerErrorKind;
  /** Builds the error. */
  constructor(kind: ManagerErrorKind, message: string) {
    super(message);
    this.name = "ManagerError";
    this.kind = kind;
  }
}
