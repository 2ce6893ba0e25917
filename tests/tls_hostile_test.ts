// Hostile TLS clients against a running cmappserver while a legitimate
// manager keeps launching runs and receiving their exit codes: bad
// certificates, no certificate, plaintext, HTTP, a handshake stopped half
// way, 1000 idle connections at once, and a slowloris flood beyond
// max_connections.
import assert from "node:assert/strict";
import tls from "node:tls";
import {
  countMatches,
  eventually,
  makeKeys,
  type RawTls,
  rawTls,
  reportFigures,
  type ServerProcess,
  startServerProcess,
  tempDir,
  trust,
  writeIdentity,
} from "./_harness.ts";
import { type Client, connect, ManagerError } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";

const DAY = 86400_000;
const te = new TextEncoder();

async function _client(keydir: string, port: number): Promise<Client> {
  return await connect({
    host: "127.0.0.1",
    port,
    identity: await loadIdentity(keydir),
    trust: await loadTrust(keydir),
  });
}

/**
 * A legitimate manager launching `sh -c 'exit K'` over and over on fresh
 * connections until stopped; counts the runs whose code came back right
 * and fails on the first wrong one.
 */
function _legitimate(keydir: string, port: number) {
  let stop = false;
  let right = 0;
  const errors: string[] = [];
  const done = (async () => {
    for (let i = 0; !stop; i++) {
      const k = i % 100;
      try {
        const c = await _client(keydir, port);
        try {
          const r = await c.launch(["/bin/sh", "-c", `exit ${k}`]);
          const exit = await c.wait(r.run);
          await c.release(r.run);
          if (!("code" in exit) || exit.code !== k) {
            errors.push(`run ${i}: ${JSON.stringify(exit)} for exit ${k}`);
          } else right++;
        } finally {
          c.close();
          await c.closed;
        }
      } catch (e) {
        errors.push(`run ${i}: ${(e as Error).message}`);
      }
    }
  })();
  return {
    get right() {
      return right;
    },
    errors,
    /** Resolves once `n` more runs have come back right (fails on an error). */
    async more(n: number, what: string): Promise<void> {
      const target = right + n;
      // A bound against hanging, not a timing check.
      const deadline = Date.now() + 60_000;
      while (right < target) {
        if (errors.length) throw new Error(`legitimate manager failed ${what}: ${errors[0]}`);
        if (Date.now() > deadline) throw new Error(`legitimate manager stuck ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async stop(): Promise<void> {
      stop = true;
      await done;
    },
  };
}

/**
 * Connects with node:tls using `key`/`cert` (or none) and sends nothing more;
 * `close()` hangs up (a refused manager is told why only after its hello).
 */
function _tlsAttempt(port: number, pems?: { key: string; cert: string }): () => Promise<void> {
  const s = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, ...(pems ?? {}) });
  s.on("error", () => {});
  const closed = new Promise<void>((resolve) => s.on("close", () => resolve()));
  return () => {
    s.destroy();
    return closed;
  };
}

/** Sends `bytes` over plain TCP and reads until the server closes. */
async function _rawTcp(port: number, bytes: Uint8Array): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes);
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
    }
  } finally {
    conn.close();
  }
}

async function _identityPems(dir: string): Promise<{ key: string; cert: string }> {
  return {
    key: await Deno.readTextFile(`${dir}/key.pem`),
    cert: await Deno.readTextFile(`${dir}/cert.pem`),
  };
}

Deno.test("TLS attacks and 1000 idle connections: legitimate managers keep launching throughout", async (t) => {
  const keys = await makeKeys();
  const bad = await tempDir();
  // Pinned on the server, but out of date: refused for their dates.
  const expired = await writeIdentity(`${bad.path}/expired`, {
    notBefore: new Date(Date.now() - 30 * DAY),
    notAfter: new Date(Date.now() - DAY),
  });
  const future = await writeIdentity(`${bad.path}/future`, {
    notBefore: new Date(Date.now() + DAY),
    notAfter: new Date(Date.now() + 30 * DAY),
  });
  await trust(keys.server, "expired", expired.certPem);
  await trust(keys.server, "future", future.certPem);
  // Not pinned anywhere.
  await writeIdentity(`${bad.path}/stranger`);
  await writeIdentity(`${bad.path}/ca`, { ca: true });
  let server: ServerProcess | null = null;
  const held: Deno.TcpConn[] = [];
  const heldTls: RawTls[] = [];
  let legit: ReturnType<typeof _legitimate> | null = null;
  try {
    // max_connections above the 1000 idle connections held below (the default, 256, would drop
    // the oldest handshakes for new ones: tests/bounds_test.ts floods beyond the limit).
    server = await startServerProcess(keys.server, [
      "-handshake_timeout",
      "60",
      "-max_connections",
      "2048",
    ]);
    const port = server.port;
    legit = _legitimate(keys.manager, port);
    await legit.more(3, "before any attack");

    // Each attack returns how to end it (plain TCP ones end by themselves).
    const attacks: [string, () => Promise<() => Promise<void>>, RegExp][] = [
      [
        "an untrusted client certificate",
        async () => _tlsAttempt(port, await _identityPems(`${bad.path}/stranger`)),
        /rejected manager 127\.0\.0\.1:\d+: not pinned: certificate [0-9A-F:]{95} \(CN=[^)]*\) is not in \S*trusted/,
      ],
      [
        "an expired client certificate, though pinned",
        async () => _tlsAttempt(port, await _identityPems(`${bad.path}/expired`)),
        /rejected manager 127\.0\.0\.1:\d+: expired: certificate [0-9A-F:]{95} .* expired on/,
      ],
      [
        "a not yet valid client certificate, though pinned",
        async () => _tlsAttempt(port, await _identityPems(`${bad.path}/future`)),
        /rejected manager 127\.0\.0\.1:\d+: not yet valid: certificate .* not valid before/,
      ],
      [
        "a CA:TRUE client certificate",
        async () => _tlsAttempt(port, await _identityPems(`${bad.path}/ca`)),
        /rejected manager 127\.0\.0\.1:\d+: not pinned: certificate [0-9A-F:]{95}/,
      ],
      [
        "no client certificate",
        () => Promise.resolve(_tlsAttempt(port)),
        /rejected manager 127\.0\.0\.1:\d+: no certificate: none was presented/,
      ],
      [
        "plaintext",
        () => _rawTcp(port, te.encode("hello there\n")).then(() => async () => {}),
        /rejected connection from 127\.0\.0\.1:\d+: not a TLS client: it sent plaintext or garbage/,
      ],
      [
        "an HTTP request",
        () =>
          _rawTcp(port, te.encode("GET / HTTP/1.1\r\nHost: guest\r\n\r\n")).then(
            () => async () => {},
          ),
        /rejected connection from 127\.0\.0\.1:\d+: not a TLS client: it sent plaintext or garbage/,
      ],
    ];
    for (const [name, attack, logged] of attacks) {
      await t.step(`${name}: refused, logged, others served`, async () => {
        const before = countMatches(server!.log(), logged);
        const end = await attack();
        try {
          await eventually(
            "the refusal to be logged",
            () => Promise.resolve(countMatches(server!.log(), logged) > before),
            20_000,
          );
          await legit!.more(2, `after ${name}`);
        } finally {
          await end();
        }
      });
    }

    await t.step("a TLS client that stops in the middle of its handshake", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      held.push(conn);
      // The first bytes of a ClientHello record, and then nothing.
      await conn.write(new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]));
      await legit!.more(3, "while a handshake hangs half way");
    });

    await t.step(
      "1000 idle connections at once (900 silent TCP, 100 TLS without hello)",
      async () => {
        for (let i = 0; i < 100; i++) heldTls.push(await rawTls(keys.manager, port));
        for (let i = 0; i < 900; i++) {
          held.push(await Deno.connect({ hostname: "127.0.0.1", port }));
        }
        const before = legit!.right;
        await legit!.more(10, "while 1000 idle connections are held");
        // None of the held connections was closed by the server meanwhile.
        assert.doesNotMatch(server!.log(), /connections already open|dropped: the oldest/);
        reportFigures("tls-1000-idle", {
          idleHeld: held.length + heldTls.length,
          launchesRightWhileHeld: legit!.right - before,
        });
      },
    );

    await legit.stop();
    assert.deepEqual(legit.errors, []);
    reportFigures("tls-attacks", { attacks: attacks.length + 2, legitimateRunsRight: legit.right });
  } finally {
    await legit?.stop();
    for (const c of held) c.close();
    await Promise.all(heldTls.map((c) => c.close()));
    await server?.stop();
    await bad.cleanup();
    await keys.root.cleanup();
  }
});

Deno.test("slowloris beyond max_connections: the oldest unfinished handshakes make way, managers get in", async () => {
  const keys = await makeKeys();
  let server: ServerProcess | null = null;
  const held: Deno.TcpConn[] = [];
  let standing: Client | null = null;
  try {
    // At most 10 connections may be handshaking; 200 silent ones arrive.
    server = await startServerProcess(keys.server, [
      "-max_connections",
      "20",
      "-handshake_timeout",
      "120",
    ]);
    standing = await _client(keys.manager, server.port);
    for (let i = 0; i < 200; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: server.port }));
    }
    await server.waitForLog(/dropped: the oldest of 10 connections still in the TLS handshake/);
    // A new manager gets in and its run's code comes back.
    const c = await _client(keys.manager, server.port);
    try {
      const r = await c.launch(["/bin/sh", "-c", "exit 7"]);
      assert.deepEqual(await c.wait(r.run), { code: 7 });
      await c.release(r.run);
    } finally {
      c.close();
      await c.closed;
    }
    // The manager that was already in was never taken for a slow handshake.
    await standing.ping();
    const evicted = server.log().match(/dropped: the oldest of/g)?.length ?? 0;
    assert.ok(evicted >= 190, `${evicted} evictions logged`);
    reportFigures("tls-slowloris", { silentConnections: 200, maxConnections: 20, evicted });
  } finally {
    if (standing) {
      standing.close();
      await standing.closed.catch(() => {});
    }
    for (const c of held) c.close();
    await server?.stop();
    await keys.root.cleanup();
  }
});

Deno.test("max_connections: with every slot taken by managers, a new connection is dropped on arrival", async () => {
  const keys = await makeKeys();
  let server: ServerProcess | null = null;
  const clients: Client[] = [];
  try {
    server = await startServerProcess(keys.server, ["-max_connections", "2"]);
    for (let i = 0; i < 2; i++) clients.push(await _client(keys.manager, server.port));
    const e = await _client(keys.manager, server.port).then(
      (c) => {
        clients.push(c);
        return null;
      },
      (e) => e,
    );
    assert.ok(e instanceof ManagerError, String(e));
    await server.waitForLog(/dropped: 2 connections already open \(max_connections 2\)/);
    // The two managers in are untouched.
    for (const c of clients) await c.ping();
    // Once one leaves, a new manager gets in again.
    const leaving = clients.shift()!;
    leaving.close();
    await leaving.closed.catch(() => {});
    await eventually("a manager to get in again", async () => {
      try {
        clients.push(await _client(keys.manager, server!.port));
        return true;
      } catch {
        return false;
      }
    });
    await clients[clients.length - 1].ping();
  } finally {
    for (const c of clients) {
      c.close();
      await c.closed.catch(() => {});
    }
    await server?.stop();
    await keys.root.cleanup();
  }
});
