/**
 * cmappmgr's own exit statuses. Everything else it exits with is the
 * application's: its exit code, 128+N when signal N killed it, 127 when the
 * command was not found, 126 when it could not be executed.
 *
 * @module
 */

import type { ManagerErrorKind, NamedRunState } from "../manager/mod.ts";

/** cmappmgr's own exit statuses, one per way it can fail. */
export const MGR_EXIT = {
  /** Bad command line. */
  usage: 2,
  /** Command not executable on the guest (as in a shell). */
  notExecutable: 126,
  /** Command not found on the guest (as in a shell). */
  notFound: 127,
  /** No connection to cmappserver within -cmappserver_timeout. */
  unreachable: 200,
  /** cmappserver's certificate is not trusted (not pinned, expired, wrong name). */
  serverUntrusted: 201,
  /** cmappserver refused our certificate. */
  rejected: 202,
  /** Protocol error: cmappserver sent something invalid. */
  protocol: 203,
  /** Incompatible protocol version. */
  version: 204,
  /** cmappserver lost: no answer for longer than -cmappserver_timeout while monitoring. */
  lost: 205,
  /** cmappserver refused to start the command (process limit, policy). */
  refused: 206,
  /** cmappserver no longer knows the run (restarted and lost it). */
  runLost: 207,
  /** Local setup problem: key directory missing, unreadable or invalid. */
  config: 208,
  /**
   * A run of the name runs another command (or the same one as another user,
   * in another directory, with another environment), or ended so with its
   * exit status uncollected: refused rather than followed (see -attach).
   */
  conflict: 209,
} as const;

/**
 * `cmappmgr -status NAME`, as LSB's `status` action: 0 running, 1 ended with
 * a failure (a non-zero code, a signal, or lost), 3 not running (ended with
 * 0, or no run of that name).
 */
export const STATUS_EXIT: Record<NamedRunState, number> = {
  running: 0,
  failed: 1,
  succeeded: 3,
  absent: 3,
};

/** The exit status for each kind of manager failure. */
export const EXIT_FOR_KIND: Record<ManagerErrorKind, number> = {
  unreachable: MGR_EXIT.unreachable,
  server_untrusted: MGR_EXIT.serverUntrusted,
  rejected: MGR_EXIT.rejected,
  protocol: MGR_EXIT.protocol,
  version: MGR_EXIT.version,
  lost: MGR_EXIT.lost,
  refused: MGR_EXIT.refused,
  run_lost: MGR_EXIT.runLost,
};
