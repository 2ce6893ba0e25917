// keygen: keys and certificates without openssl.
import assert from "node:assert/strict";
import { runMgr, runServerCli, tempDir } from "./_harness.ts";
import { loadIdentity, parseCertificates } from "../tls/mod.ts";

Deno.test("keygen writes a key, a certificate and trusted/, and prints the fingerprint", async (t) => {
  const dir = await tempDir();
  try {
    const keydir = `${dir.path}/server`;
    await t.step("cmappserver keygen with names", async () => {
      const r = await runServerCli([
        "keygen",
        "-keydir",
        keydir,
        "-name",
        "guest1.example",
        "--name=192.0.2.7",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const key = await Deno.stat(`${keydir}/key.pem`);
      assert.equal(key.mode! & 0o777, 0o600);
      assert.ok((await Deno.stat(`${keydir}/trusted`)).isDirectory);
      const [cert] = await parseCertificates(await Deno.readTextFile(`${keydir}/cert.pem`));
      assert.equal(cert.isCA, false);
      assert.ok(cert.names.includes("guest1.example"));
      assert.ok(cert.names.includes("192.0.2.7"));
      assert.ok(cert.names.includes(Deno.hostname()));
      assert.match(r.stdout, new RegExp(`SHA-256 fingerprint: ${cert.fingerprint}`));
      assert.match(await Deno.readTextFile(`${keydir}/key.pem`), /^-----BEGIN PRIVATE KEY-----/);
      // The result loads as an identity.
      const id = await loadIdentity(keydir);
      assert.equal(id.info.fingerprint, cert.fingerprint);
    });
    await t.step("an existing key is not overwritten without -force", async () => {
      const before = await Deno.readTextFile(`${keydir}/key.pem`);
      const r = await runServerCli(["keygen", "-keydir", keydir]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /key\.pem already exists; use -force to replace it/);
      assert.equal(await Deno.readTextFile(`${keydir}/key.pem`), before);
    });
    await t.step("-force replaces it", async () => {
      const before = await Deno.readTextFile(`${keydir}/key.pem`);
      const r = await runServerCli(["keygen", "-keydir", keydir, "-force"]);
      assert.equal(r.code, 0, r.stderr);
      assert.notEqual(await Deno.readTextFile(`${keydir}/key.pem`), before);
    });
    await t.step("cmappmgr keygen, P-256", async () => {
      const mgr = `${dir.path}/manager`;
      const r = await runMgr(["keygen", "-keydir", mgr, "-algorithm", "p256"]);
      assert.equal(r.code, 0, r.stderr);
      const id = await loadIdentity(mgr);
      assert.match(id.info.subject, /CN=cmappmgr@/);
      assert.match(r.stdout, /manager, p256/);
    });
    await t.step("a bad algorithm is a usage error", async () => {
      const r = await runMgr(["keygen", "-keydir", `${dir.path}/x`, "-algorithm", "rsa"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /-algorithm must be ed25519 or p256/);
    });
  } finally {
    await dir.cleanup();
  }
});

Deno.test("keygen: names are checked, the host name is said and can be left out, -days sets the lifetime", async (t) => {
  const dir = await tempDir();
  try {
    for (const bad of ["bad name!", "-lead.example", "a..b", "x".repeat(64) + ".example", ""]) {
      await t.step(`-name ${JSON.stringify(bad)} is refused`, async () => {
        const r = await runServerCli(["keygen", "-keydir", `${dir.path}/bad`, "-name", bad]);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, /neither a host name nor an IP address/);
        await assert.rejects(Deno.stat(`${dir.path}/bad/key.pem`), Deno.errors.NotFound);
      });
    }
    await t.step("the host name is added, and the output says so", async () => {
      const r = await runServerCli(["keygen", "-keydir", `${dir.path}/a`, "-name", "10.0.0.1"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`this machine's host name ${Deno.hostname()} was added`));
    });
    await t.step("-no_hostname leaves it out; -days 30", async () => {
      const r = await runServerCli([
        "keygen",
        "-keydir",
        `${dir.path}/b`,
        "-name",
        "guest1",
        "-name",
        "fd00::1",
        "-no_hostname",
        "-days",
        "30",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const [cert] = await parseCertificates(await Deno.readTextFile(`${dir.path}/b/cert.pem`));
      assert.deepEqual(cert.names.sort(), ["fd00::1", "guest1"]);
      const days = (cert.notAfter.getTime() - Date.now()) / 86400_000;
      assert.ok(days > 29 && days <= 30, `valid for ${days} days`);
      assert.match(r.stdout, /valid until \d{4}-\d\d-\d\d/);
    });
    await t.step(
      "-no_hostname without -name is refused: a certificate must name something",
      async () => {
        const r = await runMgr(["keygen", "-keydir", `${dir.path}/c`, "-no_hostname"]);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, /-no_hostname needs at least one -name/);
      },
    );
    for (const days of ["0", "36501", "ten"]) {
      await t.step(`-days ${days} is refused`, async () => {
        const r = await runMgr(["keygen", "-keydir", `${dir.path}/d`, "-days", days]);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, /-days/);
      });
    }
  } finally {
    await dir.cleanup();
  }
});

Deno.test("fingerprint FILE: both programs print what a PEM certificate is, without openssl", async () => {
  const dir = await tempDir();
  try {
    const g = await runServerCli(["keygen", "-keydir", `${dir.path}/g`, "-name", "guest1"]);
    assert.equal(g.code, 0, g.stderr);
    const m = await runMgr(["keygen", "-keydir", `${dir.path}/m`]);
    assert.equal(m.code, 0, m.stderr);
    const gid = await loadIdentity(`${dir.path}/g`);
    const mid = await loadIdentity(`${dir.path}/m`);
    for (const run of [runServerCli, runMgr]) {
      const r = await run(["fingerprint", `${dir.path}/g/cert.pem`, `${dir.path}/m/cert.pem`]);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stdout.trim().split("\n");
      assert.equal(lines.length, 2);
      assert.match(
        lines[0],
        new RegExp(`^${gid.info.fingerprint} .*g/cert\\.pem \\(CN=cmappserver@`),
      );
      assert.match(lines[0], /names: guest1/);
      assert.match(lines[0], /until \d{4}-\d\d-\d\d/);
      assert.match(lines[1], new RegExp(`^${mid.info.fingerprint} .*m/cert\\.pem`));
    }
    // What is not a certificate: exit 1, named, and the others still printed.
    await Deno.writeTextFile(`${dir.path}/junk.pem`, "not a certificate\n");
    const r = await runMgr(["fingerprint", `${dir.path}/junk.pem`, `${dir.path}/g/cert.pem`]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /junk\.pem/);
    assert.match(r.stdout, new RegExp(`^${gid.info.fingerprint} `));
    const none = await runMgr(["fingerprint"]);
    assert.equal(none.code, 2);
  } finally {
    await dir.cleanup();
  }
});

Deno.test("a key directory whose key.pem and cert.pem are not one pair is refused, naming both", async () => {
  const dir = await tempDir();
  try {
    for (const k of ["a", "b"]) {
      assert.equal((await runMgr(["keygen", "-keydir", `${dir.path}/${k}`])).code, 0);
    }
    // Half-way through a rotation: the new certificate, the old key.
    await Deno.copyFile(`${dir.path}/b/cert.pem`, `${dir.path}/a/cert.pem`);
    await Deno.copyFile(`${dir.path}/b/cert.pem`, `${dir.path}/a/trusted/self.pem`);
    await assert.rejects(loadIdentity(`${dir.path}/a`), /not one pair/);
    const r = await runMgr(["-check", "-node", "g", "-keydir", `${dir.path}/a`, "--", "true"]);
    assert.equal(r.code, 208, r.stderr);
    assert.match(r.stderr, /a\/key\.pem and .*a\/cert\.pem are not one pair/);
  } finally {
    await dir.cleanup();
  }
});
