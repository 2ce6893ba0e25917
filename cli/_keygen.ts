/**
 * The `keygen` subcommand shared by cmappserver and cmappmgr.
 *
 * @module
 */

import { KeygenError, writeKeyDir } from "../tls/mod.ts";
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
  return `usage: ${p.program} keygen [-keydir DIR] [-name NAME]... [-algorithm ed25519|p256] [-force]

Writes DIR/key.pem (PKCS#8, mode 0600) and DIR/cert.pem (self-signed, CA:FALSE),
creates DIR/trusted/, and prints the certificate's SHA-256 fingerprint.

  -keydir DIR        key directory (default ${p.defaultKeyDir})
  -name NAME         host name or IP address for the certificate; repeatable;
                     the machine's host name is always added
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
  let dir: string, names: string[], algorithm: string, force: boolean;
  try {
    const { values, rest } = parseArgs(args, {
      keydir: { type: "string" },
      name: { type: "string", multiple: true },
      algorithm: { type: "string" },
      force: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      printOut(keygenUsage(p));
      return 0;
    }
    if (rest.length > 0) throw new UsageError(`unexpected argument ${rest[0]}`);
    dir = stringOption(values, "keydir", p.defaultKeyDir);
    names = (values.name as string[] | undefined) ?? [];
    algorithm = stringOption(values, "algorithm", "ed25519");
    if (algorithm !== "ed25519" && algorithm !== "p256") {
      throw new UsageError(`-algorithm must be ed25519 or p256, not ${algorithm}`);
    }
    force = values.force === true;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    printErr(`${p.program} keygen: ${e.message}\n${keygenUsage(p)}`);
    return 2;
  }
  const host = Deno.hostname();
  try {
    const id = await writeKeyDir(dir, {
      commonName: `${p.program}@${host}`,
      names: [...names, host],
      algorithm: algorithm as "ed25519" | "p256",
      force,
    });
    printOut(
      `wrote ${dir}/key.pem and ${dir}/cert.pem (${p.role}, ${algorithm}, names: ${
        id.info.names.join(", ")
      })\nSHA-256 fingerprint: ${id.info.fingerprint}\n${p.nextStep}\n`,
    );
    return 0;
  } catch (e) {
    if (!(e instanceof KeygenError)) throw e;
    printErr(`${p.program} keygen: ${e.message}\n`);
    return 1;
  }
}
