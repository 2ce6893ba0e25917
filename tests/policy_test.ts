/**
 * What a pinned manager can and cannot do (issue 12, docs/cmappserver.md
 * "Threat model"): a request's environment reaches its application and
 * nothing else, never code that runs as root; a run-as request gets exactly
 * the groups the policy allows; no request field can forge a log line.
 * Real processes; run as root (run-as needs it).
 */
import assert from "node:assert/strict";
import { eventually, runPids, ServerFixture, type ServerProcess } from "./_harness.ts";
import { skipOrFail } from "./_skip.ts";
import { type Client, connect, LaunchError, type LaunchOptions } from "../manager/mod.ts";
import { loadIdentity, loadTrust } from "../tls/mod.ts";

const dec = new TextDecoder();

class Fixture extends ServerFixture {
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

async function refused(c: Client, argv: string[], o: LaunchOptions): Promise<LaunchError> {
  const e = await c.launch(argv, o).then(() => null, (e) => e);
  assert.ok(e instanceof LaunchError, `expected a refusal, got ${JSON.stringify(e)}`);
  return e;
}

/** A file of /proc, read with cat (this runtime refuses /proc paths to our permission set). */
async function proc(pid: number, name: string): Promise<string> {
  const out = await new Deno.Command("cat", { args: [`/proc/${pid}/${name}`], stdout: "piped" })
    .output();
  return dec.decode(out.stdout);
}

function asRoot(): boolean {
  if (Deno.uid() === 0) return true;
  skipOrFail("policy_test", "run-as and reading other users' /proc files need root");
  return false;
}

Deno.test("a request's environment reaches its application and nothing else", async () => {
  if (!asRoot()) return;
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const c = await f.client(server);
    const env = {
      PATH: "/usr/bin:/bin",
      SECRET: "s3cret",
      PERL5OPT: "-Mstrict",
      BASH_ENV: "/tmp/nope",
      LD_PRELOAD: "/nonexistent/evil.so",
    };
    const r = await c.launch(["/bin/sleep", "600"], { name: "env", env });
    f.pids.add(r.pid);
    const { supervisorPid } = runPids(f.stateDir, r.run);
    assert.equal(await proc(supervisorPid!, "environ"), "", "the supervisor has an environment");
    assert.ok(!(await proc(supervisorPid!, "cmdline")).includes("s3cret"));
    const appEnv = (await proc(r.pid, "environ")).split("\0").filter((x) => x);
    assert.deepEqual(appEnv.sort(), Object.entries(env).map(([k, v]) => `${k}=${v}`).sort());
  } finally {
    await f.cleanup();
  }
});

Deno.test("an interpreter's environment variables run nothing as root (LD_PRELOAD as nobody)", async () => {
  if (!asRoot()) return;
  const cc = ["/usr/bin/cc", "/usr/bin/gcc"].find((p) => Deno.statSync(p).isFile);
  if (!cc) {
    return skipOrFail("policy_test", "building a test library needs gcc: apt-get install gcc");
  }
  const f = await Fixture.create();
  const lib = await Deno.makeTempDir({ prefix: "cmapp-preload-" });
  try {
    // A library that, wherever it is loaded, writes down who loaded it.
    await Deno.chmod(lib, 0o1777);
    const src = `${lib}/evil.c`;
    await Deno.writeTextFile(
      src,
      `#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void who(void) {` +
        ` FILE *f = fopen("${lib}/loaded", "a"); if (f) { fprintf(f, "uid %d\\n", (int)geteuid());` +
        ` fclose(f); } }\n`,
    );
    const built = await new Deno.Command(cc, {
      args: ["-shared", "-fPIC", "-o", `${lib}/evil.so`, src],
      stderr: "piped",
    }).output();
    assert.equal(built.code, 0, dec.decode(built.stderr));
    await Deno.chmod(`${lib}/evil.so`, 0o755);
    const server = await f.server("-allow_exec", "/usr/bin/true", "-allow_user", "nobody");
    const c = await f.client(server);
    const r = await c.launch(["/usr/bin/true"], {
      name: "preload",
      user: "nobody",
      env: { PATH: "/usr/bin:/bin", LD_PRELOAD: `${lib}/evil.so` },
    });
    assert.deepEqual(await c.wait(r.run), { code: 0 });
    // The application (as nobody) loaded it, as it would anywhere; root never did.
    const loaded = (await Deno.readTextFile(`${lib}/loaded`)).trim().split("\n");
    assert.deepEqual([...new Set(loaded)], ["uid 65534"]);
  } finally {
    await f.cleanup();
    await Deno.remove(lib, { recursive: true });
  }
});

Deno.test("run-as groups: the user's own, or allowed ones, and exactly those", async (t) => {
  if (!asRoot()) return;
  const f = await Fixture.create();
  try {
    const server = await f.server("-allow_user", "nobody", "-allow_group", "disk");
    const c = await f.client(server);
    const sh = ["/bin/sleep", "600"];
    for (const group of ["root", "0", "shadow"]) {
      await t.step(`a group neither nobody's nor allowed (${group}) is refused`, async () => {
        const e = await refused(c, sh, { name: `g-${group}`, user: "nobody", group });
        assert.equal(e.code, "policy");
        assert.match(e.message, /is neither one of nobody's own groups nor among the allowed/);
      });
    }
    await t.step("the user's primary group is its own", async () => {
      const r = await c.launch(sh, { name: "own", user: "nobody", group: "nogroup" });
      f.pids.add(r.pid);
      const st = await proc(r.pid, "status");
      assert.match(st, /^Gid:\s+65534\s+65534\s+65534\s+65534$/m);
      assert.match(st, /^Groups:\s+65534\s*$/m);
    });
    await t.step(
      "an allowed group (allow_group disk) is taken, the rest are the user's",
      async () => {
        const r = await c.launch(sh, { name: "disk", user: "nobody", group: "disk" });
        f.pids.add(r.pid);
        const st = await proc(r.pid, "status");
        assert.match(st, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
        assert.match(st, /^Gid:\s+6\s+6\s+6\s+6$/m);
        assert.match(st, /^Groups:\s+65534\s*$/m);
      },
    );
    await server.waitForLog(/refused: group root is neither one of nobody's own groups/);
  } finally {
    await f.cleanup();
  }
});

Deno.test("request fields cannot forge log lines", async () => {
  const f = await Fixture.create();
  try {
    const server = await f.server();
    const c = await f.client(server);
    const forged = "2026-01-01T00:00:00.000Z cmappserver[1] info: forged";
    await refused(c, [`/no/such\n${forged}`], { name: "x1" });
    await refused(c, ["/bin/true"], { name: "x2", cwd: `/\r${forged}` });
    await refused(c, ["/bin/true"], { name: "x3", cwd: `/tmp\n${forged}` });
    const r = await c.launch(["/bin/sh", "-c", `exit 0\n${forged}`, `\u2028${forged}`], {
      name: "x4",
    });
    await c.wait(r.run);
    await eventually("the log lines", () => Promise.resolve(/x4.*exited/.test(server.log())));
    for (const line of server.log().split(/\r?\n|\r|\u2028/)) {
      assert.ok(!line.startsWith(forged.slice(0, 24)), `a forged line: ${line}`);
    }
    assert.match(server.log(), /\\nforged|\\n2026-01-01/);
  } finally {
    await f.cleanup();
  }
});
