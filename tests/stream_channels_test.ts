// StreamChannels on its own: credit on receipt, ends without credit, and
// waiting that costs one promise per stream however often a sender is woken
// (a peer flooding window messages must not grow a list of waiters).
import assert from "node:assert/strict";
import { CreditError, StreamChannels } from "../protocol/mod.ts";
import type { DataMessage, WindowMessage } from "../protocol/mod.ts";

function channels(): { sc: StreamChannels; sent: (WindowMessage | DataMessage)[] } {
  const sent: (WindowMessage | DataMessage)[] = [];
  const sc = new StreamChannels({
    send: (m) => sent.push(m),
    writable: true,
    whenWritable: () => Promise.resolve(),
  }, 65536);
  return { sc, sent };
}

Deno.test("stream channels: bytes beyond the credit are a CreditError; an end needs none", () => {
  const { sc, sent } = channels();
  assert.equal(sc.received("r1", "stdin", 0), false, "an end before any window: not ours yet");
  assert.throws(() => sc.received("r1", "stdin", 1), CreditError);
  sc.openInbound("r1", "stdin", 100);
  assert.deepEqual(sent, [{ type: "window", run: "r1", stream: "stdin", bytes: 100 }]);
  assert.equal(sc.received("r1", "stdin", 100), true);
  assert.throws(() => sc.received("r1", "stdin", 1), CreditError);
  assert.equal(sc.received("r1", "stdin", 0), true);
});

Deno.test("stream channels: whoever waits for credit shares one promise until it comes", async () => {
  const { sc } = channels();
  sc.openOutbound("r1", "stdout", 0);
  const first = sc.whenRoom("r1", "stdout");
  for (let i = 0; i < 1000; i++) assert.equal(sc.whenRoom("r1", "stdout"), first);
  sc.granted("r1", "stdout", 10);
  await first;
  assert.equal(sc.room("r1", "stdout"), 10);
  sc.sendData("r1", "stdout", new Uint8Array(10));
  const next = sc.whenRoom("r1", "stdout");
  assert.notEqual(next, first);
  sc.close();
  await next;
});
