/**
 * cmappserver: the guest daemon's command line. Arguments, the
 * configuration file, key loading, logging destinations, signals and exit
 * statuses; the daemon itself is server/.
 *
 * Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start serving
 * (e.g. the port is taken), 2 for a bad command line, configuration file or
 * key directory.
 *
 * @module
 */

import { createLogger, type LogLevel } from "../log/logger.ts";
import { FileSink, type LogSink, stderrLogSink, stderrSink, SyslogSink } from "../log/sinks.ts";
import { formatVersion, PROTOCOL_VERSION, SOFTWARE_VERSION } from "../protocol/mod.ts";
import {
  type CmappServer,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MAX_PROCESSES,
  DEFAULT_PORT,
  DEFAULT_STATE_DIR,
  startServer,
} from "../server/mod.ts";
import {
  type Identity,
  KeyDirError,
  loadIdentity,
  loadTrust,
  type TrustStore,
} from "../tls/mod.ts";
import { type OptionSpec, parseArgs, UsageError } from "./_args.ts";
import { mergeSettings, readConfig } from "./_config.ts";
import { printErr, printOut } from "./_io.ts";
import { runFingerprint, runKeygen } from "./_keygen.ts";
import { Readiness } from "./_readiness.ts";

const PROGRAM = "cmappserver";
const DEFAULT_KEYDIR = "/etc/cmappserver";
const DEFAULT_CONFIG = "/etc/cmappserver.conf";

const SPEC: Record<string, OptionSpec> = {
  config: { type: "string" },
  keydir: { type: "string" },
  bind: { type: "string" },
  port: { type: "string" },
  statedir: { type: "string" },
  max_processes: { type: "string" },
  max_connections: { type: "string" },
  handshake_timeout: { type: "string" },
  idle_timeout: { type: "string" },
  max_frame: { type: "string" },
  max_argv_bytes: { type: "string" },
  max_env_bytes: { type: "string" },
  keep_finished: { type: "string" },
  keep_finished_for: { type: "string" },
  stop_timeout: { type: "string" },
  stdin_grace: { type: "string" },
  stop_on_exit: { type: "string" },
  allow_exec: { type: "string", multiple: true },
  allow_user: { type: "string", multiple: true },
  allow_group: { type: "string", multiple: true },
  // Obsolete (0.1.0 chose perl or sh); accepted so that an upgrade keeps its configuration.
  supervisor: { type: "string" },
  loglevel: { type: "string" },
  logfile: { type: "string" },
  syslog: { type: "string" },
  readyfile: { type: "string" },
  check: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
};

/** The -help text (also the man page's synopsis, tools/_packaging.ts). */
export const USAGE = `usage: cmappserver [options]
       cmappserver keygen [-keydir DIR] [-name NAME]... [-no_hostname] [-days N]
                          [-algorithm ed25519|p256] [-force]
       cmappserver fingerprint FILE...   (each PEM certificate's SHA-256 fingerprint)

Runs in the guest, in the foreground, and starts, watches and reports on
processes for cmappmgr over mutually authenticated TLS. Every option can also
be set in the configuration file as "name = value"; the command line wins.
docs/cmappserver.md describes each one.

  -config FILE              configuration file (default ${DEFAULT_CONFIG}, if present)
  -keydir DIR               key.pem, cert.pem and trusted/*.pem, the managers
                            allowed in (default ${DEFAULT_KEYDIR})
  -bind ADDR                address to listen on (default 0.0.0.0)
  -port N                   TCP port (default ${DEFAULT_PORT}; 0 picks a free one)
  -statedir DIR             where runs are recorded (default ${DEFAULT_STATE_DIR})
  -max_processes N          processes monitored at once (default ${DEFAULT_MAX_PROCESSES})
  -max_connections N        connections at once (default ${DEFAULT_MAX_CONNECTIONS});
                            keep it well under RLIMIT_NOFILE (docs/cmappserver.md)
  -handshake_timeout SECS   time for the TLS handshake, then for the hello (default 10)
  -idle_timeout SECS        close a connection silent this long (default 120)
  -max_frame BYTES          largest message accepted (default 1048576)
  -max_argv_bytes BYTES     largest command line (default 262144)
  -max_env_bytes BYTES      largest environment (default 262144)
  -keep_finished N          finished runs remembered (default 1000)
  -keep_finished_for SECS   how long they are remembered (default 604800, 7 days)
  -stop_timeout SECS        default grace between SIGTERM and SIGKILL (default 10)
  -stdin_grace SECS         a run's stdin with no manager to feed it this long is
                            closed (default 30)
  -stop_on_exit yes|no      stop every run when cmappserver is stopped (default no)
  -allow_exec GLOB          only executables matching a GLOB may run (repeatable;
                            * within a path segment, ** across); default: any
  -allow_user USER          a user requests may run as (repeatable); default: none
  -allow_group GROUP        a group a run-as request may ask for besides the
                            user's own (repeatable); default: none
  -supervisor KIND          obsolete (0.1.0's perl or sh), ignored: the per-run
                            supervisor is built in
  -loglevel LEVEL           error, warn, info (default) or debug
  -logfile FILE             log to FILE instead of stderr (reopened on SIGHUP)
  -syslog yes|no            also log to syslog, facility daemon (default no)
  -readyfile FILE           write the daemon's pid to FILE once it serves, remove
                            it at exit: readiness for init scripts (default none)
  -check                    check the options, the configuration file and the key
                            directory, say so, and exit (0 good, 2 not), as sshd -t
  -help                     this text
  -version                  the version

Signals: SIGTERM or SIGINT: tell connected managers, close, exit 0; monitored
processes keep running and are re-adopted by the next cmappserver on the same
state directory (unless stop_on_exit). SIGHUP: reopen the log file and reload
KEYDIR/trusted/*.pem; live connections stay.

Readiness: under systemd (Type=notify, $NOTIFY_SOCKET) it sends READY=1 once
it listens and has re-adopted its runs, and STOPPING=1 at exit.

Exit status: 0 after SIGTERM or SIGINT, 1 when it cannot start serving (or
write -readyfile), 2 for a bad command line, configuration file or key
directory.
`;

/**
 * cmappserver's command line: runs the daemon (or keygen) with `args`;
 * resolves with the exit status.
 */
export async function main(args: string[]): Promise<number> {
  if (args[0] === "keygen") {
    return await runKeygen({
      program: PROGRAM,
      defaultKeyDir: DEFAULT_KEYDIR,
      role: "server",
      nextStep: `Copy cert.pem to each host's cmappmgr key directory, under trusted/.`,
    }, args.slice(1));
  }
  if (args[0] === "fingerprint") return await runFingerprint(PROGRAM, args.slice(1));
  let cfg;
  try {
    const { values, rest } = parseArgs(args, SPEC);
    if (values.help) {
      printOut(USAGE);
      return 0;
    }
    if (values.version) {
      printOut(`cmappserver ${SOFTWARE_VERSION} (protocol ${formatVersion(PROTOCOL_VERSION)})\n`);
      return 0;
    }
    if (rest.length > 0) throw new UsageError(`unexpected argument ${rest[0]}`);
    const configPath = typeof values.config === "string" ? values.config : DEFAULT_CONFIG;
    const file = await readConfig(configPath, SPEC, values.config === undefined);
    const s = mergeSettings(file, values);
    const level = s.choice("loglevel", "info", ["error", "warn", "info", "debug"] as const);
    cfg = {
      keydir: s.string("keydir", DEFAULT_KEYDIR),
      bind: s.string("bind", "0.0.0.0"),
      port: s.int("port", DEFAULT_PORT, 0, 65535),
      statedir: s.string("statedir", DEFAULT_STATE_DIR),
      maxProcesses: s.int("max_processes", DEFAULT_MAX_PROCESSES, 1, 100_000),
      maxConnections: s.int("max_connections", DEFAULT_MAX_CONNECTIONS, 1, 1_000_000),
      handshakeMs: s.seconds("handshake_timeout", 10, 0.1, 3600),
      idleMs: s.seconds("idle_timeout", 120, 1, 86400),
      maxFrame: s.int("max_frame", 1024 * 1024, 1024, 64 * 1024 * 1024),
      maxArgvBytes: s.int("max_argv_bytes", 256 * 1024, 16, 64 * 1024 * 1024),
      maxEnvBytes: s.int("max_env_bytes", 256 * 1024, 16, 64 * 1024 * 1024),
      keepFinished: s.int("keep_finished", 1000, 1, 1_000_000),
      keepFinishedMs: s.seconds("keep_finished_for", 604800, 1, 10 * 365 * 86400),
      stopTimeoutMs: s.seconds("stop_timeout", 10, 0, 86400),
      stdinGraceMs: s.seconds("stdin_grace", 30, 0, 86400),
      stopOnExit: s.bool("stop_on_exit", false),
      allowExec: s.checkedList("allow_exec", (g) => {
        if (!g.startsWith("/")) {
          throw new UsageError(`allow_exec ${g} must be an absolute path or glob`);
        }
      }),
      allowUsers: s.list("allow_user"),
      allowGroups: s.list("allow_group"),
      obsoleteSupervisor: s.has("supervisor"),
      level: level as LogLevel,
      logfile: s.string("logfile", ""),
      syslog: s.bool("syslog", false),
      readyFile: s.string("readyfile", ""),
      check: values.check === true,
    };
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    printErr(`cmappserver: ${e.message} (cmappserver -help lists the options)\n`);
    return 2;
  }
  // -check writes no log: what it finds goes to stderr (or stdout), nothing else is touched.
  const fileSink = cfg.logfile && !cfg.check ? new FileSink(cfg.logfile) : null;
  const err = stderrLogSink();
  // Under journald (no logfile), stderr is the system log: syslog would be a second copy.
  const syslogTwice = cfg.syslog && !fileSink && err !== stderrSink;
  const syslogSink = cfg.syslog && !syslogTwice && !cfg.check ? new SyslogSink(PROGRAM) : null;
  const sinks: LogSink[] = [fileSink ?? err, ...(syslogSink ? [syslogSink] : [])];
  const logger = createLogger({ program: PROGRAM, level: cfg.level, sinks });
  if (syslogTwice) logger.info("syslog = yes: not used, stderr is the journal already");
  const closeSinks = async () => {
    await syslogSink?.close();
    await fileSink?.close();
  };
  let identity: Identity, trust: TrustStore;
  try {
    identity = await loadIdentity(cfg.keydir, PROGRAM);
    trust = await loadTrust(cfg.keydir, "manager");
  } catch (e) {
    if (!(e instanceof KeyDirError)) throw e;
    logger.error(e.message);
    await closeSinks();
    return 2;
  }
  if (cfg.check) {
    printOut(
      `cmappserver: configuration OK: would listen on ${cfg.bind}:${cfg.port}, state in ` +
        `${cfg.statedir}, certificate ${identity.info.fingerprint}, ` +
        `${trust.byFingerprint.size} trusted manager(s) in ${trust.dir}\n`,
    );
    await closeSinks();
    return 0;
  }
  // Signals are listened for before anything else holds descriptors: the runtime cannot add
  // a listener once the process is out of them, and a SIGTERM during a long start-up must
  // still close cleanly.
  let server: CmappServer | null = null;
  const keydir = cfg.keydir;
  Deno.addSignalListener("SIGHUP", () => {
    fileSink?.reopen();
    loadTrust(keydir, "manager").then(
      (t) => {
        server?.setTrust(t);
        logger.info(`SIGHUP: reloaded ${t.byFingerprint.size} trusted manager(s) from ${t.dir}`);
      },
      (e) => logger.error(`SIGHUP: kept the previous trusted managers: ${(e as Error).message}`),
    );
  });
  const signalled = new Promise<string>((resolve) => {
    for (const s of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(s, () => resolve(s));
  });
  // Read once: the applications never see it (their environment is built, not inherited).
  const readiness = new Readiness({
    notifySocket: Deno.env.get("NOTIFY_SOCKET") ?? "",
    socketDir: cfg.statedir,
    readyFile: cfg.readyFile,
    logger,
  });
  // (A stale ready file is not removed here: before the state directory's lock is ours, it may
  // be a running daemon's. The init script removes it before starting; ready() replaces it.)
  try {
    server = await startServer({
      identity,
      trust,
      stateDir: cfg.statedir,
      hostname: cfg.bind,
      port: cfg.port,
      maxProcesses: cfg.maxProcesses,
      maxConnections: cfg.maxConnections,
      handshakeTimeoutMs: cfg.handshakeMs,
      idleTimeoutMs: cfg.idleMs,
      maxFrameSize: cfg.maxFrame,
      keepFinished: cfg.keepFinished,
      keepFinishedMs: cfg.keepFinishedMs,
      stopTimeoutMs: cfg.stopTimeoutMs,
      stdinGraceMs: cfg.stdinGraceMs,
      policy: {
        allowExec: cfg.allowExec,
        allowUsers: cfg.allowUsers,
        allowGroups: cfg.allowGroups,
        maxArgvBytes: cfg.maxArgvBytes,
        maxEnvBytes: cfg.maxEnvBytes,
      },
      logger,
    });
  } catch (e) {
    logger.error(`cannot start serving on ${cfg.bind}:${cfg.port}: ${(e as Error).message}`);
    await closeSinks();
    return 1;
  }
  logger.info(`certificate ${identity.info.fingerprint}`);
  try {
    await readiness.ready(
      `listening on ${server.hostname}:${server.port}, ${server.runs.running} run(s)`,
    );
  } catch (e) {
    logger.error((e as Error).message);
    await server.close();
    await closeSinks();
    return 1;
  }
  if (cfg.obsoleteSupervisor) {
    logger.warn(`option supervisor is obsolete and ignored: the supervisor is built in`);
  }
  const sig = await signalled;
  await readiness.stopping();
  if (cfg.stopOnExit) {
    logger.info(`${sig}: stopping ${server.runs.running} monitored process(es), then exiting`);
  } else {
    logger.info(`${sig}: closing; ${server.runs.running} monitored process(es) keep running`);
  }
  await server.close({ stopRuns: cfg.stopOnExit });
  await closeSinks();
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
