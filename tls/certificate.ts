/**
 * Reading X.509 certificates: fingerprints, validity, names, CA flag.
 *
 * @module
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(globalThis.crypto);

/** What cmapp needs to know about a certificate. */
export interface CertificateInfo {
  /** SHA-256 of the DER encoding, as colon-separated upper-case hex. */
  fingerprint: string;
  /** The subject, e.g. "CN=guest1". */
  subject: string;
  /** Start of validity. */
  notBefore: Date;
  /** End of validity. */
  notAfter: Date;
  /** True when basicConstraints says CA:TRUE. */
  isCA: boolean;
  /** DNS names and IP addresses from subjectAltName. */
  names: string[];
  /** The certificate, PEM-encoded. */
  pem: string;
}

/**
 * A certificate that cannot be read.
 *
 * @example
 * ```ts
 * import { CertificateError, parseCertificates } from "./certificate.ts";
 * try {
 *   await parseCertificates("not a pem");
 * } catch (e) {
 *   if (e instanceof CertificateError) console.log(e.message);
 * }
 * ```
 */
export class CertificateError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "CertificateError";
  }
}

/**
 * Formats bytes as colon-separated upper-case hex ("AB:CD:…").
 *
 * @example
 * ```ts
 * import { colonHex } from "./certificate.ts";
 * colonHex(new Uint8Array([171, 205])); // "AB:CD"
 * ```
 */
export function colonHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0").toUpperCase()).join(":");
}

/**
 * SHA-256 fingerprint of a DER-encoded certificate.
 *
 * @example
 * ```ts ignore
 * import { fingerprintOf } from "./certificate.ts";
 * await fingerprintOf(der); // "3F:…"
 * ```
 */
export async function fingerprintOf(der: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", der as Uint8Array<ArrayBuffer>);
  return colonHex(new Uint8Array(digest));
}

/** Reads one certificate from its DER bytes. */
export async function certificateFromDer(der: Uint8Array): Promise<CertificateInfo> {
  let cert: x509.X509Certificate;
  try {
    cert = new x509.X509Certificate(der as Uint8Array<ArrayBuffer>);
  } catch (e) {
    throw new CertificateError(`not a valid X.509 certificate: ${(e as Error).message}`);
  }
  return await _info(cert);
}

async function _info(cert: x509.X509Certificate): Promise<CertificateInfo> {
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  const names = san ? san.names.items.map((n) => n.value) : [];
  return {
    fingerprint: await fingerprintOf(new Uint8Array(cert.rawData)),
    subject: cert.subject,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    isCA: bc?.ca ?? false,
    names,
    pem: cert.toString("pem"),
  };
}

/**
 * Reads every certificate in a PEM text (one or more blocks).
 *
 * @throws {CertificateError} when there is none or one is malformed
 * @example
 * ```ts ignore
 * import { parseCertificates } from "./certificate.ts";
 * const [info] = await parseCertificates(await Deno.readTextFile("cert.pem"));
 * ```
 */
export async function parseCertificates(pem: string): Promise<CertificateInfo[]> {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  if (!blocks) throw new CertificateError("no PEM certificate found");
  const out: CertificateInfo[] = [];
  for (const block of blocks) {
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(block);
    } catch (e) {
      throw new CertificateError(`malformed certificate: ${(e as Error).message}`);
    }
    out.push(await _info(cert));
  }
  return out;
}

/**
 * Why a certificate is not acceptable as a pinned peer or own identity
 * right now, or null when it is.
 *
 * @example
 * ```ts ignore
 * import { certificateProblem } from "./certificate.ts";
 * certificateProblem(info); // e.g. "expired on 2026-01-01T00:00:00.000Z"
 * ```
 */
export function certificateProblem(info: CertificateInfo, now: Date = new Date()): string | null {
  if (now < info.notBefore) return `not valid before ${info.notBefore.toISOString()}`;
  if (now > info.notAfter) return `expired on ${info.notAfter.toISOString()}`;
  if (info.isCA) return "is a CA certificate (CA:TRUE); pin the peer's own CA:FALSE certificate";
  return null;
}
