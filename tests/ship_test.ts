// Packaging (dist/systemd, dist/init.d, dist/ocf): shellcheck on every shell
// script, systemd-analyze verify on the units, the cmappmgr@ wrapper, the LSB
// init script run for real against a real cmappserver, and the OCF resource
// agent under ocf-tester (and a few cases ocf-tester does not cover) against
// a real cmappserver on 127.0.0.1.
//
// The tools come from Debian packages (.ci/deps.sh installs them): a test
// whose tool is missing is skipped, with the reason in its name and on stdout.
import { skipOrFail, testOrSkip } from "./_skip.ts";
import { writePackaging } from "../tools/_packaging.ts";
import { RUNTIME_FLAGS } from "../tools/_programs.ts";
import { USAGE as MGR_USAGE } from "../cli/cmappmgr.ts";
import { USAGE as SERVER_USAGE } from "../cli/cmappserver.ts";
import assert from "node:assert/strict";
import {
  alive,
  denoDir,
  eventually,
  freePort,
  type KeyPair,
  killGroup,
  makeKeys,
  mgrArgs,
  processes,
  programCommand,
  reapUnder,
  runMgr,
  type ServerProcess,
  startServerProcess,
  tempDir,
  writeProgramWrapper,
} from "./_harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const INIT = `${ROOT}/dist/init.d/cmappserver`;
const AGENT = `${ROOT}/dist/ocf/cmapp`;
const INSTANCE = `${ROOT}/dist/systemd/cmappmgr-instance`;
const UNITS = ["cmappserver.service", "cmappmgr@.service"];
const SCRIPTS = [
  "dist/init.d/cmappserver",
  "dist/ocf/cmapp",
  "dist/systemd/cmappmgr-instance",
  ".ci/deps.sh",
  "tests/pacemaker_cluster.sh",
];

/** The path of an executable on PATH (or in the sbin directories), if any. */
function which(cmd: string): string | undefined {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const d of dirs) {
    if (!d) continue;
    try {
      const st = Deno.statSync(`${d}/${cmd}`);
      if (st.isFile && ((st.mode ?? 0) & 0o111)) return `${d}/${cmd}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Why a test cannot run (a missing tool), or undefined. */
function missing(...cmds: string[]): string | undefined {
  const absent = cmds.filter((c) => !which(c));
  return absent.length ? `not installed: ${absent.join(", ")} (see .ci/deps.sh)` : undefined;
}

/** Deno.test, skipped with the reason printed when `reason` is set (failed, in CI). */
function testIf(reason: string | undefined, name: string, fn: () => Promise<void>): void {
  testOrSkip("ship_test", name, reason, fn);
}

interface Out {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end. */
async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  cwd = ROOT,
): Promise<Out> {
  const out = await new Deno.Command(cmd, {
    args,
    env,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** A unit file's settings: "Section.Key" → values, comments left out. */
function unitSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#") || line.startsWith(";")) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1];
      continue;
    }
    const i = line.indexOf("=");
    const key = `${section}.${line.slice(0, i)}`;
    settings.set(key, [...(settings.get(key) ?? []), line.slice(i + 1)]);
  }
  return settings;
}

/** Seconds in a systemd time span like "55", "55s", "1min 30s", "1h". */
function seconds(span: string): number {
  let total = 0;
  for (const [, n, unit] of span.matchAll(/(\d+)\s*(h|min|s|ms)?/g)) {
    total += +n * ({ h: 3600, min: 60, s: 1, ms: 0.001 }[unit ?? "s"] ?? 1);
  }
  return total;
}

// ---------------------------------------------------------------------------

testIf(missing("shellcheck"), "shellcheck: every packaging script is clean", async () => {
  const r = await run("shellcheck", SCRIPTS);
  assert.equal(r.code, 0, `shellcheck found problems:\n${r.stdout}${r.stderr}`);
  for (const f of SCRIPTS) {
    const st = await Deno.stat(`${ROOT}/${f}`);
    assert.ok((st.mode ?? 0) & 0o100, `${f} is not executable`);
    const shell = (await Deno.readTextFile(`${ROOT}/${f}`)).startsWith("#!/bin/sh") ? "sh" : "bash";
    const n = await run(shell, ["-n", f]);
    assert.equal(n.code, 0, `${shell} -n ${f}: ${n.stderr}`);
  }
});

testIf(
  missing("systemd-analyze"),
  "systemd units: systemd-analyze verify passes without a warning",
  async () => {
    // systemd is not PID 1 here: verify in a private root holding the system's
    // own units (for the targets ours refer to), ours, and stand-ins for every
    // program an Exec line names (verify checks that they are executable).
    const tmp = await tempDir();
    try {
      const root = tmp.path;
      const unitDir = ["/usr/lib/systemd/system", "/lib/systemd/system"].find((d) => {
        try {
          return Deno.statSync(`${d}/multi-user.target`).isFile;
        } catch {
          return false;
        }
      });
      assert.ok(unitDir, "no system unit directory with multi-user.target");
      await Deno.mkdir(`${root}/usr/lib/systemd`, { recursive: true });
      const cp = await run("cp", ["-a", unitDir, `${root}/usr/lib/systemd/system`]);
      assert.equal(cp.code, 0, cp.stderr);
      await Deno.mkdir(`${root}/etc/systemd/system`, { recursive: true });
      const texts = new Map<string, string>();
      for (const u of UNITS) {
        const text = await Deno.readTextFile(`${ROOT}/dist/systemd/${u}`);
        texts.set(u, text);
        await Deno.writeTextFile(`${root}/etc/systemd/system/${u}`, text);
        for (const [, path] of text.matchAll(/^Exec\w+=[-@:+!]*(\/\S+)/gm)) {
          await Deno.mkdir(`${root}${path.replace(/\/[^/]+$/, "")}`, { recursive: true });
          await Deno.writeTextFile(`${root}${path}`, "#!/bin/sh\n", { mode: 0o755 });
          await Deno.chmod(`${root}${path}`, 0o755);
        }
      }
      const verify = (...units: string[]) =>
        run("systemd-analyze", ["verify", "--man=no", `--root=${root}`, ...units], {}, "/");
      const r = await verify("cmappserver.service", "cmappmgr@test1.service");
      assert.equal(r.code, 0, `systemd-analyze verify failed:\n${r.stdout}${r.stderr}`);
      assert.equal(r.stderr + r.stdout, "", "systemd-analyze verify warned");

      // The check is real: a misspelt key in our file is reported.
      const bad = `${texts.get("cmappmgr@.service")!}\n[Service]\nKilMode=process\n`;
      await Deno.writeTextFile(`${root}/etc/systemd/system/cmappmgr@.service`, bad);
      const r2 = await verify("cmappmgr@test1.service");
      assert.match(r2.stderr, /Unknown key.*KilMode/);

      // What the units promise.
      const server = unitSettings(texts.get("cmappserver.service")!);
      assert.deepEqual(server.get("Service.ExecStart"), ["/usr/local/bin/cmappserver"]);
      assert.deepEqual(server.get("Service.KillMode"), ["process"]);
      assert.deepEqual(server.get("Service.Restart"), ["on-failure"]);
      assert.deepEqual(server.get("Service.StateDirectory"), ["cmappserver"]);
      assert.deepEqual(server.get("Unit.After"), ["network-online.target"]);
      for (const absent of ["NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"]) {
        assert.equal(server.get(`Service.${absent}`), undefined, `${absent} would bind the apps`);
      }
      const mgr = unitSettings(texts.get("cmappmgr@.service")!);
      assert.deepEqual(mgr.get("Service.ExecStart"), ["/usr/local/bin/cmappmgr-instance %I"]);
      assert.deepEqual(mgr.get("Service.Restart"), ["on-failure"]);
      assert.deepEqual(mgr.get("Service.KillSignal"), ["SIGTERM"]);
      // A stop (SIGTERM) is a success; an application SIGKILLed in the guest (137) never is.
      assert.deepEqual(mgr.get("Service.SuccessExitStatus"), ["143"]);
      assert.ok(!/\b137\b/.test(mgr.get("Service.RestartForceExitStatus")?.join(" ") ?? ""));
      assert.ok(mgr.get("Unit.StartLimitBurst") && mgr.get("Unit.StartLimitIntervalSec"));
      // Longer than the guest's default grace (10 s) plus cmappserver_timeout (30 s).
      assert.ok(seconds(mgr.get("Service.TimeoutStopSec")![0]) > 40);
    } finally {
      await tmp.cleanup();
    }
  },
);

Deno.test("cmappmgr-instance: NAME checked, then cmappmgr -config NAME.conf -service_name NAME", async () => {
  const tmp = await tempDir();
  try {
    const d = tmp.path;
    // A stand-in cmappmgr that shows what it was given.
    await Deno.writeTextFile(`${d}/fake`, `#!/bin/sh\nfor a; do printf '<%s>' "$a"; done\necho\n`);
    await Deno.chmod(`${d}/fake`, 0o755);
    const env = { CMAPPMGR: `${d}/fake`, CMAPPMGR_CONFDIR: `${d}/conf.d` };
    const r = await run(INSTANCE, ["web1"], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `<-config><${d}/conf.d/web1.conf><-service_name><web1>\n`);
    for (const name of ["../escape", "-x", "", "a b"]) {
      const b = await run(INSTANCE, [name], env);
      assert.equal(b.code, 2, `${name}: ${b.stdout}${b.stderr}`);
      assert.match(b.stderr, /NAME must be a run name/);
    }
    assert.equal((await run(INSTANCE, [], env)).code, 2);
    const help = await run(INSTANCE, ["-help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /command = /);
  } finally {
    await tmp.cleanup();
  }
});

Deno.test("cmappmgr-instance: runs the application on a real cmappserver", async () => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  try {
    const d = keys.root.path;
    await writeProgramWrapper(`${d}/cmappmgr`, "cmappmgr");
    await Deno.mkdir(`${d}/conf.d`);
    const env = {
      CMAPPMGR: `${d}/cmappmgr`,
      CMAPPMGR_CONFDIR: `${d}/conf.d`,
      RUNTIME_DIRECTORY: `${d}/run`,
    };
    const common = `node = 127.0.0.1\nport = ${server.port}\nkeydir = ${keys.manager}\n` +
      `syslog = no\n`;
    // The command in the file, with a shell's quoting (and a trailing comment).
    await Deno.writeTextFile(
      `${d}/conf.d/app1.conf`,
      `${common}command = sh -c 'echo "hello from $0"; exit 3' app   # says hello\n`,
    );
    const r = await run(INSTANCE, ["app1"], env);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, "hello from app\n");
    const list = await runMgr(mgrArgs(keys, server, "-list", "-json"));
    const runs = JSON.parse(list.stdout) as { name: string; argv: string[] }[];
    assert.deepEqual(runs.find((x) => x.name === "app1")?.argv, [
      "sh",
      "-c",
      'echo "hello from $0"; exit 3',
      "app",
    ]);
    // cmappmgr's own checks name the line of the file.
    const bad = async (text: string, pattern: RegExp) => {
      await Deno.writeTextFile(`${d}/conf.d/app2.conf`, common + text);
      const b = await run(INSTANCE, ["app2"], env);
      assert.equal(b.code, 2, b.stdout + b.stderr);
      assert.match(b.stderr, pattern);
    };
    await bad(`command = true\npoll_interval = often\n`, /app2\.conf:6: .*poll_interval/);
    await bad(`command = echo $HOME\n`, /app2\.conf:5: command: \$ at character 6/);
    await bad(`command = sh -c 'unterminated\n`, /app2\.conf:5: command: unterminated '/);
    await bad(``, /no command given/);
    await bad(`command = true\ncommand = false\n`, /command set twice/);
    // The command line's command wins over the file's.
    await Deno.writeTextFile(`${d}/conf.d/app3.conf`, `${common}command = false\n`);
    const over = await run(`${d}/cmappmgr`, ["-config", `${d}/conf.d/app3.conf`, "--", "true"]);
    assert.equal(over.code, 0, over.stderr);
    const noFile = await run(INSTANCE, ["absent"], env);
    assert.equal(noFile.code, 2);
    assert.match(noFile.stderr, /cannot read configuration file .*absent\.conf/);
  } finally {
    await server.stop();
    await removeAll(keys.root);
  }
});

/**
 * Removes a test's directory. Retried: the per-run supervisors of killed
 * applications may still be writing their exit status into a state directory.
 */
async function removeAll(dir: { path: string }): Promise<void> {
  await reapUnder(dir.path);
  for (let i = 0;; i++) {
    try {
      await Deno.remove(dir.path, { recursive: true });
      return;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      if (i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** The port of the latest "listening on" line of a cmappserver log (waits for one). */
async function listeningPort(logFile: string, after = 0): Promise<number> {
  let port = 0;
  await eventually(`"listening on" in ${logFile}`, async () => {
    const text = (await Deno.readTextFile(logFile)).slice(after);
    const all = [...text.matchAll(/listening on 127\.0\.0\.1:(\d+)/g)];
    if (all.length) port = +all[all.length - 1][1];
    return port > 0;
  });
  return port;
}

interface RunRow {
  run: string;
  name: string;
  pid: number;
  state: string;
  argv: string[];
  delivered: boolean;
}

/** The guest's runs, from `cmappmgr -list -json`. */
async function listRuns(keys: KeyPair, port: number): Promise<RunRow[]> {
  const r = await runMgr(mgrArgs(keys, { port } as ServerProcess, "-list", "-json"));
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** The pid of the running run `name`, if any. */
async function runningPid(keys: KeyPair, port: number, name: string): Promise<number | undefined> {
  return (await listRuns(keys, port)).find((r) => r.name === name && r.state === "running")?.pid;
}

/** Starts cmappmgr in the background; its end is `status`. */
function spawnMgr(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappmgr"), ...args],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** A process's RLIMIT_NOFILE, [soft, hard] (prlimit: Deno reads no other process's /proc). */
async function nofileOf(pid: number): Promise<[number, number]> {
  const out = await new Deno.Command("prlimit", {
    args: ["--pid", String(pid), "--nofile", "--output", "SOFT,HARD", "--noheadings"],
    stdout: "piped",
  }).output();
  const [soft, hard] = new TextDecoder().decode(out.stdout).trim().split(/\s+/).map(Number);
  return [soft, hard];
}

Deno.test("the init script and the systemd unit give cmappserver the same RLIMIT_NOFILE", async () => {
  const unit = await Deno.readTextFile(`${ROOT}/dist/systemd/cmappserver.service`);
  const script = await Deno.readTextFile(INIT);
  const unitLimit = /^LimitNOFILE=(\d+)$/m.exec(unit)?.[1];
  const scriptLimit = /^NOFILE=(\d+)$/m.exec(script)?.[1];
  assert.ok(unitLimit && scriptLimit, "both set one");
  assert.equal(scriptLimit, unitLimit);
});

for (const variant of ["start-stop-daemon", "plain sh"] as const) {
  const reason = variant === "start-stop-daemon"
    ? missing("start-stop-daemon", "setsid")
    : missing("setsid");
  testIf(
    reason,
    `init.d script (${variant}): start, status, reload, stop with a real cmappserver`,
    async () => {
      const keys = await makeKeys();
      const d = keys.root.path;
      const apps: number[] = [];
      const env = {
        CMAPPSERVER_DEFAULTS: `${d}/default`,
        CMAPPSERVER_PIDFILE: `${d}/cmappserver.pid`,
        CMAPPSERVER_READYFILE: `${d}/cmappserver.ready`,
      };
      const init = (action: string) => run(INIT, [action], env);
      const log = `${d}/daemon.log`;
      try {
        await writeProgramWrapper(`${d}/daemon`, "cmappserver");
        // A daemon slow to start (a busy machine, many runs to re-adopt; longer than the 3 s the
        // script once slept), and one that never
        // says it is ready.
        // (Named so that the script, which checks a pid's command line, takes them for it.)
        await Deno.writeTextFile(
          `${d}/slow-cmappserver`,
          `#!/bin/sh\nsleep 4\nexec ${d}/daemon "$@"\n`,
        );
        await Deno.writeTextFile(
          `${d}/never-cmappserver`,
          `#!/bin/sh\ntrap 'exit 0' TERM\nwhile :; do sleep 1; done\n`,
        );
        await Deno.chmod(`${d}/slow-cmappserver`, 0o755);
        await Deno.chmod(`${d}/never-cmappserver`, 0o755);
        const args = `-config /dev/null -keydir ${keys.server} -statedir ${d}/state ` +
          `-bind 127.0.0.1 -port 0`;
        const defaults = `DAEMON=${d}/daemon\nDAEMON_ARGS="${args}"\nDAEMON_OUTPUT=${log}\n` +
          `STOP_TIMEOUT=20\nNOFILE=4000\n` +
          (variant === "plain sh" ? "START_STOP_DAEMON=\n" : "");
        await Deno.writeTextFile(`${d}/default`, defaults);
        assert.equal((await init("status")).code, 3, "status before the first start");
        assert.equal((await init("stop")).code, 0, "stop before the first start");
        assert.equal((await init("reload")).code, 7, "reload when not running");

        // start returns once the daemon serves, however long that takes.
        await Deno.writeTextFile(`${d}/default`, defaults + `DAEMON=${d}/slow-cmappserver\n`);
        const started = await init("start");
        assert.equal(started.code, 0, started.stdout + started.stderr);
        assert.match(await Deno.readTextFile(log), /listening on/, "serving when start returns");
        await Deno.writeTextFile(`${d}/default`, defaults);
        const pid = +(await Deno.readTextFile(`${d}/cmappserver.pid`)).trim();
        assert.ok(alive(pid));
        // NOFILE from the defaults file is the daemon's RLIMIT_NOFILE, soft and hard.
        assert.deepEqual(await nofileOf(pid), [4000, 4000]);
        const st = await init("status");
        assert.equal(st.code, 0, st.stdout);
        assert.match(st.stdout, new RegExp(`running \\(pid ${pid}\\)`));
        const again = await init("start");
        assert.equal(again.code, 0, "start when running");
        assert.match(again.stdout, /already running/);

        // A manager run works.
        let port = await listeningPort(log);
        const r = await runMgr(
          mgrArgs(keys, { port } as ServerProcess, "--", "sh", "-c", "echo ok; exit 7"),
        );
        assert.equal(r.code, 7, r.stderr);
        assert.equal(r.stdout, "ok\n");

        // force-reload is SIGHUP: the daemon reloads its trusted certificates.
        const reload = await init("force-reload");
        assert.equal(reload.code, 0);
        await eventually(
          "the SIGHUP in the log",
          async () => /SIGHUP/.test(await Deno.readTextFile(log)),
        );

        // An application started through it outlives a stop of the daemon and
        // is re-adopted by the next start.
        const mgr = spawnMgr(
          mgrArgs(keys, { port } as ServerProcess, "-service_name", "keep", "--", "sleep", "300"),
        );
        let app: number | undefined;
        await eventually("the run keep", async () => {
          app = await runningPid(keys, port, "keep");
          return app !== undefined;
        });
        apps.push(app!);
        mgr.kill("SIGKILL");
        await mgr.status;

        const stopped = await init("stop");
        assert.equal(stopped.code, 0, stopped.stdout + stopped.stderr);
        assert.ok(!alive(pid), "the daemon is gone");
        assert.equal((await init("status")).code, 3, "status after stop");
        assert.equal((await init("stop")).code, 0, "stop when stopped");
        assert.ok(alive(app!), "the application survived the daemon's stop");

        const logSize = (await Deno.readTextFile(log)).length;
        assert.equal((await init("restart")).code, 0, "restart (from stopped)");
        port = await listeningPort(log, logSize);
        assert.equal(await runningPid(keys, port, "keep"), app, "re-adopted");
        assert.match(await Deno.readTextFile(log), /re-adopted run .*\(keep\)/);
        const restarted = await init("restart");
        assert.equal(restarted.code, 0, restarted.stdout + restarted.stderr);
        assert.equal((await init("status")).code, 0);

        // A stale pid file: "dead, pid file exists".
        assert.equal((await init("stop")).code, 0);
        await Deno.writeTextFile(`${d}/cmappserver.pid`, "999999999\n");
        const stale = await init("status");
        assert.equal(stale.code, 1, stale.stdout);
        // ... which start replaces.
        assert.equal((await init("start")).code, 0);
        assert.equal((await init("stop")).code, 0);

        // An open-file limit above what may be had (above the kernel's nr_open, so even root
        // cannot): the daemon starts with the hard limit, and the script says so.
        await Deno.writeTextFile(`${d}/default`, defaults + `NOFILE=2147483647\n`);
        const capped = await init("start");
        assert.equal(capped.code, 0, capped.stdout + capped.stderr);
        assert.match(capped.stderr, /cannot raise the open-file limit to 2147483647; using \d+/);
        const cappedPid = +(await Deno.readTextFile(`${d}/cmappserver.pid`)).trim();
        const [soft, hard] = await nofileOf(cappedPid);
        assert.equal(soft, hard);
        assert.equal((await init("stop")).code, 0);

        // A bad configuration: start fails as soon as the daemon exits, with the reason.
        await Deno.writeTextFile(
          `${d}/default`,
          defaults + `DAEMON_ARGS="$DAEMON_ARGS -max_processes sixty"\n`,
        );
        const badStart = await init("start");
        assert.equal(badStart.code, 1);
        assert.match(badStart.stderr, /max_processes/);
        assert.equal((await init("status")).code, 3);
        // Never ready: start gives up after START_TIMEOUT, and stops what it started.
        await Deno.writeTextFile(
          `${d}/default`,
          defaults + `DAEMON=${d}/never-cmappserver\nSTART_TIMEOUT=2\n`,
        );
        const neverReady = await init("start");
        assert.equal(neverReady.code, 1, neverReady.stdout + neverReady.stderr);
        assert.match(neverReady.stderr, /not ready after 2 s; stopped it/);
        assert.equal((await init("status")).code, 3);
        assert.deepEqual(
          (await processes()).filter((p) => p.args.includes("never-cmappserver")),
          [],
        );
        // Not installed: 5.
        await Deno.writeTextFile(`${d}/default`, defaults + `DAEMON=${d}/nonexistent\n`);
        assert.equal((await init("start")).code, 5);
        assert.equal((await init("bogus")).code, 3, "unknown action");
      } finally {
        await Deno.writeTextFile(`${d}/default`, `DAEMON=/nonexistent\n`).catch(() => {});
        await run(INIT, ["stop"], env);
        for (const p of apps) killGroup(p);
        await removeAll(keys.root);
      }
    },
  );
}

/** Runs the OCF agent's `action` with `params` as OCF_RESKEY_*. */
function agent(
  action: string,
  params: Record<string, string>,
  meta: Record<string, string> = {},
  extra: Record<string, string> = {},
): Promise<Out> {
  const env: Record<string, string> = {
    ...extra,
    OCF_ROOT: "/usr/lib/ocf",
    OCF_RESOURCE_INSTANCE: params.service_name ?? "cmapp",
    OCF_RESKEY_CRM_meta_timeout: "20000",
    OCF_RESKEY_CRM_meta_interval: action === "monitor" ? "10000" : "0",
  };
  for (const [k, v] of Object.entries(params)) env[`OCF_RESKEY_${k}`] = v;
  for (const [k, v] of Object.entries(meta)) env[`OCF_RESKEY_CRM_meta_${k}`] = v;
  return run(AGENT, [action], env);
}

/** A server, its keys, a cmappmgr wrapper and the agent's parameters for it. */
async function agentSetup(): Promise<
  { keys: KeyPair; server: ServerProcess; params: Record<string, string> }
> {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  await writeProgramWrapper(`${keys.root.path}/cmappmgr`, "cmappmgr");
  return {
    keys,
    server,
    params: {
      guest: "127.0.0.1",
      port: String(server.port),
      keydir: keys.manager,
      cmappmgr: `${keys.root.path}/cmappmgr`,
      state_dir: `${keys.root.path}/state`,
      command: "sleep 100000",
    },
  };
}

/**
 * Ends what an agent left behind: its background cmappmgr processes (pid
 * files in `stateDir`), then every run still running on the server (the
 * applications outlive it).
 */
async function endRuns(keys: KeyPair, server: ServerProcess, stateDir: string): Promise<void> {
  try {
    for await (const e of Deno.readDir(stateDir)) {
      if (!e.name.endsWith(".pid")) continue;
      const pid = +(await Deno.readTextFile(`${stateDir}/${e.name}`)).trim();
      if (pid > 1) killGroup(pid);
    }
  } catch {
    // no state directory: nothing left
  }
  for (const r of await listRuns(keys, server.port).catch(() => [])) {
    if (r.state === "running") killGroup(r.pid);
  }
}

testIf(
  missing("ocf-tester", "xmllint"),
  "OCF agent: ocf-tester passes against a real cmappserver",
  async () => {
    const { keys, server, params } = await agentSetup();
    // ocf-tester runs some actions as an unprivileged user, who must be able
    // to reach the agent: a copy in a world-readable folder, wherever the
    // checkout is.
    const copyDir = await Deno.makeTempDir({ prefix: "cmapp-ocf-" });
    try {
      await Deno.chmod(copyDir, 0o755);
      const agentCopy = `${copyDir}/cmapp`;
      await Deno.copyFile(AGENT, agentCopy);
      await Deno.chmod(agentCopy, 0o755);
      const all = { ...params, service_name: "ocft1" };
      const t0 = performance.now();
      const r = await run("ocf-tester", [
        "-n",
        "ocft1",
        ...Object.entries(all).flatMap(([k, v]) => ["-o", `${k}=${v}`]),
        agentCopy,
      ]);
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      assert.equal(r.code, 0, `ocf-tester failed:\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /passed all tests/);
      console.log(`ocf-tester: ${r.stdout.trim().split("\n").pop()} (${secs} s)`);
      assert.equal(await runningPid(keys, server.port, "ocft1"), undefined);
    } finally {
      await endRuns(keys, server, params.state_dir);
      await server.stop();
      await removeAll(keys.root);
      await Deno.remove(copyDir, { recursive: true });
    }
  },
);

Deno.test("OCF agent: node-local monitor, reasons for failures, attaching, reload, stops", async () => {
  const { keys, server, params } = await agentSetup();
  const port = server.port;
  const pidFile = (name: string) => `${params.state_dir}/cmapp-${name}.pid`;
  const follower = async (name: string) => +(await Deno.readTextFile(pidFile(name))).trim();
  const check10 = { OCF_CHECK_LEVEL: "10" };
  try {
    // OCF 1.1 meta-data: every parameter, reloadable ones, reload-agent.
    const md = await agent("meta-data", {});
    assert.equal(md.code, 0);
    assert.match(
      md.stdout,
      /<resource-agent name="cmapp" version="1\.1">\s*<version>1\.1<\/version>/,
    );
    for (
      const p of [
        "guest",
        "service_name",
        "command",
        "keydir",
        "port",
        "cmappserver_timeout",
        "poll_interval",
        "stop_timeout",
        "cmappmgr",
        "config",
        "output",
        "state_dir",
      ]
    ) {
      assert.match(md.stdout, new RegExp(`<parameter name="${p}"[^]*?<longdesc[^]*?<shortdesc`));
    }
    assert.match(md.stdout, /<parameter name="output" reloadable="1">/);
    assert.match(md.stdout, /<action name="reload-agent"/);

    // validate-all: level 0 checks what every node shares; level 10 leaves the values, the
    // configuration and this node's keys to cmappmgr -check, which refuses what runs would.
    const ok = { ...params, service_name: "v1" };
    assert.equal((await agent("validate-all", ok)).code, 0);
    assert.equal((await agent("validate-all", ok, {}, check10)).code, 0);
    assert.equal((await agent("validate-all", { ...ok, guest: "" })).code, 6);
    assert.equal((await agent("validate-all", { ...ok, port: "http" })).code, 0, "level 0");
    const bads: Record<string, string>[] = [
      { port: "http" },
      { cmappserver_timeout: "0" },
      { service_name: "a b" },
    ];
    for (const bad of bads) {
      const r = await agent("validate-all", { ...ok, ...bad }, {}, check10);
      assert.equal(r.code, 6, `${JSON.stringify(bad)}: ${r.stderr}`);
      assert.match(r.stderr, /ocf-exit-reason:cmappmgr: /);
    }
    assert.equal(
      (await agent("validate-all", { ...ok, cmappmgr: "/nonexistent" }, {}, check10)).code,
      5,
    );
    assert.equal(
      (await agent("validate-all", { ...ok, keydir: "/nonexistent" }, {}, check10)).code,
      5,
    );

    // Never started on this node: not running, probe or not, whatever the guest (here: none),
    // and without asking it; stop is a success.
    const dead = { ...ok, port: String(freePort()), cmappserver_timeout: "1" };
    assert.equal((await agent("monitor", dead, { interval: "0" })).code, 7);
    assert.equal((await agent("monitor", dead)).code, 7);
    assert.equal((await agent("monitor", ok)).code, 7);
    assert.equal((await agent("stop", ok)).code, 0);

    // start attaches to a run of that name already running (its node died): no second copy.
    // Another node's probe meanwhile: not running there.
    const att = { ...params, service_name: "att1" };
    const mgr = spawnMgr(mgrArgs(keys, server, "-service_name", "att1", "--", "sleep", "100000"));
    let first: number | undefined;
    await eventually("att1 running", async () => {
      first = await runningPid(keys, port, "att1");
      return first !== undefined;
    });
    const s1 = await agent("start", att);
    assert.equal(s1.code, 0, s1.stderr);
    const att1 = (await listRuns(keys, port)).filter((r) =>
      r.name === "att1" && r.state === "running"
    );
    assert.deepEqual(att1.map((r) => r.pid), [first]);
    assert.equal((await agent("monitor", att)).code, 0);
    assert.equal((await agent("monitor", att, {}, check10)).code, 0, "level 10 asks the guest");
    const otherNode = { ...att, state_dir: `${params.state_dir}-node2` };
    assert.equal((await agent("monitor", otherNode, { interval: "0" })).code, 7);
    const stop1 = await agent("stop", att);
    assert.equal(stop1.code, 0, stop1.stderr);
    // The first cmappmgr learnt of the end too: the application got SIGTERM.
    assert.equal((await mgr.status).code, 143);
    assert.equal((await agent("monitor", att)).code, 7);
    await assert.rejects(Deno.stat(pidFile("att1")));

    // A quoted argument; the application exits 3 on its own: a failure, with its reason.
    const q = { ...params, service_name: "q1", command: `sh -c 'sleep 1; exit 3'` };
    assert.equal((await agent("start", q)).code, 0);
    let failed!: Out;
    await eventually("monitor: the failure", async () => {
      failed = await agent("monitor", q);
      return failed.code !== 0;
    });
    assert.equal(failed.code, 1, failed.stderr);
    assert.match(failed.stderr, /ocf-exit-reason:q1 exited with code 3/);
    assert.equal((await agent("stop", q)).code, 0);

    // The application is SIGKILLed in the guest: a failure, "killed by signal 9", not a stop.
    const k = { ...params, service_name: "k1" };
    assert.equal((await agent("start", k)).code, 0);
    Deno.kill((await runningPid(keys, port, "k1"))!, "SIGKILL");
    let killed!: Out;
    await eventually("monitor: the kill", async () => {
      killed = await agent("monitor", k);
      return killed.code !== 0;
    });
    assert.equal(killed.code, 1, killed.stderr);
    assert.match(killed.stderr, /ocf-exit-reason:k1 killed by signal 9 \(SIGKILL\)/);
    assert.equal((await agent("stop", k)).code, 0);

    // The follower is killed on this node while the application runs: the monitor follows it
    // again, and the application is untouched (no recovery, no second copy).
    const f = { ...params, service_name: "f1" };
    assert.equal((await agent("start", f)).code, 0);
    const fpid = (await runningPid(keys, port, "f1"))!;
    const oldFollower = await follower("f1");
    Deno.kill(oldFollower, "SIGKILL");
    await eventually("the follower gone", () => Promise.resolve(!alive(oldFollower)));
    assert.equal((await agent("monitor", f)).code, 0);
    assert.notEqual(await follower("f1"), oldFollower);
    assert.equal(await runningPid(keys, port, "f1"), fpid);
    // reload-agent: a new follower for new parameters; the application is untouched.
    const beforeReload = await follower("f1");
    const reload = await agent("reload-agent", { ...f, poll_interval: "2" });
    assert.equal(reload.code, 0, reload.stderr);
    assert.notEqual(await follower("f1"), beforeReload);
    assert.equal(await runningPid(keys, port, "f1"), fpid);
    assert.equal((await agent("monitor", f)).code, 0);
    const stopF = await agent("stop", f);
    assert.equal(stopF.code, 0, stopF.stderr);
    await eventually("f1's application ended", () => Promise.resolve(!alive(fpid)));

    // The application ended while nobody followed it (its exit status not received): the next
    // start still starts it afresh.
    const u = { ...params, service_name: "u1" };
    assert.equal((await agent("start", u)).code, 0);
    const upid = (await runningPid(keys, port, "u1"))!;
    Deno.kill(await follower("u1"), "SIGKILL");
    Deno.kill(upid, "SIGKILL");
    await eventually(
      "u1 ended, unclaimed",
      async () =>
        (await listRuns(keys, port)).some((r) =>
          r.name === "u1" && r.state === "exited" && !r.delivered
        ),
    );
    await Deno.remove(pidFile("u1"));
    const su = await agent("start", u);
    assert.equal(su.code, 0, su.stderr);
    const upid2 = await runningPid(keys, port, "u1");
    assert.ok(upid2 && upid2 !== upid);
    assert.equal((await agent("stop", u)).code, 0);
    assert.equal(await runningPid(keys, port, "u1"), undefined);
  } finally {
    await endRuns(keys, server, params.state_dir);
    await server.stop();
    await removeAll(keys.root);
  }
});

Deno.test("OCF agent: a stop that cannot reach the guest succeeds, with the reason, and leaves the run to the guest", async () => {
  const { keys, server, params } = await agentSetup();
  try {
    const g = { ...params, service_name: "g1", cmappserver_timeout: "2" };
    assert.equal((await agent("start", g)).code, 0);
    const app = (await runningPid(keys, server.port, "g1"))!;
    await server.stop();
    const r = await agent("stop", g);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /ocf-exit-reason:cannot reach 127\.0\.0\.1 to stop g1/);
    assert.ok(alive(app), "the application is the guest's to keep");
    Deno.kill(app, "SIGKILL");
  } finally {
    await endRuns(keys, server, params.state_dir);
    await removeAll(keys.root);
  }
});

Deno.test("deno task bundle's packaging: the permission file, the wrappers and the man pages", async () => {
  const dir = await tempDir();
  try {
    const written = await writePackaging(dir.path);
    assert.equal(written.length, 5);
    // The permission file is deno.json's cmapp set.
    const perms = JSON.parse(await Deno.readTextFile(`${dir.path}/deno.json`));
    const ours = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).permissions.cmapp;
    assert.deepEqual(perms.permissions.cmapp, ours);
    for (const p of ["cmappserver", "cmappmgr"] as const) {
      const text = await Deno.readTextFile(`${dir.path}/${p}`);
      for (const f of RUNTIME_FLAGS[p]) assert.ok(text.includes(f), `${p} wrapper lacks ${f}`);
      assert.equal((await run("sh", ["-n", `${dir.path}/${p}`])).code, 0);
    }
    // The wrapper runs the bundle beside it, with the permission set, its arguments passed on.
    await Deno.writeTextFile(
      `${dir.path}/cmappmgr.js`,
      `console.log(JSON.stringify(Deno.args), Deno.permissions.querySync({ name: "run" }).state);`,
    );
    const r = await new Deno.Command(`${dir.path}/cmappmgr`, {
      args: ["a b", "-c"],
      env: { DENO: Deno.execPath(), DENO_DIR: await denoDir() },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout);
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    assert.equal(out, `["a b","-c"] granted\n`);
    // The man pages render, and hold every option of -help.
    for (
      const [p, page, spec] of [
        ["cmappmgr", "cmappmgr.1", MGR_USAGE],
        ["cmappserver", "cmappserver.8", SERVER_USAGE],
      ] as const
    ) {
      const rendered = await new Deno.Command("groff", {
        args: ["-man", "-Tutf8", "-P-cbou", `${dir.path}/man/${page}`],
        stdout: "piped",
        stderr: "piped",
      }).output().catch(() => null);
      if (!rendered) {
        skipOrFail("ship_test", "groff not found: apt-get install groff-base");
        continue;
      }
      const text = new TextDecoder().decode(rendered.stdout).replaceAll("\u2010", "-");
      assert.equal(rendered.code, 0, new TextDecoder().decode(rendered.stderr));
      assert.match(text, new RegExp(`^${p.toUpperCase()}\\(`, "m"));
      for (const opt of spec.matchAll(/^ {2}(-\w+)/gm)) {
        assert.ok(text.includes(opt[1]), `${page} lacks ${opt[1]}`);
      }
    }
  } finally {
    await dir.cleanup();
  }
});
