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
