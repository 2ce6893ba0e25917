// ReadAhead: taking what a stream already holds, never waiting for more;
// concatBytes.
import assert from "node:assert/strict";
import { concatBytes, ReadAhead } from "../protocol/read_ahead.ts";

Deno.test("ReadAhead.soon: what is there now, null for what is not, and the kept read is not lost", async () => {
  let push!: (b: Uint8Array) => void;
  let end!: () => void;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      push = (b) => c.enqueue(b);
      end = () => c.close();
    },
  });
  const r = new ReadAhead(stream.getReader());
  push(new Uint8Array([1]));
  push(new Uint8Array([2]));
  assert.deepEqual((await r.read()).value, new Uint8Array([1]));
  assert.deepEqual((await r.soon())?.value, new Uint8Array([2]));
  // Nothing more yet: null, and the read started stays ahead.
  assert.equal(await r.soon(), null);
  push(new Uint8Array([3]));
  assert.deepEqual((await r.read()).value, new Uint8Array([3]));
  end();
  assert.equal((await r.read()).done, true);
});

Deno.test("concatBytes joins parts in order; one part is returned as it is", () => {
  const one = new Uint8Array([9]);
  assert.equal(concatBytes([one], 1), one);
  assert.deepEqual(
    concatBytes([new Uint8Array([1, 2]), new Uint8Array([]), new Uint8Array([3])], 3),
    new Uint8Array([1, 2, 3]),
  );
});
