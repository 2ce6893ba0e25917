/**
 * The quick-start demo: keys generated on the fly into a temporary
 * directory, a real cmappserver on 127.0.0.1, and cmappmgr running a few
 * commands on it and showing their exit statuses. Cleans up after itself.
 *
 * Run with `deno task demo` (or `npx -y deno@2.9.6 task demo`).
 *
 * @module
 */

import { programCommand } from "./_programs.ts";

const dec = new TextDecoder();
const say = (s: string) => console.log(s);

async function run(program: "cmappserver" | "cmappmgr", args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...programCommand(program), ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function show(cmd: string[], text: string): void {
  say(`$ ${cmd.map((a) => /[\s'"$;]/.test(a) ? `'${a.replaceAll("'", "'\\''")}'` : a).join(" ")}`);
  for (const line of text.trimEnd().split("\n")) if (line) say(`  ${line}`);
}

const dir = await Deno.makeTempDir({ prefix: "cmapp-demo-" });
let server: Deno.ChildProcess | null = null;
let serverLog = "";
try {
  say(`cmapp demo: everything lives in ${dir} and is removed at the end.\n`);
  say("1. Keys for the guest (cmappserver) and the host (cmappmgr), no openssl needed:");
  for (
    const [program, keydir, extra] of [
      ["cmappserver", `${dir}/guest`, ["-name", "127.0.0.1"]],
      ["cmappmgr", `${dir}/host`, []],
    ] as const
  ) {
    const args = ["keygen", "-keydir", keydir, ...extra];
    const r = await run(program, args);
    show([program, ...args], r.stdout + r.stderr);
    if (r.code !== 0) throw new Error(`${program} keygen failed`);
  }
  say("\n2. Each side pins the other's certificate, like ssh's authorized_keys and known_hosts:");
  await Deno.copyFile(`${dir}/host/cert.pem`, `${dir}/guest/trusted/host.pem`);
  await Deno.copyFile(`${dir}/guest/cert.pem`, `${dir}/host/trusted/guest.pem`);
  say(`$ cp ${dir}/host/cert.pem ${dir}/guest/trusted/host.pem`);
  say(`$ cp ${dir}/guest/cert.pem ${dir}/host/trusted/guest.pem`);

  say("\n3. The guest daemon on loopback (a free port instead of 5315):");
  const serverArgs = [
    "-keydir",
    `${dir}/guest`,
    "-statedir",
    `${dir}/state`,
    "-bind",
    "127.0.0.1",
    "-port",
    "0",
  ];
  server = new Deno.Command(Deno.execPath(), {
    args: [...programCommand("cmappserver"), ...serverArgs],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = server.stderr.getReader();
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`cmappserver exited:\n${serverLog}`);
    serverLog += dec.decode(value, { stream: true });
    port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(serverLog)?.[1] ?? 0);
  }
  // Keep draining its log so it never blocks on a full pipe.
  const draining = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      serverLog += dec.decode(value, { stream: true });
    }
  })();
  show(["cmappserver", ...serverArgs, "&"], serverLog.split("\n")[0]);

  say("\n4. The host asks the guest to run commands, and exits with their status:");
  const mgr = ["-node", "127.0.0.1", "-port", String(port), "-keydir", `${dir}/host`];
  const examples: [string[], string][] = [
    [["/bin/sh", "-c", "sleep 0.2; exit 3"], "the command's own exit code"],
    [["/bin/sh", "-c", "kill -TERM $$"], "killed by SIGTERM: 128+15"],
    [["/no/such/app"], "not found, as in a shell"],
    [["true"], "success"],
  ];
  for (const [argv, what] of examples) {
    const r = await run("cmappmgr", [...mgr, "--", ...argv]);
    show(["cmappmgr", ...mgr, "--", ...argv], r.stderr);
    say(`  => exit status ${r.code} (${what})`);
  }

  say("\n5. The guest's log of the same events:");
  server.kill("SIGTERM");
  await server.status;
  await draining;
  server = null;
  for (const line of serverLog.trimEnd().split("\n")) say(`  ${line}`);
  say("\nDone. Next: `deno task test` runs the test suite; README.md shows a real setup.");
} finally {
  if (server) {
    server.kill("SIGKILL");
    await server.status;
  }
  await Deno.remove(dir, { recursive: true });
}
