// Logging to the system log the way the host gives it: cmappmgr's syslog
// under the shipped permission set (it used to ask Deno about /dev/log, which
// the permission set refuses, and took the refusal for "no syslog"), and
// stderr that is the systemd journal (JOURNAL_STREAM naming fd 2): every line
// with its sd-daemon priority, and no second copy through syslog.
import assert from "node:assert/strict";
import {
  eventually,
  freePort,
  makeKeys,
  mgrArgs,
  programCommand,
  ServerFixture,
  type TempDir,
  tempDir,
} from "./_harness.ts";

/** A `logger` first in PATH that keeps its arguments and its input. */
async function fakeLogger(dir: TempDir): Promise<{ env: Record<string, string>; out: string }> {
  const bin = `${dir.path}/bin`;
  await Deno.mkdir(bin);
  const out = `${dir.path}/syslog`;
  await Deno.writeTextFile(
    `${bin}/logger`,
    `#!/bin/sh\nprintf '%s\\n' "$*" >>"${out}.args"\ncat >>"${out}"\n`,
    { mode: 0o755 },
  );
  return { env: { PATH: `${bin}:${Deno.env.get("PATH")}` }, out };
}

/**
 * Runs a program with its stderr appended to `errFile`, through sh, with
 * `JOURNAL_STREAM` naming that file (`journal`), another file, or unset.
 */
async function runWithStderr(
  program: "cmappmgr" | "cmappserver",
  args: string[],
  errFile: string,
  journal: "this" | "other" | "none",
  env: Record<string, string> = {},
): Promise<number> {
  const script = `f=$1; shift; : >"$f"; : >"$f.other"
case ${journal} in
this) JOURNAL_STREAM=$(stat -L -c %d:%i "$f"); export JOURNAL_STREAM ;;
other) JOURNAL_STREAM=$(stat -L -c %d:%i "$f.other"); export JOURNAL_STREAM ;;
esac
exec "$@" 2>>"$f"`;
  const out = await new Deno.Command("sh", {
    args: ["-c", script, "sh", errFile, Deno.execPath(), ...programCommand(program), ...args],
    env,
    stdin: "null",
    stdout: "null",
    stderr: "inherit",
  }).output();
  return out.code;
}

const readOr = (path: string) => Deno.readTextFile(path).catch(() => "");

Deno.test("cmappmgr logs to syslog under its shipped permission set", async () => {
  const f = await ServerFixture.create();
  try {
    const server = await f.server();
    const { env, out } = await fakeLogger(f.keys.root);
    const code = await runWithStderr(
      "cmappmgr",
      mgrArgs(f.keys, server, "-service_name", "web", "--", "sh", "-c", "exit 3"),
      `${f.dir}/stderr`,
      "none",
      env,
    );
    assert.equal(code, 3);
    // The logger finishes on its own once cmappmgr has handed it the last line.
    await eventually(
      "the logger to write the last line",
      async () => /exited with code 3/.test(await readOr(out)),
    );
    assert.match(await readOr(`${out}.args`), /--prio-prefix -t cmappmgr --id=\d+/);
    // Facility daemon (3), severity info (6): <30>.
    assert.match(await readOr(out), /^<30>\[web\] started run \S+ pid \d+/m);
    assert.match(await readOr(out), /^<30>\[web\] run \S+ pid \d+ exited with code 3/m);
    assert.equal(await readOr(`${f.dir}/stderr`), "", "info lines stay off stderr");
  } finally {
    await f.cleanup();
  }
});

Deno.test("cmappmgr on the journal: each line with its priority, no syslog copy; an inherited JOURNAL_STREAM is ignored", async () => {
  const keys = await makeKeys();
  try {
    const { env, out } = await fakeLogger(keys.root);
    // Nothing listens there: warnings while it retries, then the error, exit 200.
    const args = [
      "-node",
      "127.0.0.1",
      "-port",
      String(freePort()),
      "-keydir",
      keys.manager,
      "-cmappserver_timeout",
      "2",
      "--",
      "true",
    ];
    const err = `${keys.root.path}/stderr`;
    assert.equal(await runWithStderr("cmappmgr", args, err, "this", env), 200);
    const journal = await Deno.readTextFile(err);
    const lines = journal.trimEnd().split("\n");
    assert.ok(lines.length >= 2, journal);
    for (const line of lines) assert.match(line, /^<[3-7]>/, `no priority: ${line}`);
    assert.match(journal, /^<4>warn: /m);
    assert.match(journal, /^<3>cmappmgr: .*127\.0\.0\.1/m);
    assert.doesNotMatch(journal, /^<\d>\d{4}-\d\d-\d\dT/m, "no timestamp: the journal has its own");
    assert.equal(await readOr(out), "", "no second copy through syslog");

    // The variable inherited, but stderr elsewhere: plain lines, as on a terminal.
    assert.equal(await runWithStderr("cmappmgr", args, err, "other", env), 200);
    const plain = await Deno.readTextFile(err);
    assert.doesNotMatch(plain, /^<\d>/m);
    assert.match(plain, /^\d{4}-\d\d-\d\dT\S+ cmappmgr\[\d+\] warn: /m);
  } finally {
    await keys.root.cleanup();
  }
});

Deno.test("cmappserver -syslog yes on the journal writes each line once, with its priority", async () => {
  const keys = await makeKeys();
  const dir: TempDir = await tempDir();
  try {
    const { env, out } = await fakeLogger(dir);
    // A bad option value after the sinks are set up would end it before it listens; instead let
    // it fail on a key directory that does not exist: one error line, exit 2.
    const err = `${dir.path}/stderr`;
    const code = await runWithStderr(
      "cmappserver",
      ["-config", "/dev/null", "-syslog", "yes", "-keydir", `${dir.path}/nokeys`],
      err,
      "this",
      env,
    );
    assert.equal(code, 2);
    const journal = await Deno.readTextFile(err);
    assert.match(journal, /^<6>info: syslog = yes: not used, stderr is the journal already$/m);
    assert.match(journal, /^<3>error: /m);
    assert.equal(await readOr(`${out}.args`), "", "no logger started: no second copy");
  } finally {
    await dir.cleanup();
    await keys.root.cleanup();
  }
});
