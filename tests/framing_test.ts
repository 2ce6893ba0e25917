/**
 * Unit and property tests of the frame codec (protocol/framing.ts).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  type FrameErrorCode,
  frameInPlace,
} from "../protocol/mod.ts";
import { bytewise, concat, cutAt, frames, fuzzParams, pattern } from "./_fuzz.ts";

/** A bare 4-byte big-endian length header. */
function header(length: number): Uint8Array {
  const h = new Uint8Array(FRAME_HEADER_SIZE);
  new DataView(h.buffer).setUint32(0, length, false);
  return h;
}

/** Asserts that `fn` throws a FrameError with `code`, and returns it. */
function throwsFrame(fn: () => unknown, code: FrameErrorCode): FrameError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof FrameError, `expected a FrameError, got ${caught}`);
  assert.equal(caught.code, code);
  assert.equal(caught.name, "FrameError");
  return caught;
}

/** Pushes every chunk, returning every payload. */
function decodeAll(d: FrameDecoder, chunks: readonly Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const c of chunks) out.push(...d.push(c));
  return out;
}

// ---------------------------------------------------------------- encodeFrame

Deno.test("encodeFrame: 4-byte big-endian length, then the payload", () => {
  assert.deepEqual(
    encodeFrame(new TextEncoder().encode("hi")),
    Uint8Array.of(0, 0, 0, 2, 104, 105),
  );
  // 0x010203 bytes: every header byte differs, so a byte-order mistake shows.
  const big = pattern(0x010203);
  const f = encodeFrame(big);
  assert.equal(f.length, FRAME_HEADER_SIZE + big.length);
  assert.deepEqual(f.subarray(0, 4), Uint8Array.of(0, 1, 2, 3));
  assert.deepEqual(f.subarray(4), big);
});

Deno.test("encodeFrame: copies the payload", () => {
  const p = Uint8Array.of(1, 2, 3);
  const f = encodeFrame(p);
  p[0] = 99;
  assert.deepEqual(f, Uint8Array.of(0, 0, 0, 3, 1, 2, 3));
});

Deno.test("encodeFrame: refuses an empty payload", () => {
  throwsFrame(() => encodeFrame(new Uint8Array(0)), "empty");
  throwsFrame(() => encodeFrame(new Uint8Array(0), 16), "empty");
});

Deno.test("encodeFrame: refuses a payload over the maximum", () => {
  throwsFrame(() => encodeFrame(new Uint8Array(DEFAULT_MAX_FRAME_SIZE + 1)), "oversize");
  throwsFrame(() => encodeFrame(new Uint8Array(9), 8), "oversize");
  assert.equal(encodeFrame(new Uint8Array(8), 8).length, 12);
  assert.equal(encodeFrame(new Uint8Array(1), 1).length, 5);
});

// ---------------------------------------------------------------- round trips

for (const size of [1, 2 ** 16, DEFAULT_MAX_FRAME_SIZE]) {
  Deno.test(`round trip: payload of ${size} bytes`, () => {
    const payload = pattern(size, size);
    const frame = encodeFrame(payload);
    assert.equal(frame.length, size + FRAME_HEADER_SIZE);
    const d = new FrameDecoder();
    const out = d.push(frame);
    assert.equal(out.length, 1);
    assert.deepEqual(out[0], payload);
    assert.equal(d.buffered, 0);
    d.finish();
  });
}

Deno.test("round trip: exactly the maximum, fed in two halves", () => {
  const payload = pattern(DEFAULT_MAX_FRAME_SIZE, 3);
  const frame = encodeFrame(payload);
  const d = new FrameDecoder();
  const half = frame.length >> 1;
  assert.deepEqual(d.push(frame.subarray(0, half)), []);
  assert.equal(d.buffered, half);
  const out = d.push(frame.subarray(half));
  assert.equal(out.length, 1);
  assert.deepEqual(out[0], payload);
  assert.equal(d.buffered, 0);
});

Deno.test("decoder: frames fed one byte at a time come out exactly when complete", () => {
  const payloads = [1, 2, 3, 4, 5, 255, 256, 1000].map((n, i) => pattern(n, i));
  const stream = frames(payloads);
  // Byte offsets at which each frame ends.
  const ends: number[] = [];
  let off = 0;
  for (const p of payloads) ends.push(off += FRAME_HEADER_SIZE + p.length);

  const d = new FrameDecoder();
  const got: Uint8Array[] = [];
  for (let i = 0; i < stream.length; i++) {
    const out = d.push(stream.subarray(i, i + 1));
    const k = ends.indexOf(i + 1);
    if (k >= 0) {
      assert.equal(out.length, 1, `frame ${k} should complete at byte ${i}`);
      assert.deepEqual(out[0], payloads[k]);
      assert.equal(d.buffered, 0);
    } else {
      assert.deepEqual(out, [], `nothing should complete at byte ${i}`);
      assert.equal(d.buffered, i + 1 - (ends.findLast((e) => e <= i) ?? 0));
    }
    got.push(...out);
  }
  assert.deepEqual(got, payloads);
  d.finish();
});

Deno.test("decoder: every split point of a two-frame stream", () => {
  const payloads = [pattern(7, 1), pattern(3, 2)];
  const stream = frames(payloads);
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const d = new FrameDecoder();
      const got = decodeAll(d, [stream.slice(0, i), stream.slice(i, j), stream.slice(j)]);
      assert.deepEqual(got, payloads, `split at ${i}, ${j}`);
      assert.equal(d.buffered, 0);
    }
  }
});

Deno.test("decoder: several frames in one chunk, plus part of the next", () => {
  const payloads = [pattern(10, 1), pattern(1, 2), pattern(300, 3), pattern(20, 4)];
  const stream = frames(payloads);
  const cut = stream.length - 9; // inside the last payload
  const d = new FrameDecoder();
  const first = d.push(stream.subarray(0, cut));
  assert.deepEqual(first, payloads.slice(0, 3));
  assert.equal(d.buffered, FRAME_HEADER_SIZE + 20 - 9);
  assert.deepEqual(d.push(stream.subarray(cut)), [payloads[3]]);
  assert.equal(d.buffered, 0);
});

Deno.test("decoder: an empty chunk changes nothing", () => {
  const d = new FrameDecoder();
  assert.deepEqual(d.push(new Uint8Array(0)), []);
  assert.equal(d.buffered, 0);
  d.push(Uint8Array.of(0, 0));
  assert.deepEqual(d.push(new Uint8Array(0)), []);
  assert.equal(d.buffered, 2);
});

Deno.test("decoder: chunks that are views into a larger buffer", () => {
  const big = new Uint8Array(64).fill(0xee);
  const f = encodeFrame(Uint8Array.of(5, 6, 7));
  big.set(f, 10);
  const d = new FrameDecoder();
  assert.deepEqual(d.push(big.subarray(10, 12)), []);
  assert.deepEqual(d.push(big.subarray(12, 10 + f.length)), [Uint8Array.of(5, 6, 7)]);
  assert.equal(d.buffered, 0);
});

Deno.test("decoder: a small payload does not pin a large receive buffer", () => {
  const big = concat([encodeFrame(Uint8Array.of(1, 2, 3)), encodeFrame(pattern(100_000))]);
  const d = new FrameDecoder();
  const [small, large] = d.push(big);
  assert.deepEqual(small, Uint8Array.of(1, 2, 3));
  assert.equal(large.length, 100_000);
  assert.ok(small.buffer.byteLength < 1024, `payload holds ${small.buffer.byteLength} bytes`);
});

// ---------------------------------------------------------------- errors

Deno.test("decoder: length 0 is refused as 'empty'", () => {
  throwsFrame(() => new FrameDecoder().push(header(0)), "empty");
  // Also after a good frame, and when the zero header arrives byte by byte.
  const d = new FrameDecoder();
  assert.equal(d.push(encodeFrame(Uint8Array.of(1))).length, 1);
  for (const b of [0, 0, 0]) assert.deepEqual(d.push(Uint8Array.of(b)), []);
  throwsFrame(() => d.push(Uint8Array.of(0)), "empty");
});

for (const length of [DEFAULT_MAX_FRAME_SIZE + 1, 0xffffffff]) {
  Deno.test(`decoder: length ${length} is refused after only its 4 header bytes`, () => {
    const d = new FrameDecoder();
    const h = header(length);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(d.push(h.subarray(i, i + 1)), []);
      assert.equal(d.buffered, i + 1);
    }
    // No payload byte has arrived: a decoder that waited for (or allocated)
    // the payload would not throw here.
    throwsFrame(() => d.push(h.subarray(3)), "oversize");
    assert.equal(d.buffered, 0);
  });
}

Deno.test("decoder: oversize header followed by data in the same chunk", () => {
  const d = new FrameDecoder(100);
  throwsFrame(() => d.push(concat([header(101), new Uint8Array(200)])), "oversize");
  assert.equal(d.buffered, 0);
});

Deno.test("decoder: a header of exactly the maximum waits for its payload", () => {
  const d = new FrameDecoder();
  assert.deepEqual(d.push(header(DEFAULT_MAX_FRAME_SIZE)), []);
  assert.equal(d.buffered, FRAME_HEADER_SIZE);
  throwsFrame(() => d.finish(), "truncated");
});

Deno.test("decoder: finish() on a truncated stream throws 'truncated'", () => {
  const frame = encodeFrame(pattern(10));
  for (let cut = 1; cut < frame.length; cut++) {
    const d = new FrameDecoder();
    assert.deepEqual(d.push(frame.subarray(0, cut)), []);
    throwsFrame(() => d.finish(), "truncated");
  }
  // A clean stream ends cleanly, whether empty or after whole frames.
  new FrameDecoder().finish();
  const d = new FrameDecoder();
  d.push(concat([frame, frame]));
  d.finish();
});

Deno.test("decoder: after an error it keeps throwing", () => {
  const d = new FrameDecoder(8);
  throwsFrame(() => d.push(header(9)), "oversize");
  // Good data afterwards does not revive it.
  throwsFrame(() => d.push(encodeFrame(Uint8Array.of(1), 8)), "oversize");
  throwsFrame(() => d.push(new Uint8Array(0)), "oversize");
  throwsFrame(() => d.finish(), "oversize");
  assert.equal(d.buffered, 0);

  const e = new FrameDecoder();
  throwsFrame(() => e.push(header(0)), "empty");
  throwsFrame(() => e.push(encodeFrame(Uint8Array.of(1))), "empty");
  throwsFrame(() => e.finish(), "empty");
});

Deno.test("decoder: custom maximum frame size", () => {
  const d = new FrameDecoder(16);
  const p = pattern(16);
  assert.deepEqual(d.push(encodeFrame(p, 16)), [p]);
  assert.deepEqual(d.push(header(17).subarray(0, 3)), []);
  throwsFrame(() => d.push(header(17).subarray(3)), "oversize");

  const one = new FrameDecoder(1);
  assert.deepEqual(one.push(encodeFrame(Uint8Array.of(42), 1)), [Uint8Array.of(42)]);
  throwsFrame(() => one.push(header(2)), "oversize");

  // The largest a header can say is allowed when the maximum allows it.
  const huge = new FrameDecoder(0xffffffff);
  assert.deepEqual(huge.push(header(0xffffffff)), []);
  assert.equal(huge.buffered, FRAME_HEADER_SIZE);
});

Deno.test("decoder: invalid maximum frame sizes are refused", () => {
  for (const bad of [0, -1, 1.5, NaN, Infinity, 0x100000000]) {
    assert.throws(() => new FrameDecoder(bad), RangeError, `max ${bad}`);
  }
});

Deno.test("FrameError is an Error with a code", () => {
  const e = new FrameError("truncated", "x");
  assert.ok(e instanceof Error);
  assert.equal(e.code, "truncated");
  assert.equal(e.message, "x");
});

// Payloads completed earlier in the same chunk as a bad header still come
// out; the error follows on the next push() or finish().
Deno.test({
  name: "decoder: frames before a bad header in the same chunk are not lost",
  fn() {
    const good = encodeFrame(Uint8Array.of(1, 2, 3));
    const bad = header(0);
    // Two chunks: the good payload comes out, then the error.
    const split = new FrameDecoder();
    assert.deepEqual(split.push(good), [Uint8Array.of(1, 2, 3)]);
    throwsFrame(() => split.push(bad), "empty");
    // One chunk: the good payload should still come out before the error
    // is reported (at the latest on the next push or finish()).
    const whole = new FrameDecoder();
    let got: Uint8Array[] = [];
    try {
      got = whole.push(concat([good, bad]));
    } catch {
      // payload lost
    }
    assert.deepEqual(got, [Uint8Array.of(1, 2, 3)]);
    throwsFrame(() => whole.finish(), "empty");
  },
});

// ---------------------------------------------------------------- properties

const payloadArb = fc.uint8Array({ minLength: 1, maxLength: 300 });

Deno.test("property: encoded payloads re-chunked anywhere decode the same, in order", () => {
  fc.assert(
    fc.property(
      fc.array(payloadArb, { maxLength: 20 }),
      fc.array(fc.nat(), { maxLength: 30 }),
      (payloads, cuts) => {
        const d = new FrameDecoder();
        const got = decodeAll(d, cutAt(frames(payloads), cuts));
        assert.deepEqual(got, payloads);
        assert.equal(d.buffered, 0);
        d.finish();
      },
    ),
    fuzzParams(),
  );
});

Deno.test("property: a stream cut short decodes whole frames and finish() says truncated", () => {
  fc.assert(
    fc.property(
      fc.array(payloadArb, { minLength: 1, maxLength: 8 }),
      fc.nat(),
      fc.boolean(),
      (payloads, where, byByte) => {
        const stream = frames(payloads);
        const cut = where % (stream.length + 1);
        const boundaries = [0];
        for (const p of payloads) {
          boundaries.push(boundaries.at(-1)! + FRAME_HEADER_SIZE + p.length);
        }
        const whole = boundaries.filter((b) => b <= cut).length - 1;

        const d = new FrameDecoder();
        const prefix = stream.subarray(0, cut);
        const got = decodeAll(d, byByte ? bytewise(prefix) : [prefix]);
        assert.deepEqual(got, payloads.slice(0, whole));
        assert.equal(d.buffered, cut - boundaries[whole]);
        if (boundaries.includes(cut)) d.finish();
        else throwsFrame(() => d.finish(), "truncated");
      },
    ),
    fuzzParams(),
  );
});

// Garbage in any chunking: see the shared properties in tests/_fuzz.ts (run by
// tests/fuzz_test.ts), which check the decoder's invariants after every step.

Deno.test("framing: frameInPlace writes the header into the room left for it", () => {
  const buf = new Uint8Array([9, 9, 9, 9, 104, 105, 0]);
  const f = frameInPlace(buf);
  assert.equal(f, buf);
  assert.deepEqual(f, encodeFrame(new Uint8Array([104, 105, 0])));
  assert.deepEqual(new FrameDecoder().push(f), [new Uint8Array([104, 105, 0])]);
  throwsFrame(() => frameInPlace(new Uint8Array(FRAME_HEADER_SIZE)), "empty");
  throwsFrame(() => frameInPlace(new Uint8Array(FRAME_HEADER_SIZE + 11), 10), "oversize");
});

Deno.test("framing: a large payload is returned without a copy, a small one does not pin its chunk", () => {
  const big = new Uint8Array(60_000).map((_, i) => i % 253);
  const small = new Uint8Array([1, 2, 3]);
  // Both frames in one received chunk, the small one last.
  const chunk = concat([encodeFrame(big), encodeFrame(small)]);
  const [a, b] = new FrameDecoder().push(chunk);
  assert.deepEqual(a, big);
  assert.deepEqual(b, small);
  assert.equal(a.buffer, chunk.buffer, "the large payload is a view of the received chunk");
  assert.equal(b.buffer.byteLength, small.length, "the small payload is a copy of its own");
  // Later writes into the received buffer do not reach a copied payload.
  chunk.fill(0);
  assert.deepEqual(b, small);
});
