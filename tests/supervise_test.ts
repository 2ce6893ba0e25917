/**
 * cmapp-supervise on its own (docs/cmapp-supervise.md), driven through its
 * stdin, stdout and socket the way cmappserver drives it: the release build,
 * the same tests again under AddressSanitizer and UndefinedBehaviorSanitizer
 * (their reports go to files, and any file fails the test), and the
 * aarch64 build under qemu-user.
 */
import assert from "node:assert/strict";
import { buildSupervisor, type SupervisorFlavour } from "../tools/supervisor.ts";
import { eventually, killGroup, running } from "./_harness.ts";
import { skipOrFail } from "./_skip.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One supervisor binary under test, and how to run it. */
interface Flavour {
  name: SupervisorFlavour;
  binary: string;
  /** Prefix (qemu-user for aarch64). */
  wrap: string[];
  env: Record<string, string>;
}

/** A scratch runs/ directory, and every supervisor started in it. */
class Scratch {
  readonly dir: string;
  readonly runs: string;
  readonly sanitizerLogs: string;
  readonly flavour: Flavour;
  readonly apps = new Set<number>();

  private constructor(dir: string, flavour: Flavour) {
    this.dir = dir;
    this.runs = `${dir}/runs`;
    this.sanitizerLogs = `${dir}/sanitizer`;
    this.flavour = flavour;
  }

  static async create(flavour: Flavour): Promise<Scratch> {
    const dir = await Deno.makeTempDir({ prefix: "cmapp-sv-" });
    await Deno.mkdir(`${dir}/runs`, { mode: 0o700 });
    await Deno.mkdir(`${dir}/sanitizer`);
    return new Scratch(dir, flavour);
  }

  /** Starts a supervisor; resolves with its report and stderr once it has detached. */
  async start(
    id: string,
    argv: string[],
    opts: { env?: Record<string, string>; flags?: string[]; envBytes?: number } = {},
  ): Promise<{ report: string; stderr: string; code: number | null }> {
    const env = enc.encode(
      Object.entries(opts.env ?? { PATH: "/usr/bin:/bin" }).map(([k, v]) => `${k}=${v}\0`).join(""),
    );
    // The run's record, which a supervisor checks for under the run's lock.
    await Deno.writeTextFile(`${this.runs}/${id}.json`, "{}\n");
    const args = [
      ...(opts.flags ?? []),
      "-e",
      String(opts.envBytes ?? env.length),
      this.runs,
      id,
      argv[0],
      ...argv,
    ];
    const r = await this.#run(args, env);
    const m = /^pid (\d+) \d+$/m.exec(r.report);
    if (m) this.apps.add(Number(m[1]));
    return r;
  }

  /** Starts a watcher (-w) for run `id`. */
  watch(id: string): Promise<{ report: string; stderr: string; code: number | null }> {
    return this.#run(["-w", this.runs, id], null);
  }

  async #run(args: string[], input: Uint8Array | null) {
    const [cmd, ...pre] = [...this.flavour.wrap, this.flavour.binary];
    const child = new Deno.Command(cmd, {
      args: [...pre, ...args],
      clearEnv: true,
      env: {
        ...this.flavour.env,
        ASAN_OPTIONS: `log_path=${this.sanitizerLogs}/asan:detect_leaks=0`,
        UBSAN_OPTIONS: `log_path=${this.sanitizerLogs}/ubsan:print_stacktrace=1`,
      },
      stdin: input ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (input) {
      const w = child.stdin.getWriter();
      await w.write(input).catch(() => {});
      await w.close().catch(() => {});
    }
    // A supervisor that started its run stays our child until it is collected: its report
    // is what it wrote before closing stdout and stderr; its exit is awaited in cleanup.
    const [out, err] = await Promise.all([
      new Response(child.stdout).arrayBuffer(),
      new Response(child.stderr).arrayBuffer(),
    ]);
    const report = dec.decode(out);
    this.#children.push(child.status);
    const code = /^pid \d+ \d+$/m.test(report) ? null : (await child.status).code;
    return { report, stderr: dec.decode(err), code };
  }

  readonly #children: Promise<Deno.CommandStatus>[] = [];

  file(id: string, ext: string): string | null {
    try {
      return Deno.readTextFileSync(`${this.runs}/${id}${ext}`);
    } catch {
      return null;
    }
  }

  supervisorOf(id: string): number | null {
    const f = this.file(id, ".pid");
    return f ? Number(f.trim().split(" ")[1]) : null;
  }

  /** Kills what is left and removes the directory; fails on any sanitizer report. */
  async cleanup(): Promise<void> {
    for (const pid of this.apps) killGroup(pid);
    const sups = await _supervisorsIn(this.runs);
    for (const p of sups) killGroup(p);
    await eventually("the supervisors to end", async () => {
      const left = await _supervisorsIn(this.runs);
      return left.length === 0;
    });
    await Promise.all(this.#children);
    const reports = [...Deno.readDirSync(this.sanitizerLogs)].map((e) => e.name);
    const texts = reports.map((r) => Deno.readTextFileSync(`${this.sanitizerLogs}/${r}`));
    await Deno.remove(this.dir, { recursive: true });
    assert.deepEqual(texts, [], "sanitizer reports");
  }
}

async function _supervisorsIn(runs: string): Promise<number[]> {
  const out = await new Deno.Command("ps", {
    args: ["-e", "-o", "pid=,args="],
    stdout: "piped",
  }).output();
  return dec.decode(out.stdout).split("\n")
    .filter((l) => l.includes("cmapp-supervise") && l.includes(runs))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

/** Files of runs in the scratch runs/, but the records the tests write themselves. */
function leftovers(s: Scratch): string[] {
  return [...Deno.readDirSync(s.runs)].map((e) => e.name).filter((n) => !n.endsWith(".json"));
}

/** A connection to a supervisor's socket, read line by line or to its end. */
class Conn {
  readonly conn: Deno.UnixConn;
  #buf = "";
  #bytes: Uint8Array[] = [];

  private constructor(conn: Deno.UnixConn) {
    this.conn = conn;
  }

  static async open(path: string, greeting: string): Promise<Conn> {
    const conn = await Deno.connect({ transport: "unix", path });
    await conn.write(enc.encode(greeting + "\n"));
    return new Conn(conn);
  }

  async line(): Promise<string> {
    const b = new Uint8Array(1);
    for (;;) {
      const nl = this.#buf.indexOf("\n");
      if (nl >= 0) {
        const l = this.#buf.slice(0, nl);
        this.#buf = this.#buf.slice(nl + 1);
        return l;
      }
      const n = await this.conn.read(b);
      if (n === null) throw new Error(`end of connection; have ${JSON.stringify(this.#buf)}`);
      this.#buf += dec.decode(b.subarray(0, n));
    }
  }

  /** Everything up to the end of the connection (a reset counts as its end). */
  async rest(): Promise<string> {
    const b = new Uint8Array(65536);
    for (;;) {
      const n = await this.conn.read(b).catch((e) => {
        if (e instanceof Deno.errors.ConnectionReset) return null;
        throw e;
      });
      if (n === null) break;
      this.#bytes.push(b.slice(0, n));
    }
    return this.#buf + dec.decode(concat(this.#bytes));
  }

  async send(text: string | Uint8Array): Promise<void> {
    const bytes = typeof text === "string" ? enc.encode(text) : text;
    for (let off = 0; off < bytes.length;) off += await this.conn.write(bytes.subarray(off));
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // closed
    }
  }
}

/** User plus system CPU time of a process so far, in clock ticks. */
async function cpuTicks(pid: number): Promise<number> {
  const st = await procFile(pid, "stat");
  const f = st.slice(st.lastIndexOf(") ") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

/** A file of /proc, read by cat (this runtime refuses /proc paths to our permission set). */
async function procFile(pid: number, name: string): Promise<string> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/${name}`], stdout: "piped" })
    .output();
  return dec.decode(out.stdout);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function frame(bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}

/** The exit line on a control connection (after `run …`). */
async function exitLine(s: Scratch, id: string): Promise<string> {
  const c = await Conn.open(`${s.runs}/${id}.sock`, "ctl");
  try {
    assert.match(await c.line(), /^run \d+ \d+$/);
    return await c.line();
  } finally {
    c.close();
  }
}

/** Collects a run: reads its exit, says done, waits for the supervisor to go. */
async function collect(s: Scratch, id: string): Promise<string> {
  const sup = s.supervisorOf(id);
  const c = await Conn.open(`${s.runs}/${id}.sock`, "ctl");
  try {
    assert.match(await c.line(), /^run \d+ \d+$/);
    const exit = await c.line();
    await c.send("done\n");
    if (sup) await eventually("the supervisor to exit", async () => !(await running(sup)));
    return exit;
  } finally {
    c.close();
  }
}

async function flavours(): Promise<{ list: Flavour[]; skipped: string[] }> {
  const list: Flavour[] = [{
    name: "x86_64",
    binary: await buildSupervisor("x86_64"),
    wrap: [],
    env: {},
  }];
  const skipped: string[] = [];
  try {
    list.push({
      name: "x86_64-asan",
      binary: await buildSupervisor("x86_64-asan"),
      wrap: [],
      env: {},
    });
  } catch (e) {
    skipped.push(`the sanitizer build: ${(e as Error).message}`);
  }
  return { list, skipped };
}

const { list: FLAVOURS, skipped: SKIPPED } = await flavours();
for (const why of SKIPPED) skipOrFail("supervise_test", why);

for (const fl of FLAVOURS) {
  const test = (name: string, fn: (s: Scratch) => Promise<void>) =>
    Deno.test(`cmapp-supervise (${fl.name}): ${name}`, async () => {
      const s = await Scratch.create(fl);
      try {
        await fn(s);
      } finally {
        await s.cleanup();
      }
    });

  test("exit codes and signals are exact; 200 is a code, not a signal", async (s) => {
    const cases: [string, string][] = [
      ["exit 0", "code 0"],
      ["exit 200", "code 200"],
      ["exit 255", "code 255"],
      ["kill -9 $$", "signal 9"],
      ["kill -TERM $$", "signal 15"],
    ];
    for (const [i, [script, want]] of cases.entries()) {
      const r = await s.start(`r${i}`, ["/bin/sh", "-c", script]);
      assert.match(r.report, /^pid \d+ \d+\n$/, r.stderr);
      assert.equal(r.code, null, "a supervisor runs on while its run runs");
      const exit = await collect(s, `r${i}`);
      assert.equal(exit, `exit 1 - - - ${want}`);
      assert.equal(s.file(`r${i}`, ".exit")!.split("\n")[0], want);
      assert.equal(s.file(`r${i}`, ".sock"), null, "the socket is removed when collected");
      assert.equal(s.file(`r${i}`, ".pid"), null);
      assert.equal(s.file(`r${i}`, ".lock"), null);
    }
  });

  test("a program that cannot run leaves nothing behind and says why", async (s) => {
    const missing = await s.start("m", ["/no/such/program"]);
    assert.match(missing.report, /^fail exec 2$/m);
    assert.match(missing.stderr, /fatal: exec: \/no\/such\/program: No such file/);
    await Deno.writeTextFile(`${s.dir}/plain`, "#!/bin/sh\n", { mode: 0o644 });
    const notExec = await s.start("n", [`${s.dir}/plain`]);
    assert.match(notExec.report, /^fail exec 13$/m);
    const noDir = await s.start("d", ["/bin/true"], { flags: ["-d", "/no/such/dir"] });
    assert.match(noDir.report, /^fail chdir 2$/m);
    assert.deepEqual(leftovers(s), []);
  });

  test("the environment reaches the application and nothing else", async (s) => {
    const env = { PATH: "/bin", SECRET: "s3cret", PERL5OPT: "-Mx", LD_PRELOAD: "/nonexistent.so" };
    const out = `${s.dir}/env`;
    const r = await s.start("e", ["/bin/sh", "-c", `env > ${out}; sleep 60`], { env });
    assert.match(r.report, /^pid/, r.stderr);
    await eventually("the pid record", () => Promise.resolve(s.file("e", ".pid") !== null));
    await eventually(
      "env to be written",
      async () => (await Deno.readTextFile(out).catch(() => "")).includes("SECRET"),
    );
    const seen = Object.fromEntries(
      Deno.readTextFileSync(out).trim().split("\n").map((l) => l.split("=", 2) as [string, string])
        .filter(([k]) => k !== "PWD" && k !== "SHLVL" && k !== "_"),
    );
    assert.deepEqual(seen, env);
    const sup = s.supervisorOf("e")!;
    const supEnv = await procFile(sup, "environ");
    assert.ok(!supEnv.includes("SECRET"), "the supervisor's own environment has the request's");
    const cmdline = await procFile(sup, "cmdline");
    assert.ok(!cmdline.includes("s3cret"), "the environment must not be in argv");
  });

  test("an environment that ends early starts nothing", async (s) => {
    const r = await s.start("x", ["/bin/true"], { envBytes: 500 });
    assert.equal(r.code, 100);
    assert.match(r.stderr, /ended early/);
    assert.deepEqual(leftovers(s), []);
  });

  test("a runs directory others can write to is refused", async (s) => {
    await Deno.chmod(s.runs, 0o777);
    const r = await s.start("w", ["/bin/true"]);
    assert.equal(r.code, 111);
    assert.match(r.stderr, /not ours alone/);
    assert.equal(r.report, "");
  });

  test("files are replaced, never written through a planted symlink", async (s) => {
    const victim = `${s.dir}/victim`;
    await Deno.writeTextFile(victim, "untouched\n");
    await Deno.symlink(victim, `${s.runs}/y.exit`);
    await Deno.symlink(victim, `${s.runs}/y.exit.tmp`);
    await Deno.symlink(victim, `${s.runs}/y.pid.tmp`);
    const r = await s.start("y", ["/bin/sh", "-c", "exit 4"]);
    assert.match(r.report, /^pid/, r.stderr);
    assert.equal(await collect(s, "y"), "exit 1 - - - code 4");
    assert.equal(await Deno.readTextFile(victim), "untouched\n");
    assert.ok(!Deno.lstatSync(`${s.runs}/y.exit`).isSymlink);
  });

  test("run-as takes exactly the uid, gid and groups given", async (s) => {
    if (Deno.uid() !== 0) return skipOrFail("supervise_test", "run-as needs root");
    const r = await s.start("u", [
      "/bin/sh",
      "-c",
      `grep -E '^(Uid|Gid|Groups):' /proc/self/status`,
    ], {
      flags: ["-o", "-u", "65534", "-g", "65533", "-G", "65533,65532"],
      env: { PATH: "/bin" },
    });
    assert.match(r.report, /^pid/, r.stderr);
    const out = await Conn.open(`${s.runs}/u.sock`, "out");
    assert.equal(await out.line(), "@0 0");
    const st = await out.rest();
    out.close();
    assert.match(await collect(s, "u"), /^exit 1 \d+ 0 - code 0$/);
    assert.match(st, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    assert.match(st, /^Gid:\s+65533\s+65533\s+65533\s+65533$/m);
    assert.match(st, /^Groups:\s+65532 65533\s*$/m);
  });

  test("the application has its own session, signals at their defaults", async (s) => {
    const out = `${s.dir}/sig`;
    const r = await s.start("g", [
      "/bin/sh",
      "-c",
      `grep -E '^(SigBlk|SigIgn):' /proc/self/status > ${out}; ps -o pid=,sid=,pgid= -p $$ >> ${out}`,
    ]);
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    assert.equal(await collect(s, "g"), "exit 1 - - - code 0");
    const text = await Deno.readTextFile(out);
    assert.match(text, /^SigBlk:\s+0+$/m);
    assert.match(text, /^SigIgn:\s+0+$/m);
    assert.match(text, new RegExp(`^\\s*${pid}\\s+${pid}\\s+${pid}$`, "m"));
  });

  test("output is held for the first reader, then exact, with its offsets", async (s) => {
    const r = await s.start("o", ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"], {
      flags: ["-o"],
    });
    assert.match(r.report, /^pid/, r.stderr);
    await eventually("the exit record", () => Promise.resolve(s.file("o", ".exit") !== null));
    const out = await Conn.open(`${s.runs}/o.sock`, "out");
    const err = await Conn.open(`${s.runs}/o.sock`, "err");
    assert.equal(await out.line(), "@0 0");
    assert.equal(await out.rest(), "hello\n");
    assert.equal(await err.line(), "@0 0");
    assert.equal(await err.rest(), "oops\n");
    out.close();
    err.close();
    assert.equal(await collect(s, "o"), "exit 1 6 5 - code 3");
    assert.match(s.file("o", ".exit")!, /^code 3\npid \d+\nout 6\nerr 5\nin -\n$/);
  });

  test("with its reader gone, output is read on and what overflows is counted", async (s) => {
    const go = `${s.dir}/go`;
    const r = await s.start("d", [
      "/bin/sh",
      "-c",
      `while [ ! -e ${go} ]; do sleep 0.02; done; head -c 300000 /dev/zero; echo end`,
    ], { flags: ["-o"] });
    assert.match(r.report, /^pid/, r.stderr);
    const first = await Conn.open(`${s.runs}/d.sock`, "out");
    assert.equal(await first.line(), "@0 0");
    first.close(); // the reader goes away (cmappserver dies)
    await Deno.writeTextFile(go, "");
    // The application is not blocked: it ends, although nobody reads.
    await eventually(
      "the exit record",
      () => Promise.resolve(s.file("d", ".exit") !== null),
      10_000,
    );
    const again = await Conn.open(`${s.runs}/d.sock`, "out");
    const [at, dropped] = (await again.line()).slice(1).split(" ").map(Number);
    const rest = await again.rest();
    again.close();
    assert.ok(dropped > 0, "some output must have overflowed");
    assert.equal(at + rest.length, 300004, "offset and bytes add up to all that was written");
    assert.equal(at, dropped, "all that is missing was counted");
    assert.ok(rest.endsWith("end\n"));
    assert.equal(await collect(s, "d"), "exit 1 300004 0 - code 0");
  });

  test("stdin arrives in frames, resumes with its offset, and ends on a zero frame", async (s) => {
    const out = `${s.dir}/in`;
    const r = await s.start("i", ["/bin/sh", "-c", `cat > ${out}`], { flags: ["-i"] });
    assert.match(r.report, /^pid/, r.stderr);
    const a = await Conn.open(`${s.runs}/i.sock`, "in");
    assert.equal(await a.line(), "@0");
    await a.send(frame(enc.encode("first ")));
    a.close(); // cmappserver dies after handing it over
    await eventually("the bytes to be taken", async () => {
      const b = await Conn.open(`${s.runs}/i.sock`, "in");
      const line = await b.line();
      b.close();
      return line === "@6";
    });
    const b = await Conn.open(`${s.runs}/i.sock`, "in");
    assert.equal(await b.line(), "@6");
    await b.send(concat([frame(enc.encode("second")), frame(new Uint8Array(0))]));
    assert.equal(await collect(s, "i"), "exit 1 - - 12 code 0");
    b.close();
    assert.equal(await Deno.readTextFile(out), "first second");
  });

  test("stop: SIGTERM, then SIGKILL after the grace, to the whole session", async (s) => {
    const ready = `${s.dir}/ready`;
    const r = await s.start("s", [
      "/bin/sh",
      "-c",
      `trap "" TERM; sleep 1000 & sleep 1000 & : > ${ready}; wait`,
    ]);
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    await eventually("the shell to ignore SIGTERM", async () => {
      return await Deno.stat(ready).then(() => true, () => false);
    });
    const c = await Conn.open(`${s.runs}/s.sock`, "ctl");
    assert.equal(await c.line(), `run ${pid} ${s.supervisorOf("s")}`);
    await c.send("stop 300\n");
    assert.equal(await c.line(), "exit 1 - - - signal 9");
    await c.send("done\n");
    c.close();
    await eventually("no process of the session to remain", async () => {
      const out = await new Deno.Command("ps", { args: ["-e", "-o", "sid="], stdout: "piped" })
        .output();
      return !dec.decode(out.stdout).split("\n").some((l) => Number(l) === pid);
    });
  });

  test("kill N and close out reach the application", async (s) => {
    const r = await s.start("k", ["/bin/sh", "-c", "sleep 1000"]);
    assert.match(r.report, /^pid/);
    const c = await Conn.open(`${s.runs}/k.sock`, "ctl");
    await c.line();
    await c.send("kill 10\n");
    assert.equal(await c.line(), "exit 1 - - - signal 10");
    c.close();
    const w = await s.start("p", ["/bin/sh", "-c", "while :; do echo y; sleep 0.01; done"], {
      flags: ["-o"],
    });
    assert.match(w.report, /^pid/);
    const out = await Conn.open(`${s.runs}/p.sock`, "out");
    await out.line();
    const ctl = await Conn.open(`${s.runs}/p.sock`, "ctl");
    await ctl.line();
    await ctl.send("close out\n");
    assert.match(await ctl.line(), /^exit 1 \d+ 0 - signal 13$/);
    ctl.close();
    out.close();
  });

  test("garbage on the socket closes that connection only", async (s) => {
    const r = await s.start("z", ["/bin/sh", "-c", "sleep 1000"]);
    assert.match(r.report, /^pid/);
    for (const junk of ["nonsense\n", "ctl\nextra", "x".repeat(100), "out\n"]) {
      const c = await Conn.open(`${s.runs}/z.sock`, "");
      await c.send(junk).catch(() => {}); // closed under us, maybe
      assert.equal(await c.rest(), "");
      c.close();
    }
    const c = await Conn.open(`${s.runs}/z.sock`, "ctl");
    assert.match(await c.line(), /^run /);
    await c.send("bogus command\n");
    assert.equal(await c.rest(), "");
    c.close();
    const again = await Conn.open(`${s.runs}/z.sock`, "ctl");
    assert.match(await again.line(), /^run /);
    again.close();
  });

  test("SIGTERM is ignored while the status is not recorded, obeyed once it is", async (s) => {
    const r = await s.start("t", ["/bin/sh", "-c", "sleep 1000"]);
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    const sup = s.supervisorOf("t")!;
    Deno.kill(sup, "SIGTERM");
    Deno.kill(sup, "SIGHUP");
    await new Promise((res) => setTimeout(res, 200));
    assert.ok(await running(sup), "the supervisor must survive SIGTERM while its run runs");
    killGroup(pid);
    await eventually("the exit record", () => Promise.resolve(s.file("t", ".exit") !== null));
    Deno.kill(sup, "SIGTERM");
    await eventually("the supervisor to exit", async () => !(await running(sup)));
    assert.equal(s.file("t", ".sock"), null);
  });

  test("a slow reader at the end: every byte is sent or counted, without spinning", async (s) => {
    const N = 150_000;
    const r = await s.start("sl", ["/bin/sh", "-c", `head -c ${N} /dev/zero`], { flags: ["-o"] });
    assert.match(r.report, /^pid/, r.stderr);
    const out = await Conn.open(`${s.runs}/sl.sock`, "out");
    assert.equal(await out.line(), "@0 0");
    // The reader stalls for 4 s (past the 2 s drain), then takes everything.
    await new Promise((res) => setTimeout(res, 4000));
    const sup = s.supervisorOf("sl")!;
    const cpu = await cpuTicks(sup);
    const got = (await out.rest()).length;
    out.close();
    const exit = await collect(s, "sl");
    const [, written] = /^exit 1 (\d+) 0 - code 0$/.exec(exit) ?? [];
    assert.ok(written, exit);
    // Counted as written, so that what did not arrive (N - got) is known to be lost.
    assert.equal(Number(written), N, "every byte the application wrote is counted");
    assert.match(s.file("sl", ".exit")!, new RegExp(`^out ${N}$`, "m"));
    assert.ok(got <= N);
    assert.ok(cpu < 50, `the supervisor spun while its reader stalled: ${cpu} ticks`);
  });

  test("stdin the application does not read does not make the supervisor spin", async (s) => {
    const r = await s.start("ns", ["/bin/sh", "-c", "sleep 3"], { flags: ["-i"] });
    assert.match(r.report, /^pid/, r.stderr);
    const c = await Conn.open(`${s.runs}/ns.sock`, "in");
    assert.equal(await c.line(), "@0");
    // More than the pipe and the buffer hold, in odd chunks.
    for (let i = 0; i < 30; i++) await c.send(frame(new Uint8Array(9000).fill(66)));
    await new Promise((res) => setTimeout(res, 1500));
    const cpu = await cpuTicks(s.supervisorOf("ns")!);
    assert.ok(cpu < 50, `the supervisor spun: ${cpu} ticks`);
    c.close();
  });

  test("what is left of the session when its leader ends is ended too", async (s) => {
    const r = await s.start("lo", [
      "/bin/sh",
      "-c",
      "sleep 3001 & (trap '' TERM; sleep 3002) & sleep 0.2; exit 3",
    ], { flags: ["-k", "500"] });
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    assert.equal(await collect(s, "lo"), "exit 1 - - - code 3");
    await eventually("no process of the session to remain", async () => {
      const out = await new Deno.Command("ps", { args: ["-e", "-o", "sid="], stdout: "piped" })
        .output();
      return !dec.decode(out.stdout).split("\n").some((l) => Number(l) === pid);
    });
  });

  test("descriptors the caller left open do not reach the application", async (s) => {
    const wrapped: Flavour = {
      ...s.flavour,
      wrap: [
        "/bin/sh",
        "-c",
        'exec 7</etc/hostname 8>/dev/null; exec "$0" "$@"',
        ...s.flavour.wrap,
      ],
    };
    const w = await Scratch.create(wrapped);
    try {
      const r = await w.start("fd", ["/bin/sh", "-c", "ls /proc/$$/fd"], { flags: ["-o"] });
      assert.match(r.report, /^pid/, r.stderr);
      const out = await Conn.open(`${w.runs}/fd.sock`, "out");
      await out.line();
      const fds = (await out.rest()).trim().split(/\s+/).map(Number).sort((a, b) => a - b);
      out.close();
      await collect(w, "fd");
      assert.ok(!fds.includes(7) && !fds.includes(8), `inherited: ${fds}`);
    } finally {
      await w.cleanup();
    }
  });

  test("-m is an octal umask", async (s) => {
    const r = await s.start("um", ["/bin/sh", "-c", "umask"], { flags: ["-o", "-m", "027"] });
    assert.match(r.report, /^pid/, r.stderr);
    const out = await Conn.open(`${s.runs}/um.sock`, "out");
    await out.line();
    assert.equal((await out.rest()).trim(), "0027");
    out.close();
    await collect(s, "um");
  });

  test("a locked run, or one whose record is gone, starts nothing", async (s) => {
    await Deno.writeTextFile(`${s.runs}/lk.lock`, "");
    const holder = new Deno.Command("flock", {
      args: [`${s.runs}/lk.lock`, "sleep", "30"],
    }).spawn();
    try {
      await eventually("the lock to be held", async () => {
        const t = await new Deno.Command("flock", {
          args: ["-n", `${s.runs}/lk.lock`, "true"],
        }).output();
        return t.code !== 0;
      });
      const r = await s.start("lk", ["/bin/true"]);
      assert.match(r.report, /^fail lock \d+$/m, r.stderr);
      assert.match(r.stderr, /locked: cmappserver is resolving it/);
    } finally {
      holder.kill("SIGKILL");
      await holder.status;
    }
    await Deno.remove(`${s.runs}/lk.lock`);
    const marker = `${s.dir}/ran`;
    const env = new TextEncoder().encode("PATH=/bin\0");
    // start() writes the record; here it is removed before the supervisor looks.
    const child = new Deno.Command(s.flavour.binary, {
      args: ["-e", String(env.length), s.runs, "gone", "/bin/sh", "/bin/sh", "-c", `: > ${marker}`],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = child.stdin.getWriter();
    await w.write(env);
    await w.close();
    const o = await child.output();
    assert.match(dec.decode(o.stdout), /^fail record 2$/m);
    assert.ok(!(await Deno.stat(marker).then(() => true, () => false)), "the application ran");
    assert.deepEqual(leftovers(s), []);
  });

  test("watch mode: a killed supervisor's application is followed, then lost", async (s) => {
    const r = await s.start("w", ["/bin/sleep", "1000"]);
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    const sup = s.supervisorOf("w")!;
    Deno.kill(sup, "SIGKILL");
    await eventually("the supervisor to die", async () => !(await running(sup)));
    assert.ok(await running(pid), "the application runs on");
    const w = await s.watch("w");
    assert.match(w.report, new RegExp(`^pid ${pid} \\d+$`, "m"), w.stderr);
    const c = await Conn.open(`${s.runs}/w.sock`, "ctl");
    assert.match(await c.line(), new RegExp(`^run ${pid} `));
    killGroup(pid);
    assert.match(await c.line(), /^exit 1 - - - lost its supervisor was killed/);
    await c.send("done\n");
    c.close();
    assert.match(s.file("w", ".exit")!, /^lost its supervisor was killed/);
  });

  test("watch mode: an application already gone, or a pid reused, is lost at once", async (s) => {
    const r = await s.start("v", ["/bin/sleep", "1000"]);
    const pid = Number(/^pid (\d+)/.exec(r.report)![1]);
    const sup = s.supervisorOf("v")!;
    Deno.kill(sup, "SIGKILL");
    await eventually("the supervisor to die", async () => !(await running(sup)));
    // Same pid, another start time: not the application.
    const [boot, sp, ss, p, start] = s.file("v", ".pid")!.trim().split(" ");
    await Deno.writeTextFile(`${s.runs}/v.pid`, `${boot} ${sp} ${ss} ${p} ${Number(start) + 1}\n`);
    const w = await s.watch("v");
    assert.match(w.report, /^pid/m, w.stderr);
    assert.match(await exitLine(s, "v"), /^exit 1 - - - lost its supervisor was killed/);
    assert.ok(await running(pid), "the process with that pid must be left alone");
  });
}

Deno.test("cmapp-supervise (aarch64): builds, and runs a command under qemu-user", async () => {
  const qemu = "/usr/bin/qemu-aarch64-static";
  let binary: string;
  try {
    binary = await buildSupervisor("aarch64");
  } catch (e) {
    return skipOrFail("supervise_test", (e as Error).message);
  }
  if (!(await Deno.stat(qemu).catch(() => null))) {
    return skipOrFail(
      "supervise_test",
      "qemu-aarch64-static not found: apt-get install qemu-user-static",
    );
  }
  const s = await Scratch.create({ name: "aarch64", binary, wrap: [qemu], env: {} });
  try {
    const r = await s.start("a", ["/bin/sh", "-c", "echo hi; exit 200"], { flags: ["-o"] });
    assert.match(r.report, /^pid \d+ \d+\n$/, r.stderr);
    const out = await Conn.open(`${s.runs}/a.sock`, "out");
    assert.equal(await out.line(), "@0 0");
    assert.equal(await out.rest(), "hi\n");
    out.close();
    assert.equal(await collect(s, "a"), "exit 1 3 0 - code 200");
  } finally {
    await s.cleanup();
  }
});
