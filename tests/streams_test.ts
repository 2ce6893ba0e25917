// The application's standard streams through cmappmgr (protocol 1.2), with
// real processes: stdout and stderr kept apart and byte exact, large
// transfers with bounded memory, credit-based flow control end to end,
// -stdin forwarding with its end of file, a closed host stdout (SIGPIPE),
// and all output before the exit status; and the client's credit batching
// (over an in-memory socket) and output that trickles arriving at once.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { Client } from "../manager/client.ts";
import {
  type ByteStream,
  type ClientMessage,
  decodeClientMessage,
  decodeServerMessage,
  encodeFrame,
  encodeMessage,
  FrameDecoder,
  MessageChannel,
  PROTOCOL_VERSION,
  type ServerMessage,
} from "../protocol/mod.ts";
import type { CertificateInfo } from "../tls/mod.ts";
import {
  eventually,
  type KeyPair,
  makeKeys,
  mgrArgs,
  processes,
  programCommand,
  rawTls,
  reapRuns,
  type ServerProcess,
  startServerProcess,
} from "./_harness.ts";

/** A cmappmgr child process whose stderr is collected in the background. */
interface Mgr {
  child: Deno.ChildProcess;
  /** Its whole stderr, once it has ended. */
  stderr: Promise<string>;
  /** Its exit status. */
  status: Promise<Deno.CommandStatus>;
  /** True once it has exited. */
  exited(): boolean;
}

/** Resident set sizes in KiB of the given processes (absent when gone). */
async function rssKiB(pids: number[]): Promise<Map<number, number>> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "pid=,rss=", "-p", pids.join(",")],
    stdout: "piped",
    stderr: "null",
  }).output();
  const sizes = new Map<number, number>();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const m = /^\s*(\d+)\s+(\d+)\s*$/.exec(line);
    if (m) sizes.set(+m[1], +m[2]);
  }
  return sizes;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a command to its end; fails unless it exits 0. */
async function sh(script: string): Promise<string> {
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  assert.equal(out.code, 0, `sh -c ${script}: ${d.decode(out.stderr)}`);
  return d.decode(out.stdout);
}

/** SHA-256 of a file, hex, read in chunks. */
async function fileSha256(path: string): Promise<string> {
  const h = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) h.update(chunk);
  return h.digest("hex");
}

/**
 * Everything one test starts, so that `cleanup` ends it all: cmappmgr
 * processes, the applications the server recorded, the server, and the
 * temporary directories (key directories, state directory, test data).
 */
class Fixture {
  readonly keys: KeyPair;
  readonly server: ServerProcess;
  readonly mgrs: Mgr[] = [];

  private constructor(keys: KeyPair, server: ServerProcess) {
    this.keys = keys;
    this.server = server;
  }

  static async create(serverArgs: string[] = []): Promise<Fixture> {
    const keys = await makeKeys();
    try {
      const server = await startServerProcess(keys.server, serverArgs);
      const f = new Fixture(keys, server);
      await Deno.mkdir(f.dir);
      return f;
    } catch (e) {
      await keys.root.cleanup();
      throw e;
    }
  }

  /** A scratch directory for the test's files. */
  get dir(): string {
    return `${this.keys.root.path}/data`;
  }

  /**
   * Starts cmappmgr running `argv` on the server; its stdout is piped for
   * the test to read (or cancel), its stdin piped when `stdin` is set.
   */
  mgr(argv: string[], options: { stdin?: boolean; flags?: string[] } = {}): Mgr {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...programCommand("cmappmgr"),
        ...mgrArgs(this.keys, this.server, "-syslog", "no", ...(options.flags ?? []), "--"),
        ...argv,
      ],
      stdin: options.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let done = false;
    const status = child.status.then((s) => {
      done = true;
      return s;
    });
    const m: Mgr = { child, stderr: new Response(child.stderr).text(), status, exited: () => done };
    this.mgrs.push(m);
    return m;
  }

  async cleanup(): Promise<void> {
    for (const m of this.mgrs) {
      if (!m.exited()) {
        try {
          m.child.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
      await m.status;
      await m.stderr.catch(() => {});
      // An output the test left unread (it failed half way).
      if (!m.child.stdout.locked) await m.child.stdout.cancel().catch(() => {});
      try {
        if (!m.child.stdin.locked) await m.child.stdin.close().catch(() => {});
      } catch {
        // not piped
      }
    }
    // Any application still running (a test failed half way), and every supervisor, must
    // be gone before the state directory is removed.
    await reapRuns([`${this.keys.server}-state`], new Set());
    try {
      await this.server.stop();
    } finally {
      await this.keys.root.cleanup();
    }
  }
}

/** Reads a whole stream into a buffer (for outputs of a few MB). */
async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("stdout and stderr arrive separately and exactly", async () => {
  const f = await Fixture.create();
  try {
    const m = f.mgr(["sh", "-c", 'printf "a\\nb\\n"; printf "e1\\n" >&2; printf "c"']);
    const out = new TextDecoder().decode(await readAll(m.child.stdout));
    const status = await m.status;
    const err = await m.stderr;
    assert.equal(out, "a\nb\nc");
    assert.equal(err, "e1\n");
    assert.equal(status.code, 0);
  } finally {
    await f.cleanup();
  }
});

Deno.test("binary output arrives byte for byte", async () => {
  const f = await Fixture.create();
  try {
    const file = `${f.dir}/random.bin`;
    await sh(`head -c 3000000 /dev/urandom > '${file}'`);
    const data = await Deno.readFile(file);
    // Every byte value is there, many times over.
    const counts = new Array<number>(256).fill(0);
    for (const b of data) counts[b]++;
    assert.ok(Math.min(...counts) > 1000, "the file holds every byte value many times");

    const m = f.mgr(["cat", file]);
    const out = await readAll(m.child.stdout);
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(status.code, 0);
    assert.equal(out.length, data.length);
    assert.equal(
      createHash("sha256").update(out).digest("hex"),
      createHash("sha256").update(data).digest("hex"),
    );
  } finally {
    await f.cleanup();
  }
});

Deno.test("100 MB through stdout arrive intact, with bounded memory on both sides", async () => {
  const f = await Fixture.create();
  try {
    const file = `${f.dir}/big.bin`;
    const size = 100_000_000;
    await sh(`head -c ${size} /dev/urandom > '${file}'`);
    const expected = await fileSha256(file);

    const idle = (await rssKiB([f.server.pid])).get(f.server.pid) ?? 0;
    const m = f.mgr(["cat", file]);
    const peak = new Map<number, number>([[f.server.pid, 0], [m.child.pid, 0]]);
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const sizes = await rssKiB([...peak.keys()]);
        for (const [pid, kib] of sizes) peak.set(pid, Math.max(peak.get(pid)!, kib));
        await sleep(100);
      }
    })();
    const h = createHash("sha256");
    let received = 0;
    try {
      for await (const chunk of m.child.stdout) {
        h.update(chunk);
        received += chunk.length;
      }
    } finally {
      sampling = false;
      await sampler;
    }
    const status = await m.status;
    const serverMiB = peak.get(f.server.pid)! / 1024;
    const mgrMiB = peak.get(m.child.pid)! / 1024;
    console.log(
      `peak RSS during 100 MB: cmappserver ${serverMiB.toFixed(1)} MiB ` +
        `(${(idle / 1024).toFixed(1)} MiB before), ` +
        `cmappmgr ${mgrMiB.toFixed(1)} MiB`,
    );
    assert.equal(await m.stderr, "");
    assert.equal(status.code, 0);
    assert.equal(received, size);
    assert.equal(h.digest("hex"), expected);
    assert.ok(serverMiB > 0 && mgrMiB > 0, "memory was sampled");
    assert.ok(serverMiB < 250, `cmappserver peak RSS ${serverMiB.toFixed(1)} MiB`);
    assert.ok(mgrMiB < 250, `cmappmgr peak RSS ${mgrMiB.toFixed(1)} MiB`);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a slow reader slows the application down (flow control end to end)", async () => {
  const f = await Fixture.create();
  try {
    const counter = `${f.dir}/counter`;
    const steps = 2000;
    const step = 65536;
    // 125 MiB in 64 KiB steps, recording each step. printf and echo are shell
    // builtins: no fork per step (head -c from /dev/zero takes ~10 s for 2000).
    const m = f.mgr([
      "sh",
      "-c",
      `i=0; while [ $i -lt ${steps} ]; do printf "%${step}s" ""; echo $i > '${counter}'; ` +
      `i=$((i+1)); done`,
    ]);
    const progress = async () => {
      const text = await Deno.readTextFile(counter).catch(() => "");
      return text.trim() === "" ? -1 : Number(text);
    };
    const reader = m.child.stdout.getReader();
    let received = 0;
    try {
      // Read a little, then nothing for a while.
      while (received < step) {
        const { value, done } = await reader.read();
        assert.ok(!done, "output ended early");
        received += value.length;
      }
      let stalledAt = -1;
      await eventually("the application to stop advancing", async () => {
        const before = await progress();
        await sleep(1000);
        stalledAt = await progress();
        return stalledAt === before;
      }, 30_000);
      assert.ok(!m.exited(), "cmappmgr is still running");
      assert.ok(
        stalledAt < 200,
        `the application is held back by the reader: it stopped at step ${stalledAt} of ${steps}`,
      );
      // Now read everything.
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value.length;
      }
    } finally {
      reader.releaseLock();
    }
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(status.code, 0);
    assert.equal(received, steps * step);
    assert.equal(await progress(), steps - 1);
  } finally {
    await f.cleanup();
  }
});

Deno.test("-stdin forwards cmappmgr's stdin and its end of file", async () => {
  const f = await Fixture.create();
  try {
    // 5 MB into wc -c.
    const size = 5_000_000;
    const m = f.mgr(["sh", "-c", "wc -c"], { stdin: true, flags: ["-stdin"] });
    const out = readAll(m.child.stdout);
    const w = m.child.stdin.getWriter();
    const chunk = new Uint8Array(100_000).map((_, i) => i % 251);
    for (let sent = 0; sent < size; sent += chunk.length) await w.write(chunk);
    await w.close();
    const text = new TextDecoder().decode(await out);
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(text.trim(), String(size));
    assert.equal(status.code, 0);
  } finally {
    await f.cleanup();
  }
});

Deno.test("tar cf - DIR | cmappmgr -stdin -- tar xf - -C DEST copies a tree", async () => {
  const f = await Fixture.create();
  try {
    const src = `${f.dir}/src`;
    const dest = `${f.dir}/dest`;
    await Deno.mkdir(`${src}/sub/deeper`, { recursive: true });
    await Deno.mkdir(dest);
    await Deno.writeTextFile(`${src}/a.txt`, "alpha\n");
    await Deno.writeTextFile(`${src}/sub/b.txt`, "beta\n".repeat(1000));
    await Deno.writeFile(`${src}/sub/deeper/c.bin`, new Uint8Array(300_000).map((_, i) => i * 7));
    await Deno.writeTextFile(`${src}/empty`, "");

    const tar = new Deno.Command("tar", {
      args: ["cf", "-", "-C", src, "."],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const tarErr = new Response(tar.stderr).text();
    const m = f.mgr(["tar", "xf", "-", "-C", dest], { stdin: true, flags: ["-stdin"] });
    const out = readAll(m.child.stdout);
    await tar.stdout.pipeTo(m.child.stdin);
    assert.equal((await tar.status).code, 0, await tarErr);
    const text = new TextDecoder().decode(await out);
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(text, "");
    assert.equal(status.code, 0);
    await sh(`diff -r '${src}' '${dest}'`);
  } finally {
    await f.cleanup();
  }
});

Deno.test("without -stdin the application reads /dev/null", async () => {
  const f = await Fixture.create();
  try {
    const m = f.mgr(["cat"], { stdin: true });
    const out = readAll(m.child.stdout);
    const w = m.child.stdin.getWriter();
    // cmappmgr does not read it; it may even have exited already.
    await w.write(new TextEncoder().encode("not for the application\n")).catch(() => {});
    await w.close().catch(() => {});
    const text = new TextDecoder().decode(await out);
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(text, "");
    assert.equal(status.code, 0);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a closed stdout (| head -1) gives the application SIGPIPE and cmappmgr exits 141", async () => {
  const f = await Fixture.create();
  try {
    const log = `${f.dir}/mgr.log`;
    const m = f.mgr(["sh", "-c", "yes"], { flags: ["-hostlogfile", log, "-loglevel", "info"] });
    const reader = m.child.stdout.getReader();
    const { value, done } = await reader.read();
    assert.ok(!done && value.length > 0);
    assert.match(new TextDecoder().decode(value), /^y\n/);
    await reader.cancel();
    reader.releaseLock();

    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      m.status,
      new Promise<null>((r) => timer = setTimeout(() => r(null), 30_000)),
    ]).finally(() => clearTimeout(timer));
    assert.ok(status, "cmappmgr ended after its stdout was closed");
    assert.equal(status.code, 141);

    const pid = Number(/started run \S+ pid (\d+)/.exec(await Deno.readTextFile(log))?.[1]);
    assert.ok(pid > 0, "the log tells the application's pid");
    const left = (await processes()).filter((p) => p.pid === pid || p.sid === pid);
    assert.deepEqual(left, [], "nothing of the application (sh, yes) is left");
  } finally {
    await f.cleanup();
  }
});

Deno.test("all output arrives before cmappmgr exits with the application's status", async () => {
  const f = await Fixture.create();
  try {
    const m = f.mgr(["sh", "-c", "head -c 2000000 /dev/zero; exit 5"]);
    const out = await readAll(m.child.stdout);
    const status = await m.status;
    assert.equal(await m.stderr, "");
    assert.equal(out.length, 2_000_000);
    assert.ok(out.every((b) => b === 0));
    assert.equal(status.code, 5);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a run that ends before its launch is answered still delivers all its output", async () => {
  const f = await Fixture.create();
  try {
    // Short runs often end before cmappserver answers the launch: their
    // output must still come before the exit status, every time.
    const lost: string[] = [];
    for (let round = 0; round < 10; round++) {
      const ms = [0, 1, 2].map((i) => {
        const j = round * 3 + i;
        return { j, m: f.mgr(["sh", "-c", `echo out-${j}; echo err-${j} >&2; exit ${j % 50}`]) };
      });
      for (const { j, m } of ms) {
        const out = new TextDecoder().decode(await readAll(m.child.stdout));
        const status = await m.status;
        const err = await m.stderr;
        assert.equal(status.code, j % 50, err);
        if (out !== `out-${j}\n` || err !== `err-${j}\n`) lost.push(`${j}: ${out}|${err}`);
      }
    }
    assert.deepEqual(lost, []);
  } finally {
    await f.cleanup();
  }
});

/** An in-memory byte stream that records what the client writes; the test emits what it receives. */
class _FakeSocket extends EventEmitter implements ByteStream {
  readonly sent: ClientMessage[] = [];
  readonly #decoder = new FrameDecoder();
  write(data: Uint8Array): boolean {
    for (const p of this.#decoder.push(data)) this.sent.push(decodeClientMessage(p));
    return true;
  }
  end(): void {
    queueMicrotask(() => this.emit("close"));
  }
  destroy(): void {
    this.end();
  }
}

/** A real Client over a fake socket, as if the hello exchange had taken place. */
function _fakeClient(): { client: Client; socket: _FakeSocket; receive(m: ServerMessage): void } {
  const socket = new _FakeSocket();
  let handler: { message(m: ServerMessage): void; closed(e: Error | null): void } | null = null;
  const channel = new MessageChannel<ServerMessage, ClientMessage>(socket, decodeServerMessage, {
    onMessage: (m) => handler!.message(m),
    onInvalid: (e) => {
      throw e;
    },
    onClose: (e) => handler?.closed(e),
  });
  const client = new Client(channel, {
    agent: "fake cmappserver",
    version: { major: 1, minor: 2 },
    certificate: null as unknown as CertificateInfo,
  }, { setHandler: (h) => handler = h });
  return {
    client,
    socket,
    receive: (m) => socket.emit("data", encodeFrame(encodeMessage(m))),
  };
}

Deno.test("output credit goes back in batches, all of it, and never leaves the sender without", async () => {
  const { client, socket, receive } = _fakeClient();
  const run = "r1";
  const granted = 1 << 20;
  const handled: number[] = [];
  client.onOutput(run, (_stream, bytes) => {
    handled.push(bytes.length);
  });
  client.grant(run, "stdout", granted);
  const returned = () =>
    socket.sent.filter((m) => m.type === "window" && m.stream === "stdout")
      .reduce((n, m) => n + (m.type === "window" ? m.bytes : 0), 0) - granted;
  // The server spends its whole window in 16 KiB frames, as fast as it may.
  let credit = granted;
  let frames = 0;
  let sentBytes = 0;
  for (let round = 0; round < 4; round++) {
    while (credit > 0) {
      const n = Math.min(credit, 16384);
      receive({ type: "data", run, stream: "stdout", data: new Uint8Array(n).fill(round) });
      credit -= n;
      sentBytes += n;
      frames++;
    }
    receive({ type: "exited", run: `probe-${round}`, exit: { code: 0 } });
    await client.wait(`probe-${round}`); // every chunk so far has been handled
    // What came back is spendable again; what is held back is under a quarter of the window.
    credit = granted - (sentBytes - returned());
    assert.ok(sentBytes - returned() < granted / 4, `held back ${sentBytes - returned()}`);
  }
  const windows = socket.sent.filter((m) => m.type === "window").length - 1;
  assert.ok(windows > 0 && windows * 8 <= frames, `${windows} windows for ${frames} frames`);
  assert.equal(handled.reduce((a, b) => a + b, 0), sentBytes);
  client.close();
  await client.closed;
});

Deno.test("a small window is given back in small batches: the sender is never stuck", async () => {
  const { client, socket, receive } = _fakeClient();
  const run = "r1";
  client.onOutput(run, () => {});
  client.grant(run, "stdout", 3);
  let returned = 0;
  for (let i = 0; i < 10; i++) {
    receive({ type: "data", run, stream: "stdout", data: new Uint8Array([i]) });
    receive({ type: "exited", run: `probe-${i}`, exit: { code: 0 } });
    await client.wait(`probe-${i}`);
    returned = socket.sent.filter((m) => m.type === "window").reduce(
      (n, m) => n + (m.type === "window" ? m.bytes : 0),
      -3,
    );
    assert.equal(returned, i + 1, "a window of 3 bytes gets each byte back");
  }
  client.close();
  await client.closed;
});

Deno.test("output trickling out of a running application arrives while it runs", async () => {
  const f = await Fixture.create();
  try {
    // Reads are gathered into larger frames only from what the pipe already holds.
    const m = f.mgr(["sh", "-c", "printf first; sleep 600"]);
    const reader = m.child.stdout.getReader();
    let got = "";
    while (got.length < 5) {
      const { value, done } = await reader.read();
      if (done) break;
      got += new TextDecoder().decode(value);
    }
    assert.equal(got, "first");
    assert.equal(m.exited(), false);
    reader.releaseLock();
  } finally {
    await f.cleanup();
  }
});

Deno.test("stdin credit: 256 KiB at first, then back a quarter at a time once in the application's pipe", async () => {
  const f = await Fixture.create();
  const conn = await rawTls(f.keys.manager, f.server.port);
  try {
    const send = (m: ClientMessage) => conn.write(encodeFrame(encodeMessage(m)));
    send({ type: "hello", version: { ...PROTOCOL_VERSION }, agent: "credit-test" });
    send({
      type: "launch",
      id: 1,
      argv: ["/bin/sh", "-c", "cat > /dev/null"],
      name: "stdin-credit",
      stdin: true,
    });
    let seen = 0;
    let run = "";
    /** The next `window` for stdin the server sends (noting the run's id on the way). */
    const nextStdinWindow = async (): Promise<number> => {
      for (;;) {
        const m = decodeServerMessage((await conn.readFrames(seen + 1))[seen++]);
        if (m.type === "launched") run = m.run;
        if (m.type === "window" && m.stream === "stdin") return m.bytes;
      }
    };
    assert.equal(await nextStdinWindow(), 256 * 1024, "the first grant");
    const chunk = new Uint8Array(16 * 1024);
    for (let i = 0; i < 4; i++) send({ type: "data", run, stream: "stdin", data: chunk });
    assert.equal(await nextStdinWindow(), 64 * 1024, "the credit of the bytes written back");
    send({ type: "data", run, stream: "stdin", data: new Uint8Array(0) }); // cat ends
  } finally {
    await conn.close();
    await f.cleanup();
  }
});

// ------------------------------------------------------------ stdin's lifecycle

/** Echoes each input line as "got:LINE"; exits 3 after "end", 9 at an end of input. */
const ECHO_LINES = [
  "sh",
  "-c",
  'while read l; do echo "got:$l"; [ "$l" = end ] && exit 3; done; exit 9',
];

/**
 * Starts cmappmgr -stdin on ECHO_LINES as `name`, sends "one", and waits
 * until the application has echoed it; the writer stays open.
 */
async function feeding(f: Fixture, name: string) {
  const mgr = f.mgr(ECHO_LINES, { stdin: true, flags: ["-stdin", "-service_name", name] });
  const input = mgr.child.stdin.getWriter();
  await input.write(new TextEncoder().encode("one\n"));
  await readUntil(mgr.child.stdout, /got:one/);
  return { mgr, input };
}

/** Reads `stream` until its text matches `re`; resolves with all of it (the rest is left). */
async function readUntil(stream: ReadableStream<Uint8Array>, re: RegExp): Promise<string> {
  const reader = stream.getReader();
  const d = new TextDecoder();
  let text = "";
  try {
    while (!re.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`output ended before ${re}: ${JSON.stringify(text)}`);
      text += d.decode(value, { stream: true });
    }
    return text;
  } finally {
    reader.releaseLock();
  }
}

Deno.test("a -stdin run whose cmappmgr is gone reads end of file after -stdin_grace; its status reaches the next manager", async () => {
  const f = await Fixture.create(["-stdin_grace", "1"]);
  try {
    const argv = ["sh", "-c", "cat >/dev/null; exit 5"];
    const first = f.mgr(argv, { stdin: true, flags: ["-stdin", "-service_name", "grace"] });
    const w = first.child.stdin.getWriter();
    await w.write(new TextEncoder().encode("some input, and no end of file\n"));
    await f.server.waitForLog(/started run .* \(grace\)/, 20_000);
    first.child.kill("SIGKILL");
    await first.status;
    await w.close().catch(() => {});
    // Nobody feeds it: the application is given its end of file, and exits.
    await f.server.waitForLog(
      /run \S+ \(grace\): no manager has fed its stdin for 1 s; closing it/,
      20_000,
    );
    const next = f.mgr(argv, { flags: ["-service_name", "grace"] });
    await next.child.stdout.cancel();
    assert.equal((await next.status).code, 5, await next.stderr);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a manager that attaches with -stdin takes the input over from one that is gone", async () => {
  // The default grace (30 s): the run's stdin stays open for the next manager.
  const f = await Fixture.create();
  try {
    const argv = ECHO_LINES;
    const flags = ["-stdin", "-service_name", "feed"];
    const { mgr: first, input: w1 } = await feeding(f, "feed");
    first.child.kill("SIGKILL");
    await first.status;
    await w1.close().catch(() => {});
    await first.child.stdout.cancel();
    const second = f.mgr(argv, { stdin: true, flags });
    const out = readAll(second.child.stdout);
    const w2 = second.child.stdin.getWriter();
    await w2.write(new TextEncoder().encode("two\nend\n"));
    await w2.close();
    const text = new TextDecoder().decode(await out);
    // The input of the second manager reached the application, which ended on it (exit 3;
    // an end of file instead would give 9).
    assert.match(text, /got:two\ngot:end\n/);
    assert.equal((await second.status).code, 3, await second.stderr);
  } finally {
    await f.cleanup();
  }
});

Deno.test("attaching with -stdin to a run that takes no input says so, and still gets its status", async () => {
  const f = await Fixture.create();
  try {
    const argv = ["sh", "-c", "sleep 1; exit 4"];
    const first = f.mgr(argv, { flags: ["-service_name", "noinput"] });
    await f.server.waitForLog(/started run .* \(noinput\)/, 20_000);
    const second = f.mgr(argv, { stdin: true, flags: ["-stdin", "-service_name", "noinput"] });
    const w = second.child.stdin.getWriter();
    await w.write(new TextEncoder().encode("input nobody takes\n")).catch(() => {});
    await second.child.stdout.cancel();
    assert.equal((await second.status).code, 4);
    await w.close().catch(() => {});
    assert.match(await second.stderr, /stdin: cmappserver takes no more of it for run \S+/);
    await first.child.stdout.cancel();
    assert.equal((await first.status).code, 4);
  } finally {
    await f.cleanup();
  }
});

Deno.test("a manager that attaches without -stdin only watches: the feeder's input still flows", async () => {
  const f = await Fixture.create();
  try {
    const argv = ECHO_LINES;
    const { mgr: feeder, input: w } = await feeding(f, "watched");
    // The watcher becomes the receiver of the output, not the feeder of the input.
    const watcher = f.mgr(argv, { flags: ["-service_name", "watched"] });
    await f.server.waitForLog(/attached to run .* \(watched\)/, 20_000);
    const watched = readAll(watcher.child.stdout);
    await w.write(new TextEncoder().encode("two\nend\n"));
    await w.close();
    assert.equal((await watcher.status).code, 3, await watcher.stderr);
    assert.match(new TextDecoder().decode(await watched), /got:two\ngot:end\n/);
    assert.equal((await feeder.status).code, 3);
    assert.doesNotMatch(await feeder.stderr, /takes no more/);
    await feeder.child.stdout.cancel().catch(() => {});
  } finally {
    await f.cleanup();
  }
});
