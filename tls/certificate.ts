/**
 * Reading X.509 certificates: fingerprints, validity, names, CA flag.
 *
 * @module
 */

// node:crypto's X509Certificate is native (built into Deno) and costs nothing
// beyond node:tls, which the sockets load anyway; @peculiar/x509 took ~180 ms
// of every start-up to load, so only keygen.ts loads it, lazily.
import { X509Certificate } from "node:crypto";

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
export function certificateFromDer(der: Uint8Array): Promise<CertificateInfo> {
  try {
    return Promise.resolve(_info(_parse(der, "not a valid X.509 certificate")));
  } catch (e) {
    return Promise.reject(e);
  }
}

function _parse(input: Uint8Array | string, what: string): X509Certificate {
  try {
    return new X509Certificate(input);
  } catch (e) {
    throw new CertificateError(`${what}: ${(e as Error).message}`);
  }
}

function _info(cert: X509Certificate): CertificateInfo {
  return {
    fingerprint: cert.fingerprint256,
    subject: _subject(cert.subject),
    notBefore: _date(cert.validFrom),
    notAfter: _date(cert.validTo),
    isCA: cert.ca,
    names: _altNames(cert.subjectAltName),
    pem: cert.toString().trimEnd(),
  };
}

/** "Dec  2 11:04:41 2026 GMT" (OpenSSL's form, which node:crypto gives) as a Date. */
function _date(text: string): Date {
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) throw new CertificateError(`unreadable validity date ${text}`);
  return d;
}

/**
 * node:crypto gives the subject one "KEY=value" per line; cmapp shows it as
 * RFC 4514 does ("CN=web1, O=Acme\\, Inc.", most significant last as printed).
 */
function _subject(text: string): string {
  return text.split("\n").filter((l) => l !== "").map((line) => {
    const eq = line.indexOf("=");
    if (eq < 0) return line;
    return `${line.slice(0, eq)}=${line.slice(eq + 1).replace(/([,+"\\<>;])/g, "\\$1")}`;
  }).join(", ");
}

const _NAME_TYPES = new Set(["DNS", "IP Address", "email", "URI"]);

/**
 * The values of node:crypto's subjectAltName text ("DNS:a, IP Address:::1,
 * DNS:\"b,c\"": a value with special characters is a JSON string).
 */
function _altNames(text: string | undefined): string[] {
  if (!text) return [];
  const names: string[] = [];
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(":", i);
    if (colon < 0) break;
    const type = text.slice(i, colon);
    let value: string;
    let next: number;
    if (text[colon + 1] === '"') {
      let j = colon + 2;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      try {
        value = String(JSON.parse(text.slice(colon + 1, j + 1)));
      } catch {
        throw new CertificateError(`unreadable subjectAltName ${text}`);
      }
      next = text.indexOf(", ", j + 1);
    } else {
      next = text.indexOf(", ", colon + 1);
      value = text.slice(colon + 1, next < 0 ? text.length : next);
    }
    if (_NAME_TYPES.has(type)) names.push(value);
    if (next < 0) break;
    i = next + 2;
  }
  return names;
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
export function parseCertificates(pem: string): Promise<CertificateInfo[]> {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  if (!blocks) return Promise.reject(new CertificateError("no PEM certificate found"));
  const out: CertificateInfo[] = [];
  try {
    for (const block of blocks) out.push(_info(_parse(block, "malformed certificate")));
  } catch (e) {
    return Promise.reject(e);
  }
  return Promise.resolve(out);
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
