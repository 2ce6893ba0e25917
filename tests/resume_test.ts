/**
 * A run's streams across a kill -9 of cmappserver (issue 12): the
 * supervisor holds them, the next cmappserver takes them back, and the
 * manager learns where each resumes (protocol 1.3 `resume`): output goes
 * on, stdin goes on, and whatever could not be kept is counted and
 * reported, never dropped silently.
 */
import assert from "node:assert/strict";
import {
  eventually,
  freePort,
  mgrArgs,
  programCommand,
  ServerFixture,
  type ServerProcess,
} from "./_harness.ts";
import { type Client, connect } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** cmappmgr with stdin piped from the test; its stdout and stderr collected. */
function mgrWithStdin(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappmgr"), ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const result = child.output().then((o) => ({
    code: o.code,
    stdout: dec.decode(o.stdout),
    stderr: dec.decode(o.stderr),
  }));
  return {
    write: (s: string) => writer.write(enc.encode(s)),
    end: () => writer.close(),
    result,
    kill: async () => {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone
      }
      await writer.close().catch(() => {});
      await result.catch(() => {});
    },
  };
}

function args(f: ServerFixture, port: number, name: string, ...more: string[]): string[] {
  return mgrArgs(
    f.keys,
    { port } as ServerProcess,
    "-service_name",
    name,
    "-poll_interval",
    "0.1",
    "-cmappserver_timeout",
    "60",
    ...more,
  );
}

/** Lost bytes of stdout that cmappmgr reported on stderr, in all. */
function reportedLost(stderr: string): number {
  return [...stderr.matchAll(/(\d+) bytes of the application's stdout were lost/g)]
    .reduce((n, m) => n + Number(m[1]), 0);
}

Deno.test("output resumes after cmappserver is killed: every byte arrives or is counted", async () => {
  const f = await ServerFixture.create();
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    const LINES = 400;
    const script =
      `i=0; while [ $i -lt ${LINES} ]; do echo "line $i"; i=$((i+1)); sleep 0.005; done`;
    const mgr = f.startMgr(args(f, port, "talk", "--", "/bin/sh", "-c", script));
    await first.waitForLog(/started run \S+ \(talk\)/);
    await new Promise((r) => setTimeout(r, 500));
    await f.crash(first);
    await new Promise((r) => setTimeout(r, 300));
    await f.server("-port", `${port}`);
    const r = await mgr.result;
    assert.equal(r.code, 0, r.stderr);
    const want = Array.from({ length: LINES }, (_, i) => `line ${i}\n`).join("");
    const lost = reportedLost(r.stderr);
    assert.equal(r.stdout.length + lost, want.length, `got ${r.stdout.length}, lost ${lost}`);
    if (lost === 0) assert.equal(r.stdout, want);
    // What arrived is the stream with one gap at most, in order, nothing twice.
    const lines = r.stdout.split("\n").filter((l) => l);
    const numbers = lines.map((l) => Number(/^line (\d+)$/.exec(l)?.[1] ?? NaN));
    assert.ok(numbers.every((n, i) => i === 0 || n > numbers[i - 1]), "out of order or twice");
  } finally {
    await f.cleanup();
  }
});

Deno.test("output written while no cmappserver is there overflows, counted and reported", async () => {
  const f = await ServerFixture.create();
  try {
    const port = freePort();
    const marker = `${f.dir}/go`;
    const first = await f.server("-port", `${port}`);
    const SIZE = 1_000_000;
    const script = `while [ ! -e ${marker} ]; do sleep 0.02; done; head -c ${SIZE} /dev/zero | ` +
      `tr '\\0' x; echo; echo end`;
    const mgr = f.startMgr(args(f, port, "flood", "--", "/bin/sh", "-c", script));
    await first.waitForLog(/started run \S+ \(flood\)/);
    await f.crash(first);
    // With nobody to take it, the application is never blocked: it writes it all, and ends.
    await Deno.writeTextFile(marker, "");
    await eventually("the application to end", async () => {
      const exit = await Deno.readDir(`${f.stateDir}/runs`);
      for await (const e of exit) if (e.name.endsWith(".exit")) return true;
      return false;
    });
    await f.server("-port", `${port}`);
    const r = await mgr.result;
    assert.equal(r.code, 0, r.stderr);
    const lost = reportedLost(r.stderr);
    assert.ok(lost > 0, `nothing reported lost: ${r.stderr}`);
    assert.equal(r.stdout.length + lost, SIZE + 5);
    assert.ok(r.stdout.endsWith("\nend\n"), "the end of the output, kept for the next daemon");
    assert.match(r.stderr, /the run's streams are not complete: \d+ bytes of stdout were lost/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("stdin resumes after cmappserver is killed: nothing lost, nothing twice", async () => {
  const f = await ServerFixture.create();
  const out = `${f.dir}/received`;
  let mgr: ReturnType<typeof mgrWithStdin> | null = null;
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    mgr = mgrWithStdin(args(f, port, "cat", "-stdin", "--", "/bin/sh", "-c", `cat > ${out}`));
    const part1 = "first part\n".repeat(1000);
    const part2 = "second part\n".repeat(1000);
    await mgr.write(part1);
    await eventually(
      "the first part to arrive",
      async () => (await Deno.readTextFile(out).catch(() => "")).length === part1.length,
    );
    await f.crash(first);
    await mgr.write(part2);
    await new Promise((r) => setTimeout(r, 300));
    await f.server("-port", `${port}`);
    await mgr.end();
    const r = await mgr.result;
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /bytes .*lost|may not have arrived/);
    assert.equal(await Deno.readTextFile(out), part1 + part2);
  } finally {
    await mgr?.kill();
    await f.cleanup();
  }
});

// ---------------------------------------------------------------- from the hostile review

class ApiFixture extends ServerFixture {
  readonly clients: Client[] = [];

  async client(server: ServerProcess): Promise<Client> {
    const c = await connect({
      host: "127.0.0.1",
      port: server.port,
      identity: await loadIdentity(this.keys.manager),
      trust: await loadTrust(this.keys.manager),
    });
    this.clients.push(c);
    return c;
  }

  protected override async endOthers(): Promise<void> {
    for (const c of this.clients) {
      c.close();
      await c.closed;
    }
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A counter file's number, once it has one. */
async function counter(path: string): Promise<number> {
  for (;;) {
    const t = (await Deno.readTextFile(path).catch(() => "")).trim();
    if (t) return Number(t);
    await sleep(5);
  }
}

/** The application keeps writing (its counter moves): it is not blocked on its output. */
async function keepsWriting(path: string): Promise<void> {
  const before = await counter(path);
  await eventually("the application to write on", async () => await counter(path) > before + 50);
}

const CHATTY = (cnt: string, pause = "") =>
  `i=0; while :; do head -c 4096 /dev/zero; i=$((i+1)); echo $i > ${cnt}; ${pause} done`;

Deno.test("a re-adopted streamed run with no manager never blocks its application", async () => {
  const f = await ApiFixture.create();
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    const c = await f.client(first);
    const cnt = `${f.dir}/cnt`;
    const r = await c.launch(["/bin/sh", "-c", CHATTY(cnt)], { name: "chatty", streams: true });
    c.onOutput(r.run, () => {});
    c.grant(r.run, "stdout", 1 << 20);
    c.grant(r.run, "stderr", 1 << 20);
    await counter(cnt);
    c.close();
    await c.closed;
    await keepsWriting(cnt); // the same daemon, its manager gone
    await f.crash(first);
    const second = await f.server("-port", `${port}`);
    await second.waitForLog(/re-adopted run/);
    await keepsWriting(cnt); // a new daemon, no manager at all (after the hold)
  } finally {
    await f.cleanup();
  }
});

Deno.test("an application that does not read its stdin still has its output taken back", async () => {
  const f = await ApiFixture.create();
  try {
    const port = freePort();
    const first = await f.server("-port", `${port}`);
    const c = await f.client(first);
    const cnt = `${f.dir}/cnt`;
    const r = await c.launch(["/bin/sh", "-c", CHATTY(cnt, "sleep 0.01;")], {
      name: "deaf",
      streams: true,
      stdin: true,
    });
    c.onOutput(r.run, () => {});
    c.grant(r.run, "stdout", 1 << 20);
    c.grant(r.run, "stderr", 1 << 20);
    // More stdin than the pipe and the supervisor hold, never read.
    const chunk = new Uint8Array(60000).fill(65);
    for (let i = 0; i < 8; i++) await c.sendStdin(r.run, chunk);
    c.close();
    await c.closed;
    await f.crash(first);
    const second = await f.server("-port", `${port}`);
    const c2 = await f.client(second);
    let got = 0;
    c2.onOutput(r.run, (_s, bytes) => {
      got += bytes.length;
    });
    const st = await c2.status(r.run, { streams: true, window: 1 << 20 });
    assert.equal(st.state, "running");
    await eventually("output to come through the new daemon", () => Promise.resolve(got > 100_000));
    await keepsWriting(cnt);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a slow reader at the end of a run: every byte arrives or is reported lost", async () => {
  const f = await ApiFixture.create();
  try {
    const s = await f.server();
    const N = 1_250_000;
    const c = await f.client(s);
    const r = await c.launch(["/bin/sh", "-c", `head -c ${N} /dev/zero; exit 0`], {
      name: "slow",
      streams: true,
    });
    let release!: () => void;
    const gate = new Promise<void>((res) => release = res);
    let got = 0;
    const resumes: number[] = [];
    c.onStreamEvents(r.run, {
      resume: (stream, at) => stream === "stdout" && resumes.push(at),
      stdinTaken: () => {},
    });
    c.onOutput(r.run, async (stream, b) => {
      await gate;
      if (stream === "stdout") got += b.length;
    });
    c.grant(r.run, "stdout", 1 << 20);
    c.grant(r.run, "stderr", 1 << 20);
    setTimeout(release, 5000); // the reader is busy for 5 s, past the supervisor's drain
    assert.deepEqual(await c.wait(r.run), { code: 0 });
    // Offsets: the first says where it started (0), a later one where it really ended.
    const end = resumes.length > 1 ? resumes[resumes.length - 1] : got;
    assert.equal(end, N, `resumes ${resumes}, got ${got}`);
    assert.ok(got <= N);
  } finally {
    await f.cleanup();
  }
});

Deno.test("stdin in flight when a manager reconnects is not delivered twice", async () => {
  const f = await ApiFixture.create();
  try {
    const s = await f.server();
    const out = `${f.dir}/received`;
    const c1 = await f.client(s);
    const r = await c1.launch(["/bin/sh", "-c", `sleep 3; cat > ${out}`], {
      name: "slowcat",
      stdin: true,
      streams: true,
    });
    c1.onOutput(r.run, () => {});
    const TOTAL = 900_000;
    const all = new Uint8Array(TOTAL);
    const dv = new DataView(all.buffer);
    for (let i = 0; i + 4 <= TOTAL; i += 4) dv.setUint32(i, i / 4);
    for (let sent = 0; sent < TOTAL; sent += 50_000) {
      await c1.sendStdin(r.run, all.subarray(sent, sent + 50_000));
    }
    await sleep(500);
    c1.destroy(); // the connection breaks while writes are under way on the guest
    await c1.closed;
    const c2 = await f.client(s);
    let at = -1;
    c2.onStreamEvents(r.run, {
      resume: (stream, o) => {
        if (stream === "stdin") at = o;
      },
      stdinTaken: () => {},
    });
    c2.onOutput(r.run, () => {});
    await c2.status(r.run, { streams: true, window: 1 << 20 });
    await eventually("stdin to resume", () => Promise.resolve(at >= 0), 20_000);
    await c2.sendStdin(r.run, all.subarray(at));
    await c2.sendStdin(r.run, new Uint8Array(0));
    assert.deepEqual(await c2.wait(r.run), { code: 0 });
    const got = await Deno.readFile(out);
    assert.equal(got.length, TOTAL, `resumed at ${at}`);
    assert.deepEqual(got, all);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a manager gone during a streamed launch does not block the application", async () => {
  const f = await ApiFixture.create();
  try {
    const s = await f.server();
    const cnt = `${f.dir}/cnt`;
    const c = await f.client(s);
    void c.launch(["/bin/sh", "-c", CHATTY(cnt)], { name: "orphan", streams: true })
      .catch(() => {});
    await sleep(5);
    c.destroy();
    await c.closed;
    await s.waitForLog(/\(orphan\)/);
    await keepsWriting(cnt);
  } finally {
    await f.cleanup();
  }
});

/** Resolves with `p`'s outcome, or fails the test if it takes longer than `ms`. */
async function answered<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer to ${what} within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a status poll while output waits for credit is answered", async () => {
  const f = await ApiFixture.create();
  try {
    const s = await f.server();
    const c = await f.client(s);
    const r = await c.launch(["/bin/sh", "-c", "head -c 1100000 /dev/zero; exit 5"], {
      name: "burst",
      streams: true,
    });
    let release!: () => void;
    const gate = new Promise<void>((res) => release = res);
    let got = 0;
    c.onOutput(r.run, async (_s, b) => {
      await gate;
      got += b.length;
    });
    c.grant(r.run, "stdout", 1 << 20);
    c.grant(r.run, "stderr", 1 << 20);
    await s.waitForLog(/\(burst\) pid \d+ exited with code 5/);
    const st = c.status(r.run); // an ordinary poll, held until the output has drained
    await sleep(200);
    release(); // the handler catches up: its credit goes back
    assert.deepEqual((await answered(st, 15_000, "status")).exit, { code: 5 });
    assert.equal(got, 1_100_000);
    await answered(c.list(), 5_000, "list");
  } finally {
    await f.cleanup();
  }
});

Deno.test("another manager taking a run's streams does not wedge the first one", async () => {
  const f = await ApiFixture.create();
  try {
    const s = await f.server();
    const a = await f.client(s);
    const r = await a.launch(
      ["/bin/sh", "-c", "head -c 200000 /dev/zero; sleep 1; head -c 20000 /dev/zero; exit 5"],
      { name: "shared", streams: true },
    );
    a.onOutput(r.run, () => {});
    a.grant(r.run, "stdout", 1 << 20);
    a.grant(r.run, "stderr", 1 << 20);
    const b = await f.client(s);
    await sleep(300);
    void b.status(r.run, { streams: true }).catch(() => {}); // takes them, grants nothing
    await s.waitForLog(/\(shared\) pid \d+ exited with code 5/);
    assert.equal((await answered(a.status(r.run), 10_000, "status")).state, "exited");
    await answered(a.list(), 5_000, "list");
  } finally {
    await f.cleanup();
  }
});
