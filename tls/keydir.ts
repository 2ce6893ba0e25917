/**
 * Loading a key directory: our own key and certificate, and the pinned
 * certificates of the peers we trust (`trusted/*.pem`).
 *
 * Layout:
 * ```
 * DIR/key.pem        PKCS#8 private key, mode 0600
 * DIR/cert.pem       our self-signed certificate
 * DIR/trusted/*.pem  one or more peer certificates per file
 * ```
 *
 * @module
 */

import { createPublicKey, X509Certificate } from "node:crypto";
import { type CertificateInfo, certificateProblem, parseCertificates } from "./certificate.ts";

/** Our own key and certificate. */
export interface Identity {
  /** PEM private key. */
  keyPem: string;
  /** PEM certificate. */
  certPem: string;
  /** What our certificate says. */
  info: CertificateInfo;
}

/** The pinned peer certificates. */
export interface TrustStore {
  /** The directory they were read from. */
  dir: string;
  /** Each trusted certificate, by fingerprint. */
  byFingerprint: ReadonlyMap<string, CertificateInfo & { file: string }>;
  /** Their PEM texts, for the TLS layer. */
  pems: string[];
}

/**
 * A key directory that cannot be used, with the path and what to do.
 *
 * @example
 * ```ts
 * import { KeyDirError, loadIdentity } from "./keydir.ts";
 * try {
 *   await loadIdentity("/nonexistent");
 * } catch (e) {
 *   if (e instanceof KeyDirError) console.log(e.message);
 * }
 * ```
 */
export class KeyDirError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "KeyDirError";
  }
}

async function _read(path: string, hint: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new KeyDirError(`${path} not found; ${hint}`);
    throw new KeyDirError(`cannot read ${path}: ${(e as Error).message}`);
  }
}

/**
 * Reads `DIR/key.pem` and `DIR/cert.pem`. Refuses a key readable by group
 * or others, a certificate that is expired or not yet valid, and a key
 * that is not a PKCS#8 PEM.
 *
 * @throws {KeyDirError}
 * @example
 * ```ts ignore
 * import { loadIdentity } from "./keydir.ts";
 * const id = await loadIdentity("/etc/cmappmgr");
 * ```
 */
export async function loadIdentity(dir: string, program?: string): Promise<Identity> {
  const hint = program ? `run '${program} keygen -keydir ${dir}' first` : "generate a key first";
  const keyPath = `${dir}/key.pem`;
  const certPath = `${dir}/cert.pem`;
  const keyPem = await _read(keyPath, hint);
  const st = await Deno.stat(keyPath);
  if (st.mode !== null && (st.mode & 0o077) !== 0) {
    throw new KeyDirError(
      `${keyPath} is accessible by group or others (mode ${
        (st.mode & 0o777).toString(8).padStart(4, "0")
      }); run 'chmod 600 ${keyPath}'`,
    );
  }
  if (!/-----BEGIN PRIVATE KEY-----/.test(keyPem)) {
    throw new KeyDirError(`${keyPath} is not a PKCS#8 PEM private key`);
  }
  const certPem = await _read(certPath, hint);
  let info: CertificateInfo;
  try {
    [info] = await parseCertificates(certPem);
  } catch (e) {
    throw new KeyDirError(`${certPath}: ${(e as Error).message}`);
  }
  const problem = certificateProblem(info);
  if (problem) {
    throw new KeyDirError(`${certPath}: our own certificate is ${problem}; ${hint} with -force`);
  }
  _checkPair(keyPem, certPem, keyPath, certPath);
  return { keyPem, certPem, info };
}

/**
 * The key and the certificate must be one pair: a directory caught half-way
 * through a rotation (one file new, the other old) is refused here, with both
 * paths, rather than as an obscure TLS failure.
 */
function _checkPair(keyPem: string, certPem: string, keyPath: string, certPath: string): void {
  let same: boolean;
  try {
    const ours = createPublicKey(keyPem).export({ type: "spki", format: "der" });
    const theirs = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
    same = ours.equals(theirs);
  } catch (e) {
    throw new KeyDirError(`${keyPath}: not a usable private key: ${(e as Error).message}`);
  }
  if (!same) {
    throw new KeyDirError(
      `${keyPath} and ${certPath} are not one pair (their public keys differ): restore both ` +
        `files of one key, or make a new one with keygen -force`,
    );
  }
}

/**
 * Reads every `*.pem` in `DIR/trusted`. An unreadable or malformed file is
 * an error (a typo must not silently lock a peer out); an empty store is an
 * error too, since it would trust nobody.
 *
 * @throws {KeyDirError}
 * @example
 * ```ts ignore
 * import { loadTrust } from "./keydir.ts";
 * const trust = await loadTrust("/etc/cmappserver");
 * trust.byFingerprint.size; // number of pinned peers
 * ```
 */
export async function loadTrust(dir: string, peerKind = "peer"): Promise<TrustStore> {
  const trustedDir = `${dir}/trusted`;
  const files: string[] = [];
  try {
    for await (const entry of Deno.readDir(trustedDir)) {
      if (entry.name.endsWith(".pem") && !entry.isDirectory) files.push(entry.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new KeyDirError(
        `${trustedDir} not found; create it and copy each trusted ${peerKind}'s cert.pem into it`,
      );
    }
    throw new KeyDirError(`cannot read ${trustedDir}: ${(e as Error).message}`);
  }
  files.sort();
  const byFingerprint = new Map<string, CertificateInfo & { file: string }>();
  for (const name of files) {
    const path = `${trustedDir}/${name}`;
    const text = await _read(path, "");
    let infos: CertificateInfo[];
    try {
      infos = await parseCertificates(text);
    } catch (e) {
      throw new KeyDirError(`${path}: ${(e as Error).message}`);
    }
    for (const info of infos) {
      if (info.isCA) {
        throw new KeyDirError(
          `${path}: ${info.subject} is a CA certificate (CA:TRUE); pin the ${peerKind}'s own cert.pem`,
        );
      }
      byFingerprint.set(info.fingerprint, { ...info, file: path });
    }
  }
  if (byFingerprint.size === 0) {
    throw new KeyDirError(
      `no trusted ${peerKind} certificates in ${trustedDir}; copy each ${peerKind}'s cert.pem there`,
    );
  }
  return { dir: trustedDir, byFingerprint, pems: [...byFingerprint.values()].map((i) => i.pem) };
}
