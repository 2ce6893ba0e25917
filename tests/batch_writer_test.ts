// BatchWriter: chunks queued behind a write in flight go out merged, in
// order; a slow writer holds the producer back; a failed write fails what
// follows; flush() waits for everything. The writer under it is a real
// pipe to a real `cat` in the last test, a controllable one in the others.
import assert from "node:assert/strict";
import { BatchWriter, type ByteWriter } from "../manager/batch_writer.ts";

/** A writer whose writes complete when the test says, taking at most `max` bytes each. */
class _GatedWriter implements ByteWriter {
  readonly writes: Uint8Array[] = [];
  #gates: (() => void)[] = [];
  fail: Error | null = null;
  constructor(readonly max = Infinity) {}
  async write(p: Uint8Array): Promise<number> {
    await new Promise<void>((r) => this.#gates.push(r));
    if (this.fail) throw this.fail;
    const n = Math.min(p.length, this.max);
    this.writes.push(p.slice(0, n));
    return n;
  }
  get waiting(): number {
    return this.#gates.length;
  }
  /** Lets the oldest pending write complete, and the microtasks after it run. */
  async open(): Promise<void> {
    this.#gates.shift()?.();
    for (let i = 0; i < 10; i++) await Promise.resolve();
  }
}

const _bytes = (...xs: number[]) => new Uint8Array(xs);

/** Whether `p` has settled, after letting pending microtasks run. */
async function _settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => done = true, () => done = true);
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
}

Deno.test("chunks queued behind a write in flight go out as one write, in order", async () => {
  const w = new _GatedWriter();
  const out = new BatchWriter(w, 1024);
  await out.write(_bytes(1));
  await out.write(_bytes(2, 3));
  await out.write(_bytes(4));
  assert.equal(w.waiting, 1, "one write in flight");
  await w.open();
  await w.open();
  const flushed = out.flush();
  await flushed;
  assert.deepEqual(w.writes, [_bytes(1), _bytes(2, 3, 4)]);
  assert.equal(out.held, 0);
});

Deno.test("a short write is completed before anything after it", async () => {
  const w = new _GatedWriter(2);
  const out = new BatchWriter(w, 1024);
  await out.write(_bytes(1, 2, 3, 4, 5));
  await out.write(_bytes(6));
  const flushed = out.flush();
  while (!(await _settled(flushed))) await w.open();
  const all = w.writes.flatMap((c) => [...c]);
  assert.deepEqual(all, [1, 2, 3, 4, 5, 6]);
  assert.ok(w.writes.every((c) => c.length <= 2));
});

Deno.test("past the limit, write() waits until the writer has caught up", async () => {
  const w = new _GatedWriter();
  const out = new BatchWriter(w, 4);
  await out.write(_bytes(1, 2, 3)); // in flight: 3 held
  const second = out.write(_bytes(4, 5)); // 5 held: over the limit
  assert.equal(await _settled(second), false, "the producer is held back");
  await w.open(); // the first write completes: 2 held
  assert.equal(await _settled(second), true);
  await second;
  await w.open();
  await out.flush();
  assert.deepEqual(w.writes, [_bytes(1, 2, 3), _bytes(4, 5)]);
});

Deno.test("no merged write is larger than the limit, unless one chunk is", async () => {
  const w = new _GatedWriter();
  const out = new BatchWriter(w, 4);
  await out.write(_bytes(0));
  const queued = [
    out.write(_bytes(1, 2)),
    out.write(_bytes(3, 4)),
    out.write(_bytes(5, 6, 7, 8, 9)),
  ];
  const flushed = out.flush();
  while (!(await _settled(flushed))) await w.open();
  await Promise.all(queued);
  assert.deepEqual(w.writes, [_bytes(0), _bytes(1, 2, 3, 4), _bytes(5, 6, 7, 8, 9)]);
});

Deno.test("a failed write fails waiting and later writes and flush(), with its error", async () => {
  const w = new _GatedWriter();
  const out = new BatchWriter(w, 2);
  await out.write(_bytes(1));
  const waiting = out.write(_bytes(2, 3));
  const broken = new Error("broken pipe");
  w.fail = broken;
  await w.open();
  await assert.rejects(waiting, (e) => e === broken);
  await assert.rejects(out.write(_bytes(4)), (e) => e === broken);
  await assert.rejects(out.flush(), (e) => e === broken);
  assert.equal(out.held, 0, "nothing is kept after the failure");
  assert.deepEqual(w.writes, []);
});

Deno.test("empty chunks are ignored and flush() with nothing queued resolves", async () => {
  const w = new _GatedWriter();
  const out = new BatchWriter(w);
  await out.write(new Uint8Array(0));
  await out.flush();
  assert.equal(w.waiting, 0);
});

Deno.test("through a real pipe: about 8 MB in 1000 odd-sized chunks arrive whole and in order", async () => {
  const child = new Deno.Command("cat", { stdin: "piped", stdout: "piped" }).spawn();
  const writer = child.stdin.getWriter();
  const out = new BatchWriter({
    write: async (p) => {
      await writer.ready;
      await writer.write(p.slice());
      return p.length;
    },
  }, 256 * 1024);
  const expected: number[] = [];
  const reading = (async () => {
    const got: Uint8Array[] = [];
    for await (const c of child.stdout) got.push(c);
    return got;
  })();
  let seq = 0;
  for (let i = 0; i < 1000; i++) {
    const chunk = new Uint8Array(1 + (i * 7919) % 16000);
    for (let j = 0; j < chunk.length; j++) chunk[j] = seq++ & 0xff;
    expected.push(chunk.length);
    await out.write(chunk);
  }
  await out.flush();
  await writer.close();
  const got = await reading;
  await child.status;
  const total = expected.reduce((a, b) => a + b, 0);
  let n = 0;
  let ok = true;
  for (const c of got) {
    for (const b of c) if (b !== (n++ & 0xff)) ok = false;
  }
  assert.equal(n, total);
  assert.ok(ok, "every byte in order");
});
