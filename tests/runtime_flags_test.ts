// The runtime flags each program runs with (tools/_programs.ts RUNTIME_FLAGS)
// are the same in every place that starts it: the deno.json tasks the README
// names, the tests and bench (programCommand), and the wrappers the install
// docs and the unit give for the bundles. A place that forgot them would run a
// daemon whose memory bound docs/PROTOCOL.md does not describe.
import assert from "node:assert/strict";
import { programCommand, ROOT, RUNTIME_FLAGS } from "../tools/_programs.ts";

const PROGRAMS = ["cmappserver", "cmappmgr"] as const;

Deno.test("runtime flags: the deno.json task of each program passes them", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).tasks;
  for (const p of PROGRAMS) {
    const runs = String(tasks[p]).split("&&").map((s) => s.trim()).filter((s) =>
      /cli\/\w+\.ts"?$/.test(s) && s.includes(`cli/${p}.ts`)
    );
    assert.equal(runs.length, 1, `task ${p} runs cli/${p}.ts once`);
    for (const f of RUNTIME_FLAGS[p]) assert.ok(runs[0].includes(f), `task ${p} lacks ${f}`);
  }
});

Deno.test("runtime flags: programCommand, for sources and bundles alike, passes them", () => {
  for (const p of PROGRAMS) {
    for (const f of RUNTIME_FLAGS[p]) assert.ok(programCommand(p).includes(f), `${p}: ${f}`);
  }
});

Deno.test("runtime flags: every documented wrapper of a bundle passes them", async () => {
  for (const file of ["docs/install.md", "dist/systemd/cmappserver.service"]) {
    const text = await Deno.readTextFile(`${ROOT}/${file}`);
    // A wrapper: from "deno run" to the bundle it runs.
    const wrappers = [...text.matchAll(/deno run[^]*?(cmappserver|cmappmgr)\.js/g)];
    assert.ok(wrappers.length > 0, `${file} shows a wrapper`);
    for (const [cmd, p] of wrappers) {
      for (const f of RUNTIME_FLAGS[p as typeof PROGRAMS[number]]) {
        assert.ok(cmd.includes(f), `${file}: the ${p} wrapper lacks ${f}`);
      }
    }
  }
});

Deno.test("deno task cmappmgr, run from elsewhere: relative paths are the caller's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cmapp-task-" });
  // As a user's shell has it: no INIT_CWD (npx, which runs these tests, sets one), so that
  // deno task sets it to where it was run.
  const env: Record<string, string> = {};
  for (const k of ["PATH", "HOME", "DENO_DIR", "NO_COLOR", "DENO_NO_UPDATE_CHECK"]) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  // deno task cmappmgr ARGS, run from `dir` as a user's shell would.
  const task = (...args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "--config", `${ROOT}/deno.json`, "cmappmgr", ...args],
      cwd: dir,
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
  try {
    const keygen = await task("keygen", "-keydir", "keys");
    assert.equal(keygen.code, 0, new TextDecoder().decode(keygen.stderr));
    // Written where the caller is, not in the checkout.
    assert.ok((await Deno.stat(`${dir}/keys/cert.pem`)).isFile);
    await assert.rejects(Deno.stat(`${ROOT}/keys`), Deno.errors.NotFound);
    await Deno.copyFile(`${dir}/keys/cert.pem`, `${dir}/keys/trusted/self.pem`);
    const check = await task("-check", "-node", "guest1", "-keydir", "./keys", "--", "true");
    assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(`${ROOT}/keys`, { recursive: true }).catch(() => {});
  }
});
