// cmappserver tells its service manager when it serves: systemd's sd_notify
// protocol (READY=1 on $NOTIFY_SOCKET, STOPPING=1 at exit), and -readyfile
// for init scripts (its pid, written once it serves, removed at exit). The
// receiving end here is a real unix datagram socket, as systemd's is.
import assert from "node:assert/strict";
import {
  eventually,
  makeKeys,
  mgrArgs,
  reapUnder,
  runMgr,
  runServerCli,
  startServerProcess,
} from "./_harness.ts";

/** A datagram socket standing in for systemd's notify socket. */
class NotifySocket {
  readonly path: string;
  #conn: Deno.DatagramConn;
  #decoder = new TextDecoder();

  constructor(path: string) {
    this.path = path;
    this.#conn = Deno.listenDatagram({ transport: "unixpacket", path });
  }

  /** The next message, as its "KEY=VALUE" lines (fails after 20 s). */
  async next(): Promise<Map<string, string>> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("no notification within 20 s")), 20_000);
    });
    try {
      const [data] = await Promise.race([this.#conn.receive(), timeout]);
      const lines = this.#decoder.decode(data).split("\n").filter((l) => l !== "");
      return new Map(lines.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.#conn.close();
  }
}

Deno.test("readiness: READY=1 with MAINPID and STATUS once it serves, STOPPING=1 at exit", async () => {
  const keys = await makeKeys();
  const notify = new NotifySocket(`${keys.root.path}/notify.sock`);
  try {
    const server = await startServerProcess(keys.server, [], {
      env: { NOTIFY_SOCKET: notify.path },
    });
    const ready = await notify.next();
    assert.equal(ready.get("READY"), "1");
    assert.equal(ready.get("MAINPID"), String(server.pid));
    assert.match(
      ready.get("STATUS") ?? "",
      new RegExp(`listening on 127\\.0\\.0\\.1:${server.port}`),
    );
    // It serves, and the applications do not inherit the notify socket.
    const r = await runMgr(
      mgrArgs(keys, server, "--", "sh", "-c", 'echo "${NOTIFY_SOCKET-unset}"'),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "unset\n");
    assert.equal(await server.stop(), 0);
    const stopping = await notify.next();
    assert.equal(stopping.get("STOPPING"), "1");
    assert.doesNotMatch(server.log(), /cannot notify/, "no warning about notifying");
  } finally {
    notify.close();
    await reapUnder(keys.root.path);
    await keys.root.cleanup();
  }
});

Deno.test("readiness: a notify socket it cannot use is a warning; it serves all the same", async () => {
  const keys = await makeKeys();
  try {
    for (
      const [socket, why] of [
        ["@cmapp-abstract", /abstract/],
        [`${keys.root.path}/nobody-listens.sock`, /nobody-listens\.sock/],
        ["relative.sock", /absolute/],
      ] as const
    ) {
      const server = await startServerProcess(keys.server, [], { env: { NOTIFY_SOCKET: socket } });
      try {
        await server.waitForLog(/warn: cannot notify the service manager/);
        assert.match(server.log(), why);
        const r = await runMgr(mgrArgs(keys, server, "--", "sh", "-c", "exit 4"));
        assert.equal(r.code, 4, r.stderr);
      } finally {
        await server.stop();
      }
    }
  } finally {
    await reapUnder(keys.root.path);
    await keys.root.cleanup();
  }
});

Deno.test("readiness: -readyfile holds its pid once it serves, a stale one is replaced, exit removes it", async () => {
  const keys = await makeKeys();
  const file = `${keys.root.path}/cmappserver.ready`;
  try {
    // Left by a daemon that died: it does not count as ready.
    await Deno.writeTextFile(file, "999999999\n");
    const server = await startServerProcess(keys.server, ["-readyfile", file]);
    await eventually(
      "the ready file",
      async () => (await Deno.readTextFile(file).catch(() => "")) === `${server.pid}\n`,
    );
    assert.equal(await server.stop(), 0);
    await assert.rejects(Deno.stat(file), Deno.errors.NotFound);
  } finally {
    await reapUnder(keys.root.path);
    await keys.root.cleanup();
  }
});

Deno.test("readiness: a -readyfile that cannot be written fails the start, with the reason", async () => {
  const keys = await makeKeys();
  try {
    const r = await runServerCli([
      "-config",
      "/dev/null",
      "-keydir",
      keys.server,
      "-statedir",
      `${keys.root.path}/state`,
      "-bind",
      "127.0.0.1",
      "-port",
      "0",
      "-readyfile",
      `${keys.root.path}/no/such/dir/ready`,
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /readyfile .*no\/such\/dir\/ready/);
  } finally {
    await reapUnder(keys.root.path);
    await keys.root.cleanup();
  }
});
