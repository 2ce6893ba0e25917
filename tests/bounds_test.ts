// Bounds against a trusted but hostile manager (tests/_raw_peer.ts: framing
// code of its own, not the project's client): stdin beyond its credit, credit
// it never reads, requests whose answers it never reads, data for streams it
// was never given, limits raced from many connections. Each test watches the
// daemon's resident memory against the documented bound (docs/PROTOCOL.md,
// "Limits") and checks that a real cmappmgr still gets its exit status beside.
import assert from "node:assert/strict";
import {
  delay,
  eventually,
  mgrArgs,
  reportFigures,
  runMgr,
  ServerFixture,
  type ServerProcess,
  within,
  writeIdentity,
} from "./_harness.ts";
import { rawData, rawJson, type RawPeer, rawPeer, rssKiB } from "./_raw_peer.ts";

/** The per-connection buffer limit of docs/PROTOCOL.md with the default max_frame, in KiB. */
const CONNECTION_LIMIT_KIB = 4 * 1024;
/**
 * What the runtime adds on top while it works hard, whoever causes it (code
 * pages, the allocator's arenas, the garbage collector's headroom): measured
 * with the daemon's runtime flags (tools/_programs.ts), a flood from 1
 * connection added 50 MiB, from 3 70 MiB, from 10 75 MiB, so the part that
 * grows with connections stays within their limit. The bound a test asserts
 * is the daemon's RSS before the attack, plus the limit for each hostile
 * connection, plus this (docs/PROTOCOL.md, "Limits").
 */
const RUNTIME_SLACK_KIB = 80 * 1024;

/** Samples a process's RSS every 100 ms until stopped; resolves with the largest. */
function watchRss(pid: number): { stop(): Promise<number> } {
  let max = 0;
  let going = true;
  const loop = (async () => {
    while (going) {
      max = Math.max(max, await rssKiB(pid));
      await delay(100);
    }
  })();
  return {
    async stop() {
      going = false;
      await loop;
      return Math.max(max, await rssKiB(pid));
    },
  };
}

/** A raw peer on `server` that has said hello (protocol 1.4). */
async function greeted(f: ServerFixture, server: ServerProcess): Promise<RawPeer> {
  const peer = await rawPeer(f.keys.manager, server.port);
  await peer.hello();
  return peer;
}

async function stillServes(f: ServerFixture, server: ServerProcess): Promise<void> {
  const r = await runMgr(
    mgrArgs(f.keys, server, "-service_name", "beside", "/bin/sh", "-c", "exit 42"),
  );
  assert.equal(r.code, 42, `cmappserver stopped serving others: ${r.stderr}\n${server.log()}`);
}

/** A raw peer that has said hello and launched `argv` as `name`; resolves with the run id. */
async function launched(
  peer: RawPeer,
  name: string,
  argv: string[],
  extra: Record<string, unknown> = {},
): Promise<string> {
  peer.write(rawJson({ type: "launch", id: 1, name, argv, ...extra }));
  const m = await peer.next((m) => m.id === 1);
  assert.equal(m.type, "launched", JSON.stringify(m));
  return m.run as string;
}

function assertBounded(what: string, base: number, peak: number, connections = 1): void {
  const bound = base + connections * CONNECTION_LIMIT_KIB + RUNTIME_SLACK_KIB;
  reportFigures(`bounds: ${what}`, {
    connections,
    baseMiB: Math.round(base / 1024),
    peakMiB: Math.round(peak / 1024),
    boundMiB: Math.round(bound / 1024),
  });
  assert.ok(
    peak <= bound,
    `${what}: daemon RSS reached ${(peak / 1024).toFixed(0)} MiB from ${
      (base / 1024).toFixed(0)
    } MiB (bound ${(bound / 1024).toFixed(0)} MiB)`,
  );
}

Deno.test("max_processes holds when 12 connections launch at once: exactly the limit start", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  try {
    const server = await f.server("-max_processes", "2");
    for (let i = 0; i < 12; i++) {
      const p = await greeted(f, server);
      peers.push(p);
    }
    // All twelve requests leave before any answer comes back.
    for (const [i, p] of peers.entries()) {
      p.write(rawJson({ type: "launch", id: 1, name: `race${i}`, argv: ["/bin/sleep", "30"] }));
    }
    const answers = await Promise.all(peers.map((p) => p.next((m) => m.id === 1)));
    const started = answers.filter((m) => m.type === "launched").length;
    const refused = answers.filter((m) => m.type === "error" && m.code === "limit").length;
    assert.equal(started, 2, JSON.stringify(answers));
    assert.equal(refused, 10, JSON.stringify(answers));
    // A refused slot is given back: once a run is stopped, one more fits.
    const first = answers.find((m) => m.type === "launched")!;
    peers[0].write(rawJson({ type: "stop", id: 2, run: first.run, timeout_ms: 100 }));
    await eventually("a slot to come back", async () => {
      const p = peers[11];
      p.write(rawJson({ type: "launch", id: 3, name: "after", argv: ["/bin/sleep", "30"] }));
      const m = await p.next((m) => m.id === 3);
      return m.type === "launched";
    });
  } finally {
    for (const p of peers) await p.close();
    await f.cleanup();
  }
});

Deno.test("stdin streams per connection: 6 pipelined launches with stdin, exactly 4 fed, the rest refused", async () => {
  const f = await ServerFixture.create();
  let peer: RawPeer | null = null;
  try {
    const server = await f.server();
    peer = await greeted(f, server);
    // All six leave in one write, before any answer or stdin window comes back.
    const launches = [...Array(6).keys()].map((i) =>
      rawJson({
        type: "launch",
        id: 10 + i,
        name: `fed${i}`,
        argv: ["/bin/cat"],
        streams: true,
        stdin: true,
      })
    );
    peer.write(new Uint8Array(launches.flatMap((b) => [...b])));
    const p = peer;
    // (The peer's next() consumes what it skips: look at its frames instead.)
    const json = () => jsonOf(p);
    const answerTo = (id: number) => json().find((m) => m.id === id);
    await eventually(
      "six answers",
      () => Promise.resolve(launches.every((_, i) => answerTo(10 + i))),
    );
    const answers = launches.map((_, i) => answerTo(10 + i)!);
    assert.equal(answers.filter((m) => m.type === "launched").length, 4, JSON.stringify(answers));
    const refused = answers.filter((m) => m.type === "error" && m.code === "limit");
    assert.equal(refused.length, 2, JSON.stringify(answers));
    assert.match(String(refused[0].message), /feeds the stdin of 4 runs, the most one connection/);
    // Each of the four gets its stdin window.
    const fed = answers.filter((m) => m.type === "launched").map((m) => m.run);
    await eventually(
      "four stdin windows",
      () =>
        Promise.resolve(
          fed.every((run) =>
            json().some((w) => w.type === "window" && w.run === run && w.stream === "stdin")
          ),
        ),
    );
    await stillServes(f, server);
  } finally {
    await peer?.close();
    await f.cleanup();
  }
});

/** The text of a run's stdout data frames a raw peer has received so far. */
function stdoutOf(peer: RawPeer, run: string): string {
  return peer.frames.map((f) =>
    f.kind === "data" && f.run === run && f.stream === "stdout" ? f.text ?? "" : ""
  ).join("");
}

/** The JSON messages a raw peer has received so far (next() consumes what it skips). */
function jsonOf(peer: RawPeer): Record<string, unknown>[] {
  return peer.frames.flatMap((f) => f.kind === "json" ? [f.message] : []);
}

Deno.test("stdin slots: runs that have ended free theirs (6 stdin launches in turn on one connection)", async () => {
  const f = await ServerFixture.create();
  let peer: RawPeer | null = null;
  try {
    const server = await f.server();
    peer = await greeted(f, server);
    for (let i = 0; i < 6; i++) {
      // It lives long enough to be handed its stdin, and ends without reading it.
      const run = await launched(peer, `turn${i}`, ["/bin/sleep", "0.3"], {
        streams: true,
        stdin: true,
      });
      const p = peer;
      await eventually(
        `run ${i} to end`,
        () => Promise.resolve(jsonOf(p).some((m) => m.type === "exited" && m.run === run)),
      );
    }
  } finally {
    await peer?.close();
    await f.cleanup();
  }
});

Deno.test("an end of stdin sent with the launch, before any window, is honoured", async () => {
  const f = await ServerFixture.create();
  let peer: RawPeer | null = null;
  try {
    const server = await f.server();
    peer = await greeted(f, server);
    peer.write(
      rawJson({
        type: "launch",
        id: 1,
        name: "early",
        argv: ["/bin/sh", "-c", "wc -c; exit 4"],
        streams: true,
        stdin: true,
      }),
    );
    const m = await peer.next((m) => m.id === 1);
    assert.equal(m.type, "launched", JSON.stringify(m));
    const run = m.run as string;
    peer.write(rawData(run, "stdin", new Uint8Array(0)));
    peer.write(rawJson({ type: "window", run, stream: "stdout", bytes: 65536 }));
    const p = peer;
    await eventually(
      "the exit",
      () => Promise.resolve(jsonOf(p).some((m) => m.type === "exited" && m.run === run)),
    );
    assert.equal(stdoutOf(p, run).trim(), "0");
    assert.ok(!jsonOf(p).some((m) => m.type === "error"), JSON.stringify(jsonOf(p)));
  } finally {
    await peer?.close();
    await f.cleanup();
  }
});

Deno.test("stdin taken over: nothing the first feeder had queued reaches the application beyond the offset the next one is told", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  try {
    const server = await f.server();
    const argv = ["/bin/sh", "-c", "sleep 2; wc -c"];
    const a = await greeted(f, server);
    peers.push(a);
    const run = await launched(a, "taken", argv, { streams: true, stdin: true });
    await eventually(
      "the stdin window",
      () => Promise.resolve(jsonOf(a).some((m) => m.type === "window" && m.stream === "stdin")),
    );
    // As much as its credit allows while the application does not read yet, until the credit
    // stops coming back: the pipe, the supervisor and its socket are full, the rest waits in the
    // daemon.
    const chunk = new Uint8Array(64 * 1024).fill(65);
    let sent = 0;
    const granted = () =>
      jsonOf(a).filter((m) => m.type === "window" && m.stream === "stdin")
        .reduce((n, m) => n + (m.bytes as number), 0);
    for (let idle = 0; idle < 10;) {
      if (granted() - sent >= chunk.length) {
        a.write(rawData(run, "stdin", chunk));
        sent += chunk.length;
        idle = 0;
      } else {
        idle++;
        await delay(50);
      }
    }
    const b = await greeted(f, server);
    peers.push(b);
    b.write(rawJson({ type: "launch", id: 1, name: "taken", argv, streams: true, stdin: true }));
    await b.next((m) => m.id === 1);
    let offset = -1;
    await eventually("where stdin resumes", () => {
      const r = jsonOf(b).find((m) => m.type === "resume" && m.stream === "stdin");
      if (r) offset = r.offset as number;
      return Promise.resolve(r !== undefined);
    });
    b.write(rawData(run, "stdin", new Uint8Array(0)));
    b.write(rawJson({ type: "window", run, stream: "stdout", bytes: 65536 }));
    await eventually("the count", () => Promise.resolve(/\d+\n/.test(stdoutOf(b, run))));
    assert.equal(Number(stdoutOf(b, run).trim()), offset, "bytes beyond the offset reached it");
    assert.ok(jsonOf(a).some((m) => m.type === "close_stream" && m.stream === "stdin"));
  } finally {
    for (const p of peers) await p.close();
    await f.cleanup();
  }
});

Deno.test("max_processes holds for concurrent cmappmgr launches under different names", async () => {
  const f = await ServerFixture.create();
  try {
    const server = await f.server("-max_processes", "1");
    const marker = `${f.dir}/running`;
    await Deno.writeTextFile(marker, "");
    // Each run records itself while it runs: at most one line at any time.
    const script = `echo $$ >>${marker}; n=$(wc -l <${marker}); sleep 1; ` +
      `grep -v "^$$\\$" ${marker} >${marker}.$$; cat ${marker}.$$ >${marker}; echo $n`;
    const results = await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) =>
          runMgr(mgrArgs(f.keys, server, "-service_name", `mgr${i}`, "/bin/sh", "-c", script)),
      ),
    );
    const ran = results.filter((r) => r.code === 0);
    assert.ok(ran.length >= 1, results.map((r) => `${r.code}: ${r.stderr}`).join("\n"));
    for (const r of ran) assert.equal(r.stdout.trim(), "1", `two ran at once: ${r.stdout}`);
    for (const r of results.filter((r) => r.code !== 0)) {
      assert.match(r.stderr, /limit|at most 1/, r.stderr);
    }
  } finally {
    await f.cleanup();
  }
});

Deno.test("stdin sent beyond the credit closes that connection, with the reason logged; memory stays bounded", async () => {
  const f = await ServerFixture.create();
  let peer: RawPeer | null = null;
  try {
    const server = await f.server();
    peer = await greeted(f, server);
    // An application that never reads its stdin.
    const run = await launched(peer, "deaf", ["/bin/sleep", "60"], { streams: true, stdin: true });
    const base = await rssKiB(server.pid);
    const rss = watchRss(server.pid);
    const chunk = new Uint8Array(64 * 1024);
    for (let i = 0; i < 24 * 1024 && !peer.isClosed; i++) { // up to 1.5 GiB
      if (!peer.write(rawData(run, "stdin", chunk))) await delay(1);
    }
    await within(peer.closed, 20_000, "the connection to be closed");
    const peak = await rss.stop();
    await server.waitForLog(/stdin.*beyond.*credit|credit.*stdin/i);
    assertBounded("stdin beyond credit", base, peak);
    await stillServes(f, server);
    // The run itself is not harmed: it is still running.
    const other = await greeted(f, server);
    other.write(rawJson({ type: "status", id: 5, run }));
    const st = await other.next((m) => m.id === 5);
    assert.equal(st.state, "running", JSON.stringify(st));
    await other.close();
  } finally {
    await peer?.close();
    await f.cleanup();
  }
});

Deno.test("data for a stream this connection was never given is a protocol error", async () => {
  const f = await ServerFixture.create();
  try {
    const server = await f.server();
    const a = await greeted(f, server);
    const run = await launched(a, "quiet", ["/bin/sleep", "60"], { streams: true, stdin: true });
    const b = await greeted(f, server);
    b.write(rawData(run, "stdin", new Uint8Array(100)));
    const err = await b.next((m) => m.type === "error");
    assert.equal(err.code, "protocol");
    assert.match(String(err.message), /credit|not.*receiv/i);
    await b.closed;
    // The peer that owns the stream is undisturbed.
    a.write(rawJson({ type: "ping", id: 9 }));
    await a.next((m) => m.id === 9);
    await a.close();
  } finally {
    await f.cleanup();
  }
});

Deno.test("a peer that grants 2 GiB of stdout credit and never reads: the daemon stops reading the run, not memory; it resumes when the peer reads", async () => {
  const f = await ServerFixture.create();
  let peer: RawPeer | null = null;
  try {
    const server = await f.server();
    peer = await greeted(f, server);
    const run = await launched(peer, "flood", ["/bin/cat", "/dev/zero"], { streams: true });
    peer.stopReading();
    const base = await rssKiB(server.pid);
    const rss = watchRss(server.pid);
    peer.write(rawJson({ type: "window", run, stream: "stdout", bytes: 0x7fffffff }));
    await delay(3000);
    const peak = await rss.stop();
    assertBounded("stdout credit, unread", base, peak);
    await stillServes(f, server);
    // Not wedged: reading again, the output flows.
    const before = peer.frames.length;
    peer.startReading();
    await eventually("output to flow again", () => peer!.frames.length > before + 100);
    assert.equal(peer.isClosed, false);
  } finally {
    await peer?.close();
    await f.cleanup();
  }
});

Deno.test("a flood of requests whose answers are never read, from 8 connections: memory stays bounded, others are served", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  try {
    const server = await f.server();
    for (let i = 0; i < 8; i++) {
      const peer = await greeted(f, server);
      peer.stopReading();
      peers.push(peer);
    }
    const base = await rssKiB(server.pid);
    const rss = watchRss(server.pid);
    const list = rawJson({ type: "list", id: 7 });
    const batch = new Uint8Array(list.length * 1000);
    for (let i = 0; i < 1000; i++) batch.set(list, i * list.length);
    const until = Date.now() + 3000;
    await Promise.all(peers.map(async (peer) => {
      while (Date.now() < until) {
        if (!peer.write(batch)) await delay(5);
      }
    }));
    const peak = await rss.stop();
    assertBounded("unread answers", base, peak, peers.length);
    await stillServes(f, server);
    // Reading again, each gets answers: the connections were slowed, not broken.
    for (const peer of peers) {
      peer.startReading();
      await peer.next((m) => m.type === "run_list");
    }
  } finally {
    for (const peer of peers) await peer.close();
    await f.cleanup();
  }
});

Deno.test("out of file descriptors: after a flood of silent connections under a low RLIMIT_NOFILE, the listener accepts again", async () => {
  const f = await ServerFixture.create();
  const held: Deno.Conn[] = [];
  try {
    // Deno raises its soft limit to the hard one: set both. max_connections well above it, as a
    // misconfigured guest would have it.
    const server = await f.serverWith(
      { wrap: ["prlimit", "--nofile=96:96", "--"] },
      "-max_connections",
      "1000",
    );
    const before = await runMgr(
      mgrArgs(f.keys, server, "-service_name", "before", "/bin/sh", "-c", "exit 7"),
    );
    assert.equal(before.code, 7, before.stderr);
    for (let i = 0; i < 200; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: server.port }));
    }
    await delay(1000);
    for (const c of held.splice(0)) c.close();
    await server.waitForLog(/listening again on/, 30_000);
    await stillServes(f, server);
  } finally {
    for (const c of held) c.close();
    await f.cleanup();
  }
});

/** A key directory whose certificate the server does not pin (it trusts the server, though). */
async function stranger(f: ServerFixture, name: string): Promise<string> {
  const dir = `${f.dir}/${name}`;
  await writeIdentity(dir);
  await Deno.copyFile(`${f.keys.server}/cert.pem`, `${dir}/trusted/server.pem`);
  return dir;
}

Deno.test("an unpinned peer that sends without end after its refusal: the daemon reads none of it", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  try {
    const server = await f.server();
    const base = await rssKiB(server.pid);
    const rss = watchRss(server.pid);
    const chunk = new Uint8Array(64 * 1024);
    for (let n = 0; n < 4; n++) {
      const peer = await rawPeer(await stranger(f, `s${n}`), server.port);
      peers.push(peer);
      const end = Date.now() + 1500;
      while (Date.now() < end && !peer.isClosed) {
        if (!peer.write(chunk)) await delay(1);
      }
    }
    const peak = await rss.stop();
    await server.waitForLog(/rejected manager 127\.0\.0\.1:\d+: not pinned/);
    assertBounded("unpinned peers sending after their refusal", base, peak, 4);
    await stillServes(f, server);
  } finally {
    for (const p of peers) await p.close();
    await f.cleanup();
  }
});

Deno.test("refused peers do not count against max_connections: a pinned manager still gets in", async () => {
  const f = await ServerFixture.create();
  const peers: RawPeer[] = [];
  let flooding = true;
  try {
    const server = await f.server("-max_connections", "4");
    const keydirs = await Promise.all([0, 1, 2, 3, 4, 5].map((n) => stranger(f, `s${n}`)));
    // Refused peers arriving all the time, each held open until the server closes it.
    const flood = (async () => {
      for (let n = 0; flooding; n++) {
        peers.push(await rawPeer(keydirs[n % keydirs.length], server.port));
        await delay(20);
      }
    })();
    await delay(500);
    await stillServes(f, server);
    flooding = false;
    await flood;
    assert.doesNotMatch(server.log(), /connections already open/);
  } finally {
    flooding = false;
    for (const p of peers) await p.close();
    await f.cleanup();
  }
});
