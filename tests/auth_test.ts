// Mutual TLS with pinned certificates: who gets in, who does not, and what
// each side is told.
import assert from "node:assert/strict";
import {
  makeKeys,
  mgrArgs,
  runMgr,
  runServerCli,
  ServerFixture,
  startServerProcess,
  trust,
  writeIdentity,
} from "./_harness.ts";
import { MGR_EXIT } from "../cli/exit_codes.ts";
import { connect, ManagerError } from "../manager/mod.ts";
import { generateIdentity, loadIdentity, loadTrust } from "../tls/mod.ts";

const DAY = 86400_000;

Deno.test("certificates: pinned trust on both sides", async (t) => {
  const keys = await makeKeys();
  const server = await startServerProcess(keys.server);
  try {
    await t.step("a manager whose certificate is not trusted is refused", async () => {
      const stranger = `${keys.root.path}/stranger`;
      await writeIdentity(stranger);
      // It trusts the server, but the server does not trust it.
      await Deno.copyFile(`${keys.server}/cert.pem`, `${stranger}/trusted/server.pem`);
      const r = await runMgr(
        mgrArgs(keys, server, "/bin/true").map((a) => a === keys.manager ? stranger : a),
      );
      assert.equal(r.code, MGR_EXIT.rejected, r.stderr);
      assert.match(r.stderr, /refused our certificate/);
      assert.equal(r.stderr.trim().split("\n").length, 1, "one clear line");
      // The guest's log says who, with which certificate, and why, in plain words.
      const fp = (await loadIdentity(stranger, "test")).info.fingerprint;
      await server.waitForLog(
        new RegExp(
          `rejected manager 127\\.0\\.0\\.1:\\d+: not pinned: certificate ${fp} ` +
            `\\(CN=[^)]*\\) is not in \\S*trusted`,
        ),
      );
    });
    await t.step("and the server keeps serving trusted managers", async () => {
      const r = await runMgr(mgrArgs(keys, server, "/bin/sh", "-c", "exit 5"));
      assert.equal(r.code, 5, r.stderr);
    });
    await t.step("a server whose certificate is not pinned is refused by the manager", async () => {
      const other = `${keys.root.path}/other-manager`;
      const m = await writeIdentity(other);
      await trust(keys.server, "other-manager", m.certPem);
      // It pins a different server certificate.
      const imposter = await generateIdentity({ commonName: "imposter", names: ["127.0.0.1"] });
      await trust(other, "imposter", imposter.certPem);
      const r = await runMgr(
        mgrArgs(keys, server, "/bin/true").map((a) => a === keys.manager ? other : a),
      );
      assert.equal(r.code, MGR_EXIT.serverUntrusted, r.stderr);
      assert.match(
        r.stderr,
        /server certificate [0-9A-F:]{95} \(CN=cmappserver@test\) is not in .*trusted/,
      );
      // The guest's log: the manager refused the guest's certificate, not the other way round.
      await server.waitForLog(
        /rejected connection from 127\.0\.0\.1:\d+: the manager does not trust this guest's certificate/,
      );
    });
    await t.step(
      "an expired manager certificate, even pinned, is refused with the reason",
      async () => {
        const expired = await generateIdentity({
          commonName: "old-manager",
          names: ["127.0.0.1"],
          notBefore: new Date(Date.now() - 10 * DAY),
          notAfter: new Date(Date.now() - DAY),
        });
        await trust(keys.server, "old-manager", expired.certPem);
        // Reload the server's trust so the expired certificate is pinned.
        Deno.kill(server.pid, "SIGHUP");
        await server.waitForLog(/SIGHUP: reloaded 3 trusted manager/);
        const err = await connect({
          host: "127.0.0.1",
          port: server.port,
          identity: { keyPem: expired.keyPem, certPem: expired.certPem, info: expired.info },
          trust: await loadTrust(keys.manager),
        }).then(() => null, (e) => e);
        assert.ok(err instanceof ManagerError, String(err));
        assert.equal(err.kind, "rejected");
        assert.match(err.message, /expired on \d{4}-/);
        await server.waitForLog(
          /rejected manager 127\.0\.0\.1:\d+: expired: certificate [0-9A-F:]{95} .* expired on/,
        );
      },
    );
    await t.step("a manager certificate not yet valid is refused with the reason", async () => {
      const future = await generateIdentity({
        commonName: "future-manager",
        names: ["127.0.0.1"],
        notBefore: new Date(Date.now() + DAY),
        notAfter: new Date(Date.now() + 10 * DAY),
      });
      await trust(keys.server, "future-manager", future.certPem);
      Deno.kill(server.pid, "SIGHUP");
      await server.waitForLog(/SIGHUP: reloaded 4 trusted manager/);
      const err = await connect({
        host: "127.0.0.1",
        port: server.port,
        identity: { keyPem: future.keyPem, certPem: future.certPem, info: future.info },
        trust: await loadTrust(keys.manager),
      }).then(() => null, (e) => e);
      assert.ok(err instanceof ManagerError, String(err));
      assert.equal(err.kind, "rejected");
      assert.match(err.message, /not valid before/);
    });
    await t.step("SIGHUP: a removed manager no longer gets in", async () => {
      await Deno.remove(`${keys.server}/trusted/manager.pem`);
      Deno.kill(server.pid, "SIGHUP");
      await server.waitForLog(/SIGHUP: reloaded 3 trusted manager/);
      const r = await runMgr(mgrArgs(keys, server, "/bin/true"));
      assert.equal(r.code, MGR_EXIT.rejected, r.stderr);
      // And back in after it is trusted again.
      await Deno.copyFile(`${keys.manager}/cert.pem`, `${keys.server}/trusted/manager.pem`);
      Deno.kill(server.pid, "SIGHUP");
      await server.waitForLog(/SIGHUP: reloaded 4 trusted manager/);
      const again = await runMgr(mgrArgs(keys, server, "/bin/true"));
      assert.equal(again.code, 0, again.stderr);
    });
  } finally {
    assert.equal(await server.stop(), 0);
    await keys.root.cleanup();
  }
});

Deno.test("certificates: the manager checks the server's dates and names", async (t) => {
  // cmappserver refuses to start with an expired certificate of its own,
  // so the servers here are in-process ones with hand-made identities.
  const { startServer } = await import("../server/mod.ts");
  const keys = await makeKeys();
  const serverTrust = await loadTrust(keys.server);
  const cases = [
    {
      name: "an expired server certificate",
      options: { notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) },
      expect: /server certificate .* expired on \d{4}-/,
    },
    {
      name: "a server certificate that does not name the host dialled",
      options: { names: ["guest1.example"] },
      expect: /does not name 127\.0\.0\.1 \(it names: guest1\.example\)/,
    },
  ];
  try {
    for (const c of cases) {
      await t.step(`${c.name} is refused with the reason`, async () => {
        const id = await generateIdentity({
          commonName: "srv",
          names: ["127.0.0.1"],
          ...c.options,
        });
        await trust(keys.manager, "srv", id.certPem);
        const server = await startServer({
          identity: { keyPem: id.keyPem, certPem: id.certPem, info: id.info },
          trust: serverTrust,
          stateDir: `${keys.root.path}/state-${c.name.length}`,
          hostname: "127.0.0.1",
          port: 0,
        });
        try {
          const r = await runMgr([
            "-node",
            "127.0.0.1",
            "-port",
            String(server.port),
            "-keydir",
            keys.manager,
            "/bin/true",
          ]);
          assert.equal(r.code, MGR_EXIT.serverUntrusted, r.stderr);
          assert.match(r.stderr, c.expect);
        } finally {
          await server.close();
        }
      });
    }
  } finally {
    await keys.root.cleanup();
  }
});

Deno.test("certificates: key directories are checked before serving", async (t) => {
  const keys = await makeKeys();
  try {
    await t.step("a CA:TRUE certificate in trusted/ is refused", async () => {
      const ca = await generateIdentity({ commonName: "some-ca", names: [], ca: true });
      await trust(keys.server, "ca", ca.certPem);
      const r = await runServerCli(["-keydir", keys.server, "-port", "0"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /ca\.pem: CN=some-ca is a CA certificate \(CA:TRUE\)/);
      await Deno.remove(`${keys.server}/trusted/ca.pem`);
    });
    await t.step("a malformed file in trusted/ is refused", async () => {
      await Deno.writeTextFile(
        `${keys.server}/trusted/typo.pem`,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      );
      const r = await runServerCli(["-keydir", keys.server, "-port", "0"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /typo\.pem: malformed certificate/);
      await Deno.remove(`${keys.server}/trusted/typo.pem`);
    });
    await t.step("an expired own certificate is refused", async () => {
      const dir = `${keys.root.path}/expired-server`;
      await writeIdentity(dir, {
        notBefore: new Date(Date.now() - 10 * DAY),
        notAfter: new Date(Date.now() - DAY),
      });
      await Deno.copyFile(`${keys.manager}/cert.pem`, `${dir}/trusted/m.pem`);
      const r = await runServerCli(["-keydir", dir, "-port", "0"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /our own certificate is expired on/);
    });
  } finally {
    await keys.root.cleanup();
  }
});

Deno.test("key rotation as docs/install.md does it: a host's key, then the guest's, with a run followed throughout", async () => {
  const f = await ServerFixture.create();
  try {
    const s = await f.server();
    const host = f.keys.manager;
    // A run followed with the old host key, across both rotations.
    const follower = f.startMgr(
      mgrArgs(
        f.keys,
        s,
        "-service_name",
        "steady",
        "--",
        "sh",
        "-c",
        `
        while [ ! -e ${f.dir}/end ]; do sleep 0.1; done; exit 6`,
      ),
    );
    await s.waitForLog(/started run \S+ \(steady\)/);

    // 1. The host: a new key beside the old one, with the old one's trusted guests.
    const fresh = `${host}.new`;
    assert.equal((await runMgr(["keygen", "-keydir", fresh])).code, 0);
    for await (const e of Deno.readDir(`${host}/trusted`)) {
      await Deno.copyFile(`${host}/trusted/${e.name}`, `${fresh}/trusted/${e.name}`);
    }
    // 2. The guest trusts both, then reloads.
    await Deno.copyFile(`${fresh}/cert.pem`, `${f.keys.server}/trusted/manager-new.pem`);
    Deno.kill(s.pid, "SIGHUP");
    await s.waitForLog(/SIGHUP: reloaded 2 trusted manager/);
    // 3. The host switches to the new key, and checks.
    await Deno.rename(host, `${host}.old`);
    await Deno.rename(fresh, host);
    const ping = await runMgr(mgrArgs(f.keys, s, "-ping"));
    assert.equal(ping.code, 0, ping.stderr);
    // 4. The guest forgets the old key: it is refused from now on.
    await Deno.remove(`${f.keys.server}/trusted/manager.pem`);
    Deno.kill(s.pid, "SIGHUP");
    await s.waitForLog(/SIGHUP: reloaded 1 trusted manager/);
    const old = await runMgr(
      mgrArgs(f.keys, s, "-ping").map((a) => a === host ? `${host}.old` : a),
    );
    assert.equal(old.code, MGR_EXIT.rejected, old.stderr);

    // The guest's key: a new one, pinned on the host before the guest switches to it.
    const guestKeys = f.keys.server;
    const g = await runServerCli(["keygen", "-keydir", `${guestKeys}.new`, "-name", "127.0.0.1"]);
    assert.equal(g.code, 0, g.stderr);
    for await (const e of Deno.readDir(`${guestKeys}/trusted`)) {
      await Deno.copyFile(`${guestKeys}/trusted/${e.name}`, `${guestKeys}.new/trusted/${e.name}`);
    }
    await Deno.copyFile(`${guestKeys}.new/cert.pem`, `${host}/trusted/server-new.pem`);
    // The guest restarts on its new key; the run goes on and is re-adopted.
    await Deno.rename(guestKeys, `${guestKeys}.old`);
    await Deno.rename(`${guestKeys}.new`, guestKeys);
    await s.stop();
    const s2 = await f.server("-port", String(s.port));
    await s2.waitForLog(/re-adopted run \S+ \(steady\)/);
    assert.equal((await runMgr(mgrArgs(f.keys, s2, "-ping"))).code, 0);
    // The host forgets the old guest key.
    await Deno.remove(`${host}/trusted/server.pem`);
    assert.equal((await runMgr(mgrArgs(f.keys, s2, "-ping"))).code, 0);

    // The run followed since before both rotations ends with its own status.
    await Deno.writeTextFile(`${f.dir}/end`, "");
    assert.equal((await follower.result).code, 6);
  } finally {
    await f.cleanup();
  }
});
