/**
 * Telling a service manager that cmappserver serves: systemd's sd_notify
 * protocol (one datagram to `$NOTIFY_SOCKET`) and, for init scripts, a ready
 * file holding the daemon's pid.
 *
 * @module
 */

import type { Logger } from "../log/logger.ts";

/** The longest path a unix socket address holds (sun_path, with its NUL). */
const _SUN_PATH_MAX = 107;

/** Why a notification could not be sent. */
export class NotifyError extends Error {
  override name = "NotifyError";
}

/**
 * Sends `message` ("READY=1\n…") as one datagram to the unix socket at
 * `socketPath`, from a socket bound for the moment at `bindPath` (the
 * runtime cannot send from an unbound one).
 *
 * @example
 * ```ts ignore
 * await sdNotify("/run/systemd/notify", "READY=1\n", "/var/lib/cmappserver/.notify-42.sock");
 * ```
 */
export async function sdNotify(
  socketPath: string,
  message: string,
  bindPath: string,
): Promise<void> {
  if (socketPath.startsWith("@")) {
    throw new NotifyError(`NOTIFY_SOCKET ${socketPath} is an abstract socket, not supported`);
  }
  if (!socketPath.startsWith("/")) {
    throw new NotifyError(`NOTIFY_SOCKET ${socketPath} is not an absolute path`);
  }
  if (bindPath.length > _SUN_PATH_MAX) {
    throw new NotifyError(`${bindPath} is too long for a unix socket`);
  }
  if (typeof Deno.listenDatagram !== "function") {
    throw new NotifyError("the runtime was started without --unstable-net");
  }
  await Deno.remove(bindPath).catch(() => {});
  let conn: Deno.DatagramConn;
  try {
    conn = Deno.listenDatagram({ transport: "unixpacket", path: bindPath });
  } catch (e) {
    throw new NotifyError(`cannot bind ${bindPath}: ${(e as Error).message}`);
  }
  try {
    await conn.send(new TextEncoder().encode(message), {
      transport: "unixpacket",
      path: socketPath,
    });
  } catch (e) {
    throw new NotifyError(`cannot send to ${socketPath}: ${(e as Error).message}`);
  } finally {
    conn.close();
    await Deno.remove(bindPath).catch(() => {});
  }
}

/** Writes `text` to `path` whole or not at all (a temporary file, then a rename). */
async function _replaceFile(path: string, text: string): Promise<void> {
  const tmp = `${path}.${Deno.pid}.tmp`;
  try {
    // A new file (O_EXCL), never through a link someone left at that name.
    await Deno.remove(tmp).catch(() => {});
    await Deno.writeTextFile(tmp, text, { createNew: true });
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Where and how cmappserver announces itself. */
export interface ReadinessOptions {
  /** `$NOTIFY_SOCKET`, or empty when not run by systemd's Type=notify. */
  notifySocket: string;
  /** A directory of its own to bind the sending socket in (the state directory). */
  socketDir: string;
  /** `-readyfile`, or empty. */
  readyFile: string;
  logger: Logger;
}

/**
 * The daemon's readiness, told to systemd and to init scripts. Failing to
 * reach systemd is a warning (systemd, not the daemon, decides what a
 * missing READY=1 means); a ready file that cannot be written is an error,
 * since the init script waiting for it would give up on a daemon that runs.
 *
 * @example
 * ```ts ignore
 * const readiness = new Readiness({ notifySocket: Deno.env.get("NOTIFY_SOCKET") ?? "",
 *   socketDir: "/var/lib/cmappserver", readyFile: "", logger });
 * // … listen, re-adopt the runs …
 * await readiness.ready("listening on 0.0.0.0:5315");
 * // … serve until SIGTERM …
 * await readiness.stopping();
 * ```
 */
export class Readiness {
  #options: ReadinessOptions;
  #wroteReadyFile = false;

  constructor(options: ReadinessOptions) {
    this.#options = options;
  }

  /** Says it serves. Throws when the ready file cannot be written. */
  async ready(status: string): Promise<void> {
    const { readyFile } = this.#options;
    if (readyFile) {
      try {
        await _replaceFile(readyFile, `${Deno.pid}\n`);
      } catch (e) {
        throw new NotifyError(`cannot write readyfile ${readyFile}: ${(e as Error).message}`);
      }
      this.#wroteReadyFile = true;
    }
    await this.#notify(`READY=1\nSTATUS=${status}\nMAINPID=${Deno.pid}\n`);
  }

  /** Says it is stopping, and removes the ready file if it still holds this pid. */
  async stopping(): Promise<void> {
    await this.#notify("STOPPING=1\n");
    const { readyFile } = this.#options;
    if (!this.#wroteReadyFile) return;
    const text = await Deno.readTextFile(readyFile).catch(() => "");
    if (text === `${Deno.pid}\n`) await Deno.remove(readyFile).catch(() => {});
  }

  async #notify(message: string): Promise<void> {
    const { notifySocket, socketDir, logger } = this.#options;
    if (!notifySocket) return;
    try {
      await sdNotify(notifySocket, message, `${socketDir}/.notify-${Deno.pid}.sock`);
    } catch (e) {
      logger.warn(`cannot notify the service manager: ${(e as Error).message}`);
    }
  }
}
