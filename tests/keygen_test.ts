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
