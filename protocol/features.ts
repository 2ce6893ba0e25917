/**
 * What a peer can do, computed once from the version both sides use (as
 * OpenSSH's compat.c computes its bug and feature flags from the banner),
 * so that no other code looks at minor version numbers.
 *
 * @module
 */

import type { ProtocolVersion } from "./version.ts";

/** The features of the protocol version in use on a connection. */
export interface Features {
  /** 1.1: named runs, environment, cwd, user, stop grace; `stop`, `release`, `list`. */
  readonly names: boolean;
  /** 1.1: an exit status counts as delivered only on `release` (1.0: once sent). */
  readonly release: boolean;
  /** 1.2: stdout, stderr and stdin streamed as `data` with `window` credit; `close_stream`. */
  readonly streams: boolean;
  /** 1.3: `resume`, where each stream resumes for a new receiver. */
  readonly resume: boolean;
  /** 1.4: the server says when a manager no longer feeds a run's stdin (`close_stream` stdin). */
  readonly stdinClose: boolean;
  /** 1.5: a launch under a name whose run differs is refused (`conflict`) unless `attach_any`. */
  readonly conflicts: boolean;
}

/**
 * The features of a version in use.
 *
 * @example
 * ```ts
 * import { featuresOf } from "./features.ts";
 * featuresOf({ major: 1, minor: 2 }).streams; // true
 * featuresOf({ major: 1, minor: 2 }).resume; // false
 * ```
 */
export function featuresOf(v: ProtocolVersion): Features {
  return Object.freeze({
    names: v.minor >= 1,
    release: v.minor >= 1,
    streams: v.minor >= 2,
    resume: v.minor >= 3,
    stdinClose: v.minor >= 4,
    conflicts: v.minor >= 5,
  });
}

/** No features: a connection whose version is not settled yet. */
export const NO_FEATURES: Features = Object.freeze({
  names: false,
  release: false,
  streams: false,
  resume: false,
  stdinClose: false,
  conflicts: false,
});
