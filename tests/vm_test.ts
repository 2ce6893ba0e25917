/**
 * cmapp in a real VM guest (issue 12): qemu (software emulation), a guest
 * whose whole userland is busybox's /bin/sh and what we ship (the
 * cmappserver bundle, with its supervisor inside, and the Deno runtime it
 * runs on), reached from the host by cmappmgr through a port forwarded from
 * 127.0.0.1. cmappserver runs in a restart loop, as an rc script or systemd
 * would keep it. From the host: exit codes (an application's own 200 is a
 * code), signals, streams both ways, cmappserver killed with -9 inside the
 * guest during a streamed run, the VM frozen shorter and longer than the
 * timeout, and the VM killed outright.
 */
import assert from "node:assert/strict";
import { makeKeys, type MgrResult, runMgr, startMgrProcess } from "./_harness.ts";
import { testOrSkip } from "./_skip.ts";
import { bootGuest, type Guest, vmSkipReason } from "./_vm.ts";
import { bundleProgram } from "../tools/build.ts";
import { ROOT, RUNTIME_FLAGS } from "../tools/_programs.ts";

const FILE = "vm_test";
const skip = await vmSkipReason();

/** The guest's permission set: the one deno.json gives the programs, nothing else. */
async function permissionsJson(): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
  return JSON.stringify({ permissions: config.permissions }, null, 2) + "\n";
}

const SCRIPT = `
export HOME=/tmp DENO_DIR=/tmp/deno NO_COLOR=1
mkdir -p /var/lib/cmappserver /run
for p in perl setsid setpriv mv logger; do
  for d in /bin /sbin /usr/bin /usr/sbin; do [ -e "$d/$p" ] && echo "guest: found $d/$p"; done
done
echo "guest: checked for helper programs"
while :; do
  deno run -q --no-prompt --cached-only --config /opt/cmapp/deno.json -P=cmapp \\
    ${
  RUNTIME_FLAGS.cmappserver.join(" ")
} /opt/cmapp/cmappserver.js -keydir /etc/cmappserver -statedir /var/lib/cmappserver \\
    -config /dev/null -loglevel debug 2>&1 &
  echo $! > /run/cmappserver.pid
  wait $!
  echo "guest: cmappserver exited with $?"
  sleep 0.2
done
`;

interface Env {
  guest: Guest;
  port: number;
  keys: Awaited<ReturnType<typeof makeKeys>>;
}

/** cmappmgr arguments for the guest. */
function mgr(env: Env, ...more: string[]): string[] {
  return [
    "-node",
    "127.0.0.1",
    "-port",
    String(env.port),
    "-keydir",
    env.keys.manager,
    "-poll_interval",
    "0.2",
    ...more,
  ];
}

/** Runs a command in the guest through cmappmgr, to its end. */
function inGuest(env: Env, argv: string[], ...opts: string[]): Promise<MgrResult> {
  return runMgr(mgr(env, ...opts, "--", ...argv));
}

/** Waits until cmappmgr has logged `pattern` in its -hostlogfile. */
async function mgrLogged(log: string, pattern: RegExp, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pattern.test(await Deno.readTextFile(log).catch(() => ""))) {
    if (Date.now() > deadline) throw new Error(`no ${pattern} in ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits for a listening cmappserver in the guest after console offset `from`. */
async function serving(guest: Guest, from = 0): Promise<void> {
  await guest.waitForConsole(/cmappserver\[\d+\] info: listening on/, 180_000, from);
}

testOrSkip(FILE, "vm: cmapp in a busybox-only guest under qemu", skip, async (t) => {
  const keys = await makeKeys();
  const work = await Deno.makeTempDir({ prefix: "cmapp-vmtest-" });
  let guest: Guest | null = null;
  try {
    await bundleProgram("cmappserver", `${work}/cmappserver.js`);
    const key = (n: string) => ({ hostPath: `${keys.server}/${n}` });
    guest = await bootGuest({
      script: SCRIPT,
      applets: ["mkdir", "sleep", "cat", "kill", "head", "tr", "wc", "seq"],
      binaries: { "/usr/local/bin/deno": Deno.execPath() },
      files: {
        "/opt/cmapp/cmappserver.js": { hostPath: `${work}/cmappserver.js` },
        "/opt/cmapp/deno.json": { content: await permissionsJson() },
        "/etc/cmappserver/key.pem": { ...key("key.pem"), mode: 0o600 },
        "/etc/cmappserver/cert.pem": key("cert.pem"),
        "/etc/cmappserver/trusted/manager.pem": key("trusted/manager.pem"),
      },
      forward: [5315],
    });
    const env: Env = { guest, port: guest.hostPort(5315), keys };
    await serving(guest);
    assert.match(guest.console(), /guest: checked for helper programs/);
    assert.doesNotMatch(guest.console(), /guest: found/);

    await t.step("exit codes and signals: 200 is a code, 137 and 143 are signals", async () => {
      for (const [script, code] of [["exit 0", 0], ["exit 3", 3], ["exit 200", 200]] as const) {
        const r = await inGuest(env, ["/bin/sh", "-c", script]);
        assert.equal(r.code, code, r.stderr);
      }
      const term = await inGuest(env, ["/bin/sh", "-c", "kill -TERM $$"]);
      assert.equal(term.code, 143, term.stderr);
      const kill = await inGuest(env, ["/bin/sh", "-c", "kill -9 $$"]);
      assert.equal(kill.code, 137, kill.stderr);
      const list = await runMgr(mgr(env, "-list", "-json"));
      const runs: { argv: string[]; exit?: unknown }[] = JSON.parse(list.stdout);
      const own = runs.find((r) => r.argv.includes("exit 200"));
      assert.deepEqual(own?.exit, { code: 200 }, list.stdout);
    });

    await t.step("streams both ways", async () => {
      const input = Array.from({ length: 2000 }, (_, i) => `input line ${i}`).join("\n") + "\n";
      const cat = await runMgr(mgr(env, "-stdin", "--", "/bin/cat"), input);
      assert.equal(cat.code, 0, cat.stderr);
      assert.equal(cat.stdout, input);
      const big = await inGuest(env, ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' y"]);
      assert.equal(big.code, 0, big.stderr);
      assert.equal(big.stdout, "y".repeat(300000));
    });

    await t.step("cmappserver killed with -9 in the guest during a streamed run", async () => {
      const LINES = 300;
      const script = `echo once >> /tmp/ran; i=0; while [ $i -lt ${LINES} ]; do ` +
        `echo "line $i"; i=$((i+1)); sleep 0.02; done`;
      const follower = startMgrProcess(
        mgr(
          env,
          "-service_name",
          "streamer",
          "-cmappserver_timeout",
          "120",
          "--",
          "/bin/sh",
          "-c",
          script,
        ),
      );
      try {
        await guest!.waitForConsole(/started run \S+ \(streamer\)/, 60_000);
        const from = guest!.console().length;
        const killer = await inGuest(
          env,
          ["/bin/sh", "-c", "kill -9 $(cat /run/cmappserver.pid)"],
          "-cmappserver_timeout",
          "120",
        );
        assert.ok([0, 205].includes(killer.code) || killer.code === 137, killer.stderr);
        await guest!.waitForConsole(/guest: cmappserver exited with 137/, 60_000, from);
        await serving(guest!, from);
        const r = await follower.result;
        assert.equal(r.code, 0, r.stderr);
        const want = Array.from({ length: LINES }, (_, i) => `line ${i}\n`).join("");
        const lost = [...r.stderr.matchAll(/(\d+) bytes of the application's stdout were lost/g)]
          .reduce((n, m) => n + Number(m[1]), 0);
        assert.equal(r.stdout.length + lost, want.length, r.stderr);
        const ran = await inGuest(env, ["/bin/cat", "/tmp/ran"]);
        assert.equal(ran.stdout, "once\n", "the application ran more than once");
      } finally {
        await follower.kill();
      }
    });

    await t.step("frozen shorter than the timeout: the real code", async () => {
      const follower = startMgrProcess(
        mgr(env, "-cmappserver_timeout", "30", "--", "/bin/sh", "-c", "sleep 2; exit 7"),
      );
      try {
        await guest!.waitForConsole(/started run .*sleep 2; exit 7/, 60_000);
        await guest!.freeze();
        await new Promise((r) => setTimeout(r, 4000));
        await guest!.thaw();
        const r = await follower.result;
        assert.equal(r.code, 7, r.stderr);
      } finally {
        await follower.kill();
      }
    });

    await t.step("frozen longer than the timeout: 205", async () => {
      const log = `${work}/frozen.log`;
      const follower = startMgrProcess(
        mgr(
          env,
          "-cmappserver_timeout",
          "3",
          "-hostlogfile",
          log,
          "--",
          "/bin/sh",
          "-c",
          "sleep 601",
        ),
      );
      try {
        await mgrLogged(log, /started run/);
        await guest!.freeze();
        const r = await follower.result;
        assert.equal(r.code, 205, r.stderr);
        assert.match(r.stderr, /lost: no answer/);
      } finally {
        await follower.kill();
        await guest!.thaw();
      }
    });

    await t.step("the VM killed outright: 205", async () => {
      const log = `${work}/killed.log`;
      const follower = startMgrProcess(
        mgr(
          env,
          "-cmappserver_timeout",
          "3",
          "-hostlogfile",
          log,
          "--",
          "/bin/sh",
          "-c",
          "sleep 602",
        ),
      );
      try {
        await mgrLogged(log, /started run/);
        await guest!.kill();
        const r = await follower.result;
        assert.equal(r.code, 205, r.stderr);
      } finally {
        await follower.kill();
      }
    });
  } finally {
    await guest?.close();
    await Deno.remove(work, { recursive: true }).catch(() => {});
    await keys.root.cleanup();
  }
});
