// Certificate checks (tls/certificate.ts, read with node:crypto's X509Certificate):
// the same answers as the @peculiar/x509 parser they replaced, and the same refusals.
import assert from "node:assert/strict";
import { tempDir } from "./_harness.ts";
import {
  CertificateError,
  certificateFromDer,
  certificateProblem,
  fingerprintOf,
  generateIdentity,
  KeyDirError,
  loadTrust,
  parseCertificates,
} from "../tls/mod.ts";

// Made by openssl (not by cmapp's keygen): three RDNs, one with a comma, and
// DNS, IPv4, IPv6, email and URI names. The expected values are what the
// previous parser, @peculiar/x509, read from it.
const OPENSSL_PEM = `-----BEGIN CERTIFICATE-----
MIICBjCCAaugAwIBAgIUQpFLnf+SNgG4uA29UYCrWCVGEN4wCgYIKoZIzj0EAwIw
MTELMAkGA1UEBhMCVVMxEzARBgNVBAoMCkFjbWUsIEluYy4xDTALBgNVBAMMBHdl
YjEwHhcNMjYxMjAyMTIwNzIzWhcNMjYxMjAzMTIwNzIzWjAxMQswCQYDVQQGEwJV
UzETMBEGA1UECgwKQWNtZSwgSW5jLjENMAsGA1UEAwwEd2ViMTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABOa/+WNpQq963/lYC0th/CEKpxtFkqMkqQUk1MFsZbOR
kVr2NXn9yFl4BXRAAkJ9cV/GMHKUlHiav//RySnr0SGjgaAwgZ0wHQYDVR0OBBYE
FPEUB2S8hxj+UklvuC06gHSKgi3SMB8GA1UdIwQYMBaAFPEUB2S8hxj+UklvuC06
gHSKgi3SME0GA1UdEQRGMESCBHdlYjGCEHdlYjEuZXhhbXBsZS5jb22HBAoAAAGH
EP6AAAAAAAAAAAAAAAAAAAGBBWFAYi5jhgtodHRwczovL3gveTAMBgNVHRMBAf8E
AjAAMAoGCCqGSM49BAMCA0kAMEYCIQC56j6vhAtaLSJ0sbC+0E+HT4L+tVahUrId
fd6FpFZ58wIhAP/7gxz4AubHRoQx69VO2lu+VgQPguMGuqhxwRW9fPR5
-----END CERTIFICATE-----`;

function _der(pem: string): Uint8Array {
  const b64 = pem.replace(/-----[A-Z ]+-----|\s/g, "");
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

Deno.test("certificates are read as before: fingerprint, subject, dates, CA flag, names", async (t) => {
  await t.step("a certificate made by openssl", async () => {
    const [info, ...more] = await parseCertificates(OPENSSL_PEM);
    assert.equal(more.length, 0);
    assert.equal(
      info.fingerprint,
      "DA:9D:2C:50:A3:3A:56:E1:7E:DB:20:31:B6:2B:58:B0:47:85:4B:FF:6B:2E:1B:82:C4:50:5C:AC:27:46:F3:3C",
    );
    assert.equal(info.fingerprint, await fingerprintOf(_der(OPENSSL_PEM)));
    assert.equal(info.subject, "C=US, O=Acme\\, Inc., CN=web1");
    assert.equal(info.notBefore.toISOString(), "2026-12-02T12:07:23.000Z");
    assert.equal(info.notAfter.toISOString(), "2026-12-03T12:07:23.000Z");
    assert.equal(info.isCA, false);
    assert.deepEqual(info.names, [
      "web1",
      "web1.example.com",
      "10.0.0.1",
      "fe80::1",
      "a@b.c",
      "https://x/y",
    ]);
    assert.equal(info.pem, OPENSSL_PEM);
    assert.deepEqual(await certificateFromDer(_der(OPENSSL_PEM)), info);
  });

  for (const algorithm of ["ed25519", "p256"] as const) {
    await t.step(`keygen's own certificates (${algorithm}), CA:FALSE and CA:TRUE`, async () => {
      const notBefore = new Date("2024-03-04T05:06:07Z");
      const notAfter = new Date("2034-03-04T05:06:07Z");
      for (const ca of [false, true]) {
        const id = await generateIdentity({
          commonName: "guest1",
          names: ["guest1", "192.0.2.10", "2001:db8::5", "*.guests.example"],
          algorithm,
          notBefore,
          notAfter,
          ca,
        });
        const info = id.info;
        assert.equal(info.fingerprint, await fingerprintOf(_der(id.certPem)));
        assert.equal(info.subject, "CN=guest1");
        assert.equal(info.notBefore.getTime(), notBefore.getTime());
        assert.equal(info.notAfter.getTime(), notAfter.getTime());
        assert.equal(info.isCA, ca);
        assert.deepEqual(info.names, ["guest1", "192.0.2.10", "2001:db8::5", "*.guests.example"]);
        assert.equal(id.certPem, info.pem + "\n");
        assert.deepEqual(await certificateFromDer(_der(id.certPem)), info);
      }
    });
  }

  await t.step("a certificate with no subjectAltName has no names", async () => {
    const id = await generateIdentity({ commonName: "bare", names: [] });
    assert.deepEqual(id.info.names, []);
  });

  await t.step("every block of a PEM text, in order", async () => {
    const a = await generateIdentity({ commonName: "a", names: ["a"] });
    const infos = await parseCertificates(`${a.certPem}\n${OPENSSL_PEM}\n`);
    assert.deepEqual(infos.map((i) => i.subject), ["CN=a", "C=US, O=Acme\\, Inc., CN=web1"]);
  });
});

Deno.test("unreadable certificates are CertificateErrors", async (t) => {
  await t.step("no PEM block", async () => {
    await assert.rejects(parseCertificates("not a pem"), (e: unknown) => {
      assert.ok(e instanceof CertificateError);
      assert.match(e.message, /no PEM certificate found/);
      return true;
    });
  });
  await t.step("a PEM block that is not a certificate", async () => {
    const bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    await assert.rejects(parseCertificates(bad), (e: unknown) => {
      assert.ok(e instanceof CertificateError);
      assert.match(e.message, /^malformed certificate: /);
      return true;
    });
  });
  await t.step("DER bytes that are not a certificate", async () => {
    await assert.rejects(certificateFromDer(new Uint8Array([48, 3, 2, 1, 1])), (e: unknown) => {
      assert.ok(e instanceof CertificateError);
      assert.match(e.message, /^not a valid X\.509 certificate: /);
      return true;
    });
  });
});

Deno.test("expired, not yet valid and CA:TRUE certificates are still refused, with the reason", async (t) => {
  const now = new Date();
  await t.step("expired", async () => {
    const id = await generateIdentity({
      commonName: "old",
      names: [],
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2021-01-01T00:00:00Z"),
    });
    assert.equal(certificateProblem(id.info, now), "expired on 2021-01-01T00:00:00.000Z");
  });
  await t.step("not yet valid", async () => {
    const id = await generateIdentity({
      commonName: "future",
      names: [],
      notBefore: new Date("2090-01-01T00:00:00Z"),
      notAfter: new Date("2091-01-01T00:00:00Z"),
    });
    assert.equal(certificateProblem(id.info, now), "not valid before 2090-01-01T00:00:00.000Z");
  });
  await t.step("CA:TRUE, as own certificate and when pinned", async () => {
    const id = await generateIdentity({ commonName: "ca", names: [], ca: true });
    assert.match(certificateProblem(id.info, now) ?? "", /is a CA certificate \(CA:TRUE\)/);
    const dir = await tempDir();
    try {
      await Deno.mkdir(`${dir.path}/trusted`);
      await Deno.writeTextFile(`${dir.path}/trusted/ca.pem`, id.certPem);
      await assert.rejects(loadTrust(dir.path, "manager"), (e: unknown) => {
        assert.ok(e instanceof KeyDirError);
        assert.match(e.message, /CN=ca is a CA certificate \(CA:TRUE\); pin the manager's own/);
        return true;
      });
    } finally {
      await dir.cleanup();
    }
  });
  await t.step("a valid CA:FALSE certificate has no problem", async () => {
    const id = await generateIdentity({ commonName: "ok", names: [] });
    assert.equal(certificateProblem(id.info, now), null);
  });
});
