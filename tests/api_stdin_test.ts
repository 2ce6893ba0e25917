// The library API's stdin: runCommand with an input that never ends returns
// when the run does, and leaves nothing behind (no retry loop sleeping on a
// closed connection, no reader holding the input: the test sanitizers check).
import assert from "node:assert/strict";
import { loadIdentity, loadTrust, runCommand } from "../mod.ts";
import { ServerFixture } from "./_harness.ts";

Deno.test("runCommand: an input that never ends is let go when the run ends, and nothing lingers", async () => {
  const f = await ServerFixture.create();
  let cancelled = false;
  // Gives a few bytes, then nothing more, ever; cancel() is how it learns it is not wanted.
  const input = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new TextEncoder().encode("abcdef"));
    },
    cancel() {
      cancelled = true;
    },
  });
  try {
    const server = await f.server();
    const out: Uint8Array[] = [];
    const outcome = await runCommand({
      host: "127.0.0.1",
      port: server.port,
      identity: await loadIdentity(f.keys.manager),
      trust: await loadTrust(f.keys.manager),
      argv: ["sh", "-c", "head -c 3; exit 6"],
      serverTimeoutMs: 10_000,
      pollIntervalMs: 1000,
      io: {
        stdout: (b) => Promise.resolve(void out.push(b.slice())),
        stderr: () => Promise.resolve(),
        stdin: input,
      },
    });
    assert.deepEqual(outcome.exit, { code: 6 });
    assert.equal(new TextDecoder().decode(new Uint8Array(out.flatMap((b) => [...b]))), "abc");
    assert.ok(cancelled, "the input was cancelled");
  } finally {
    await f.cleanup();
  }
});
