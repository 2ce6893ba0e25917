// End to end: cmappmgr exits with the guest command's status.
import assert from "node:assert/strict";
import {
  freePort,
  makeKeys,
  mgrArgs,
  runMgr,
  runServerCli,
  startServerProcess,
  tempDir,
} from "./_harness.ts";
import { MGR_EXIT } from "../cli/exit_codes.ts";

Deno.test("cmappmgr exits with the command's exit status", async (t) => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  try {
    for (const code of [0, 7, 255]) {
      await t.step(`exit ${code} comes back`, async () => {
        const r = await runMgr(mgrArgs(keys, server, "--", "/bin/sh", "-c", `exit ${code}`));
        assert.equal(r.code, code, r.stderr);
      });
    }
    await t.step("a process killed by SIGKILL gives 137", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "kill -KILL $$"));
      assert.equal(r.code, 137, r.stderr);
    });
    await t.step("a process killed by SIGTERM gives 143", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "kill -TERM $$"));
      assert.equal(r.code, 143, r.stderr);
    });
    await t.step("a real-time signal gives 128+N and the server lives on", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "kill -36 $$"));
      assert.equal(r.code, 128 + 36, r.stderr);
      const again = await runMgr(mgrArgs(keys, server, "/bin/true"));
      assert.equal(again.code, 0, again.stderr);
    });
    await t.step("a name too long to execute gives 126, however long the error", async () => {
      const r = await runMgr(mgrArgs(keys, server, `/no/${"x".repeat(5000)}`));
      assert.equal(r.code, 126, r.stderr);
      assert.match(r.stderr, /File name too long/);
    });
    await t.step("a missing command gives 127 and says so", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/no/such/program", "x"));
      assert.equal(r.code, 127);
      assert.match(r.stderr, /\/no\/such\/program: command not found/);
    });
    await t.step("a command not on PATH gives 127", async () => {
      const r = await runMgr(mgrArgs(keys, server, "no-such-command-anywhere"));
      assert.equal(r.code, 127);
    });
    await t.step("a file that cannot be executed gives 126", async () => {
      const dir = await tempDir();
      try {
        await Deno.writeTextFile(`${dir.path}/data`, "not a program\n", { mode: 0o644 });
        const r = await runMgr(mgrArgs(keys, server, `${dir.path}/data`));
        assert.equal(r.code, 126, r.stderr);
        assert.match(r.stderr, /permission denied/);
      } finally {
        await dir.cleanup();
      }
    });
    await t.step("PATH lookup finds programs in the default PATH", async () => {
      const r = await runMgr(mgrArgs(keys, server, "sh", "-c", "exit 3"));
      assert.equal(r.code, 3, r.stderr);
    });
    await t.step("arguments arrive unchanged: spaces, quotes, $(…), non-ASCII", async () => {
      const dir = await tempDir();
      try {
        const args = [
          "two words",
          `"double" and 'single' quotes`,
          "$(touch /tmp/cmapp-should-not-exist) `id` $HOME",
          "naïve café — 日本語 🚀",
          "",
          "-not-an-option",
          "--",
          "back\\slash\nnewline\ttab",
        ];
        const out = `${dir.path}/args.json`;
        // The guest writes its argv as NUL-separated bytes, which we compare exactly.
        const r = await runMgr(
          mgrArgs(keys, server, "/bin/sh", "-c", `printf '%s\\0' "$@" > ${out}`, "sh", ...args),
        );
        assert.equal(r.code, 0, r.stderr);
        const got = (await Deno.readTextFile(out)).split("\0");
        assert.deepEqual(got, [...args, ""]);
        await assert.rejects(Deno.stat("/tmp/cmapp-should-not-exist"));
      } finally {
        await dir.cleanup();
      }
    });
    await t.step("the command gets a clean environment and runs in /", async () => {
      const dir = await tempDir();
      try {
        const out = `${dir.path}/env`;
        const r = await runMgr(
          mgrArgs(keys, server, "/bin/sh", "-c", `{ env; pwd; } > ${out}`),
        );
        assert.equal(r.code, 0, r.stderr);
        const text = await Deno.readTextFile(out);
        assert.match(text, /^PATH=\/usr\/local\/sbin:/m);
        assert.doesNotMatch(text, /^HOME=/m);
        assert.match(text, /^\/$/m);
      } finally {
        await dir.cleanup();
      }
    });
  } finally {
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("an unreachable guest: cmappmgr says what it waits for while it retries, then 200", async () => {
  const keys = await makeKeys();
  try {
    // Nothing listens on that port: every attempt is refused.
    const r = await runMgr([
      "-node",
      "127.0.0.1",
      "-port",
      String(freePort()),
      "-keydir",
      keys.manager,
      "-cmappserver_timeout",
      "11",
      "--",
      "true",
    ]);
    assert.equal(r.code, MGR_EXIT.unreachable, r.stderr);
    assert.match(r.stderr, /connection refused|ECONNREFUSED|refused/i);
    // Not one warning then silence: progress, with the time left.
    assert.match(
      r.stderr,
      /still cannot reach cmappserver at 127\.0\.0\.1:\d+ after \d+ s .*; trying for \d+ s more/,
    );
  } finally {
    await keys.root.cleanup();
  }
});

Deno.test("cmappmgr command line", async (t) => {
  await t.step("no command: one line and where to look, exit 2", async () => {
    const r = await runMgr(["-node", "127.0.0.1"]);
    assert.equal(r.code, MGR_EXIT.usage);
    assert.equal(
      r.stderr,
      "cmappmgr: no command given (after the options, or command = in the configuration file) " +
        "(cmappmgr -help lists the options)\n",
    );
  });
  await t.step("no -node: exit 2", async () => {
    const r = await runMgr(["--", "true"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /-node HOST is required/);
  });
  await t.step("unknown option: exit 2", async () => {
    const r = await runMgr(["-node", "x", "-bogus", "1", "true"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option -bogus/);
  });
  await t.step("bad number: exit 2", async () => {
    const r = await runMgr(["-node", "x", "-cmappserver_timeout", "soon", "true"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /-cmappserver_timeout must be a number of seconds/);
  });
  await t.step("-help and --help print the usage and exit 0", async () => {
    for (const flag of ["-help", "--help", "-h"]) {
      const r = await runMgr([flag]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /usage: cmappmgr -node HOST/);
      assert.match(r.stdout, /205 +cmappserver lost/);
    }
  });
  await t.step("-version and --version", async () => {
    for (const flag of ["-version", "--version"]) {
      const r = await runMgr([flag]);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /^cmappmgr \d+\.\d+\.\d+ \(protocol 1\.\d+\)$/m);
    }
  });
  await t.step("missing key directory: exit 208 with the path", async () => {
    const r = await runMgr(["-node", "127.0.0.1", "-keydir", "/nonexistent/keys", "true"]);
    assert.equal(r.code, MGR_EXIT.config);
    assert.match(r.stderr, /\/nonexistent\/keys\/key\.pem not found; run 'cmappmgr keygen/);
  });
  await t.step("nothing listening: exit 200 after the timeout", async () => {
    const keys = await makeKeys();
    try {
      // Find a port with nothing on it.
      const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (l.addr as Deno.NetAddr).port;
      l.close();
      const r = await runMgr([
        "--node=127.0.0.1",
        `--port=${port}`,
        "--keydir",
        keys.manager,
        "--cmappserver-timeout",
        "0.5",
        "true",
      ]);
      assert.equal(r.code, MGR_EXIT.unreachable, r.stderr);
      assert.match(r.stderr, /cannot connect to 127\.0\.0\.1:\d+/);
    } finally {
      await keys.root.cleanup();
    }
  });
});

Deno.test("cmappserver command line", async (t) => {
  await t.step("unknown option: exit 2", async () => {
    const r = await runServerCli(["-nope"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /unknown option -nope/);
  });
  await t.step("-help", async () => {
    const r = await runServerCli(["-help"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /-max_processes N/);
  });
  await t.step("no trusted managers: refuses to start, exit 2", async () => {
    const keys = await makeKeys();
    try {
      await Deno.remove(`${keys.server}/trusted/manager.pem`);
      const r = await runServerCli(["-keydir", keys.server, "-port", "0"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /no trusted manager certificates in .*trusted/);
    } finally {
      await keys.root.cleanup();
    }
  });
  await t.step("a key readable by others is refused", async () => {
    const keys = await makeKeys();
    try {
      await Deno.chmod(`${keys.server}/key.pem`, 0o644);
      const r = await runServerCli(["-keydir", keys.server, "-port", "0"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /key\.pem is accessible by group or others \(mode 0644\)/);
    } finally {
      await keys.root.cleanup();
    }
  });
  await t.step("a port already in use: exit 1", async () => {
    const keys = await makeKeys();
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    try {
      const port = (l.addr as Deno.NetAddr).port;
      const r = await runServerCli([
        "-keydir",
        keys.server,
        "-statedir",
        `${keys.root.path}/state`,
        "-bind",
        "127.0.0.1",
        "-port",
        String(port),
      ]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /cannot start serving on 127\.0\.0\.1:\d+: .*address already in use/);
    } finally {
      l.close();
      await keys.root.cleanup();
    }
  });
});
