// Bad input never disturbs cmappserver: it answers clearly, drops the
// offender, and keeps serving everyone else.
import assert from "node:assert/strict";
import {
  makeKeys,
  mgrArgs,
  rawTls,
  runMgr,
  type ServerProcess,
  startServerProcess,
} from "./_harness.ts";
import {
  decodeServerMessage,
  encodeFrame,
  encodeMessage,
  PROTOCOL_VERSION,
} from "../protocol/mod.ts";

async function stillServes(keys: Awaited<ReturnType<typeof makeKeys>>, server: ServerProcess) {
  const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "exit 42"));
  assert.equal(r.code, 42, `server stopped serving: ${r.stderr}\n${server.log()}`);
}

async function rawTcp(port: number, bytes: Uint8Array): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(bytes);
    // Read until the server closes the connection; count what it sent.
    let received = 0;
    const buf = new Uint8Array(4096);
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        break; // reset
      }
      if (n === null) break;
      received += n;
    }
    return received;
  } finally {
    conn.close();
  }
}

const te = new TextEncoder();

function hello(major = 1, minor = 0): Uint8Array {
  return encodeFrame(encodeMessage({ type: "hello", version: { major, minor }, agent: "test" }));
}

function frameOf(text: string): Uint8Array {
  return encodeFrame(te.encode(text));
}

async function exchange(keydir: string, port: number, ...chunks: Uint8Array[]) {
  const conn = await rawTls(keydir, port);
  for (const c of chunks) conn.write(c);
  const frames = await conn.readUntilClose();
  return frames.map((f) => decodeServerMessage(f));
}

Deno.test("hostile input does not disturb cmappserver", async (t) => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server, ["-handshake_timeout", "1"]);
  try {
    await t.step("plaintext is dropped at once", async () => {
      await rawTcp(server.port, te.encode("hello there\n"));
      await server.waitForLog(
        /rejected connection from 127\.0\.0\.1:\d+: not a TLS client: it sent plaintext or garbage/,
      );
      await stillServes(keys, server);
    });
    await t.step("an HTTP request is dropped", async () => {
      await rawTcp(server.port, te.encode("GET / HTTP/1.1\r\nHost: guest\r\n\r\n"));
      await stillServes(keys, server);
    });
    await t.step("random bytes are dropped", async () => {
      await rawTcp(server.port, crypto.getRandomValues(new Uint8Array(3000)));
      await stillServes(keys, server);
    });
    await t.step("a client that never finishes the TLS handshake is dropped", async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
      try {
        // Say nothing: the server must hang up on us (handshake timeout 1 s).
        const n = await conn.read(new Uint8Array(16)).catch(() => null);
        assert.equal(n, null);
      } finally {
        conn.close();
      }
      await server.waitForLog(/did not finish the TLS handshake in time/);
      await stillServes(keys, server);
    });
    await t.step("an authenticated client that never says hello is dropped", async () => {
      const msgs = await exchange(keys.manager, server.port);
      assert.deepEqual(msgs, []);
      await server.waitForLog(/no hello within 1000 ms; closing/);
    });
    await t.step("an oversize length prefix gets a protocol error and a close", async () => {
      const msgs = await exchange(
        keys.manager,
        server.port,
        new Uint8Array([0xff, 0xff, 0xff, 0xff]),
      );
      assert.equal(msgs.length, 1);
      assert.equal(msgs[0].type, "error");
      assert.equal(msgs[0].type === "error" && msgs[0].code, "protocol");
      assert.match(JSON.stringify(msgs[0]), /exceeds the maximum of 1048576 bytes/);
      await stillServes(keys, server);
    });
    await t.step("a zero length frame gets a protocol error", async () => {
      const msgs = await exchange(keys.manager, server.port, hello(), new Uint8Array(4));
      assert.deepEqual(msgs.map((m) => m.type), ["hello", "error"]);
      assert.match(JSON.stringify(msgs[1]), /frame length 0/);
    });
    for (
      const [name, text, why] of [
        ["invalid JSON", "{nope", /not valid JSON/],
        ["an unknown message type", `{"type":"format_disk","id":1}`, /unknown message type/],
        [
          "a launch with an empty argv",
          `{"type":"launch","id":1,"argv":[]}`,
          /must name a program/,
        ],
        [
          "a launch with a NUL in argv",
          `{"type":"launch","id":1,"argv":["/bin/true","a\\u0000b"]}`,
          /NUL/,
        ],
        ["a negative id", `{"type":"ping","id":-1}`, /"id" must be an integer/],
        [
          "a second hello",
          `{"type":"hello","version":{"major":1,"minor":0},"agent":"x"}`,
          /hello sent twice/,
        ],
      ] as const
    ) {
      await t.step(`${name} gets a protocol error and a close`, async () => {
        const msgs = await exchange(keys.manager, server.port, hello(), frameOf(text));
        assert.deepEqual(msgs.map((m) => m.type), ["hello", "error"]);
        const err = msgs[1];
        assert.ok(err.type === "error");
        assert.equal(err.code, "protocol");
        assert.match(err.message, why);
      });
    }
    await t.step("requests behind a refused message in the same write are dropped", async () => {
      const marker = `${keys.root.path}/must-not-exist`;
      const launch = frameOf(JSON.stringify({
        type: "launch",
        id: 2,
        argv: ["/bin/sh", "-c", `touch ${marker}`],
      }));
      const both = new Uint8Array([...hello(), ...hello(), ...launch]);
      const msgs = await exchange(keys.manager, server.port, both);
      assert.deepEqual(msgs.map((m) => m.type), ["hello", "error"]);
      await stillServes(keys, server);
      await assert.rejects(Deno.stat(marker));
    });
    await t.step("a request before hello is refused", async () => {
      const msgs = await exchange(keys.manager, server.port, frameOf(`{"type":"ping","id":1}`));
      assert.equal(msgs.length, 1);
      assert.ok(msgs[0].type === "error");
      assert.match(msgs[0].message, /expected hello first/);
    });
    await t.step("an incompatible major version is refused clearly", async () => {
      const msgs = await exchange(keys.manager, server.port, hello(2, 0));
      assert.equal(msgs.length, 1);
      assert.ok(msgs[0].type === "error");
      assert.equal(msgs[0].code, "version");
      assert.match(msgs[0].message, /protocol version 2\.0 .* not compatible .* speaks 1\.\d+/);
    });
    await t.step("a newer minor version still works", async () => {
      const conn = await rawTls(keys.manager, server.port);
      try {
        conn.write(hello(1, 9));
        conn.write(frameOf(`{"type":"ping","id":5,"some_future_field":true}`));
        const msgs = (await conn.readFrames(2)).map((f) => decodeServerMessage(f));
        assert.deepEqual(msgs.map((m) => m.type), ["hello", "pong"]);
        assert.deepEqual(msgs[0].type === "hello" && msgs[0].version, { ...PROTOCOL_VERSION });
      } finally {
        await conn.close();
      }
    });
    await t.step("after all that, the server still serves", async () => {
      await stillServes(keys, server);
    });
  } finally {
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});
