/**
 * cmappmgr: the host-side command line. Runs one command on a guest's
 * cmappserver, follows it, and exits with its exit status. Arguments, key
 * loading and exit statuses; the behaviour is manager/.
 *
 * @module
 */

import { createLogger, type LogLevel, parseLogLevel } from "../log/logger.ts";
import { LaunchError, ManagerError, runCommand } from "../manager/mod.ts";
import {
  describeExit,
  formatVersion,
  PROTOCOL_VERSION,
  shellExitCode,
  SOFTWARE_VERSION,
} from "../protocol/mod.ts";
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
import { EXIT_FOR_KIND, MGR_EXIT } from "./exit_codes.ts";

const PROGRAM = "cmappmgr";
const DEFAULT_KEYDIR = "/etc/cmappmgr";

const USAGE = `usage: cmappmgr -node HOST [options] [--] COMMAND [ARG]...
       cmappmgr keygen [-keydir DIR] [-force]

Asks the cmappserver on HOST to run COMMAND (directly, no shell), follows it,
and exits with its exit status.

Options (-opt VALUE, --opt VALUE and --opt=VALUE are the same; options end at
the first argument that is not one, or at --):
  -node HOST                 the guest running cmappserver (required)
  -port N                    its TCP port (default 5315)
  -service_name NAME         the run's name on the guest: a launch under a name
                             that is still running attaches to it instead of
                             starting a second copy (default: derived from COMMAND)
  -keydir DIR                key directory: key.pem, cert.pem and trusted/*.pem,
                             the guests we trust (default ${DEFAULT_KEYDIR})
  -cmappserver_timeout SECS  how long the guest may stay unreachable or silent
                             before cmappmgr gives up (default 30)
  -poll_interval SECS        status poll interval (default 1)
  -loglevel LEVEL            error, warn (default), info or debug; to stderr
  -help                      this text
  -version                   the version

Exit status:
  N        the command exited with N
  128+N    the command was killed by signal N
  126      the command could not be executed on the guest
  127      the command was not found on the guest
  2        bad command line
  200      cannot connect to cmappserver within -cmappserver_timeout
  201      cmappserver's certificate is not trusted (not pinned, expired, wrong name)
  202      cmappserver refused our certificate
  203      protocol error
  204      incompatible protocol version
  205      cmappserver lost: no answer for -cmappserver_timeout while monitoring
  206      cmappserver refused to start the command (e.g. its process limit)
  207      the run is lost: its exit status cannot be known
  208      local key directory missing or invalid
`;

async function main(args: string[]): Promise<number> {
  if (args[0] === "keygen") {
    return await runKeygen({
      program: PROGRAM,
      defaultKeyDir: DEFAULT_KEYDIR,
      role: "manager",
      nextStep: `Copy cert.pem to each guest's cmappserver key directory, under trusted/.`,
    }, args.slice(1));
  }
  let node: string, port: number, keydir: string, timeoutMs: number, pollMs: number;
  let level: LogLevel, argv: string[], serviceName: string;
  try {
    const { values, rest } = parseArgs(args, {
      node: { type: "string" },
      service_name: { type: "string" },
      port: { type: "string" },
      keydir: { type: "string" },
      cmappserver_timeout: { type: "string" },
      poll_interval: { type: "string" },
      loglevel: { type: "string" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
    });
    if (values.help) {
      printOut(USAGE);
      return 0;
    }
    if (values.version) {
      printOut(`cmappmgr ${SOFTWARE_VERSION} (protocol ${formatVersion(PROTOCOL_VERSION)})\n`);
      return 0;
    }
    node = stringOption(values, "node", "");
    if (!node) throw new UsageError("-node HOST is required");
    if (rest.length === 0) throw new UsageError("no command given");
    argv = rest;
    serviceName = stringOption(values, "service_name", "");
    port = intOption(values, "port", 5315, 1, 65535);
    keydir = stringOption(values, "keydir", DEFAULT_KEYDIR);
    timeoutMs = secondsOption(values, "cmappserver_timeout", 30, 0.1, 86400);
    pollMs = secondsOption(values, "poll_interval", 1, 0.01, 3600);
    const l = parseLogLevel(stringOption(values, "loglevel", "warn"));
    if (!l) throw new UsageError(`-loglevel must be error, warn, info or debug`);
    level = l;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    printErr(`cmappmgr: ${e.message}\n${USAGE}`);
    return MGR_EXIT.usage;
  }
  const logger = createLogger({ program: PROGRAM, level });
  let identity: Identity, trust: TrustStore;
  try {
    identity = await loadIdentity(keydir, PROGRAM);
    trust = await loadTrust(keydir, "server");
  } catch (e) {
    if (!(e instanceof KeyDirError)) throw e;
    printErr(`cmappmgr: ${e.message}\n`);
    return MGR_EXIT.config;
  }
  try {
    const outcome = await runCommand({
      host: node,
      port,
      identity,
      trust,
      argv,
      launch: serviceName ? { name: serviceName } : undefined,
      serverTimeoutMs: timeoutMs,
      pollIntervalMs: pollMs,
      logger,
    });
    logger.info(`run ${outcome.run} pid ${outcome.pid} ${describeExit(outcome.exit)}`);
    return shellExitCode(outcome.exit);
  } catch (e) {
    if (e instanceof LaunchError) {
      printErr(`cmappmgr: ${e.message}\n`);
      if (e.code === "not_found") return MGR_EXIT.notFound;
      if (e.code === "not_executable" || e.code === "spawn_failed") return MGR_EXIT.notExecutable;
      return MGR_EXIT.refused;
    }
    if (e instanceof ManagerError) {
      printErr(`cmappmgr: ${e.message}\n`);
      return EXIT_FOR_KIND[e.kind];
    }
    throw e;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
