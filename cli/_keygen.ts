/**
 * The `keygen` subcommand shared by cmappserver and cmappmgr.
 *
 * @module
 */

import {
  CertificateError,
  isCertificateName,
  KeygenError,
  parseCertificates,
  writeKeyDir,
} from "../tls/mod.ts";
import { parseArgs, stringOption, UsageError } from "./_args.ts";
import { printErr, printOut } from "./_io.ts";

/** What the keygen subcommand of one program looks like. */
export interface KeygenProgram {
  /** "cmappserver" or "cmappmgr". */
  program: string;
  /** Default key directory. */
  defaultKeyDir: string;
  /** Who this key identifies, for the subject: "server" or "manager". */
  role: string;
  /** What the user does next with the certificate. */
  nextStep: string;
}

/** Usage text of the keygen subcommand. */
export function keygenUsage(p: KeygenProgram): string {
  return `usage: ${p.program} keygen [-keydir DIR] [-name NAME]... [-no_hostname] [-days N]
                   [-algorithm ed25519|p256] [-force]

Writes DIR/key.pem (PKCS#8, mode 0600) and DIR/cert.pem (self-signed, CA:FALSE),
creates DIR/trusted/, and prints the certificate's SHA-256 fingerprint.

  -keydir DIR        key directory (default ${p.defaultKeyDir})
  -name NAME         host name or IP address for the certificate; repeatable
  -no_hostname       do not add this machine's host name to the names (it is
                     added by default); then at least one -name is needed
  -days N            lifetime in days, 1 to 36500 (default 3650, ten years)
  -algorithm ALG     ed25519 (default) or p256
  -force             replace an existing key
`;
}

/**
 * Runs `PROGRAM keygen ARGS…`; returns the exit status.
 *
 * @example
 * ```ts ignore
 * import { runKeygen } from "./_keygen.ts";
 * Deno.exit(await runKeygen(program, ["-keydir", "/tmp/k"]));
 * ```
 */
export async function runKeygen(p: KeygenProgram, args: string[]): Promise<number> {
  let opts: _KeygenOptions;
  try {
    const parsed = _keygenOptions(p, args);
    if (parsed === "help") {
      printOut(keygenUsage(p));
      return 0;
    }
    opts = parsed;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    printErr(`${p.program} keygen: ${e.message} (${p.program} keygen -help lists the options)\n`);
    return 2;
  }
  const host = Deno.hostname();
  const added = opts.hostname && !opts.names.includes(host);
  try {
    const id = await writeKeyDir(opts.dir, {
      commonName: `${p.program}@${host}`,
      names: added ? [...opts.names, host] : opts.names,
      algorithm: opts.algorithm,
      notAfter: new Date(Date.now() + opts.days * 86400_000),
      force: opts.force,
    });
    printOut(
      `wrote ${opts.dir}/key.pem and ${opts.dir}/cert.pem (${p.role}, ${opts.algorithm}, names: ${
        id.info.names.join(", ")
      }; valid until ${id.info.notAfter.toISOString().slice(0, 10)})\n` +
        (added
          ? `(this machine's host name ${host} was added to the names; -no_hostname leaves it out)\n`
          : "") +
        `SHA-256 fingerprint: ${id.info.fingerprint}\n${p.nextStep}\n`,
    );
    return 0;
  } catch (e) {
    if (!(e instanceof KeygenError)) throw e;
    printErr(`${p.program} keygen: ${e.message}\n`);
    return 1;
  }
}

interface _KeygenOptions {
  dir: string;
  names: string[];
  hostname: boolean;
  days: number;
  algorithm: "ed25519" | "p256";
  force: boolean;
}

function _keygenOptions(p: KeygenProgram, args: string[]): _KeygenOptions | "help" {
  const { values, rest } = parseArgs(args, {
    keydir: { type: "string" },
    name: { type: "string", multiple: true },
    no_hostname: { type: "boolean" },
    days: { type: "string" },
    algorithm: { type: "string" },
    force: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return "help";
  if (rest.length > 0) throw new UsageError(`unexpected argument ${rest[0]}`);
  const names = (values.name as string[] | undefined) ?? [];
  for (const n of names) {
    if (!isCertificateName(n)) {
      throw new UsageError(`-name ${JSON.stringify(n)} is neither a host name nor an IP address`);
    }
  }
  const hostname = values.no_hostname !== true;
  if (!hostname && names.length === 0) {
    throw new UsageError("-no_hostname needs at least one -name: a certificate must name its host");
  }
  const daysText = stringOption(values, "days", "3650");
  const days = /^\d+$/.test(daysText) ? Number(daysText) : NaN;
  if (!(days >= 1 && days <= 36500)) {
    throw new UsageError(`-days must be a whole number of days from 1 to 36500, not ${daysText}`);
  }
  const algorithm = stringOption(values, "algorithm", "ed25519");
  if (algorithm !== "ed25519" && algorithm !== "p256") {
    throw new UsageError(`-algorithm must be ed25519 or p256, not ${algorithm}`);
  }
  return {
    dir: stringOption(values, "keydir", p.defaultKeyDir),
    names,
    hostname,
    days,
    algorithm,
    force: values.force === true,
  };
}

/** Usage text of the fingerprint subcommand. */
export function fingerprintUsage(program: string): string {
  return `usage: ${program} fingerprint FILE...

Prints, for each certificate in each PEM FILE (a cert.pem, a trusted/*.pem), one
line: its SHA-256 fingerprint as the logs show it, the file, its subject, its
names and the end of its validity. Exit 0, or 1 if a FILE holds no readable
certificate (the others are printed all the same), 2 without FILE.
`;
}

/**
 * Runs `PROGRAM fingerprint FILE…` (as `ssh-keygen -lf`); returns the exit status.
 *
 * @example
 * ```ts ignore
 * import { runFingerprint } from "./_keygen.ts";
 * Deno.exit(await runFingerprint("cmappmgr", ["/etc/cmappmgr/trusted/guest1.pem"]));
 * ```
 */
export async function runFingerprint(program: string, args: string[]): Promise<number> {
  if (args.length === 0 || args[0] === "-help" || args[0] === "-h") {
    if (args.length === 0) {
      printErr(`${program} fingerprint: no FILE given (${program} fingerprint -help)\n`);
      return 2;
    }
    printOut(fingerprintUsage(program));
    return 0;
  }
  let status = 0;
  for (const file of args) {
    try {
      const certs = await parseCertificates(await Deno.readTextFile(file));
      if (certs.length === 0) throw new CertificateError("no certificate in it");
      for (const c of certs) {
        printOut(
          `${c.fingerprint} ${file} (${c.subject}, names: ${c.names.join(", ") || "none"}, ` +
            `until ${c.notAfter.toISOString().slice(0, 10)})\n`,
        );
      }
    } catch (e) {
      // Unreadable, missing, not PEM, not a certificate: said, and on to the next file.
      if (!(e instanceof Error)) throw e;
      printErr(`${program} fingerprint: ${file}: ${(e as Error).message}\n`);
      status = 1;
    }
  }
  return status;
}
