/**
 * The floor under cmapp's streams, run as its own Deno process by the
 * benchmarks: a TLS listener with the project's stack (node:tls in Deno,
 * `listenTls`, the server's keys) that sends every connection `BYTES` bytes
 * and closes it, with no cmapp protocol, framing or flow control. Mode
 * "buffer" writes one 64 KiB buffer over and over; mode "pipe" writes each
 * chunk it reads from a `head -c BYTES /dev/zero` child's stdout, as the
 * daemon reads a run's output. Prints its port on stdout.
 *
 *   deno run -P=cmapp bench/_tls_sender.ts KEYDIR BYTES buffer|pipe
 *
 * @module
 */

import { listenTls, loadIdentity, loadTrust } from "../tls/mod.ts";

const [dir, total, mode] = [Deno.args[0], Number(Deno.args[1]), Deno.args[2] ?? "buffer"];

const listener = await listenTls({
  identity: await loadIdentity(dir),
  trust: await loadTrust(dir),
  hostname: "127.0.0.1",
  port: 0,
  handshakeTimeoutMs: 10_000,
  onHandshakeError: () => {},
  onSecureConnection: async (s) => {
    if (mode === "pipe") {
      const head = new Deno.Command("head", {
        args: ["-c", String(total), "/dev/zero"],
        stdout: "piped",
      }).spawn();
      for await (const c of head.stdout) {
        if (!s.write(c)) await new Promise((r) => s.once("drain", r));
      }
      await head.status;
      s.end();
      return;
    }
    const chunk = new Uint8Array(64 * 1024);
    let sent = 0;
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once("drain", pump);
      }
      s.end();
    };
    pump();
  },
});
console.log(listener.port);
