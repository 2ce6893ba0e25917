// cmappserver's configuration as a running daemon sees it: the configuration
// file, the launch policy (allow_exec, allow_user, environment, working
// directory, size limits), connection limits, logging destinations, SIGHUP
// and the completeness of -help. Real processes throughout.
import assert from "node:assert/strict";
import {
  alive,
  eventually,
  type KeyPair,
  killGroup,
  makeKeys,
  mgrArgs,
  programCommand,
  rawTls,
  reapRuns,
  runMgr,
  runServerCli,
  startServerProcess,
  tempDir,
} from "./_harness.ts";
import {
  type Client,
  connect,
  LaunchError,
  type LaunchOptions,
  ManagerError,
} from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";
import {
  decodeServerMessage,
  encodeFrame,
  encodeMessage,
  type ServerMessage,
} from "../protocol/mod.ts";

/** The PATH a process gets when its request sets none (docs/cmappserver.md). */
const DOCUMENTED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const te = new TextEncoder();

async function client(keydir: string, port: number): Promise<Client> {
  return await connect({
    host: "127.0.0.1",
    port,
    identity: await loadIdentity(keydir),
    trust: await loadTrust(keydir),
  });
}

async function closeClient(c: Client): Promise<void> {
  c.close();
  await c.closed;
}

/** The LaunchError a launch fails with (fails the test if it is launched). */
async function refusal(
  c: Client,
  argv: string[],
  options: LaunchOptions = {},
): Promise<LaunchError> {
  const e = await c.launch(argv, options).then(
    (r) => {
      killGroup(r.pid);
      return new Error(`${JSON.stringify(argv)} was launched (pid ${r.pid}), not refused`);
    },
    (e) => e,
  );
  assert.ok(e instanceof LaunchError, String(e));
  return e;
}

/** Launches, waits for the exit and returns it. */
async function runToEnd(c: Client, argv: string[], options: LaunchOptions = {}) {
  const r = await c.launch(argv, options);
  return await c.wait(r.run);
}

/** What a command prints (the test permissions allow running, not /proc or Deno.uid). */
async function commandOutput(cmd: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdin: "null", stderr: "inherit" }).output();
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")} failed`);
  return new TextDecoder().decode(out.stdout);
}

/** uid and gid of a user from /etc/passwd. */
async function passwdEntry(user: string): Promise<{ uid: number; gid: number } | null> {
  for (const line of (await Deno.readTextFile("/etc/passwd")).split("\n")) {
    const f = line.split(":");
    if (f[0] === user && f.length >= 7) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  return null;
}

/** Runs cmappserver expecting it to refuse to start; kills it if it serves instead. */
async function runServerExpectingFailure(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappserver"), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // A daemon that wrongly starts would run forever: end it so the test fails, not hangs.
  const guard = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const out = await child.output();
    const d = new TextDecoder();
    return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
  } finally {
    clearTimeout(guard);
  }
}

/** A cmappserver started with our own environment and/or log file. */
interface Daemon {
  port: number;
  pid: number;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** Stops it (SIGTERM) and returns its exit code. */
  stop(): Promise<number>;
}

/**
 * Starts cmappserver on 127.0.0.1:0 with `args` and extra environment
 * variables; when `logfile` is given, the "listening on" line is looked for
 * in that file instead of on stderr.
 */
async function startDaemon(
  keydir: string,
  args: string[],
  options: { env?: Record<string, string>; logfile?: string } = {},
): Promise<Daemon> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      ...programCommand("cmappserver"),
      "-keydir",
      keydir,
      "-bind",
      "127.0.0.1",
      "-port",
      "0",
      "-statedir",
      `${keydir}-state`,
      "-config",
      "/dev/null",
      "-loglevel",
      "debug",
      ...args,
    ],
    env: options.env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const reading = (async () => {
    for await (const chunk of child.stderr) text += decoder.decode(chunk, { stream: true });
  })();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) child.kill("SIGTERM");
    const s = await status;
    await reading;
    return s.code;
  };
  const listening = /listening on 127\.0\.0\.1:(\d+)/;
  const where = async () =>
    options.logfile ? await Deno.readTextFile(options.logfile).catch(() => "") : text;
  let port = 0;
  try {
    await eventually("cmappserver to listen", async () => {
      if (exited) throw new Error(`cmappserver exited; stderr:\n${text}`);
      const m = listening.exec(await where());
      if (m) port = Number(m[1]);
      return m !== null;
    });
  } catch (e) {
    if (!exited) child.kill("SIGKILL");
    await status;
    await reading;
    throw e;
  }
  return { port, pid: child.pid, stderr: () => text, stop };
}

/** cmappmgr arguments that reach the cmappserver on `port` (like mgrArgs, for any daemon). */
function mgrTo(keys: KeyPair, port: number, ...more: string[]): string[] {
  return ["-node", "127.0.0.1", "-port", String(port), "-keydir", keys.manager, ...more];
}

async function stillServes(keys: KeyPair, port: number, log = () => ""): Promise<void> {
  const r = await runMgr(mgrTo(keys, port, "/bin/sh", "-c", "exit 42"));
  assert.equal(r.code, 42, `server stopped serving: ${r.stderr}\n${log()}`);
}

Deno.test("the configuration file is honoured, and the command line wins over it", async () => {
  const keys = await makeKeys();
  const conf = `${keys.root.path}/cmappserver.conf`;
  await Deno.writeTextFile(
    conf,
    "# at most two processes here\n\nmax_processes = 2   # a trailing comment\n",
  );
  const pids: number[] = [];
  try {
    for (const [extra, limit] of [[[], 2], [["-max_processes", "3"], 3]] as const) {
      const server = await startServerProcess(keys.server, [
        "-config",
        conf,
        "-statedir",
        `${keys.root.path}/state-${limit}`,
        ...extra,
      ]);
      const c = await client(keys.manager, server.port);
      try {
        assert.match(server.log(), new RegExp(`up to ${limit} processes`));
        for (let i = 0; i < limit; i++) {
          const r = await c.launch(["/bin/sleep", "600"], { name: `sleeper-${i}` });
          pids.push(r.pid);
        }
        const e = await refusal(c, ["/bin/sleep", "600"], { name: "one-too-many" });
        assert.equal(e.code, "limit");
        assert.match(e.message, new RegExp(`max_processes ${limit}\\b`));
        await c.ping();
      } finally {
        for (const pid of pids.splice(0)) {
          killGroup(pid);
          await eventually(`process ${pid} to end`, () => !alive(pid));
        }
        await closeClient(c);
        assert.equal(await server.stop(), 0);
      }
    }
  } finally {
    // Supervisors write exit statuses into the state directory: let them finish first.
    await reapRuns([`${keys.server}-state`], new Set(pids));
    await keys.root.cleanup();
  }
});

Deno.test("a bad configuration file stops cmappserver with exit 2 before it listens", async (t) => {
  const keys = await makeKeys();
  const dir = keys.root.path;
  const run = (conf: string, ...more: string[]) =>
    runServerExpectingFailure([
      "-config",
      conf,
      "-keydir",
      keys.server,
      "-statedir",
      `${dir}/state`,
      "-bind",
      "127.0.0.1",
      ...more,
    ]);
  const check = (r: { code: number; stderr: string }, pattern: RegExp) => {
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, pattern);
    assert.doesNotMatch(r.stderr, /listening on/);
    assert.equal(r.stderr.trim().split("\n").length, 1, `not one line: ${r.stderr}`);
  };
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  try {
    await t.step("a named configuration file that is missing", async () => {
      const missing = `${dir}/no-such.conf`;
      check(await run(missing, "-port", "0"), new RegExp(`${esc(missing)}`));
    });
    await t.step("a bad value names FILE:LINE", async () => {
      const conf = `${dir}/bad-value.conf`;
      await Deno.writeTextFile(conf, "# comment\n\nport = abc\n");
      check(await run(conf), new RegExp(`${esc(conf)}:3: .*port.*abc`));
    });
    await t.step("an unknown option names FILE:LINE and the option", async () => {
      const conf = `${dir}/unknown.conf`;
      await Deno.writeTextFile(conf, "max_processes = 2\nfrobnicate = 1\n");
      check(await run(conf, "-port", "0"), new RegExp(`${esc(conf)}:2: unknown option frobnicate`));
    });
    await t.step("the same key twice", async () => {
      const conf = `${dir}/twice.conf`;
      await Deno.writeTextFile(conf, "max_processes = 2\nmax_processes = 3\n");
      check(
        await run(conf, "-port", "0"),
        new RegExp(`${esc(conf)}:2: max_processes set twice \\(also at ${esc(conf)}:1\\)`),
      );
    });
    await t.step("a line that is not name = value", async () => {
      const conf = `${dir}/garbage.conf`;
      await Deno.writeTextFile(conf, "port 0\n");
      check(await run(conf, "-port", "0"), new RegExp(`${esc(conf)}:1: expected "name = value"`));
    });
  } finally {
    await keys.root.cleanup();
  }
});

// Values checked after merging (loglevel, allow_exec) still name FILE:LINE; unknown options too.
Deno.test({
  name: "every bad value from the configuration file names FILE:LINE",
  async fn() {
    const dir = await tempDir();
    try {
      for (const line of ["loglevel = loud", "supervision = perl", "allow_exec = usr/bin/*"]) {
        const conf = `${dir.path}/c.conf`;
        await Deno.writeTextFile(conf, `# comment\n${line}\n`);
        const r = await runServerExpectingFailure(["-config", conf, "-keydir", dir.path]);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, new RegExp(`${conf}:2: `), `${line}: ${r.stderr}`);
      }
    } finally {
      await dir.cleanup();
    }
  },
});

Deno.test("allow_exec: only matching programs run, matched by resolved normalised path", async (t) => {
  const keys = await makeKeys();
  const conf = `${keys.root.path}/cmappserver.conf`;
  await Deno.writeTextFile(conf, "allow_exec = /usr/bin/sleep\n");
  const server = await startServerProcess(keys.server, ["-config", conf]);
  const c = await client(keys.manager, server.port);
  try {
    await t.step("exact path: /usr/bin/sleep runs, /bin/sh is refused", async () => {
      assert.deepEqual(await runToEnd(c, ["/usr/bin/sleep", "0"]), { code: 0 });
      const e = await refusal(c, ["/bin/sh", "-c", "exit 0"]);
      assert.equal(e.code, "policy");
      assert.match(e.message, /^\/bin\/sh is not among the executables this server allows$/);
    });
    await t.step("paths are normalised: /usr/bin/../bin/sh is /usr/bin/sh", async () => {
      const e = await refusal(c, ["/usr/bin/../bin/sh", "-c", "exit 0"]);
      assert.equal(e.code, "policy");
      assert.match(e.message, /^\/usr\/bin\/sh is not among/);
      assert.deepEqual(await runToEnd(c, ["/usr/bin/./sleep", "0"]), { code: 0 });
      assert.deepEqual(await runToEnd(c, ["/usr//bin/sleep", "0"]), { code: 0 });
    });
    await t.step("a bare name is matched by its PATH lookup", async () => {
      assert.deepEqual(await runToEnd(c, ["sleep", "0"]), { code: 0 });
      const e = await refusal(c, ["sh", "-c", "exit 0"]);
      assert.equal(e.code, "policy");
      assert.match(e.message, /^\/usr\/bin\/sh is not among/);
    });
    await t.step("cmappmgr exits 206 with one clear line; the server logs it", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "exit 0"));
      assert.equal(r.code, 206, r.stderr);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, /^cmappmgr: .*\/bin\/sh is not among the executables/);
      await server.waitForLog(
        /launch of \["\/bin\/sh","-c","exit 0"\] refused: \/bin\/sh is not among/,
      );
      const ok = await runMgr(mgrArgs(keys, server, "/usr/bin/sleep", "0"));
      assert.equal(ok.code, 0, ok.stderr);
      await c.ping();
    });
  } finally {
    await closeClient(c);
    assert.equal(await server.stop(), 0);
  }
  // A glob, on the command line, repeated.
  const globbed = await startServerProcess(keys.server, [
    "-allow_exec",
    "/usr/bin/s*",
    "-allow_exec",
    "/usr/**/true",
  ]);
  const g = await client(keys.manager, globbed.port);
  try {
    await t.step("glob: * stays within a segment, ** crosses them", async () => {
      assert.deepEqual(await runToEnd(g, ["sh", "-c", "exit 3"]), { code: 3 });
      assert.deepEqual(await runToEnd(g, ["/usr/bin/sleep", "0"]), { code: 0 });
      assert.deepEqual(await runToEnd(g, ["/usr/bin/true"]), { code: 0 });
      for (const argv of [["/bin/sh"], ["/usr/bin/../../bin/sh"], ["/usr/bin/env", "true"]]) {
        const e = await refusal(g, [...argv, "-c", "exit 0"]);
        assert.equal(e.code, "policy", `${argv[0]}: ${e.message}`);
        assert.match(e.message, /is not among the executables this server allows/);
      }
    });
  } finally {
    await closeClient(g);
    assert.equal(await globbed.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("run-as: refused without allow_user, and for users not in it", async (t) => {
  const keys = await makeKeys();
  try {
    const plain = await startServerProcess(keys.server, ["-statedir", `${keys.root.path}/s1`]);
    const c = await client(keys.manager, plain.port);
    try {
      await t.step("without allow_user, run-as is refused", async () => {
        const e = await refusal(c, ["/bin/sh", "-c", "exit 0"], { user: "nobody" });
        assert.equal(e.code, "policy");
        assert.match(e.message, /running as another user is not allowed/);
        await c.ping();
      });
    } finally {
      await closeClient(c);
      assert.equal(await plain.stop(), 0);
    }
    const server = await startServerProcess(keys.server, [
      "-statedir",
      `${keys.root.path}/s2`,
      "-allow_user",
      "nobody",
    ]);
    const a = await client(keys.manager, server.port);
    try {
      await t.step("a user not in the list is refused", async () => {
        const e = await refusal(a, ["/bin/sh", "-c", "exit 0"], { user: "daemon" });
        assert.equal(e.code, "policy");
        assert.match(e.message, /user daemon is not among the allowed users \(nobody\)/);
      });
      await t.step("root is not allowed just because the daemon is root", async () => {
        const e = await refusal(a, ["/bin/sh", "-c", "exit 0"], { user: "root" });
        assert.equal(e.code, "policy");
        assert.match(e.message, /user root is not among the allowed users/);
      });
      await t.step("an unknown user is refused", async () => {
        const e = await refusal(a, ["/bin/sh", "-c", "exit 0"], { user: "no-such-user-cmapp" });
        assert.equal(e.code, "policy");
        assert.match(e.message, /no such user "no-such-user-cmapp"/);
      });
      await t.step("a group without a user is refused", async () => {
        const e = await refusal(a, ["/bin/sh", "-c", "exit 0"], { group: "nogroup" });
        assert.equal(e.code, "policy");
        assert.match(e.message, /a group can only be given together with a user/);
      });
      await a.ping();
      await server.waitForLog(/refused: user daemon is not among the allowed users/);
    } finally {
      await closeClient(a);
      assert.equal(await server.stop(), 0);
    }
  } finally {
    await keys.root.cleanup();
  }
});

// Run-as needs Deno.uid(): the permission set grants sys "uid".
Deno.test({
  name: "run-as: an allowed user runs with its uid and primary gid",
  async fn() {
    assert.equal(await commandOutput("id", "-u"), "0\n", "these tests run as root");
    const nobody = await passwdEntry("nobody");
    assert.ok(nobody, "no user nobody in /etc/passwd");
    const keys = await makeKeys();
    const out = await tempDir();
    // The process, as nobody, must be able to write here.
    await Deno.chmod(out.path, 0o777);
    const server = await startServerProcess(keys.server, ["-allow_user", "nobody"]);
    const a = await client(keys.manager, server.port);
    try {
      const script = `id -u > ${out.path}/uid; id -g > ${out.path}/gid; echo "$HOME $USER"` +
        ` > ${out.path}/vars`;
      assert.deepEqual(await runToEnd(a, ["/bin/sh", "-c", script], { user: "nobody" }), {
        code: 0,
      });
      assert.equal((await Deno.readTextFile(`${out.path}/uid`)).trim(), String(nobody.uid));
      assert.equal((await Deno.readTextFile(`${out.path}/gid`)).trim(), String(nobody.gid));
      assert.match(await Deno.readTextFile(`${out.path}/vars`), / nobody\n$/);
      // The file was created by that user, not by root.
      assert.equal((await Deno.stat(`${out.path}/uid`)).uid, nobody.uid);
      // The same user by uid is allowed too.
      const byUid = ["/bin/sh", "-c", `id -u > ${out.path}/uid2`];
      assert.deepEqual(await runToEnd(a, byUid, { user: String(nobody.uid) }), { code: 0 });
      assert.equal((await Deno.readTextFile(`${out.path}/uid2`)).trim(), String(nobody.uid));
      await a.ping();
    } finally {
      await closeClient(a);
      assert.equal(await server.stop(), 0);
      await out.cleanup();
      await keys.root.cleanup();
    }
  },
});

Deno.test("a process gets only the requested environment and working directory", async (t) => {
  const keys = await makeKeys();
  const out = await tempDir();
  const daemon = await startDaemon(keys.server, [], { env: { CMAPP_LEAK: "1" } });
  const c = await client(keys.manager, daemon.port);
  try {
    // The marker really is in the daemon's environment.
    const own = await commandOutput("cat", `/proc/${daemon.pid}/environ`);
    assert.ok(own.split("\0").includes("CMAPP_LEAK=1"), "the daemon lacks the marker");
    await t.step("env arrives, nothing leaks, PATH is the documented default", async () => {
      const exit = await runToEnd(
        c,
        ["/bin/sh", "-c", 'env > "$OUT/env"; pwd > "$OUT/pwd"'],
        { env: { FOO: "bar baz", OUT: out.path }, cwd: "/tmp" },
      );
      assert.deepEqual(exit, { code: 0 });
      const env = (await Deno.readTextFile(`${out.path}/env`)).split("\n");
      assert.ok(env.includes("FOO=bar baz"), env.join("\n"));
      assert.ok(env.includes(`PATH=${DOCUMENTED_PATH}`), env.join("\n"));
      assert.ok(!env.some((l) => l.startsWith("CMAPP_LEAK=")), env.join("\n"));
      assert.ok(!env.some((l) => l.startsWith("HOME=")), `HOME leaked: ${env.join("\n")}`);
      assert.equal(await Deno.readTextFile(`${out.path}/pwd`), "/tmp\n");
    });
    await t.step("a PATH in the request replaces the default", async () => {
      const exit = await runToEnd(c, ["/bin/sh", "-c", 'echo "$PATH" > "$OUT/path"'], {
        env: { PATH: "/usr/bin:/bin", OUT: out.path },
      });
      assert.deepEqual(exit, { code: 0 });
      assert.equal(await Deno.readTextFile(`${out.path}/path`), "/usr/bin:/bin\n");
    });
    await t.step("the working directory defaults to /", async () => {
      const exit = await runToEnd(c, ["/bin/sh", "-c", 'pwd > "$OUT/pwd2"'], {
        env: { OUT: out.path },
      });
      assert.deepEqual(exit, { code: 0 });
      assert.equal(await Deno.readTextFile(`${out.path}/pwd2`), "/\n");
    });
    await t.step("non-canonical, missing and non-directory cwds are refused", async () => {
      for (
        const [cwd, why] of [
          ["/tmp/../etc", /not a canonical absolute path/],
          ["/tmp/./x", /not a canonical absolute path/],
          ["//tmp", /not a canonical absolute path/],
          ["/no-such-dir-cmapp/x", /does not exist/],
          ["/etc/passwd", /not a directory/],
        ] as const
      ) {
        const e = await refusal(c, ["/bin/true"], { cwd });
        assert.equal(e.code, "policy", `${cwd}: ${e.message}`);
        assert.match(e.message, why, cwd);
      }
      await c.ping();
    });
    await t.step("a relative cwd is refused and the server keeps serving", async () => {
      // On a connection of its own, whichever way it is refused.
      const other = await client(keys.manager, daemon.port);
      try {
        const e = await other.launch(["/bin/true"], { cwd: "relative" }).then(
          (r) => {
            killGroup(r.pid);
            return new Error("launched with a relative cwd");
          },
          (e) => e,
        );
        assert.ok(e instanceof LaunchError || e instanceof ManagerError, String(e));
        assert.match(e.message, /cwd|working directory/);
      } finally {
        await closeClient(other);
      }
      await c.ping();
      await stillServes(keys, daemon.port, daemon.stderr);
    });
  } finally {
    await closeClient(c);
    assert.equal(await daemon.stop(), 0);
    await out.cleanup();
    await keys.root.cleanup();
  }
});

// A relative cwd is a per-request policy refusal; the connection stays up.
Deno.test({
  name: "a relative cwd is a policy refusal, not a protocol error",
  async fn() {
    const keys = await makeKeys();
    const server = await startServerProcess(keys.server);
    const c = await client(keys.manager, server.port);
    try {
      const e = await refusal(c, ["/bin/true"], { cwd: "relative" });
      assert.equal(e.code, "policy");
      assert.match(e.message, /not a canonical absolute path/);
      await c.ping();
    } finally {
      await closeClient(c);
      assert.equal(await server.stop(), 0);
      await keys.root.cleanup();
    }
  },
});

Deno.test("size limits: argv, environment and frames", async (t) => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server, [
    "-max_argv_bytes",
    "100",
    "-max_env_bytes",
    "200",
    "-max_frame",
    "1024",
  ]);
  const c = await client(keys.manager, server.port);
  try {
    await t.step("argv over max_argv_bytes is refused", async () => {
      const e = await refusal(c, ["/bin/echo", "x".repeat(200)]);
      assert.equal(e.code, "policy");
      assert.match(e.message, /argv is \d+ bytes, over this server's limit of 100/);
    });
    await t.step("an environment over max_env_bytes is refused", async () => {
      const e = await refusal(c, ["/bin/true"], { env: { BIG: "y".repeat(250) } });
      assert.equal(e.code, "policy");
      assert.match(e.message, /environment is \d+ bytes, over this server's limit of 200/);
    });
    await t.step("within the limits, launches work", async () => {
      assert.deepEqual(await runToEnd(c, ["/bin/sh", "-c", "exit 5"], { env: { A: "b" } }), {
        code: 5,
      });
    });
    await t.step("a frame over max_frame gets a protocol error and a close", async () => {
      const conn = await rawTls(keys.manager, server.port);
      conn.write(
        encodeFrame(
          encodeMessage({ type: "hello", version: { major: 1, minor: 0 }, agent: "test" }),
        ),
      );
      const big = `{"type":"ping","id":1,"pad":"${"z".repeat(2000)}"}`;
      conn.write(encodeFrame(te.encode(big)));
      const msgs: ServerMessage[] = (await conn.readUntilClose()).map((f) =>
        decodeServerMessage(f)
      );
      assert.deepEqual(msgs.map((m) => m.type), ["hello", "error"]);
      const err = msgs[1];
      assert.ok(err.type === "error");
      assert.equal(err.code, "protocol");
      assert.match(err.message, /exceeds the maximum of 1024 bytes/);
      await stillServes(keys, server.port, server.log);
      await c.ping();
    });
  } finally {
    await closeClient(c);
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("idle_timeout: a connection silent after its hello is closed", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server, ["-idle_timeout", "1"]);
  try {
    const conn = await rawTls(keys.manager, server.port);
    conn.write(
      encodeFrame(encodeMessage({ type: "hello", version: { major: 1, minor: 0 }, agent: "t" })),
    );
    // We say nothing more; the server closes the connection.
    const msgs = (await conn.readUntilClose()).map((f) => decodeServerMessage(f));
    assert.deepEqual(msgs.map((m) => m.type), ["hello"]);
    await server.waitForLog(/silent for 1000 ms; closing/);
    assert.doesNotMatch(server.log(), /no hello within/);
    await stillServes(keys, server.port, server.log);
  } finally {
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("logging: log file, rotation on SIGHUP, fallback to stderr, syslog", async (t) => {
  const keys = await makeKeys();
  try {
    await t.step("-logfile gets the lines, and SIGHUP reopens it after rotation", async () => {
      const logfile = `${keys.root.path}/cmappserver.log`;
      const daemon = await startDaemon(keys.server, ["-logfile", logfile], { logfile });
      try {
        const log = () => Deno.readTextFile(logfile).catch(() => "");
        const r = await runMgr(mgrTo(keys, daemon.port, "/bin/sh", "-c", "exit 7"));
        assert.equal(r.code, 7, r.stderr);
        await eventually("the run's lines in the log file", async () => {
          const text = await log();
          return /accepted manager 127\.0\.0\.1/.test(text) &&
            /started run \S+ \(\S+\) pid \d+: \["\/bin\/sh","-c","exit 7"\]/.test(text) &&
            /pid \d+ exited with code 7/.test(text);
        });
        assert.doesNotMatch(daemon.stderr(), /listening on|accepted manager/);
        // Rotation: move the file away, SIGHUP, and the daemon writes a new one.
        await Deno.rename(logfile, `${logfile}.1`);
        Deno.kill(daemon.pid, "SIGHUP");
        await eventually(
          "a new log file after SIGHUP",
          async () => /SIGHUP: reloaded/.test(await log()),
        );
        const again = await runMgr(mgrTo(keys, daemon.port, "/bin/sh", "-c", "exit 8"));
        assert.equal(again.code, 8, again.stderr);
        await eventually("new lines in the new file", async () => /code 8/.test(await log()));
        const old = await Deno.readTextFile(`${logfile}.1`);
        assert.match(old, /code 7/);
        assert.doesNotMatch(old, /SIGHUP: reloaded|code 8/);
      } finally {
        assert.equal(await daemon.stop(), 0);
      }
    });
    await t.step("an unwritable -logfile falls back to stderr, once, and it serves", async () => {
      const daemon = await startDaemon(keys.server, ["-logfile", "/nonexistent/dir/x.log"]);
      try {
        const stderr = daemon.stderr();
        const warnings = stderr.split("\n").filter((l) => /cannot be written/.test(l));
        assert.equal(warnings.length, 1, stderr);
        assert.match(
          warnings[0],
          /log file \/nonexistent\/dir\/x\.log cannot be written \(.+\); logging to stderr instead/,
        );
        await stillServes(keys, daemon.port, daemon.stderr);
        await eventually("the manager in the log", () => /accepted manager/.test(daemon.stderr()));
        // A SIGHUP retries the file but does not repeat the warning.
        Deno.kill(daemon.pid, "SIGHUP");
        await eventually("SIGHUP handled", () => /SIGHUP: reloaded/.test(daemon.stderr()));
      } finally {
        assert.equal(await daemon.stop(), 0);
      }
    });
    await t.step("-syslog yes does not stop the daemon", async () => {
      const daemon = await startDaemon(keys.server, ["-syslog", "yes"]);
      try {
        await stillServes(keys, daemon.port, daemon.stderr);
        await pingOnce(keys, daemon.port);
        // With or without a working syslog, stderr still gets every line.
        await eventually("the manager in the log", () => /accepted manager/.test(daemon.stderr()));
      } finally {
        assert.equal(await daemon.stop(), 0);
      }
    });
  } finally {
    await keys.root.cleanup();
  }
});

async function pingOnce(keys: KeyPair, port: number): Promise<void> {
  const c = await client(keys.manager, port);
  try {
    await c.ping();
  } finally {
    await closeClient(c);
  }
}

Deno.test("SIGHUP keeps live connections", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  const c = await client(keys.manager, server.port);
  try {
    await c.ping();
    Deno.kill(server.pid, "SIGHUP");
    await server.waitForLog(/SIGHUP: reloaded 1 trusted manager\(s\)/);
    await c.ping();
    assert.deepEqual(await runToEnd(c, ["/bin/sh", "-c", "exit 6"]), { code: 6 });
    assert.equal(c.serverError, null);
  } finally {
    await closeClient(c);
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("cmappserver -help lists every option it accepts", async () => {
  const source = await Deno.readTextFile(new URL("../cli/cmappserver.ts", import.meta.url));
  const spec = /const SPEC[^{]*\{\n([\s\S]*?)\n\};/.exec(source);
  assert.ok(spec, "no SPEC in cli/cmappserver.ts");
  const options = [...spec[1].matchAll(/^\s+(\w+):/gm)].map((m) => m[1]);
  assert.ok(options.length >= 20, `only ${options.length} options parsed: ${options}`);
  assert.ok(options.includes("allow_exec") && options.includes("syslog"));
  const r = await runServerCli(["-help"]);
  assert.equal(r.code, 0, r.stderr);
  const missing = options.filter((o) => !new RegExp(`^\\s+-${o}\\b`, "m").test(r.stdout));
  assert.deepEqual(missing, [], `-help does not describe: ${missing.join(", ")}`);
});

Deno.test("cmappserver -check: the options, the configuration file and the keys, without serving", async () => {
  const keys = await makeKeys();
  try {
    const conf = `${keys.root.path}/cmappserver.conf`;
    await Deno.writeTextFile(conf, `keydir = ${keys.server}\nport = 5315\nmax_processes = 12\n`);
    const ok = await runServerCli(["-config", conf, "-check"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /configuration OK/);
    assert.match(ok.stdout, /1 trusted manager/);
    assert.match(ok.stdout, /certificate [0-9A-F:]{95}/);
    // A bad value: 2, the file and line named.
    await Deno.writeTextFile(conf, `keydir = ${keys.server}\nmax_processes = twelve\n`);
    const bad = await runServerCli(["-config", conf, "-check"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /max_processes/);
    // Keys missing: 2, with what to do.
    const nokeys = await runServerCli([
      "-config",
      "/dev/null",
      "-keydir",
      "/nonexistent",
      "-check",
    ]);
    assert.equal(nokeys.code, 2);
    assert.match(nokeys.stderr, /keygen/);
  } finally {
    await keys.root.cleanup();
  }
});
