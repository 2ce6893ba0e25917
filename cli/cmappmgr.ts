/**
 * cmappmgr: the host-side command line. Runs one command on a guest's
 * cmappserver, follows it, and exits with its exit status; or lists the
 * guest's runs, or pings it. Arguments, the configuration file, key loading,
 * logging destinations, signals and exit statuses; the behaviour is manager/.
 *
 * @module
 */

import { createLogger, type Logger, type LogLevel } from "../log/logger.ts";
import {
  FileSink,
  journalSink,
  type LogSink,
  stderrIsJournal,
  stderrSink,
  SyslogSink,
} from "../log/sinks.ts";
import {
  describeExit,
  formatArgv,
  formatVersion,
  PROTOCOL_VERSION,
  type RunInfo,
  shellExitCode,
  signalNumber,
  SOFTWARE_VERSION,
} from "../protocol/mod.ts";
import type { Identity, TrustStore } from "../tls/mod.ts";
import { type OptionSpec, parseArgs, UsageError } from "./_args.ts";
import { ShellWordsError, splitShellWords } from "./_shell_words.ts";
import { mergeSettings, readConfig } from "./_config.ts";
import { printErr, printOut } from "./_io.ts";
import { EXIT_FOR_KIND, MGR_EXIT, STATUS_EXIT } from "./exit_codes.ts";

// manager/ and tls/ load node:tls (~45 ms of start-up): they are imported
// only once a command needs them, so -help, -version and usage errors skip
// them. The specifiers are literal, so `deno compile` still bundles them.
type _Manager = typeof import("../manager/mod.ts");
type _Tls = typeof import("../tls/mod.ts");
type _Client = import("../manager/mod.ts").Client;
let _mgr: _Manager;
let _tls: _Tls;

async function _loadNet(): Promise<void> {
  [_mgr, _tls] = await Promise.all([import("../manager/mod.ts"), import("../tls/mod.ts")]);
}

const PROGRAM = "cmappmgr";
const DEFAULT_KEYDIR = "/etc/cmappmgr";
const DEFAULT_CONFIG = "/etc/cmappmgr.conf";

const SPEC: Record<string, OptionSpec> = {
  config: { type: "string" },
  node: { type: "string" },
  port: { type: "string" },
  keydir: { type: "string" },
  service_name: { type: "string" },
  command: { type: "string", raw: true },
  attach: { type: "boolean" },
  cmappserver_timeout: { type: "string" },
  poll_interval: { type: "string" },
  stop_timeout: { type: "string" },
  detach_on_exit: { type: "boolean" },
  stdin: { type: "boolean" },
  env: { type: "string", multiple: true },
  cwd: { type: "string" },
  user: { type: "string" },
  group: { type: "string" },
  hostlogfile: { type: "string" },
  loglevel: { type: "string" },
  syslog: { type: "string" },
  statusfile: { type: "string" },
  list: { type: "boolean" },
  json: { type: "boolean" },
  ping: { type: "boolean" },
  status: { type: "string" },
  stop: { type: "string" },
  check: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
};

/** The -help text (also the man page's synopsis, tools/_packaging.ts). */
export const USAGE = `usage: cmappmgr -node HOST [options] [--] COMMAND [ARG]...
       cmappmgr -node HOST -list [-json] [NAME-PATTERN]...
       cmappmgr -node HOST -ping [-json]
       cmappmgr -node HOST -status NAME [-json] | -stop NAME
       cmappmgr -node HOST -check [[--] COMMAND [ARG]...]
       cmappmgr keygen [-keydir DIR] [-name NAME]... [-no_hostname] [-days N]
                       [-algorithm ed25519|p256] [-force]
       cmappmgr fingerprint FILE...   (each PEM certificate's SHA-256 fingerprint)

Asks the cmappserver on HOST to run COMMAND (directly, no shell), follows it,
and exits with its exit status. Options may also be set in the configuration
file as "name = value"; the command line wins. docs/cmappmgr.md describes each.

Options (-opt VALUE, --opt VALUE and --opt=VALUE are the same; options end at
the first argument that is not one, or at --):
  -node HOST                 the guest running cmappserver (required)
  -port N                    its TCP port (default 5315)
  -config FILE               configuration file (default ${DEFAULT_CONFIG}, if present)
  -keydir DIR                key directory: key.pem, cert.pem and trusted/*.pem,
                             the guests we trust (default ${DEFAULT_KEYDIR})
  -service_name NAME         the run's name on the guest: a launch under a name
                             that is still running the same command (user, cwd,
                             environment) attaches to it instead of starting a
                             second copy; another command is refused, exit 209
                             (default: derived from COMMAND)
  -attach                    attach to whatever runs under the name, even another
                             command (COMMAND is started only if nothing does)
  -cmappserver_timeout SECS  how long the guest may stay unreachable or silent
                             before cmappmgr gives up (default 30)
  -poll_interval SECS        status poll interval (default 1)
  -stop_timeout SECS         on SIGTERM/SIGINT: grace between the application's
                             SIGTERM and SIGKILL (default: the guest's, 10)
  -detach_on_exit            on SIGTERM/SIGINT: leave the application running
  -stdin                     forward cmappmgr's stdin to the command, then its
                             end (without it the command reads /dev/null); the
                             command's stdout and stderr always arrive on
                             cmappmgr's, byte for byte, with flow control
  -env NAME=VALUE            environment of the command (repeatable; PATH
                             defaults to the guest's standard one)
  -cwd DIR                   its working directory (default /)
  -user USER, -group GROUP   run it as USER (the guest's allow_user decides)
  -hostlogfile FILE          log state changes and errors to FILE (reopened on SIGHUP)
  -loglevel LEVEL            error, warn, info (default) or debug, for the log file
                             and syslog; stderr gets warnings and errors
  -syslog yes|no             also log to syslog, tag cmappmgr (default yes, when
                             the host has it)
  -statusfile FILE           when a run ends, write "STATUS REASON" there (the exit
                             status cmappmgr exits with, and why), for agents
  -list                      list the guest's runs, those whose name matches a
                             NAME-PATTERN (* and ? as in the shell) if given
                             (with -json: as JSON)
  -ping                      check that the guest is reachable and trusts us
  -status NAME               how the latest run of NAME stands (with -json: as
                             JSON); exit 0 running, 1 ended with a failure (a
                             non-zero code, a signal, lost), 3 ended with 0 or
                             no run of that name
  -stop NAME                 stop the run of NAME (SIGTERM, SIGKILL after
                             -stop_timeout) and wait for its end; exit 0 once
                             nothing of that name runs
  -check                     check the options, the configuration file and the
                             key directory, without connecting; exit 0 if good
  -json                      JSON: -list, -status and -ping print JSON; a run
                             ends with a JSON summary as the last line of stderr;
                             cmappmgr's own failures come as {"error": {...}}
  -help                      this text
  -version                   the version

Signals: SIGTERM or SIGINT: ask the guest to stop the application (SIGTERM to its
process group, SIGKILL after -stop_timeout), wait for it, exit with its status;
with -detach_on_exit leave it running and exit 0. A second signal exits at once.
SIGHUP: reopen the log file.

Exit status:
  N        the command exited with N
  128+N    the command was killed by signal N
  126      the command could not be executed on the guest
  127      the command was not found on the guest
  0        -list, -ping, -stop or -check succeeded; or detached on SIGTERM/SIGINT;
           -status: running (1: ended with a failure, 3: not running)
  2        bad command line or configuration file
  200      cannot connect to cmappserver within -cmappserver_timeout
  201      cmappserver's certificate is not trusted (not pinned, expired, wrong name)
  202      cmappserver refused our certificate
  203      protocol error
  204      incompatible protocol version
  205      cmappserver lost: no answer for -cmappserver_timeout while monitoring
  206      cmappserver refused to start the command (process limit, policy)
  207      the run is lost: its exit status cannot be known
  208      local key directory missing or invalid
  209      a run of that name runs another command (user, cwd, environment), or
           ended so and its exit status is uncollected: -stop it, or -attach
`;

interface _Config {
  node: string;
  port: number;
  keydir: string;
  serviceName: string;
  /** -attach: follow whatever runs under the name. */
  attach: boolean;
  timeoutMs: number;
  pollMs: number;
  stopTimeoutMs: number | undefined;
  detach: boolean;
  stdin: boolean;
  env: Record<string, string> | undefined;
  cwd: string | undefined;
  user: string | undefined;
  group: string | undefined;
  hostlogfile: string;
  level: LogLevel;
  syslog: boolean;
  /** -syslog was given: a host without syslog is then worth a warning. */
  syslogAsked: boolean;
  /** Where the run's exit status and its reason are written when it ends. */
  statusfile: string;
  verb: "run" | "list" | "ping" | "status" | "stop" | "check";
  /** The run name of -status and -stop. */
  target: string;
  /** -list's NAME patterns (`*` and `?` as in the shell); none: every run. */
  patterns: RegExp[];
  json: boolean;
  argv: string[];
}

async function _parse(args: string[]): Promise<_Config | number> {
  const { values, rest } = parseArgs(args, SPEC);
  if (values.help) {
    printOut(USAGE);
    return 0;
  }
  if (values.version) {
    printOut(`cmappmgr ${SOFTWARE_VERSION} (protocol ${formatVersion(PROTOCOL_VERSION)})\n`);
    return 0;
  }
  const configPath = typeof values.config === "string" ? values.config : DEFAULT_CONFIG;
  const file = await readConfig(configPath, SPEC, values.config === undefined);
  for (const k of ["list", "json", "ping", "status", "stop", "check"]) {
    if (file && k in file.values) {
      throw new UsageError(`${file.sources[k]}: ${k} belongs on the command line`);
    }
  }
  const s = mergeSettings(file, values);
  const node = s.string("node", "");
  if (!node) throw new UsageError("-node HOST is required");
  const verbs = (["list", "ping", "status", "stop", "check"] as const).filter((v) =>
    values[v] !== undefined && values[v] !== false
  );
  if (verbs.length > 1) {
    throw new UsageError(`-${verbs[0]} and -${verbs[1]} exclude each other`);
  }
  const verb: _Config["verb"] = verbs.length > 0 ? verbs[0] : "run";
  if (values.command !== undefined) {
    throw new UsageError(
      "-command: the command goes after the options (or after --), or in the configuration " +
        "file as command = …",
    );
  }
  // The command line's command wins over the file's `command =` (POSIX shell quoting).
  let argv = rest;
  if (
    argv.length === 0 && file && "command" in file.values && (verb === "run" || verb === "check")
  ) {
    try {
      argv = splitShellWords(String(file.values.command));
    } catch (e) {
      if (!(e instanceof ShellWordsError)) throw e;
      throw new UsageError(`${file.sources.command}: command: ${e.message}`);
    }
    if (argv.length === 0) throw new UsageError(`${file.sources.command}: command is empty`);
  }
  if (verb === "run" && argv.length === 0) {
    throw new UsageError(
      "no command given (after the options, or command = in the configuration file)",
    );
  }
  if (verb !== "run" && verb !== "check" && verb !== "list" && rest.length > 0) {
    throw new UsageError(`-${verb} takes no command (got ${rest[0]})`);
  }
  const target = verb === "status" || verb === "stop" ? _runName(String(values[verb]), verb) : "";
  const level = s.choice("loglevel", "info", ["error", "warn", "info", "debug"] as const);
  let env: Record<string, string> | undefined;
  for (const e of s.list("env")) {
    const i = e.indexOf("=");
    if (i <= 0) throw new UsageError(`-env takes NAME=VALUE, not ${e}`);
    (env ??= {})[e.slice(0, i)] = e.slice(i + 1);
  }
  const optional = (name: string) => s.has(name) ? s.string(name, "") : undefined;
  const given = s.string("service_name", "");
  const serviceName = given ? _runName(given, "service_name") : "";
  return {
    node,
    port: s.int("port", 5315, 1, 65535),
    keydir: s.string("keydir", DEFAULT_KEYDIR),
    serviceName,
    attach: s.bool("attach", false),
    timeoutMs: s.seconds("cmappserver_timeout", 30, 0.1, 86400),
    pollMs: s.seconds("poll_interval", 1, 0.01, 3600),
    stopTimeoutMs: s.has("stop_timeout") ? s.seconds("stop_timeout", 10, 0, 86400) : undefined,
    detach: s.bool("detach_on_exit", false),
    stdin: values.stdin === true,
    env,
    cwd: optional("cwd"),
    user: optional("user"),
    group: optional("group"),
    hostlogfile: s.string("hostlogfile", ""),
    level,
    syslog: s.bool("syslog", true),
    syslogAsked: s.has("syslog"),
    statusfile: s.string("statusfile", ""),
    verb,
    target,
    patterns: verb === "list" ? rest.map(_namePattern) : [],
    json: values.json === true,
    argv,
  };
}

/** A run name as the guest accepts it (docs/PROTOCOL.md, section 8). */
function _runName(name: string, option: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$/.test(name)) {
    throw new UsageError(
      `${option} must be 1 to 128 characters of A-Z a-z 0-9 . _ @ : + -, starting with a ` +
        `letter or digit, not ${JSON.stringify(name)}`,
    );
  }
  return name;
}

/**
 * Writes "STATUS REASON" to -statusfile (atomically: a reader sees the old
 * file or the new one), then returns `code`. A file that cannot be written is
 * logged; the exit status stays the run's.
 */
async function _recordStatus(
  cfg: _Config,
  code: number,
  reason: string,
  logger: Logger,
): Promise<number> {
  if (!cfg.statusfile) return code;
  const tmp = `${cfg.statusfile}.${Deno.pid}.tmp`;
  try {
    await Deno.writeTextFile(tmp, `${code} ${reason.replaceAll("\n", " ")}\n`, { mode: 0o644 });
    await Deno.rename(tmp, cfg.statusfile);
  } catch (e) {
    logger.error(`cannot write -statusfile ${cfg.statusfile}: ${(e as Error).message}`);
    await Deno.remove(tmp).catch(() => {});
  }
  return code;
}

async function _writeAll(w: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let rest = bytes;
  while (rest.length > 0) rest = rest.subarray(await w.write(rest));
}

/**
 * Says why cmappmgr itself failed, in one line on stderr: `cmappmgr: MESSAGE`, or with -json
 * `{"error":{"status":N,"kind":KIND,"message":MESSAGE}}`. Returns `status`.
 */
function _say(json: boolean, status: number, kind: string, message: string): number {
  printErr(
    json ? JSON.stringify({ error: { status, kind, message } }) + "\n" : `cmappmgr: ${message}\n`,
  );
  return status;
}

function _fail(e: unknown, json: boolean): number {
  if (e instanceof _mgr.LaunchError) {
    const status = e.code === "not_found"
      ? MGR_EXIT.notFound
      : e.code === "not_executable" || e.code === "spawn_failed"
      ? MGR_EXIT.notExecutable
      : e.code === "conflict"
      ? MGR_EXIT.conflict
      : MGR_EXIT.refused;
    return _say(json, status, e.code, e.message);
  }
  if (e instanceof _mgr.ManagerError) return _say(json, EXIT_FOR_KIND[e.kind], e.kind, e.message);
  throw e;
}

/** A -list NAME pattern: `*` any characters, `?` one, the rest as it is. */
function _namePattern(glob: string): RegExp {
  if (!/^[A-Za-z0-9._@:+*?-]{1,128}$/.test(glob)) {
    throw new UsageError(
      `-list takes run NAME patterns (letters, digits, . _ @ : + - and the wildcards * ?), ` +
        `not ${glob}`,
    );
  }
  const re = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replaceAll("*", ".*").replaceAll("?", ".");
  return new RegExp(`^${re}$`);
}

/** Characters of the COMMAND column. */
const _COMMAND_WIDTH = 60;

function _table(runs: RunInfo[]): string {
  const rows = [["RUN", "NAME", "PID", "STATE", "STARTED", "EXIT", "MANAGER", "COMMAND"]];
  for (const r of runs) {
    const exit = r.lost
      ? "lost"
      : !r.exit
      ? "-"
      : "code" in r.exit
      ? String(r.exit.code)
      : `signal ${r.exit.signal}`;
    rows.push([
      r.run,
      r.name,
      String(r.pid),
      r.state,
      r.started_at.replace(/\.\d+Z$/, "Z"),
      exit + (r.state === "exited" && !r.delivered ? " (unclaimed)" : ""),
      r.launched_by_name ?? r.launched_by.slice(0, 23),
      formatArgv(r.argv, _COMMAND_WIDTH),
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd()).join("\n") +
    "\n";
}

async function _otherVerb(cfg: _Config, identity: Identity, trust: TrustStore): Promise<number> {
  try {
    // A short restart of cmappserver is not a failure: retried within -cmappserver_timeout.
    const client = await _mgr.connectWithin(
      { host: cfg.node, port: cfg.port, identity, trust },
      cfg.timeoutMs,
    );
    try {
      if (cfg.verb === "ping") return await _ping(cfg, client);
      if (!client.features.names) {
        throw new _mgr.ManagerError(
          "version",
          `${client.serverAgent} does not support -${cfg.verb}`,
        );
      }
      const runs = await client.list();
      if (cfg.verb === "status") return _status(cfg, runs);
      if (cfg.verb === "stop") return await _stop(cfg, client, runs);
      const shown = cfg.patterns.length === 0
        ? runs
        : runs.filter((r) => cfg.patterns.some((p) => p.test(r.name)));
      printOut(cfg.json ? JSON.stringify(shown, null, 2) + "\n" : _table(shown));
      return 0;
    } finally {
      client.close();
      await client.closed;
    }
  } catch (e) {
    return _fail(e, cfg.json);
  }
}

async function _ping(cfg: _Config, client: _Client): Promise<number> {
  const t0 = performance.now();
  await client.ping();
  const ms = Math.round((performance.now() - t0) * 100) / 100;
  if (cfg.json) {
    printOut(
      JSON.stringify({
        node: cfg.node,
        port: cfg.port,
        reachable: true,
        server: client.serverAgent,
        protocol: formatVersion(client.version),
        certificate: client.serverCertificate.fingerprint,
        round_trip_ms: ms,
      }) + "\n",
    );
    return 0;
  }
  printOut(
    `${cfg.node}:${cfg.port} is reachable and trusts us: ${client.serverAgent}, protocol ` +
      `${formatVersion(client.version)}, certificate ${client.serverCertificate.fingerprint}, ` +
      `round trip ${(performance.now() - t0).toFixed(1)} ms\n`,
  );
  return 0;
}

/** -status NAME: one line (or JSON), and an exit status a script can branch on. */
function _status(cfg: _Config, runs: RunInfo[]): number {
  const info = _mgr.latestNamed(runs, cfg.target);
  const state = _mgr.namedRunState(info);
  printOut(
    cfg.json
      ? JSON.stringify({ name: cfg.target, state, run: info ?? null }, null, 2) + "\n"
      : _mgr.describeNamed(cfg.target, info) + "\n",
  );
  return STATUS_EXIT[state];
}

/** -stop NAME: SIGTERM (SIGKILL after the grace) to the running run of NAME, then its end. */
async function _stop(cfg: _Config, client: _Client, runs: RunInfo[]): Promise<number> {
  const info = _mgr.latestNamed(runs, cfg.target);
  if (info && info.state === "exited" && !info.delivered && !info.lost) {
    // Ended with nobody to collect its status: collected now, so that the name is free again
    // (a launch of another command under it would otherwise be refused as a conflict).
    await client.release(info.run);
    printOut(`${_mgr.describeNamed(cfg.target, info)}; its uncollected exit status released\n`);
    return 0;
  }
  if (!info || info.state !== "running") {
    printOut(`${_mgr.describeNamed(cfg.target, info)}; nothing to stop\n`);
    return 0;
  }
  await client.stop(info.run, cfg.stopTimeoutMs);
  const lost = client.closed.then(() => {
    throw new _mgr.ManagerError(
      "lost",
      `lost cmappserver at ${cfg.node} while ${cfg.target} stopped`,
    );
  });
  const exit = await Promise.race([client.wait(info.run), lost]);
  const how = "code" in exit ? `exited with code ${exit.code}` : `killed by signal ${exit.signal}`;
  printOut(`${cfg.target}: stopped: ${how}, pid ${info.pid} (run ${info.run})\n`);
  return 0;
}

function _logger(
  cfg: _Config,
): { logger: Logger; quiet: Logger; reopen(): void; close(): Promise<void> } {
  const file = cfg.hostlogfile ? new FileSink(cfg.hostlogfile) : null;
  // Under journald, stderr is the system log already: every level goes there, with its priority,
  // and syslog would only be a second copy of each line.
  const journal = stderrIsJournal();
  const syslog = cfg.syslog && !journal ? new SyslogSink(PROGRAM, !cfg.syslogAsked) : null;
  syslog?.warm();
  const quietSinks: LogSink[] = [];
  if (file) quietSinks.push(file);
  if (syslog) quietSinks.push(syslog);
  const err = journal ? journalSink : stderrSink;
  const sinks = [{ sink: err, level: journal ? cfg.level : "warn" as LogLevel }, ...quietSinks];
  const prefix = cfg.serviceName ? `[${cfg.serviceName}] ` : "";
  return {
    logger: createLogger({ program: PROGRAM, level: cfg.level, sinks, prefix }),
    // For what is also printed on stderr by other means (the final error line).
    quiet: createLogger({ program: PROGRAM, level: cfg.level, sinks: quietSinks, prefix }),
    reopen: () => file?.reopen(),
    close: async () => {
      await syslog?.close();
      await file?.close();
    },
  };
}

async function main(args: string[]): Promise<number> {
  if (args[0] === "keygen") {
    const { runKeygen } = await import("./_keygen.ts");
    return await runKeygen({
      program: PROGRAM,
      defaultKeyDir: DEFAULT_KEYDIR,
      role: "manager",
      nextStep: `Copy cert.pem to each guest's cmappserver key directory, under trusted/.`,
    }, args.slice(1));
  }
  if (args[0] === "fingerprint") {
    const { runFingerprint } = await import("./_keygen.ts");
    return await runFingerprint(PROGRAM, args.slice(1));
  }
  let cfg: _Config;
  try {
    const parsed = await _parse(args);
    if (typeof parsed === "number") return parsed;
    cfg = parsed;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // (The options could not be read: -json counts wherever it was written.)
    const json = args.includes("-json") || args.includes("--json");
    return _say(json, MGR_EXIT.usage, "usage", `${e.message} (cmappmgr -help lists the options)`);
  }
  await _loadNet();
  let identity: Identity, trust: TrustStore;
  try {
    identity = await _tls.loadIdentity(cfg.keydir, PROGRAM);
    trust = await _tls.loadTrust(cfg.keydir, "server");
  } catch (e) {
    if (!(e instanceof _tls.KeyDirError)) throw e;
    return _say(cfg.json, MGR_EXIT.config, "config", e.message);
  }
  // -check: the options, the file and the keys are good; nothing is connected to.
  if (cfg.verb === "check") return 0;
  if (cfg.verb !== "run") return await _otherVerb(cfg, identity, trust);

  const log = _logger(cfg);
  const { logger } = log;
  const onHup = () => log.reopen();
  Deno.addSignalListener("SIGHUP", onHup);
  // The first SIGTERM/SIGINT stops (or detaches from) the application; a second exits at once.
  let signals = 0;
  let interrupt!: (what: "stop" | "detach") => void;
  const interrupted = new Promise<"stop" | "detach">((r) => interrupt = r);
  const onSignal = (sig: "SIGTERM" | "SIGINT") => () => {
    signals++;
    if (signals === 1) {
      logger.info(
        `${sig}: ${
          cfg.detach ? "detaching; the application keeps running" : "stopping the application"
        }`,
      );
      interrupt(cfg.detach ? "detach" : "stop");
      return;
    }
    logger.warn(`${sig} again: exiting without waiting for the application`);
    Deno.exit(128 + (signalNumber(sig) ?? 15));
  };
  const handlers = [["SIGTERM", onSignal("SIGTERM")], ["SIGINT", onSignal("SIGINT")]] as const;
  for (const [sig, h] of handlers) Deno.addSignalListener(sig, h);
  // stdout carries the bulk: chunks that arrive while a write is in flight go
  // out together. stderr stays unbatched, in order with our own messages.
  const stdout = new _mgr.BatchWriter(Deno.stdout);
  try {
    const outcome = await _mgr.runCommand({
      host: cfg.node,
      port: cfg.port,
      identity,
      trust,
      argv: cfg.argv,
      launch: {
        name: cfg.serviceName || undefined,
        env: cfg.env,
        cwd: cfg.cwd,
        user: cfg.user,
        group: cfg.group,
        attachAny: cfg.attach,
      },
      serverTimeoutMs: cfg.timeoutMs,
      pollIntervalMs: cfg.pollMs,
      // A key rotated on either side while the run is followed: read again at each re-attach.
      reloadKeys: async () => ({
        identity: await _tls.loadIdentity(cfg.keydir, PROGRAM),
        trust: await _tls.loadTrust(cfg.keydir, "server"),
      }),
      stopTimeoutMs: cfg.stopTimeoutMs,
      interrupt: interrupted,
      io: {
        stdout: (bytes) => stdout.write(bytes),
        stderr: (bytes) => _writeAll(Deno.stderr, bytes),
        stdin: cfg.stdin ? Deno.stdin.readable : undefined,
      },
      logger,
    });
    const lost = outcome.lost;
    if (lost && lost.stdout + lost.stderr + lost.stdin > 0) {
      const parts = (["stdout", "stderr", "stdin"] as const).filter((k) => lost[k] > 0)
        .map((k) => `${lost[k]} bytes of ${k}`);
      logger.warn(`the run's streams are not complete: ${parts.join(", ")} were lost on the way`);
    }
    const status = outcome.exit ? shellExitCode(outcome.exit) : 0;
    if (cfg.json) {
      // The summary, last on stderr (stdout is the application's).
      printErr(
        JSON.stringify({
          name: outcome.name,
          run: outcome.run,
          pid: outcome.pid,
          attached: outcome.attached,
          status,
          exit: outcome.exit ?? null,
          detached: !outcome.exit,
          ...(lost ? { lost } : {}),
        }) + "\n",
      );
    }
    if (!outcome.exit) {
      return await _recordStatus(cfg, 0, "detached: the application keeps running", logger);
    }
    logger.info(`run ${outcome.run} pid ${outcome.pid} ${describeExit(outcome.exit)}`);
    return await _recordStatus(cfg, status, describeExit(outcome.exit), logger);
  } catch (e) {
    if (e instanceof _mgr.LaunchError || e instanceof _mgr.ManagerError) log.quiet.error(e.message);
    const code = _fail(e, cfg.json);
    return await _recordStatus(cfg, code, (e as Error).message, logger);
  } finally {
    // Everything queued is written before we exit; a failed write means the
    // reader went away, as in a pipeline, and the stream was closed already.
    await stdout.flush().catch(() => {});
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
    Deno.removeSignalListener("SIGHUP", onHup);
    await log.close();
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
