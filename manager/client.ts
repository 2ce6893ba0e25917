/**
 * The client API: one authenticated connection to a cmappserver, with
 * request/reply matching and exit notifications.
 *
 * @module
 */

import {
  CreditError,
  decodeServerMessage,
  DEFAULT_MAX_FRAME_SIZE,
  DEFAULT_PORT,
  type ExitStatus,
  type Features,
  featuresOf,
  formatVersion,
  FrameError,
  type LaunchMessage,
  type ListMessage,
  MessageChannel,
  negotiateVersion,
  type PingMessage,
  PROTOCOL_VERSION,
  type ProtocolVersion,
  type ReleaseMessage,
  type ResumeMessage,
  type RunInfo,
  type RunStatusMessage,
  type ServerMessage,
  SOFTWARE_VERSION,
  type StatusMessage,
  type StopMessage,
  StreamChannels,
} from "../protocol/mod.ts";
import type { ClientMessage, ErrorMessage } from "../protocol/mod.ts";
import {
  type CertificateInfo,
  connectTls,
  type Identity,
  TlsConnectError,
  type TrustStore,
} from "../tls/mod.ts";
import { ManagerError, type ManagerErrorKind } from "./errors.ts";

/** Agent string sent in the manager's hello. */
export const MANAGER_AGENT = `cmappmgr ${SOFTWARE_VERSION}`;

/** Options for {@linkcode connect}. */
export interface ConnectOptions {
  /** cmappserver host name or address. */
  host: string;
  /** cmappserver port (5315 by default). */
  port?: number;
  /** Our key and certificate. */
  identity: Identity;
  /** The cmappserver certificates we accept. */
  trust: TrustStore;
  /** Time allowed for TCP, TLS and hello together; 10 s by default. */
  timeoutMs?: number;
  /** Protocol version to announce (tests use it to play an older or newer peer). */
  version?: ProtocolVersion;
}

/**
 * A launch the server refused, with the server's reason code.
 *
 * @example
 * ```ts ignore
 * import { LaunchError } from "./mod.ts";
 * try {
 *   await client.launch(["/opt/app/bin/server"], { name: "web" });
 * } catch (e) {
 *   if (e instanceof LaunchError && e.code === "conflict") {
 *     // a run named web runs another command: stop it, or launch with attachAny
 *   }
 * }
 * ```
 */
export class LaunchError extends Error {
  /** The server's error code: not_found, not_executable, spawn_failed, limit, … */
  readonly code: ErrorMessage["code"];
  /** Builds the error. */
  constructor(code: ErrorMessage["code"], message: string) {
    super(message);
    this.name = "LaunchError";
    this.code = code;
  }
}

/** Options of a launch (protocol 1.1). */
export interface LaunchOptions {
  /** The run's name; the server derives one from argv when absent. */
  name?: string;
  /** The process's whole environment (the server adds PATH if absent). */
  env?: Record<string, string>;
  /** Absolute working directory. */
  cwd?: string;
  /** User to run as (the server's allow_user decides). */
  user?: string;
  /** Group to run as, with `user`. */
  group?: string;
  /** Grace between SIGTERM and SIGKILL when the run is stopped, in ms. */
  stopTimeoutMs?: number;
  /** Protocol 1.2: receive the process's stdout and stderr (see {@linkcode Client.onOutput}). */
  streams?: boolean;
  /** Protocol 1.2: feed the process's stdin (see {@linkcode Client.sendStdin}). */
  stdin?: boolean;
  /**
   * Protocol 1.5: attach to a run of this name whatever it runs. Without it
   * the server refuses (LaunchError `conflict`) when the run of the name has
   * another argv, user, group, working directory or environment. (Servers
   * below 1.5 always attach.)
   */
  attachAny?: boolean;
}

/** A launch's outcome. */
export interface Launched {
  /** The run's id. */
  run: string;
  /** Its pid on the guest. */
  pid: number;
  /** Its name (null from a 1.0 server). */
  name: string | null;
  /** True when an existing run was attached to instead of starting one. */
  attached: boolean;
}

type Pending = {
  resolve(m: ServerMessage): void;
  reject(e: Error): void;
};

/**
 * An open session with a cmappserver.
 *
 * @example
 * ```ts ignore
 * import { connect } from "./client.ts";
 * const client = await connect({ host: "127.0.0.1", port: 5315, identity, trust });
 * const { run } = await client.launch(["/bin/sh", "-c", "exit 3"]);
 * console.log(await client.wait(run)); // { code: 3 }
 * client.close();
 * ```
 */
export class Client {
  /** The server's agent string. */
  readonly serverAgent: string;
  /** The protocol version both sides use. */
  readonly version: ProtocolVersion;
  /** What that version lets both sides do. */
  readonly features: Features;
  /** The server's certificate. */
  readonly serverCertificate: CertificateInfo;
  /** Largest frame payload the server accepts. */
  readonly serverMaxFrame: number;
  /** Time of the last message received from the server (ms since the epoch). */
  lastHeard: number;
  readonly #channel: MessageChannel<ServerMessage, ClientMessage>;
  readonly #pending = new Map<number, Pending>();
  readonly #exitWaiters = new Map<string, Set<(e: ExitStatus) => void>>();
  readonly #exits = new Map<string, ExitStatus>();
  readonly #outputs = new Map<
    string,
    (stream: "stdout" | "stderr", bytes: Uint8Array) => void | Promise<void>
  >();
  #outputChain: Promise<void> = Promise.resolve();
  /** Windows, data and ends of the runs' streams on this connection. */
  readonly #streams: StreamChannels;
  /** Runs whose first stdin credit (the grant, not an acknowledgement) has come. */
  readonly #stdinGranted = new Set<string>();
  /** Runs whose stdin the server no longer takes from us (1.4 `close_stream`). */
  readonly #stdinShut = new Set<string>();
  readonly #streamEvents = new Map<string, StreamEvents>();
  /** `resume` messages for runs nobody listens to yet (a few, kept for onStreamEvents). */
  readonly #earlyResumes = new Map<string, ResumeMessage[]>();
  readonly #closed: Promise<Error | null>;
  #closeError: Error | null | undefined = undefined;
  #serverError: ManagerError | null = null;
  #nextId = 1;

  /** @internal use {@linkcode connect} */
  constructor(
    channel: MessageChannel<ServerMessage, ClientMessage>,
    hello: {
      agent: string;
      version: ProtocolVersion;
      certificate: CertificateInfo;
      maxFrame?: number;
    },
    events: { setHandler(h: ClientEvents): void },
  ) {
    this.#channel = channel;
    this.serverAgent = hello.agent;
    this.version = hello.version;
    this.features = featuresOf(hello.version);
    this.serverCertificate = hello.certificate;
    this.serverMaxFrame = hello.maxFrame ?? DEFAULT_MAX_FRAME_SIZE;
    this.lastHeard = Date.now();
    this.#streams = new StreamChannels(channel, Math.min(64 * 1024, this.serverMaxFrame - 128));
    let onClosed!: (e: Error | null) => void;
    this.#closed = new Promise((r) => onClosed = r);
    events.setHandler({
      message: (m) => this.#receive(m),
      closed: (e) => {
        this.#closeError = e;
        const err = this.#serverError ?? new ManagerError(
          "lost",
          `connection to cmappserver closed${e ? `: ${e.message}` : ""}`,
        );
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
        this.#streams.close();
        onClosed(e);
      },
    });
  }

  /** Settles when the connection closes, with the error if it broke. */
  get closed(): Promise<Error | null> {
    return this.#closed;
  }

  /** The connection-level error the server sent before closing, if any. */
  get serverError(): ManagerError | null {
    return this.#serverError;
  }

  /** True once the connection has closed. */
  get isClosed(): boolean {
    return this.#closeError !== undefined;
  }

  /**
   * Asks the server to start `argv`, or to attach to the run of the same
   * name when it is still running or its exit status is unclaimed.
   * @throws {LaunchError} when the server refuses
   */
  async launch(argv: string[], options: LaunchOptions = {}): Promise<Launched> {
    if (
      !this.features.names &&
      Object.entries(options).some(([k, v]) => k !== "attachAny" && v !== undefined && v !== false)
    ) {
      throw new ManagerError(
        "version",
        `${this.serverAgent} speaks protocol 1.0, which has no named runs, environment, ` +
          `working directory, user or stop grace: upgrade cmappserver or launch without them`,
      );
    }
    const msg: LaunchMessage = { type: "launch", id: 0, argv };
    if (options.name !== undefined) msg.name = options.name;
    if (options.env !== undefined) msg.env = options.env;
    if (options.cwd !== undefined) msg.cwd = options.cwd;
    if (options.user !== undefined) msg.user = options.user;
    if (options.group !== undefined) msg.group = options.group;
    if (options.stopTimeoutMs !== undefined) msg.stop_timeout_ms = options.stopTimeoutMs;
    if (options.attachAny && this.features.conflicts) msg.attach_any = true;
    if (options.streams || options.stdin) {
      if (!this.features.streams) {
        throw new ManagerError(
          "version",
          `${this.serverAgent} speaks protocol 1.${this.version.minor}, which cannot stream ` +
            `output or input: upgrade cmappserver`,
        );
      }
      if (options.streams) msg.streams = true;
      if (options.stdin) msg.stdin = true;
    }
    const m = await this.#request<LaunchMessage>(msg);
    if (m.type === "launched") {
      return { run: m.run, pid: m.pid, name: m.name ?? null, attached: m.attached === true };
    }
    throw this.#unexpected(m);
  }

  /**
   * Asks the server to stop a run (SIGTERM to its process group, SIGKILL
   * after the grace period). Resolves with its state at that moment; its
   * end comes through {@linkcode wait}.
   */
  async stop(run: string, timeoutMs?: number): Promise<RunStatusMessage> {
    const msg: StopMessage = { type: "stop", id: 0, run };
    if (timeoutMs !== undefined) msg.timeout_ms = timeoutMs;
    const m = await this.#request<StopMessage>(msg);
    if (m.type === "run_status") {
      if (m.exit) this.#exited(m.run, m.exit);
      return m;
    }
    throw this.#unexpected(m);
  }

  /**
   * Tells the server we have the run's exit status, so the next launch
   * under its name starts a new run.
   */
  async release(run: string): Promise<void> {
    const m = await this.#request<ReleaseMessage>({ type: "release", id: 0, run });
    if (m.type !== "released") throw this.#unexpected(m);
  }

  /** Every run the server knows. */
  async list(): Promise<RunInfo[]> {
    const m = await this.#request<ListMessage>({ type: "list", id: 0 });
    if (m.type === "run_list") return m.runs;
    throw this.#unexpected(m);
  }

  /**
   * Asks for a run's state; also subscribes this connection to its exit.
   * With `streams`, this connection becomes the receiver of the run's output
   * and, unless `stdin` is false (a watcher), the feeder of its stdin.
   * @throws {LaunchError} with code "unknown_run" when the server does not know it
   */
  async status(
    run: string,
    options: { streams?: boolean; window?: number; stdin?: boolean } = {},
  ): Promise<RunStatusMessage> {
    const msg: StatusMessage = { type: "status", id: 0, run };
    if (options.streams) msg.streams = true;
    // Feeding stdin comes with the streams unless declined (a watcher of the output), as it
    // did before 1.4 could say which.
    if (options.streams && options.stdin !== false && this.features.stdinClose) msg.stdin = true;
    if (options.streams && options.window && this.features.resume) {
      // Granted as the server makes us the receiver (see grant()).
      msg.window = options.window;
      this.#streams.expectInbound(run, "stdout", options.window);
      this.#streams.expectInbound(run, "stderr", options.window);
    }
    const m = await this.#request<StatusMessage>(msg);
    if (m.type === "run_status") {
      if (m.exit) this.#exited(m.run, m.exit);
      return m;
    }
    throw this.#unexpected(m);
  }

  /**
   * Receives the run's stdout and stderr (protocol 1.2, launched or
   * re-attached with `streams`). `handler` is called in order, one call at
   * a time; a chunk's credit goes back to the server once its call has
   * settled (in batches, see {@linkcode Client.grant}), so a slow handler
   * slows the application down. Empty bytes mark
   * the end of a stream. The run's exit is reported only after every chunk
   * before it was handled.
   */
  onOutput(
    run: string,
    handler: (stream: "stdout" | "stderr", bytes: Uint8Array) => void | Promise<void>,
  ): void {
    this.#outputs.set(run, handler);
  }

  /**
   * Listens to where the run's streams resume (protocol 1.3: `resume`, told
   * before the first bytes of each stream on this connection) and to the
   * stdin bytes the server has passed on (each credit it gives back after
   * its first grant). `resume` comes in order with the output chunks.
   */
  onStreamEvents(run: string, events: StreamEvents): void {
    this.#streamEvents.set(run, events);
    // `resume` may come right behind the reply, before the caller could listen.
    const early = this.#earlyResumes.get(run);
    this.#earlyResumes.delete(run);
    for (const m of early ?? []) this.#receive(m);
    // So may the server's word that it takes no stdin from us (a run without input).
    if (this.#stdinShut.has(run)) events.stdinClosed?.();
  }

  /**
   * Allows the server `bytes` more of a run's output stream. The sum of
   * the grants is the stream's window: handled chunks give their credit
   * back in batches of at least a quarter of it.
   */
  grant(run: string, stream: "stdout" | "stderr", bytes: number): void {
    this.#streams.widen(run, stream, bytes);
  }

  /** Tells the server we will not read this stream any more (a closed pipe on our side). */
  closeStream(run: string, stream: "stdout" | "stderr"): void {
    this.#channel.send({ type: "close_stream", run, stream });
  }

  /**
   * Sends bytes to the run's stdin, within the server's credit and as fast
   * as the connection drains; empty bytes close it (once the server has
   * given stdin credit: it takes stdin from this connection). Resolves true
   * once sent, false when the server takes no more stdin from this
   * connection (protocol 1.4: the stdin is closed, or another manager took
   * it over). Rejects when the connection closes first. The bytes are
   * copied as they go out: the buffer may be reused once this settles.
   */
  async sendStdin(run: string, bytes: Uint8Array): Promise<boolean> {
    let off = 0;
    for (;;) {
      if (this.isClosed) throw new ManagerError("lost", "connection to cmappserver is closed");
      // Shut, or ended (its exit is known): nothing more goes to its stdin.
      if (this.#stdinShut.has(run) || this.#exits.has(run)) return false;
      if (bytes.length === 0 && this.#stdinGranted.has(run)) {
        this.#streams.sendEnd(run, "stdin");
        return true;
      }
      const room = this.#streams.room(run, "stdin");
      if (bytes.length === 0 || room <= 0) {
        await Promise.race([this.#streams.whenRoom(run, "stdin"), this.#closed]);
        continue;
      }
      const n = Math.min(room, bytes.length - off);
      this.#streams.sendData(run, "stdin", bytes.subarray(off, off + n));
      off += n;
      if (off === bytes.length) return true;
    }
  }

  /** Round trip with no side effects. */
  async ping(): Promise<void> {
    const m = await this.#request<PingMessage>({ type: "ping", id: 0 });
    if (m.type !== "pong") throw this.#unexpected(m);
  }

  /**
   * Resolves with the run's exit status, from the server's notification or
   * a status reply, whichever comes first. Call {@linkcode status} once to
   * follow a run this connection did not launch.
   */
  wait(run: string): Promise<ExitStatus> {
    const known = this.#exits.get(run);
    if (known) return Promise.resolve(known);
    return new Promise((resolve) => {
      let set = this.#exitWaiters.get(run);
      if (!set) this.#exitWaiters.set(run, set = new Set());
      set.add(resolve);
    });
  }

  /** Closes the connection. Processes on the guest keep running. */
  close(): void {
    this.#channel.close();
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.#channel.destroy();
  }

  #request<
    T extends
      | LaunchMessage
      | StatusMessage
      | PingMessage
      | StopMessage
      | ReleaseMessage
      | ListMessage,
  >(msg: T): Promise<ServerMessage> {
    if (this.isClosed) {
      return Promise.reject(new ManagerError("lost", "connection to cmappserver is closed"));
    }
    const id = this.#nextId++ >>> 0;
    return new Promise((resolve, reject) => {
      try {
        this.#channel.send({ ...msg, id } as T);
      } catch (e) {
        if (!(e instanceof FrameError)) throw e;
        reject(new ManagerError("refused", `request too large for the protocol: ${e.message}`));
        return;
      }
      this.#pending.set(id, { resolve, reject });
    });
  }

  #receive(m: ServerMessage): void {
    this.lastHeard = Date.now();
    if (m.type === "exited") {
      this.#exited(m.run, m.exit);
      return;
    }
    if (m.type === "data") {
      const { run, stream, data } = m;
      try {
        // (An end of stream needs no credit: it may come before we granted any.)
        this.#streams.received(run, stream, data.length);
      } catch (e) {
        if (!(e instanceof CreditError)) throw e;
        // The server broke flow control: nothing it sends can be trusted to stay bounded.
        this.#serverError = new ManagerError("protocol", `cmappserver sent ${e.message}`);
        this.#channel.destroy();
        return;
      }
      const handler = this.#outputs.get(run);
      this.#outputChain = this.#outputChain.then(async () => {
        try {
          await handler?.(stream as "stdout" | "stderr", data);
        } catch {
          // the handler's failure is its own business; the credit still goes back
        }
        // Each chunk's credit goes back once handled (in batches: StreamChannels.consumed).
        if (data.length > 0 && !this.isClosed) this.#streams.consumed(run, stream, data.length);
      });
      return;
    }
    if (m.type === "close_stream") {
      // 1.4: the server takes no more stdin from us for this run.
      _boundedAdd(this.#stdinShut, m.run);
      this.#stdinGranted.delete(m.run);
      this.#streams.forget(m.run, "stdin");
      this.#streamEvents.get(m.run)?.stdinClosed?.();
      return;
    }
    if (m.type === "resume") {
      const events = this.#streamEvents.get(m.run);
      const { stream, offset } = m;
      if (!events) {
        const list = this.#earlyResumes.get(m.run) ?? [];
        if (list.length < 3) this.#earlyResumes.set(m.run, [...list, m]);
        if (this.#earlyResumes.size > 64) {
          this.#earlyResumes.delete(this.#earlyResumes.keys().next().value!);
        }
        return;
      }
      if (stream === "stdin") events.resume(stream, offset);
      // in order with the output chunks, which it comes before
      else this.#outputChain = this.#outputChain.then(() => events.resume(stream, offset));
      return;
    }
    if (m.type === "window") {
      if (m.stream !== "stdin") return;
      if (this.#stdinGranted.has(m.run)) {
        this.#streamEvents.get(m.run)?.stdinTaken?.(m.bytes);
        this.#streams.granted(m.run, "stdin", m.bytes);
      } else {
        // The first grant: this connection feeds the run's stdin (again, after a resume).
        const evicted = _boundedAdd(this.#stdinGranted, m.run);
        if (evicted !== undefined) this.#streams.forget(evicted, "stdin");
        this.#stdinShut.delete(m.run);
        this.#streams.openOutbound(m.run, "stdin", m.bytes);
      }
      return;
    }
    if (m.type === "hello") {
      this.#channel.destroy();
      return;
    }
    if (m.type === "error" && m.id === undefined) {
      // A connection-level error: the server closes after it.
      const err = new ManagerError(_kindOf(m.code), `cmappserver: ${m.message}`);
      this.#serverError = err;
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
      return;
    }
    const p = this.#pending.get(m.id!);
    if (!p) return;
    this.#pending.delete(m.id!);
    if (m.type === "error") p.reject(new LaunchError(m.code, m.message));
    else p.resolve(m);
  }

  #exited(run: string, exit: ExitStatus): void {
    // Output that came before the exit is handled first.
    this.#outputChain.then(() => this.#exitedNow(run, exit));
  }

  #exitedNow(run: string, exit: ExitStatus): void {
    // Kept for a wait() that comes after the notification (bounded).
    this.#exits.set(run, exit);
    this.#streams.forget(run);
    this.#stdinGranted.delete(run);
    this.#stdinShut.delete(run);
    if (this.#exits.size > 1000) this.#exits.delete(this.#exits.keys().next().value!);
    const set = this.#exitWaiters.get(run);
    this.#exitWaiters.delete(run);
    for (const w of set ?? []) w(exit);
  }

  #unexpected(m: ServerMessage): Error {
    return new ManagerError("protocol", `unexpected ${m.type} reply from cmappserver`);
  }
}

/** What a manager hears of a run's streams besides their bytes (see {@linkcode Client.onStreamEvents}). */
export interface StreamEvents {
  /** The stream resumes at `offset` for this connection (protocol 1.3). */
  resume(stream: "stdin" | "stdout" | "stderr", offset: number): void;
  /** The server passed `bytes` more of stdin on to the application's supervisor. */
  stdinTaken?(bytes: number): void;
  /**
   * The server takes no more stdin from this connection (protocol 1.4): the
   * run's stdin is closed, another manager took it over, or it has none.
   */
  stdinClosed?(): void;
}

interface ClientEvents {
  message(m: ServerMessage): void;
  closed(e: Error | null): void;
}

/**
 * Connects to a cmappserver, authenticates both ways and exchanges hellos.
 *
 * @throws {ManagerError} with a kind for each way it can fail
 * @example
 * ```ts ignore
 * import { connect } from "./client.ts";
 * const client = await connect({ host: "guest1", identity, trust });
 * await client.ping();
 * client.close();
 * ```
 */
export async function connect(options: ConnectOptions): Promise<Client> {
  const port = options.port ?? DEFAULT_PORT;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const where = `${options.host}:${port}`;
  const started = Date.now();
  let tlsConn;
  try {
    tlsConn = await connectTls({ ...options, port, timeoutMs });
  } catch (e) {
    if (!(e instanceof TlsConnectError)) throw e;
    throw new ManagerError(
      e.kind === "unreachable"
        ? "unreachable"
        : e.kind === "server_untrusted"
        ? "server_untrusted"
        : "protocol",
      e.message,
    );
  }
  const ours = options.version ?? PROTOCOL_VERSION;
  return await new Promise<Client>((resolve, reject) => {
    let handler: ClientEvents | null = null;
    let settled = false;
    const fail = (e: ManagerError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      channel.destroy();
      reject(e);
    };
    const rejectedMessage = (detail: string) => _rejectedMessage(where, options, detail);
    const channel = new MessageChannel<ServerMessage, ClientMessage>(
      tlsConn.socket,
      decodeServerMessage,
      {
        onMessage: (m) => {
          if (handler) return handler.message(m);
          if (m.type === "hello") {
            const v = negotiateVersion(ours, m.version);
            if (!v) {
              fail(
                new ManagerError(
                  "version",
                  `cmappserver at ${where} (${m.agent}) speaks protocol ${
                    formatVersion(m.version)
                  }, incompatible with ours (${formatVersion(ours)}): upgrade the older side`,
                ),
              );
              return;
            }
            settled = true;
            clearTimeout(timer);
            resolve(
              new Client(channel, {
                agent: m.agent,
                version: v,
                certificate: tlsConn.server,
                maxFrame: m.max_frame,
              }, { setHandler: (h) => handler = h }),
            );
            return;
          }
          if (m.type === "error") {
            fail(
              new ManagerError(
                _kindOf(m.code),
                m.code === "unauthorized"
                  ? rejectedMessage(`(${m.message})`)
                  : `cmappserver at ${where}: ${m.message}`,
              ),
            );
            return;
          }
          fail(new ManagerError("protocol", `cmappserver at ${where} sent ${m.type} before hello`));
        },
        onInvalid: (e) => {
          if (handler) {
            channel.destroy();
            return;
          }
          fail(
            new ManagerError("protocol", `cmappserver at ${where} sent invalid data: ${e.message}`),
          );
        },
        onClose: (err) => {
          if (handler) return handler.closed(err);
          // Under TLS 1.3 a refused client certificate shows up only now, as a clean close right
          // after the handshake. A reset or an error is the connection lost, not a refusal.
          if (err) {
            fail(
              new ManagerError(
                "unreachable",
                `lost the connection to cmappserver at ${where} before its hello: ${err.message}`,
              ),
            );
          } else fail(new ManagerError("rejected", rejectedMessage("during the TLS handshake")));
        },
      },
      DEFAULT_MAX_FRAME_SIZE,
    );
    const timer = setTimeout(
      () =>
        fail(
          new ManagerError(
            "unreachable",
            `cmappserver at ${where} did not answer our hello within ${timeoutMs} ms`,
          ),
        ),
      Math.max(1, timeoutMs - (Date.now() - started)),
    );
    channel.send({ type: "hello", version: { ...ours }, agent: MANAGER_AGENT });
  });
}

/**
 * Runs a server names in stream messages are remembered, a hostile server
 * must not make that unbounded: beyond this many, the oldest is dropped.
 */
const _MAX_REMEMBERED_RUNS = 1024;

/** Adds `run` to `set`, dropping (and returning) the oldest beyond the bound. */
function _boundedAdd(set: Set<string>, run: string): string | undefined {
  set.delete(run);
  set.add(run);
  if (set.size <= _MAX_REMEMBERED_RUNS) return undefined;
  const oldest = set.values().next().value!;
  set.delete(oldest);
  return oldest;
}

function _rejectedMessage(where: string, options: ConnectOptions, detail: string): string {
  return `cmappserver at ${where} refused our certificate (${options.identity.info.fingerprint}) ` +
    `${detail}: copy this host's cert.pem into the guest's trusted/ directory and send ` +
    `cmappserver SIGHUP, or renew an expired certificate`;
}

/** How a connection-level error from the server counts on our side. */
function _kindOf(code: ErrorMessage["code"]): ManagerErrorKind {
  switch (code) {
    case "version":
      return "version";
    case "shutting_down":
      return "lost";
    case "unauthorized":
      return "rejected";
    default:
      return "protocol";
  }
}
