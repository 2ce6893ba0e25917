/**
 * Unit and property tests of MessageChannel (protocol/channel.ts) over an
 * in-memory fake of its ByteStream: no sockets, no timers.
 */

import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import fc from "fast-check";
import {
  BufferLimitError,
  type ByteStream,
  channelLimits,
  type ClientMessage,
  decodeClientMessage,
  decodeServerMessage,
  encodeFrame,
  encodeMessage,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  type Message,
  MessageChannel,
  ProtocolError,
  type ServerMessage,
} from "../protocol/mod.ts";
import {
  bytewise,
  clientMessageArb,
  concat,
  cutAt,
  fuzzParams,
  serverMessageArb,
  utf8,
} from "./_fuzz.ts";

/** A ByteStream that records what the channel does to it; events are emitted by the test. */
class FakeStream extends EventEmitter implements ByteStream {
  /** Every call, in order. */
  readonly calls: string[] = [];
  /** Copies of the buffers written. */
  readonly writes: Uint8Array[] = [];
  /** Emit "close" at once when destroyed, as a socket would (soon after). */
  closeOnDestroy = false;
  /** Bytes "queued" in the socket: set by a test to play a peer that does not read. */
  writableLength = 0;

  pause(): void {
    this.calls.push("pause");
  }
  resume(): void {
    this.calls.push("resume");
  }
  write(data: Uint8Array): boolean {
    this.calls.push("write");
    this.writes.push(data.slice());
    return true;
  }
  end(): void {
    this.calls.push("end");
  }
  destroy(): void {
    this.calls.push("destroy");
    if (this.closeOnDestroy) this.emit("close");
  }
  count(call: string): number {
    return this.calls.filter((c) => c === call).length;
  }
}

type Event =
  | { kind: "message"; message: Message }
  | { kind: "invalid"; error: FrameError | ProtocolError | BufferLimitError }
  | { kind: "close"; error: Error | null };

/** A server-side channel (reads client messages) over a fresh fake stream. */
function serverSide(
  maxFrameSize?: number,
  onMessage?: (m: ClientMessage, ch: MessageChannel<ClientMessage, ServerMessage>) => void,
) {
  const stream = new FakeStream();
  const events: Event[] = [];
  const channel: MessageChannel<ClientMessage, ServerMessage> = new MessageChannel<
    ClientMessage,
    ServerMessage
  >(
    stream,
    decodeClientMessage,
    {
      onMessage: (message) => {
        events.push({ kind: "message", message });
        onMessage?.(message, channel);
      },
      onInvalid: (error) => events.push({ kind: "invalid", error }),
      onClose: (error) => events.push({ kind: "close", error }),
    },
    maxFrameSize,
  );
  const of = <K extends Event["kind"]>(kind: K) =>
    events.filter((e): e is Extract<Event, { kind: K }> => e.kind === kind);
  return {
    stream,
    channel,
    events,
    messages: () => of("message").map((e) => e.message),
    invalids: () => of("invalid").map((e) => e.error),
    closes: () => of("close").map((e) => e.error),
  };
}

const frameOf = (m: Message) => encodeFrame(encodeMessage(m));
const PING: ClientMessage = { type: "ping", id: 1 };
const STATUS: ClientMessage = { type: "status", id: 2, run: "r-1" };
const LAUNCH: ClientMessage = { type: "launch", id: 3, argv: ["/bin/echo", "é"] };
const PONG: ServerMessage = { type: "pong", id: 1 };

// ---------------------------------------------------------------- sending

Deno.test("channel: send() makes one write per message, header and payload together", async () => {
  const { stream, channel } = serverSide();
  const sent: ServerMessage[] = [
    PONG,
    { type: "launched", id: 2, run: "abc", pid: 42 },
    { type: "error", code: "limit", message: "x".repeat(1000) },
    // A data frame too: built in one allocation, header and payload together.
    { type: "data", run: "abc", stream: "stdout", data: new Uint8Array([0, 1, 255, 4]) },
  ];
  for (const [i, m] of sent.entries()) {
    channel.send(m);
    await Promise.resolve(); // small frames go out at the end of the turn
    assert.equal(stream.count("write"), i + 1);
  }
  assert.deepEqual(stream.calls, ["write", "write", "write", "write"]);
  for (const [i, w] of stream.writes.entries()) {
    const payload = encodeMessage(sent[i]);
    assert.equal(w.length, FRAME_HEADER_SIZE + payload.length);
    assert.equal(new DataView(w.buffer, w.byteOffset).getUint32(0, false), payload.length);
    assert.deepEqual(w, encodeFrame(payload));
    // Each write is one whole frame on its own.
    const d = new FrameDecoder();
    const out = d.push(w);
    assert.equal(out.length, 1);
    assert.equal(d.buffered, 0);
    assert.deepEqual(decodeServerMessage(out[0]), sent[i]);
  }
});

Deno.test("channel: small messages of one turn go out in one write, in order with large ones", async () => {
  const { stream, channel } = serverSide();
  const big: ServerMessage = {
    type: "data",
    run: "abc",
    stream: "stdout",
    data: new Uint8Array(32 * 1024).fill(7),
  };
  const sent: ServerMessage[] = [PONG, { type: "launched", id: 2, run: "abc", pid: 42 }, big, PONG];
  for (const m of sent) channel.send(m);
  // The two small frames are flushed before the large one, which is written at once.
  assert.equal(stream.count("write"), 2);
  await Promise.resolve();
  assert.equal(stream.count("write"), 3);
  const out = new FrameDecoder().push(concat(stream.writes)).map(decodeServerMessage);
  assert.deepEqual(out, sent);
});

Deno.test("channel: send() of a message over the frame limit throws and writes nothing", async () => {
  const { stream, channel } = serverSide(64);
  let caught: unknown;
  try {
    channel.send({ type: "error", code: "internal", message: "x".repeat(100) });
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof FrameError);
  assert.equal(caught.code, "oversize");
  assert.equal(stream.count("write"), 0);
  // A message that fits still goes out.
  channel.send(PONG);
  await Promise.resolve();
  assert.equal(stream.count("write"), 1);
});

Deno.test("channel: sendAndClose() writes, then ends", () => {
  const { stream, channel } = serverSide();
  channel.sendAndClose({ type: "error", code: "protocol", message: "bye" });
  assert.deepEqual(stream.calls, ["write", "end"]);
  assert.deepEqual(decodeServerMessage(new FrameDecoder().push(stream.writes[0])[0]), {
    type: "error",
    code: "protocol",
    message: "bye",
  });
  stream.emit("close");
});

Deno.test("channel: close() ends, destroy() destroys", () => {
  const { stream, channel } = serverSide();
  channel.close();
  assert.deepEqual(stream.calls, ["end"]);
  channel.destroy();
  assert.deepEqual(stream.calls, ["end", "destroy"]);
  stream.emit("close");
});

// ---------------------------------------------------------------- receiving

Deno.test("channel: a message in one chunk", () => {
  const { stream, messages, invalids } = serverSide();
  stream.emit("data", frameOf(LAUNCH));
  assert.deepEqual(messages(), [LAUNCH]);
  assert.deepEqual(invalids(), []);
});

Deno.test("channel: several messages in one chunk arrive in order", () => {
  const { stream, messages } = serverSide();
  stream.emit("data", concat([frameOf(PING), frameOf(STATUS), frameOf(LAUNCH)]));
  assert.deepEqual(messages(), [PING, STATUS, LAUNCH]);
});

Deno.test("channel: split delivery, one byte at a time", () => {
  const { stream, messages, invalids } = serverSide();
  const a = frameOf(PING);
  const b = frameOf(LAUNCH);
  const bytes = concat([a, b]);
  for (let i = 0; i < bytes.length; i++) {
    stream.emit("data", bytes.subarray(i, i + 1));
    const expected: ClientMessage[] = i + 1 < a.length
      ? []
      : i + 1 < bytes.length
      ? [PING]
      : [PING, LAUNCH];
    assert.deepEqual(messages(), expected, `after byte ${i}`);
  }
  assert.deepEqual(invalids(), []);
});

Deno.test("channel: a bad frame → onInvalid once, and later data is ignored", () => {
  const { stream, events, invalids, messages } = serverSide();
  stream.emit("data", frameOf(PING));
  stream.emit("data", Uint8Array.of(0, 0, 0, 0));
  const [err] = invalids();
  assert.ok(err instanceof FrameError);
  assert.equal(err.code, "empty");
  // Valid frames and more garbage afterwards: nothing more is reported.
  stream.emit("data", frameOf(STATUS));
  stream.emit("data", Uint8Array.of(0xff, 0xff, 0xff, 0xff));
  stream.emit("data", frameOf(LAUNCH));
  assert.equal(invalids().length, 1);
  assert.deepEqual(messages(), [PING]);
  assert.equal(events.length, 2);
});

Deno.test("channel: an oversize frame is refused after its header alone", () => {
  const { stream, invalids } = serverSide(16);
  const h = new Uint8Array(4);
  new DataView(h.buffer).setUint32(0, 17, false);
  stream.emit("data", h.subarray(0, 3));
  assert.deepEqual(invalids(), []);
  stream.emit("data", h.subarray(3));
  const [err] = invalids();
  assert.ok(err instanceof FrameError);
  assert.equal(err.code, "oversize");
});

Deno.test("channel: an invalid message → onInvalid once; earlier ones delivered, later ones not", () => {
  const { stream, invalids, messages } = serverSide();
  stream.emit(
    "data",
    concat([
      frameOf(PING),
      encodeFrame(utf8('{"type":"launch","id":1,"argv":[]}')),
      frameOf(STATUS),
    ]),
  );
  assert.deepEqual(messages(), [PING]);
  const [err] = invalids();
  assert.ok(err instanceof ProtocolError);
  assert.match(err.message, /argv/);
  stream.emit("data", encodeFrame(utf8("not json")));
  stream.emit("data", frameOf(LAUNCH));
  assert.equal(invalids().length, 1);
  assert.deepEqual(messages(), [PING]);
});

Deno.test("channel: a server message sent to a server is invalid", () => {
  const { stream, invalids, messages } = serverSide();
  stream.emit("data", frameOf(PONG));
  assert.deepEqual(messages(), []);
  assert.ok(invalids()[0] instanceof ProtocolError);
});

Deno.test("channel: a decoder bug is not disguised as an invalid peer", () => {
  const stream = new FakeStream();
  const invalid: unknown[] = [];
  new MessageChannel<ClientMessage, ServerMessage>(stream, () => {
    throw new TypeError("decoder bug");
  }, {
    onMessage: () => assert.fail("no message expected"),
    onInvalid: (e) => invalid.push(e),
    onClose: () => {},
  });
  assert.throws(() => stream.emit("data", frameOf(PING)), TypeError);
  assert.deepEqual(invalid, []);
});

// ---------------------------------------------------------------- closing

Deno.test("channel: onClose is called once, with null on a clean close", () => {
  const { stream, channel, closes } = serverSide();
  assert.equal(channel.closed, false);
  stream.emit("close");
  assert.equal(channel.closed, true);
  stream.emit("close");
  assert.deepEqual(closes(), [null]);
});

Deno.test("channel: a clean end half-closes our side too, then close reports no error", () => {
  const { stream, channel, closes, messages } = serverSide();
  stream.emit("data", frameOf(PING));
  stream.emit("end");
  assert.deepEqual(stream.calls, ["end"]);
  assert.deepEqual(closes(), []);
  assert.equal(channel.closed, false);
  stream.emit("close");
  assert.deepEqual(closes(), [null]);
  assert.deepEqual(messages(), [PING]);
});

Deno.test("channel: a truncated frame at end is reported through onClose", () => {
  for (const cut of [1, 3, 4, 10]) {
    const { stream, closes, invalids, messages } = serverSide();
    stream.emit("data", concat([frameOf(PING), frameOf(STATUS).subarray(0, cut)]));
    stream.emit("end");
    stream.emit("close");
    const errors = closes();
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof FrameError, `cut ${cut}: ${errors[0]}`);
    assert.equal(errors[0].code, "truncated");
    assert.deepEqual(invalids(), []);
    assert.deepEqual(messages(), [PING]);
  }
});

Deno.test("channel: a stream error is reported through onClose", () => {
  const { stream, closes } = serverSide();
  const err = new Error("ECONNRESET");
  stream.emit("error", err);
  assert.deepEqual(closes(), []);
  stream.emit("close");
  stream.emit("close");
  assert.equal(closes().length, 1);
  assert.equal(closes()[0], err);
});

Deno.test("channel: after close, sends and received data are ignored", () => {
  const { stream, channel, messages, invalids } = serverSide();
  stream.emit("close");
  channel.send(PONG);
  channel.sendAndClose(PONG);
  channel.close();
  assert.deepEqual(stream.calls, []);
  stream.emit("data", frameOf(PING));
  stream.emit("data", Uint8Array.of(0, 0, 0, 0));
  assert.deepEqual(messages(), []);
  assert.deepEqual(invalids(), []);
});

Deno.test("channel: closing from onMessage stops delivery of the rest of the chunk", () => {
  const { stream, messages, closes } = serverSide(undefined, (_m, ch) => ch.destroy());
  stream.closeOnDestroy = true;
  stream.emit("data", concat([frameOf(PING), frameOf(STATUS), frameOf(LAUNCH)]));
  assert.deepEqual(messages(), [PING]);
  assert.deepEqual(closes(), [null]);
  assert.deepEqual(stream.calls, ["destroy"]);
});

// ---------------------------------------------------------------- properties

Deno.test("property: messages sent by one channel are received by another, however chunked", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(clientMessageArb, { maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 16 }),
      fc.boolean(),
      async (sent, cuts, byByte) => {
        // A manager-side channel sends...
        const out = new FakeStream();
        const sender = new MessageChannel<ServerMessage, ClientMessage>(out, decodeServerMessage, {
          onMessage: () => {},
          onInvalid: () => {},
          onClose: () => {},
        });
        for (const m of sent) sender.send(m);
        await Promise.resolve(); // the turn's small frames are written together
        assert.ok(out.writes.length <= sent.length);
        // ...and a server-side one receives the bytes, cut anywhere.
        const { stream, messages, invalids, closes } = serverSide();
        const bytes = concat(out.writes);
        for (const c of byByte ? bytewise(bytes) : cutAt(bytes, cuts)) stream.emit("data", c);
        stream.emit("end");
        stream.emit("close");
        assert.deepEqual(messages(), sent);
        assert.deepEqual(invalids(), []);
        assert.deepEqual(closes(), [null]);
      },
    ),
    fuzzParams(100),
  );
});

Deno.test("property: a channel fed garbage reports at most one invalid and one close", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.uint8Array({ maxLength: 32 }),
          serverMessageArb.map(frameOf),
          clientMessageArb.map(frameOf),
        ),
        { maxLength: 10 },
      ),
      (chunks) => {
        const { stream, invalids, closes, events } = serverSide(256);
        for (const c of chunks) stream.emit("data", c);
        stream.emit("end");
        stream.emit("close");
        assert.ok(invalids().length <= 1);
        assert.equal(closes().length, 1);
        // Nothing after onInvalid but the close.
        const i = events.findIndex((e) => e.kind === "invalid");
        if (i >= 0) assert.deepEqual(events.slice(i + 1).map((e) => e.kind), ["close"]);
      },
    ),
    fuzzParams(),
  );
});

// Once close() or sendAndClose() is called, frames already received in the
// same chunk are dropped and nothing more is written.
Deno.test({
  name: "channel: after sendAndClose() from onMessage, the rest of the chunk is dropped",
  fn() {
    const { stream, messages } = serverSide(undefined, (_m, ch) => {
      ch.sendAndClose({ type: "error", code: "protocol", message: "bye" });
    });
    stream.emit("data", concat([frameOf(PING), frameOf(LAUNCH)]));
    assert.deepEqual(messages(), [PING]);
    assert.deepEqual(stream.calls, ["write", "end"]);
    stream.emit("close");
  },
});

Deno.test("channel: a stream already closed when the channel is made reports close once", async () => {
  const stream = Object.assign(new FakeStream(), { destroyed: true });
  const closes: (Error | null)[] = [];
  new MessageChannel<ClientMessage, ServerMessage>(stream, decodeClientMessage, {
    onMessage: () => {},
    onInvalid: () => {},
    onClose: (e) => closes.push(e),
  });
  await Promise.resolve();
  assert.deepEqual(closes, [null]);
  stream.emit("close");
  assert.deepEqual(closes, [null]);
});

// ------------------------------------------------------- back-pressure, limits

Deno.test("channel: not writable while the write queue is over its high-water mark; whenWritable settles on drain", async () => {
  const { stream, channel } = serverSide();
  assert.equal(channel.writable, true);
  stream.writableLength = channelLimits().writeHighWater;
  assert.equal(channel.send(PONG), false);
  assert.equal(channel.writable, false);
  // Reading pauses: no more requests come in to be answered.
  assert.equal(stream.count("pause"), 1);
  let woken = false;
  const w = channel.whenWritable().then(() => woken = true);
  await Promise.resolve();
  assert.equal(woken, false);
  stream.writableLength = 0;
  stream.emit("drain");
  await w;
  assert.equal(woken, true);
  assert.equal(stream.count("resume"), 1);
});

Deno.test("channel: requests held by the owner pause reading past the read high-water mark; data held does not", () => {
  const { stream, channel } = serverSide();
  const hw = channelLimits().readHighWater;
  channel.hold(hw, false);
  assert.equal(stream.count("pause"), 0);
  channel.hold(hw);
  assert.equal(stream.count("pause"), 1);
  channel.release(1);
  assert.equal(stream.count("resume"), 1);
  assert.equal(channel.buffered, 2 * hw - 1);
});

Deno.test("channel: past the buffer limit the owner hears BufferLimitError, once", () => {
  const { stream, channel, invalids } = serverSide();
  const limits = channelLimits();
  stream.writableLength = limits.maxBuffered;
  channel.hold(1);
  const errors = invalids();
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof BufferLimitError, String(errors[0]));
  assert.equal((errors[0] as BufferLimitError).limit, limits.maxBuffered);
  channel.hold(1);
  assert.equal(invalids().length, 1);
});

Deno.test("channel: the limit follows the frame size: 2 frames and 2 MiB", () => {
  assert.equal(channelLimits(1024 * 1024).maxBuffered, 4 * 1024 * 1024);
  assert.equal(channelLimits(8 * 1024 * 1024).maxBuffered, 18 * 1024 * 1024);
});

Deno.test("channel: a peer that does not take the last writes of a close is dropped", async () => {
  const { stream, channel } = serverSide();
  channel.close();
  assert.equal(stream.count("destroy"), 0);
  await new Promise((r) => setTimeout(r, 2100));
  assert.equal(stream.count("destroy"), 1);
  stream.emit("close");
});
