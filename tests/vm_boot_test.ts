// Smoke test of tests/_vm.ts: a real guest under qemu (TCG) with nothing but busybox serves TCP
// through a port forwarded to 127.0.0.1, has no perl or coreutils, reaps orphans, freezes and
// thaws, and dies cleanly when killed; a guest with the host's Deno binary (and its shared
// libraries) runs a Deno program. Skipped, with the reason, when qemu, busybox-static or the
// guest kernel is missing (.ci/deps.sh installs them); under CI=true that is a failure.
import assert from "node:assert/strict";
import { testOrSkip } from "./_skip.ts";
import { bootGuest, type Guest, vmSkipReason } from "./_vm.ts";

const FILE = "vm_boot_test";
const skip = await vmSkipReason();
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What one read on `conn` brings ("" at end of stream). */
function readSome(conn: Deno.Conn): Promise<string> {
  const buf = new Uint8Array(4096);
  return conn.read(buf).then((n) => n === null ? "" : decoder.decode(buf.subarray(0, n)));
}

/** True if `p` settles within `ms` (an upper bound for waiting, not a timing check). */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p.then(() => true, () => true),
      new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Sends a line through the forwarded port and returns what comes back first. */
async function echoOnce(port: number, line: string): Promise<string> {
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(line));
  const answer = readSome(conn);
  if (!(await settlesWithin(answer, 5_000))) throw new Error("no answer within 5 s");
  return await answer;
}

/**
 * Echoes a line once the guest's server answers (the forwarder accepts connections before the
 * server listens, then drops them: retried until `ms`).
 */
async function echoWhenUp(port: number, line: string, ms = 30_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const got = await echoOnce(port, line);
      if (got) return got;
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    if (Date.now() > deadline) throw new Error(`no echo from port ${port} within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** True while a process exists. */
function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

/** True if `path` exists. */
async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

// The busybox guest's script: checks printed as markers, then an echo server on port 7.
const BUSYBOX_SCRIPT = `
foreign=
for d in /bin /sbin /usr/bin /usr/sbin /usr/local/bin /usr/local/sbin; do
  for f in "$d"/*; do
    if [ -L "$f" ]; then
      [ "$(readlink "$f")" = busybox ] || foreign="$foreign $f"
    elif [ -e "$f" ] && [ "$f" != /bin/busybox ]; then
      foreign="$foreign $f"
    fi
  done
done
echo "check: foreign programs:[$foreign]"
if command -v perl >/dev/null || [ -e /usr/bin/perl ]; then
  echo "check: perl FOUND"
else
  echo "check: no perl"
fi
(sleep 1 &)
(sleep 1 &)
sleep 3
z=0
for s in /proc/[0-9]*/stat; do
  read -r line <"$s" 2>/dev/null || continue
  case $line in *") Z "*) z=$((z + 1)) ;; esac
done
echo "check: zombies: $z"
exec nc -ll -p 7 -e /bin/cat
`;

testOrSkip(
  FILE,
  "vm: a busybox guest serves TCP, has no perl, freezes and thaws, dies on kill",
  skip,
  async () => {
    const t0 = Date.now();
    await using guest = await bootGuest({
      script: BUSYBOX_SCRIPT,
      applets: ["cat", "nc", "readlink"],
      forward: [7],
    });
    const booted = Date.now() - t0;
    const port = guest.hostPort(7);

    await guest.waitForConsole(/check: zombies: \d+/, 60_000);
    const out = guest.console();
    assert.match(out, /check: foreign programs:\[\]/);
    assert.match(out, /check: no perl/);
    assert.match(out, /check: zombies: 0\b/, "PID 1 reaps adopted orphans");

    assert.equal(await echoWhenUp(port, "hello\n"), "hello\n");
    assert.equal(await guest.status(), "running");

    await freezeAndThaw(guest, port);

    const { pid, dir } = guest;
    await guest.kill();
    assert.ok(guest.exited());
    assert.ok(!alive(pid), "qemu is gone after kill()");
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }), "the port is closed");
    await guest.close();
    await guest.close(); // idempotent
    assert.ok(!(await exists(dir)), "close() removed the temporary directory");
    console.log(`vm_boot_test: busybox guest booted in ${booted} ms (-m ${guest.memoryMiB})`);
  },
);

/** Frozen: a request gets no answer; thawed: it gets its answer, and new ones do too. */
async function freezeAndThaw(guest: Guest, port: number): Promise<void> {
  await guest.freeze();
  assert.equal(await guest.status(), "paused");
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode("while frozen\n"));
  const answer = readSome(conn);
  assert.equal(await settlesWithin(answer, 1_500), false, "a frozen guest does not answer");
  await guest.thaw();
  assert.equal(await guest.status(), "running");
  assert.ok(
    await settlesWithin(answer, 10_000),
    "the request sent while frozen is answered after the thaw",
  );
  assert.equal(await answer, "while frozen\n");
  assert.equal(await echoOnce(port, "thawed\n"), "thawed\n");
}

// The Deno guest's script: deno --version, a timed `deno eval`, then a Deno TCP echo server.
const DENO_SCRIPT = `
export HOME=/tmp DENO_DIR=/tmp/deno NO_COLOR=1
deno --version
read -r t0 _ </proc/uptime
deno eval 'console.log("deno-in-guest:", 6 * 7, Deno.build.os)'
read -r t1 _ </proc/uptime
echo "deno-eval: from $t0 to $t1"
exec deno eval '
  const l = Deno.listen({ port: 8080 });
  console.log("deno-listening");
  for await (const c of l) c.readable.pipeTo(c.writable).catch(() => {});
'
`;

testOrSkip(
  FILE,
  "vm: a Deno program runs in a guest that has only busybox and Deno",
  skip,
  async () => {
    const t0 = Date.now();
    await using guest = await bootGuest({
      script: DENO_SCRIPT,
      binaries: { "/usr/local/bin/deno": Deno.execPath() },
      forward: [8080],
    });
    const booted = Date.now() - t0;
    const m = await guest.waitForConsole(/deno-eval: from ([\d.]+) to ([\d.]+)/, 120_000);
    const out = guest.console();
    assert.match(out, /^deno \d+\.\d+\.\d+/m, "deno --version ran");
    assert.match(out, /deno-in-guest: 42 linux/);
    assert.equal(
      await echoWhenUp(guest.hostPort(8080), "from the host\n", 120_000),
      "from the host\n",
    );
    const evalSeconds = (Number(m[2]) - Number(m[1])).toFixed(2);
    console.log(
      `vm_boot_test: Deno guest booted in ${booted} ms (-m ${guest.memoryMiB}); ` +
        `deno eval took ${evalSeconds} s in the guest`,
    );
  },
);
