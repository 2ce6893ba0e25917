/**
 * A run's standard streams on the guest side: its stdout and stderr pumped
 * to whichever manager connection receives them, within the credit that
 * manager has granted (so a slow reader slows the application down and
 * memory stays bounded), and its stdin fed from that manager. While no
 * manager receives them, output is read and discarded so the application
 * never blocks on a full pipe. Knows nothing of frames or TLS.
 *
 * @module
 */
import { Gatherer } from "../protocol/read_ahead.ts";

/** Where a run's output goes: the receiving connection. */
export interface StreamSink {
  /**
   * Sends bytes of `stream`; empty bytes mean end of stream. `bytes` is
   * valid only during the call (its buffer is read into again): copy it.
   */
  data(stream: "stdout" | "stderr", bytes: Uint8Array): void;
}

/** Output reads are gathered into chunks of up to this many bytes (one data frame). */
const _GATHER_BYTES = 64 * 1024;

class _Pump {
  readonly name: "stdout" | "stderr";
  /** Bytes read and not yet sent: a view into the gatherer's buffers, valid until its next read. */
  #pending: Uint8Array | null;
  /** The pipe. */
  readonly #in: Gatherer;
  #credit = 0;
  #sink: StreamSink | null = null;
  #wake: (() => void) | null = null;
  #closed = false;
  /** Until a first receiver attaches, output waits for it instead of being discarded. */
  #everAttached = false;
  /** True while data waits for the receiver's credit (back-pressure, not silence). */
  waitingForCredit = false;
  lastActivity = Date.now();
  readonly done: Promise<void>;

  constructor(name: "stdout" | "stderr", input: Gatherer, first: Uint8Array | null) {
    this.name = name;
    this.#in = input;
    this.#pending = first && first.length > 0 ? first : null;
    this.done = this.#run();
  }

  attach(sink: StreamSink | null): void {
    this.#sink = sink;
    if (sink) this.#everAttached = true;
    this.#credit = 0;
    this.#poke();
  }

  get sink(): StreamSink | null {
    return this.#sink;
  }

  grant(bytes: number): void {
    this.#credit = Math.min(this.#credit + bytes, 2 ** 31);
    this.#poke();
  }

  /** The receiver is gone for good: close our end, as a closed pipe. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void this.#in.cancel();
    this.#poke();
  }

  #poke(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        if (this.#closed) return;
        if (!this.#pending) {
          // One read, and what the pipe already holds after it (many small
          // writes go out as a few large frames), within the credit if known.
          const limit = this.#sink && this.#credit > 0
            ? Math.min(this.#credit, _GATHER_BYTES)
            : _GATHER_BYTES;
          const value = await this.#in.next(limit);
          if (value === null) break;
          this.#pending = value;
          this.lastActivity = Date.now();
        }
        const sink = this.#sink;
        if (!sink && !this.#everAttached) {
          await new Promise<void>((r) => this.#wake = r);
          continue;
        }
        if (!sink) {
          this.#pending = null; // its receiver is gone: discard
          continue;
        }
        if (this.#credit <= 0) {
          this.waitingForCredit = true;
          await new Promise<void>((r) => this.#wake = r);
          this.waitingForCredit = false;
          this.lastActivity = Date.now();
          continue;
        }
        const n = Math.min(this.#credit, this.#pending.length);
        sink.data(this.name, this.#pending.subarray(0, n));
        this.#credit -= n;
        this.lastActivity = Date.now();
        this.#pending = n === this.#pending.length ? null : this.#pending.subarray(n);
      }
    } catch {
      // the pipe broke: treat as end of stream
    }
    this.#sink?.data(this.name, new Uint8Array(0));
  }
}

/** Options for {@linkcode RunStreams}. */
export interface RunStreamsOptions {
  /** The application's stdout, and bytes of it already read. */
  stdout: { reader: Gatherer; first: Uint8Array | null };
  /** Its stderr. */
  stderr: Gatherer;
  /** Its stdin, when the manager feeds it. */
  stdin: WritableStream<Uint8Array> | null;
}

/**
 * The streams of one run.
 *
 * @example
 * ```ts ignore
 * const io = new RunStreams({ stdout, stderr, stdin: null });
 * io.attach({ data: (stream, bytes) => send(stream, bytes) });
 * io.grant("stdout", 1 << 20);
 * ```
 */
export class RunStreams {
  readonly #out: _Pump;
  readonly #err: _Pump;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array> | null;
  #stdinClosed = false;

  /** Starts pumping (into nowhere until a sink is attached). */
  constructor(options: RunStreamsOptions) {
    this.#out = new _Pump("stdout", options.stdout.reader, options.stdout.first);
    this.#err = new _Pump("stderr", options.stderr, null);
    this.#stdin = options.stdin?.getWriter() ?? null;
    if (!this.#stdin) this.#stdinClosed = true;
  }

  /** True when the manager feeds this run's stdin. */
  get hasStdin(): boolean {
    return this.#stdin !== null;
  }

  /** The connection receiving output now, if any. */
  get sink(): StreamSink | null {
    return this.#out.sink;
  }

  /** Sends output to `sink` from now on (null: discard); credit starts at zero. */
  attach(sink: StreamSink | null): void {
    this.#out.attach(sink);
    this.#err.attach(sink);
  }

  /** Detaches `sink` if it is the current one. */
  detach(sink: StreamSink): void {
    if (this.#out.sink === sink) this.attach(null);
  }

  /** The receiver allows `bytes` more of `stream`. */
  grant(stream: "stdout" | "stderr", bytes: number): void {
    (stream === "stdout" ? this.#out : this.#err).grant(bytes);
  }

  /** The receiver closed `stream`: close the application's end. */
  closeOutput(stream: "stdout" | "stderr"): void {
    (stream === "stdout" ? this.#out : this.#err).close();
  }

  /**
   * Writes to the application's stdin; empty bytes close it. Resolves once
   * the bytes are in the pipe (so credit can be given back), false when
   * stdin is closed or gone.
   */
  async writeStdin(bytes: Uint8Array): Promise<boolean> {
    if (!this.#stdin || this.#stdinClosed) return false;
    try {
      if (bytes.length === 0) {
        this.#stdinClosed = true;
        await this.#stdin.close();
        return true;
      }
      await this.#stdin.write(bytes);
      return true;
    } catch {
      this.#stdinClosed = true;
      return false;
    }
  }

  /**
   * Settles when both outputs have ended, or when `quietMs` pass with no
   * byte moving while nothing waits for the receiver's credit (a background
   * child may hold them open after the run ended).
   */
  async drained(quietMs: number): Promise<void> {
    let quietTimer: ReturnType<typeof setTimeout> | undefined;
    const quiet = new Promise<void>((resolve) => {
      const check = () => {
        const blocked = this.#out.waitingForCredit || this.#err.waitingForCredit;
        const idle = Date.now() - Math.max(this.#out.lastActivity, this.#err.lastActivity);
        if (!blocked && idle >= quietMs) resolve();
        else quietTimer = setTimeout(check, blocked ? quietMs : quietMs - idle);
      };
      check();
    });
    await Promise.race([Promise.all([this.#out.done, this.#err.done]), quiet]);
    clearTimeout(quietTimer);
  }

  /** Stops everything (the run is forgotten). */
  close(): void {
    this.#out.close();
    this.#err.close();
    if (this.#stdin && !this.#stdinClosed) {
      this.#stdinClosed = true;
      this.#stdin.close().catch(() => {});
    }
  }
}
