/**
 * cmappserver: the guest daemon's command line. Arguments, key loading and
 * exit statuses; the daemon itself is server/.
 *
 * Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start serving
 * (e.g. the port is taken), 2 for a bad command line or an unusable key
 * directory.
 *
 * @module
 */

import { createLogger, type LogLevel, parseLogLevel } from "../log/logger.ts";
import { formatVersion, PROTOCOL_VERSION, SOFTWARE_VERSION } from "../protocol/mod.ts";
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_MAX_PROCESSES,
  DEFAULT_PORT,
  startServer,
} from "../server/mod.ts";
import {
  type Identity,
  KeyDirError,
  loadIdentity,
  loadTrust,
  type TrustStore,
} from "../tls/mod.ts";
import { intOption, parseArgs, secondsOption, stringOption, UsageError } from "./_args.ts";
import { printErr, printOut } from "./_io.ts";
import { runKeygen } from "./_keygen.ts";

const PROGRAM = "cmappserver";
const DEFAULT_KEYDIR = "/etc/cmappserver";

const USAGE = `usage: cmappserver [options]
       cmappserver keygen [-keydir DIR] [-name NAME]... [-force]

Runs in the guest, in the foreground, and starts, watches and reports on
processes for cmappmgr over mutually authenticated TLS.

Options (-opt VALUE, --opt VALUE and --opt=VALUE are the same):
  -keydir DIR              key directory: key.pem, cert.pem and trusted/*.pem,
                           the managers allowed in (default ${DEFAULT_KEYDIR})
  -bind ADDR               address to listen on (default 0.0.0.0)
  -port N                  TCP port (default ${DEFAULT_PORT}; 0 picks a free one)
  -max_processes N         processes monitored at once (default ${DEFAULT_MAX_PROCESSES})
  -handshake_timeout SECS  time a client has to finish TLS and hello (default ${
  DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000
})
  -loglevel LEVEL          error, warn, info (default) or debug; logs go to stderr
  -help                    this text
  -version                 the version

Signals: SIGTERM or SIGINT: tell connected managers, close, exit 0; monitored
processes keep running. SIGHUP: reload KEYDIR/trusted/*.pem for new connections
(live connections stay).

Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start serving, 2 for a
bad command line or key directory.
`;

async function main(args: string[]): Promise<number> {
  if (args[0] === "keygen") {
    return await runKeygen({
      program: PROGRAM,
      defaultKeyDir: DEFAULT_KEYDIR,
      role: "server",
      nextStep: `Copy cert.pem to each host's cmappmgr key directory, under trusted/.`,
    }, args.slice(1));
  }
  let keydir: string, bind: string, port: number, maxProcesses: number, handshakeMs: number;
  let level: LogLevel;
  try {
    const { values, rest } = parseArgs(args, {
      keydir: { type: "string" },
      bind: { type: "string" },
      port: { type: "string" },
      max_processes: { type: "string" },
      handshake_timeout: { type: "string" },
      loglevel: { type: "string" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
    });
    if (values.help) {
      printOut(USAGE);
      return 0;
    }
    if (values.version) {
      printOut(`cmappserver ${SOFTWARE_VERSION} (protocol ${formatVersion(PROTOCOL_VERSION)})\n`);
      return 0;
    }
    if (rest.length > 0) throw new UsageError(`unexpected argument ${rest[0]}`);
    keydir = stringOption(values, "keydir", DEFAULT_KEYDIR);
    bind = stringOption(values, "bind", "0.0.0.0");
    port = intOption(values, "port", DEFAULT_PORT, 0, 65535);
    maxProcesses = intOption(values, "max_processes", DEFAULT_MAX_PROCESSES, 1, 100_000);
    handshakeMs = secondsOption(values, "handshake_timeout", 10, 0.1, 3600);
    const l = parseLogLevel(stringOption(values, "loglevel", "info"));
    if (!l) throw new UsageError(`-loglevel must be error, warn, info or debug`);
    level = l;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    printErr(`cmappserver: ${e.message}\n${USAGE}`);
    return 2;
  }
  const logger = createLogger({ program: PROGRAM, level });
  let identity: Identity, trust: TrustStore;
  try {
    identity = await loadIdentity(keydir, PROGRAM);
    trust = await loadTrust(keydir, "manager");
  } catch (e) {
    if (!(e instanceof KeyDirError)) throw e;
    logger.error(e.message);
    return 2;
  }
  let server;
  try {
    server = await startServer({
      identity,
      trust,
      hostname: bind,
      port,
      maxProcesses,
      handshakeTimeoutMs: handshakeMs,
      logger,
    });
  } catch (e) {
    logger.error(`cannot listen on ${bind}:${port}: ${(e as Error).message}`);
    return 1;
  }
  logger.info(`certificate ${identity.info.fingerprint}`);
  Deno.addSignalListener("SIGHUP", () => {
    loadTrust(keydir, "manager").then(
      (t) => {
        server.setTrust(t);
        logger.info(`SIGHUP: reloaded ${t.byFingerprint.size} trusted manager(s) from ${t.dir}`);
      },
      (e) => logger.error(`SIGHUP: kept the previous trusted managers: ${(e as Error).message}`),
    );
  });
  const stopped = new Promise<string>((resolve) => {
    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      Deno.addSignalListener(sig, () => resolve(sig));
    }
  });
  const sig = await stopped;
  logger.info(
    `${sig}: closing; ${server.runs.running} monitored process(es) keep running`,
  );
  await server.close();
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
