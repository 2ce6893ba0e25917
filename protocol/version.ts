/**
 * Protocol version and the rule for talking across versions: peers with the
 * same major version always talk, whatever their minor versions; a peer may
 * only use what the smaller of the two minor versions defines.
 *
 * @module
 */

/** A protocol version. */
export interface ProtocolVersion {
  /** Incremented on incompatible changes. */
  major: number;
  /** Incremented on backwards-compatible additions. */
  minor: number;
}

/** The TCP port cmappserver listens on unless told otherwise. */
export const DEFAULT_PORT = 5315;

/** The version this code speaks. */
export const PROTOCOL_VERSION: Readonly<ProtocolVersion> = Object.freeze({ major: 1, minor: 5 });

/**
 * Decides whether we can talk to a peer and at which version.
 * Returns the version both sides use, or null when the majors differ.
 *
 * @example
 * ```ts
 * import { negotiateVersion } from "./version.ts";
 * negotiateVersion({ major: 1, minor: 0 }, { major: 1, minor: 4 }); // { major: 1, minor: 0 }
 * negotiateVersion({ major: 1, minor: 0 }, { major: 2, minor: 0 }); // null
 * ```
 */
export function negotiateVersion(
  ours: ProtocolVersion,
  theirs: ProtocolVersion,
): ProtocolVersion | null {
  if (ours.major !== theirs.major) return null;
  return { major: ours.major, minor: Math.min(ours.minor, theirs.minor) };
}

/**
 * Formats a version as "major.minor".
 *
 * @example
 * ```ts
 * import { formatVersion } from "./version.ts";
 * formatVersion({ major: 1, minor: 2 }); // "1.2"
 * ```
 */
export function formatVersion(v: ProtocolVersion): string {
  return `${v.major}.${v.minor}`;
}

/** The cmapp release this code belongs to. */
export const SOFTWARE_VERSION = "0.1.0";
