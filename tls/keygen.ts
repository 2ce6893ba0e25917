/**
 * Key and self-signed certificate generation, and writing them to a key
 * directory. No openssl or Java needed.
 *
 * @module
 */

import { type CertificateInfo, parseCertificates } from "./certificate.ts";

type _X509 = typeof import("@peculiar/x509");

let _x509Module: Promise<_X509> | undefined;

/**
 * @peculiar/x509 (with reflect-metadata and its ASN.1 schemas) takes ~180 ms
 * to load, and only keygen needs it: it is loaded on the first call, not at
 * start-up. The specifiers are literal, so `deno compile` still bundles it.
 */
function _loadX509(): Promise<_X509> {
  _x509Module ??= import("reflect-metadata").then(() => import("@peculiar/x509")).then((x509) => {
    x509.cryptoProvider.set(globalThis.crypto);
    return x509;
  });
  return _x509Module;
}

/** Key algorithms keygen offers. */
export type KeyAlgorithm = "ed25519" | "p256";

/** Options for {@linkcode generateIdentity}. */
export interface GenerateOptions {
  /** Common name of the subject. */
  commonName: string;
  /** Host names and IP addresses for subjectAltName. */
  names: string[];
  /** Key algorithm; Ed25519 by default. */
  algorithm?: KeyAlgorithm;
  /** Start of validity; one hour ago by default (tolerates clock skew). */
  notBefore?: Date;
  /** End of validity; ten years from now by default. */
  notAfter?: Date;
  /** Issue a CA:TRUE certificate (only for tests of its refusal). */
  ca?: boolean;
}

/** A private key and its certificate, PEM-encoded. */
export interface GeneratedIdentity {
  /** PKCS#8 private key. */
  keyPem: string;
  /** Self-signed X.509 certificate. */
  certPem: string;
  /** What the certificate says. */
  info: CertificateInfo;
}

const _IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;
const _LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function _isIp(name: string): boolean {
  return _IPV4.test(name) || name.includes(":");
}

/**
 * Whether `name` can go into a certificate's subjectAltName: a host name
 * (labels of letters, digits and inner hyphens, at most 63 characters each,
 * 253 in all), an IPv4 address or an IPv6 address.
 *
 * @example
 * ```ts
 * import { isCertificateName } from "./keygen.ts";
 * isCertificateName("guest1.example.com"); // true
 * isCertificateName("fd00::1"); // true
 * isCertificateName("bad name!"); // false
 * ```
 */
export function isCertificateName(name: string): boolean {
  if (_IPV4.test(name)) return name.split(".").every((o) => Number(o) <= 255);
  if (name.includes(":")) {
    try {
      return new URL(`http://[${name}]/`).hostname !== "";
    } catch {
      return false;
    }
  }
  return name.length > 0 && name.length <= 253 && name.split(".").every((l) => _LABEL.test(l));
}

/**
 * Generates a key pair and a self-signed CA:FALSE certificate for it.
 *
 * @example
 * ```ts
 * import { generateIdentity } from "./keygen.ts";
 * const id = await generateIdentity({ commonName: "guest1", names: ["guest1", "127.0.0.1"] });
 * id.info.fingerprint; // "…"
 * ```
 */
export async function generateIdentity(options: GenerateOptions): Promise<GeneratedIdentity> {
  const x509 = await _loadX509();
  const algorithm: EcKeyGenParams | Algorithm = options.algorithm === "p256"
    ? { name: "ECDSA", namedCurve: "P-256" }
    : { name: "Ed25519" };
  const signing = options.algorithm === "p256"
    ? { name: "ECDSA", hash: "SHA-256" }
    : { name: "Ed25519" };
  const keys = await crypto.subtle.generateKey(algorithm, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const names = [...new Set(options.names.filter((n) => n !== ""))];
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0] &= 0x7f; // positive
  serial[0] |= 0x01; // no leading zero byte
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Array.from(serial, (b) => b.toString(16).padStart(2, "0")).join(""),
    name: [{ CN: [options.commonName] }],
    notBefore: options.notBefore ?? new Date(Date.now() - 3600_000),
    notAfter: options.notAfter ?? new Date(Date.now() + 3650 * 86400_000),
    signingAlgorithm: signing,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(options.ca ?? false, undefined, true),
      new x509.KeyUsagesExtension(
        options.ca
          ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyCertSign
          : x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      ...(names.length > 0
        ? [
          new x509.SubjectAlternativeNameExtension(
            names.map((n) => ({ type: _isIp(n) ? "ip" as const : "dns" as const, value: n })),
          ),
        ]
        : []),
    ],
  });
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", keys.privateKey);
  const keyPem = x509.PemConverter.encode(pkcs8, "PRIVATE KEY");
  const certPem = cert.toString("pem");
  const [info] = await parseCertificates(certPem);
  return { keyPem: keyPem.endsWith("\n") ? keyPem : keyPem + "\n", certPem: certPem + "\n", info };
}

/**
 * Refusal to overwrite an existing key, or a key directory that cannot be
 * written.
 *
 * @example
 * ```ts ignore
 * import { KeygenError, writeKeyDir } from "./keygen.ts";
 * try {
 *   await writeKeyDir("/etc/cmappmgr", { commonName: "host1", names: ["host1"] });
 * } catch (e) {
 *   if (e instanceof KeygenError) console.error(e.message); // "… already exists; use -force …"
 * }
 * ```
 */
export class KeygenError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "KeygenError";
  }
}

/** Options for {@linkcode writeKeyDir}. */
export interface WriteKeyDirOptions extends GenerateOptions {
  /** Replace an existing key. */
  force?: boolean;
}

/**
 * Generates an identity into `dir`: `key.pem` (mode 0600), `cert.pem`, and
 * an empty `trusted/` directory for the peers' certificates.
 *
 * @throws {KeygenError} when `key.pem` exists and `force` is not set
 * @example
 * ```ts ignore
 * import { writeKeyDir } from "./keygen.ts";
 * const id = await writeKeyDir("/etc/cmappserver", { commonName: "guest1", names: ["guest1"] });
 * console.log(id.info.fingerprint);
 * ```
 */
export async function writeKeyDir(
  dir: string,
  options: WriteKeyDirOptions,
): Promise<GeneratedIdentity> {
  const keyPath = `${dir}/key.pem`;
  const certPath = `${dir}/cert.pem`;
  if (!options.force) {
    for (const p of [keyPath, certPath]) {
      try {
        await Deno.lstat(p);
        throw new KeygenError(`${p} already exists; use -force to replace it`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
  }
  const id = await generateIdentity(options);
  try {
    await Deno.mkdir(`${dir}/trusted`, { recursive: true, mode: 0o755 });
    // Write to temporary names, then rename: a crash never leaves half a key.
    const tmpKey = `${keyPath}.tmp-${Deno.pid}`;
    const tmpCert = `${certPath}.tmp-${Deno.pid}`;
    await Deno.writeTextFile(tmpKey, id.keyPem, { mode: 0o600 });
    await Deno.chmod(tmpKey, 0o600);
    await Deno.writeTextFile(tmpCert, id.certPem, { mode: 0o644 });
    await Deno.rename(tmpKey, keyPath);
    await Deno.rename(tmpCert, certPath);
  } catch (e) {
    if (e instanceof KeygenError) throw e;
    throw new KeygenError(`cannot write to ${dir}: ${(e as Error).message}`);
  }
  return id;
}
