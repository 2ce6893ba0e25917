// Gatherer: one read plus what the stream already holds, never waiting for
// more, on byte streams (BYOB, buffers reused) and on other streams alike;
// nothing lost or reordered; the end and cancellation seen. concatBytes.
import assert from "node:assert/strict";
import { concatBytes, Gatherer } from "../protocol/read_ahead.ts";

/** A stream the test feeds by hand: a byte stream, or a plain one. */
function _fed(bytes: boolean) {
  let push!: (b: Uint8Array) => void;
  let end!: () => void;
  const source = {
    start(c: ReadableStreamDefaultController<Uint8Array> | ReadableByteStreamController) {
      push = (b) => c.enqueue(b);
      end = () => c.close();
    },
  };
  const stream = bytes
    ? new ReadableStream({ type: "bytes", ...source })
    : new ReadableStream<Uint8Array>(source);
  return {
    stream: stream as ReadableStream<Uint8Array>,
    push: (...xs: number[]) => push(new Uint8Array(xs)),
    end: () => end(),
  };
}

for (const bytes of [true, false]) {
  const kind = bytes ? "byte stream" : "plain stream";

  Deno.test(`Gatherer (${kind}): what is there now comes in one chunk; it never waits for more`, async () => {
    const f = _fed(bytes);
    const g = new Gatherer(f.stream, 16);
    f.push(1);
    f.push(2, 3);
    assert.deepEqual(await g.next(), new Uint8Array([1, 2, 3]));
    // Nothing there: next() waits for the first bytes, then returns them alone.
    const later = g.next();
    setTimeout(() => f.push(4), 20);
    assert.deepEqual(await later, new Uint8Array([4]));
    f.push(5);
    f.end();
    assert.deepEqual(await g.next(), new Uint8Array([5]));
    assert.equal(await g.next(), null);
    assert.equal(await g.next(), null, "the end stays the end");
    await g.ended;
  });

  Deno.test(`Gatherer (${kind}): a chunk is at most the limit; the rest comes next, in order`, async () => {
    const f = _fed(bytes);
    const g = new Gatherer(f.stream, 4);
    f.push(1, 2, 3, 4, 5, 6);
    f.push(7);
    f.end();
    const got: number[][] = [];
    for (let c = await g.next(3); c; c = await g.next(3)) got.push([...c]);
    assert.deepEqual(got.flat(), [1, 2, 3, 4, 5, 6, 7]);
    assert.ok(got.every((c) => c.length >= 1 && c.length <= 3), JSON.stringify(got));
  });

  Deno.test(`Gatherer (${kind}): cancel() ends the stream and resolves ended`, async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      ...(bytes ? { type: "bytes" as const } : {}),
      cancel() {
        cancelled = true;
      },
    });
    const g = new Gatherer(stream);
    await g.cancel();
    await g.ended;
    assert.ok(cancelled);
    assert.equal(await g.next(), null);
  });
}

Deno.test("Gatherer: a read kept ahead is not lost, and a failed read fails next()", async () => {
  const f = _fed(true);
  const g = new Gatherer(f.stream, 8);
  f.push(1);
  assert.deepEqual(await g.next(), new Uint8Array([1])); // a second read is now kept ahead
  f.push(2);
  assert.deepEqual(await g.next(), new Uint8Array([2]));
  let fail!: (e: Error) => void;
  const broken = new ReadableStream<Uint8Array>({
    type: "bytes",
    start(c) {
      fail = (e) => c.error(e);
    },
  });
  const h = new Gatherer(broken);
  const pending = h.next();
  fail(new Error("broken pipe"));
  await assert.rejects(pending, /broken pipe/);
});

Deno.test("Gatherer on a real pipe: 4 MB from a child arrive whole, in order, in chunks of at most the limit", async () => {
  const size = 4_000_000;
  const child = new Deno.Command("perl", {
    args: [
      "-e",
      `my $n = 0; while ($n < ${size}) { my $k = 1 + ($n % 9973); $k = ${size} - $n if $n + $k > ${size}; syswrite(STDOUT, join("", map { chr(($n + $_) % 251) } 0 .. $k - 1)); $n += $k; }`,
    ],
    stdout: "piped",
  }).spawn();
  const g = new Gatherer(child.stdout, 65536);
  let n = 0;
  let ok = true;
  for (let c = await g.next(); c; c = await g.next()) {
    assert.ok(c.length <= 65536);
    for (const b of c) if (b !== n++ % 251) ok = false;
  }
  await child.status;
  assert.equal(n, size);
  assert.ok(ok, "every byte in order");
});

Deno.test("concatBytes joins parts in order; one part is returned as it is", () => {
  const one = new Uint8Array([9]);
  assert.equal(concatBytes([one], 1), one);
  assert.deepEqual(
    concatBytes([new Uint8Array([1, 2]), new Uint8Array([]), new Uint8Array([3])], 3),
    new Uint8Array([1, 2, 3]),
  );
});
