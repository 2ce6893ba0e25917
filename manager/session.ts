/**
 * Running one command on a guest to its end: connect (retrying while the
 * guest is unreachable), launch, follow with periodic status polls, and
 * reconnect and re-attach when the connection breaks, until the guest has
 * been silent for longer than the server timeout.
 *
 * @module
 */

import { DEFAULT_PORT, type ExitStatus } from "../protocol/mod.ts";
import { type Logger, silentLogger } from "../log/logger.ts";
import {
  Client,
  connect,
  type ConnectOptions,
  type Launched,
  LaunchError,
  type LaunchOptions,
} from "./client.ts";
import { ManagerError } from "./errors.ts";
import { OutputOffsets } from "./output_offsets.ts";
import { StdinForwarder } from "./stdin_forwarder.ts";

/** Options for {@linkcode runCommand}. */
export interface RunCommandOptions extends Omit<ConnectOptions, "timeoutMs"> {
  /** Program and arguments to run on the guest. */
  argv: string[];
  /** Name, environment, working directory, user, stop grace of the run. */
  launch?: LaunchOptions;
  /**
   * How long the guest may stay unreachable or silent, in ms: the first
   * connection must succeed within it, and a guest that has not answered
   * for this long is declared lost.
   */
  serverTimeoutMs: number;
  /** Interval between status polls, in ms. */
  pollIntervalMs: number;
  /** Where state changes are logged. */
  logger?: Logger;
  /** Told once the process has started (or been attached to). */
  onLaunched?(run: string, pid: number, attached: boolean): void;
  /**
   * Settles when the user wants out: "stop" asks the guest to stop the run
   * (SIGTERM, then SIGKILL after `stopTimeoutMs`) and keeps following it to
   * its end; "detach" leaves it running and returns at once.
   */
  interrupt?: Promise<"stop" | "detach">;
  /** Grace between SIGTERM and SIGKILL for a stop, in ms; the run's own when absent. */
  stopTimeoutMs?: number;
  /** Where the application's output goes, and where its input comes from (protocol 1.2). */
  io?: RunIO;
  /**
   * Reads this host's key and trusted certificates again; called before each
   * attempt to re-attach, so that a key rotated on either side while a run is
   * followed (docs/install.md, "Rotating keys") does not end the follower.
   * When it fails, the key and certificates in use are kept.
   */
  reloadKeys?: () => Promise<Pick<ConnectOptions, "identity" | "trust">>;
}

/** The host side of a run's standard streams. */
export interface RunIO {
  /** Writes bytes of the application's stdout; rejects when the host side is closed. */
  stdout(bytes: Uint8Array): Promise<void>;
  /** Writes bytes of its stderr; rejects when the host side is closed. */
  stderr(bytes: Uint8Array): Promise<void>;
  /** Input to forward to the application's stdin (its end is passed on). */
  stdin?: ReadableStream<Uint8Array>;
}

/** Output credit granted to the server per stream, in bytes. */
const _OUTPUT_WINDOW = 1024 * 1024;

/** What a session keeps of a run's streams across its connections. */
interface _Streams {
  io: RunIO;
  /** Outputs closed on our side. */
  closed: Set<string>;
  offsets: OutputOffsets;
  stdin: StdinForwarder | null;
}

/**
 * Hooks a client up to receive a run's output into `io`, and its stream
 * events. Call before the request that makes the connection the receiver
 * (or right after a launch); then {@linkcode _grantOutput}.
 */
function _receiveOutput(client: Client, run: string, s: _Streams): void {
  const { io, closed, offsets } = s;
  client.onStreamEvents(run, {
    resume: (stream, offset) => {
      if (stream === "stdin") s.stdin?.resume(offset);
      else offsets.resume(stream, offset);
    },
    stdinTaken: (n) => s.stdin?.taken(n),
    stdinClosed: () => s.stdin?.closed(),
  });
  client.onOutput(run, async (stream, raw) => {
    if (raw.length === 0 || closed.has(stream)) return;
    const bytes = offsets.take(stream, raw);
    if (bytes.length === 0) return;
    try {
      await io[stream](bytes);
    } catch {
      // Our side of the pipe is closed (e.g. "| head -1"): close theirs, as a shell would.
      closed.add(stream);
      client.closeStream(run, stream);
    }
  });
}

/** Gives the server credit for a run's output, once this connection receives it. */
function _grantOutput(client: Client, run: string): void {
  client.grant(run, "stdout", _OUTPUT_WINDOW);
  client.grant(run, "stderr", _OUTPUT_WINDOW);
}

/** How a command ended, or that we detached from it. */
export interface RunOutcome {
  /** The run's id on the guest. */
  run: string;
  /** Its name on the guest (null from a 1.0 guest). */
  name: string | null;
  /** True when an existing run was attached to instead of starting one. */
  attached: boolean;
  /** Its pid on the guest. */
  pid: number;
  /** How it ended; null when we detached and it runs on. */
  exit: ExitStatus | null;
  /**
   * Bytes of its streams that were lost on the way (counted from where the
   * guest says each stream resumed; zero unless the guest or the
   * connection failed while bytes were in flight, or output came while
   * nobody could take it).
   */
  lost?: { stdout: number; stderr: number; stdin: number };
}

const _RETRYABLE = new Set(["unreachable", "lost"]);
/** While it retries a connection, cmappmgr says so this often. */
const _PROGRESS_EVERY_MS = 5000;
// While re-attaching, a refusal may be a server restarting with a trust
// store being rewritten: keep trying until the deadline, then report it.
// Nor is an unknown certificate fatal then: the guest may have restarted on a rotated key whose
// certificate this host is being given (see RunCommandOptions.reloadKeys).
const _RETRYABLE_REATTACH = new Set(["unreachable", "lost", "rejected", "server_untrusted"]);

function _sleep(ms: number): { promise: Promise<"timer">; cancel(): void } {
  let id: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<"timer">((r) => id = setTimeout(() => r("timer"), ms));
  return { promise, cancel: () => clearTimeout(id) };
}

/**
 * Connects, retrying with backoff while the guest is unreachable, until
 * `deadline` (ms since the epoch). Authentication and version failures are
 * not retried.
 */
async function _connectUntil(
  options: Omit<ConnectOptions, "timeoutMs"> & Pick<RunCommandOptions, "reloadKeys">,
  deadline: number,
  logger: Logger,
  retryable: ReadonlySet<string> = _RETRYABLE,
): Promise<Client> {
  let backoff = 100;
  let last: ManagerError | null = null;
  const started = Date.now();
  let said = started;
  for (;;) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw last ??
        new ManagerError("unreachable", `cannot reach cmappserver at ${options.host}`);
    }
    if (options.reloadKeys) options = await _reloaded(options, logger);
    try {
      return await connect({ ...options, timeoutMs: Math.min(remaining, 10_000) });
    } catch (e) {
      if (!(e instanceof ManagerError) || !retryable.has(e.kind)) throw e;
      const now = Date.now();
      if (!last || last.message !== e.message) {
        logger.warn(`${e.message}; retrying`);
        said = now;
      } else if (now - said >= _PROGRESS_EVERY_MS && deadline > now) {
        // Not one warning and then silence until the deadline: what it waits for, and how long.
        logger.warn(
          `still cannot reach cmappserver at ${options.host}:${options.port ?? DEFAULT_PORT} ` +
            `after ${Math.round((now - started) / 1000)} s (${e.message}); trying for ` +
            `${Math.ceil((deadline - now) / 1000)} s more`,
        );
        said = now;
      }
      last = e;
    }
    const pause = _sleep(Math.min(backoff, Math.max(0, deadline - Date.now())));
    await pause.promise;
    backoff = Math.min(backoff * 2, 2000);
  }
}

/** `options` with the keys read again, or as they were (with a warning) if that fails. */
async function _reloaded<T extends Pick<ConnectOptions, "identity" | "trust">>(
  options: T & Pick<RunCommandOptions, "reloadKeys">,
  logger: Logger,
): Promise<T> {
  try {
    return { ...options, ...await options.reloadKeys!() };
  } catch (e) {
    logger.warn(`cannot read the keys again, using those loaded before: ${(e as Error).message}`);
    return options;
  }
}

/**
 * Connects, retrying while the guest is unreachable (refused, no route, cut),
 * for at most `withinMs`: a short restart of cmappserver is not a failure.
 * Authentication and version failures are not retried.
 *
 * @throws {ManagerError} the last failure, once `withinMs` has passed
 * @example
 * ```ts ignore
 * import { connectWithin } from "./session.ts";
 * const client = await connectWithin({ host: "guest1", identity, trust }, 30_000);
 * ```
 */
export function connectWithin(
  options: Omit<ConnectOptions, "timeoutMs">,
  withinMs: number,
  logger: Logger = silentLogger,
): Promise<Client> {
  return _connectUntil(options, Date.now() + withinMs, logger);
}

/**
 * Runs `argv` on the guest and resolves with how it ended.
 *
 * @throws {ManagerError} when the guest cannot be reached, authenticated,
 *   understood, or is lost for longer than `serverTimeoutMs`
 * @throws {LaunchError} when the guest refuses to start the command
 * @example
 * ```ts ignore
 * import { runCommand } from "./session.ts";
 * const { exit } = await runCommand({ host: "guest1", identity, trust,
 *   argv: ["/opt/app/bin/server"], serverTimeoutMs: 30_000, pollIntervalMs: 1000 });
 * ```
 */
export async function runCommand(options: RunCommandOptions): Promise<RunOutcome> {
  const logger = options.logger ?? silentLogger;
  const where = `${options.host}:${options.port ?? 5315}`;
  // Launch, retrying on a fresh connection when one breaks or falls silent
  // before the answer: the run has a name, so a repeated launch attaches to
  // the run a lost answer may have started instead of starting another.
  let io = options.io;
  const launchOptions = () =>
    io ? { ...options.launch, streams: true, stdin: !!io.stdin } : options.launch;
  let deadline = Date.now() + options.serverTimeoutMs;
  let client: Client;
  let launched: Launched;
  let attempts = 0;
  for (;;) {
    client = await _connectUntil(
      options,
      deadline,
      logger,
      attempts ? _RETRYABLE_REATTACH : _RETRYABLE,
    );
    attempts++;
    const silence = _sleep(Math.max(1, client.lastHeard + options.serverTimeoutMs - Date.now()));
    try {
      if (io && !client.features.streams) {
        // An older guest: same major version, so run anyway, without streams.
        if (io.stdin) {
          client.close();
          throw new ManagerError(
            "version",
            `${client.serverAgent} speaks protocol 1.${client.version.minor}, which cannot ` +
              `forward stdin (-stdin): upgrade cmappserver`,
          );
        }
        logger.warn(
          `${client.serverAgent} speaks protocol 1.${client.version.minor}: the command's ` +
            `output stays on the guest (/dev/null)`,
        );
        io = undefined;
      }
      const answer = await Promise.race([
        client.launch(options.argv, launchOptions()),
        silence.promise.then(() => null),
      ]);
      if (answer) {
        launched = answer;
        break;
      }
    } catch (e) {
      if (!(e instanceof ManagerError && _RETRYABLE.has(e.kind))) {
        client.close();
        throw e;
      }
    } finally {
      silence.cancel();
    }
    client.destroy();
    deadline = client.lastHeard + options.serverTimeoutMs;
    if (Date.now() >= deadline) {
      throw new ManagerError(
        "lost",
        `cmappserver at ${where} did not answer the launch request for ${
          options.serverTimeoutMs / 1000
        } s; the command may have started on the guest`,
      );
    }
    logger.warn(`lost contact with cmappserver at ${where} during the launch; trying again`);
  }
  const { run, pid } = launched;
  // After a retry, "attached" may well mean attached to the run our lost attempt started.
  const ours = !launched.attached || attempts > 1;
  if (launched.attached) {
    logger.info(
      `attached to run ${run} (${launched.name}) pid ${pid} on ${where}, already there; ` +
        `not starting a second copy`,
    );
  } else {
    logger.info(`started run ${run} pid ${pid} on ${where}: ${JSON.stringify(options.argv)}`);
  }
  options.onLaunched?.(run, pid, launched.attached);
  const streams: _Streams | null = io
    ? {
      io,
      closed: new Set(),
      offsets: new OutputOffsets(logger, !ours),
      // Attached to a run another manager started, with input: ours takes its stdin over.
      stdin: io.stdin ? new StdinForwarder(io.stdin, run, logger, !ours) : null,
    }
    : null;
  if (streams) {
    _receiveOutput(client, run, streams);
    _grantOutput(client, run);
    streams.stdin?.attach(client);
    void streams.stdin?.run();
  }
  const outcome = (exit: ExitStatus | null): RunOutcome => {
    streams?.stdin?.stop();
    const { name, attached } = launched;
    if (!streams) return { run, name, attached, pid, exit };
    const { stdout, stderr } = streams.offsets.lost;
    const lost = { stdout, stderr, stdin: streams.stdin?.lost ?? 0 };
    return { run, name, attached, pid, exit, lost };
  };
  let lastAnswer = client.lastHeard;
  // An unanswered poll older than this makes us drop the connection and dial again.
  const stallMs = Math.min(
    Math.max(3 * options.pollIntervalMs, 3000),
    Math.max(options.serverTimeoutMs / 2, options.pollIntervalMs),
  );
  const control = { stopWanted: false, stopSent: false, detach: false };
  options.interrupt?.then((what) => {
    if (what === "detach") control.detach = true;
    else control.stopWanted = true;
  });
  try {
    for (;;) {
      const r = await _follow(client, run, options, stallMs, control, () => {
        lastAnswer = Math.max(lastAnswer, client.lastHeard);
        return lastAnswer + options.serverTimeoutMs;
      });
      if (r.kind === "exit") return await _released(client, outcome(r.exit));
      if (r.kind === "detach") {
        logger.info(`detached from run ${run} pid ${pid} on ${where}; it keeps running`);
        return outcome(null);
      }
      if (r.kind === "lost") {
        throw new ManagerError("run_lost", `cmappserver at ${where}: ${r.message}`);
      }
      lastAnswer = Math.max(lastAnswer, client.lastHeard);
      const deadline = lastAnswer + options.serverTimeoutMs;
      if (Date.now() >= deadline) break;
      client.destroy();
      logger.warn(
        `lost contact with cmappserver at ${where}; reconnecting to re-attach run ${run}`,
      );
      try {
        client = await _connectUntil(options, deadline, logger, _RETRYABLE_REATTACH);
      } catch (e) {
        // A guest (or a proxy in front of it) that hangs up during the
        // handshake looks like a refusal; while re-attaching it counts as lost.
        // A certificate we do not trust until the end is said as what it is (201).
        if (e instanceof ManagerError && e.kind === "server_untrusted") throw e;
        if (e instanceof ManagerError && _RETRYABLE_REATTACH.has(e.kind)) break;
        throw e;
      }
      try {
        if (streams) _receiveOutput(client, run, streams);
        // With 1.3 the credit goes with the request: a run that has ended sends what is left of
        // its output before the reply.
        const st = await client.status(run, {
          streams: !!streams,
          window: _OUTPUT_WINDOW,
          stdin: !!streams?.stdin,
        });
        if (streams) {
          if (!client.features.resume) _grantOutput(client, run);
          streams.stdin?.attach(client);
        }
        logger.info(`re-attached to run ${run} on ${where} (${st.state})`);
        if (st.exit) return await _released(client, outcome(st.exit));
      } catch (e) {
        if (e instanceof LaunchError && e.code === "unknown_run") {
          throw new ManagerError("run_lost", `cmappserver at ${where}: ${e.message}`);
        }
        if (!(e instanceof ManagerError && _RETRYABLE.has(e.kind))) throw e;
      }
    }
    const silent = ((Date.now() - lastAnswer) / 1000).toFixed(1);
    throw new ManagerError(
      "lost",
      `cmappserver at ${where} lost: no answer for ${silent} s (timeout ${
        options.serverTimeoutMs / 1000
      } s); run ${run} may still be running on the guest`,
    );
  } finally {
    streams?.stdin?.stop();
    client.close();
  }
}

type _FollowResult =
  | { kind: "exit"; exit: ExitStatus }
  | { kind: "broken" }
  | { kind: "detach" }
  | { kind: "lost"; message: string };

/**
 * Follows a run on one connection: polls its status, sends a stop when one
 * is wanted, and returns on its exit, a detach, a lost run, or when the
 * connection broke, stalled or the deadline passed ("broken").
 */
async function _follow(
  client: Client,
  run: string,
  options: RunCommandOptions,
  stallMs: number,
  control: { stopWanted: boolean; stopSent: boolean; detach: boolean },
  deadline: () => number,
): Promise<_FollowResult> {
  let result: _FollowResult | null = null;
  const exited = client.wait(run).then((exit) => {
    result ??= { kind: "exit", exit };
  });
  const closed = client.closed;
  const never = new Promise<never>(() => {});
  let pollSentAt: number | null = null;
  for (;;) {
    if (result) return result;
    if (control.detach) return { kind: "detach" };
    if (control.stopWanted && !control.stopSent && !client.features.names) {
      control.stopSent = true;
      options.logger?.warn(
        `${client.serverAgent} (protocol 1.0) cannot stop runs; following run ${run} to its end`,
      );
    }
    if (control.stopWanted && !control.stopSent) {
      control.stopSent = true;
      client.stop(run, options.stopTimeoutMs).catch((e) => {
        // Not sent, or the connection broke: try again on the next connection.
        if (!(e instanceof LaunchError)) control.stopSent = false;
      });
    }
    const now = Date.now();
    if (now >= deadline()) return { kind: "broken" };
    if (pollSentAt !== null && now - pollSentAt >= stallMs) return { kind: "broken" };
    if (pollSentAt === null) {
      pollSentAt = now;
      client.status(run).then(
        () => pollSentAt = null,
        (e) => {
          if (e instanceof LaunchError && e.code === "unknown_run") {
            result ??= { kind: "lost", message: e.message };
          }
        },
      );
    }
    const tick = _sleep(Math.max(1, Math.min(options.pollIntervalMs, deadline() - now)));
    // Once acted upon, a settled interrupt must not be raced again (it would spin).
    const pendingInterrupt = control.stopWanted || control.detach
      ? never
      : options.interrupt ?? never;
    await Promise.race([exited, closed, pendingInterrupt, tick.promise]);
    tick.cancel();
    if (result) return result;
    if (client.isClosed) return { kind: "broken" };
  }
}

/**
 * Tells the server we have the exit status (protocol 1.1), so that the next
 * launch under the run's name starts afresh. Best effort: if this fails, the
 * server keeps the status and hands it to the next manager instead.
 */
async function _released(client: Client, outcome: RunOutcome): Promise<RunOutcome> {
  if (!client.features.release) return outcome;
  // A guest that stops answering now must not hold the exit status back.
  const pause = _sleep(2000);
  await Promise.race([client.release(outcome.run).catch(() => {}), pause.promise]);
  pause.cancel();
  return outcome;
}
