/**
 * Keeps a node:tls listener accepting after the process ran out of file
 * descriptors. Under Deno 2.9, when accept() fails with EMFILE or ENFILE the
 * accept loop of a node:net server stops for good, silently: no "error"
 * event, `listening` stays true, new connections wait in the kernel's
 * queue and are never taken (measured: a daemon flooded with 1100 silent
 * connections under RLIMIT_NOFILE 1024 never completed a handshake again).
 * So the watchdog connects to the listener every few seconds; when nothing
 * at all is accepted within a few seconds of that, it listens again on the
 * same port (connections waiting in the old queue are reset; their
 * clients retry).
 *
 * @module
 */

import net from "node:net";
import type tls from "node:tls";

/** How often the listener is checked, in ms. */
const _INTERVAL_MS = 5000;
/** How long a probe may wait to be accepted before the listener counts as stuck, in ms. */
const _PROBE_MS = 3000;

/** A running watchdog. */
export interface AcceptWatchdog {
  /** True (once) for the remote port of our own probe: its aborted handshake is not news. */
  isProbe(remotePort: number | undefined): boolean;
  /** Stops checking. */
  stop(): void;
}

/**
 * Watches `server`, listening on `host`:`port`.
 *
 * @param report told when the listener is found stuck and when it listens again
 * @example
 * ```ts ignore
 * const dog = watchAccepts(server, "0.0.0.0", 5315, (m) => logger.warn(m));
 * // in tlsClientError: if (dog.isProbe(remotePort)) return;
 * dog.stop();
 * ```
 */
export function watchAccepts(
  server: tls.Server,
  host: string,
  port: number,
  report: (message: string) => void,
): AcceptWatchdog {
  let accepted = 0;
  let busy = false;
  let stopped = false;
  /** Ends the probe under way (on stop). */
  let abort = () => {};
  const probes = new Set<number>();
  server.on("connection", () => accepted++);
  const target = host === "0.0.0.0" || host === "" ? "127.0.0.1" : host === "::" ? "::1" : host;

  const relisten = async () => {
    report(
      `the listener on ${host}:${port} stopped accepting connections (the process ran out ` +
        `of file descriptors: raise RLIMIT_NOFILE or lower max_connections); listening again`,
    );
    server.close();
    for (let i = 0; !stopped; i++) {
      const err = await new Promise<Error | null>((resolve) => {
        const onError = (e: Error) => resolve(e);
        server.once("error", onError);
        server.listen(port, host, () => {
          server.off("error", onError);
          resolve(null);
        });
      });
      if (!err) {
        report(`listening again on ${host}:${port}`);
        return;
      }
      // Still out of descriptors, or the port not free yet.
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(100 * 2 ** i, 5000));
        abort = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  };

  /** Resolves "alive" when anything is accepted after the probe was queued. */
  const probe = () =>
    new Promise<"alive" | "stuck" | "no_fds">((resolve) => {
      const before = accepted;
      const sock = net.connect(port, target);
      let done = false;
      const finish = (v: "alive" | "stuck" | "no_fds") => {
        if (done) return;
        done = true;
        clearInterval(poll);
        clearTimeout(timer);
        sock.destroy();
        resolve(v);
      };
      abort = () => finish("alive");
      sock.on("connect", () => {
        if (!sock.localPort) return;
        probes.add(sock.localPort);
        // One seen by nobody (dropped before its handshake) is not kept for ever.
        if (probes.size > 16) probes.delete(probes.values().next().value!);
      });
      sock.on("error", (e: Error & { code?: string }) => {
        // Out of descriptors ourselves: nothing can be told; the next round tries again.
        finish(e.code === "EMFILE" || e.code === "ENFILE" ? "no_fds" : "alive");
      });
      // The loop takes its queue in order: any accept after ours was queued proves it alive.
      const poll = setInterval(() => accepted !== before && finish("alive"), 25);
      const timer = setTimeout(() => finish(accepted !== before ? "alive" : "stuck"), _PROBE_MS);
    });

  const check = async () => {
    if (busy || stopped || !server.listening) return;
    busy = true;
    try {
      if (await probe() === "stuck" && !stopped) await relisten();
    } finally {
      busy = false;
    }
  };
  const interval = setInterval(check, _INTERVAL_MS);
  return {
    isProbe: (remotePort) => remotePort !== undefined && probes.delete(remotePort),
    stop() {
      stopped = true;
      clearInterval(interval);
      abort();
    },
  };
}
