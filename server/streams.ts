/**
 * A run's standard streams on the guest side, as its supervisor hands them
 * over: stdout and stderr pumped to whichever manager connection receives
 * them, within the credit that manager granted (a slow reader slows the
 * application down; memory stays bounded), and stdin fed from that manager.
 * Every stream has an absolute byte offset, told to each new receiver
 * before its first byte, so that a manager can tell exactly how many bytes
 * it missed (see docs/PROTOCOL.md, `resume`). With no receiver, output is
 * held for a grace period, then read and discarded (counted), so the
 * application never blocks for long on a manager that is gone. Knows
 * nothing of frames or TLS.
 *
 * @module
 */
import { Gatherer } from "../protocol/read_ahead.ts";
import { frameStdin } from "./supervisor.ts";

/** Where a run's output goes: the receiving connection. */
export interface StreamSink {
  /**
   * The next bytes of `stream` this receiver gets start at `offset` (bytes
   * of the stream before them). Told once per stream when the receiver
   * attaches, before any data of it.
   */
  resume(stream: "stdin" | "stdout" | "stderr", offset: number): void;
  /**
   * Bytes of `stream` that may be sent now: the receiver's credit, while
   * its connection drains (0: wait for {@linkcode StreamSink.whenRoom}).
   */
  room(stream: "stdout" | "stderr"): number;
  /** Settles when there may be room again (credit came, the connection drained or closed). */
  whenRoom(stream: "stdout" | "stderr"): Promise<void>;
  /**
   * Sends bytes of `stream`, at most {@linkcode StreamSink.room}; empty
   * bytes mean end of stream. `bytes` is valid only during the call (its
   * buffer is read into again): copy it.
   */
  data(stream: "stdout" | "stderr", bytes: Uint8Array): void;
  /**
   * The run's stdin is closed for good (the application closed it, its
   * supervisor is gone, or it was closed for want of a manager).
   */
  stdinClosed(): void;
}

/** Output reads are gathered into chunks of up to this many bytes (one data frame). */
const _GATHER_BYTES = 64 * 1024;
/** Output with no receiver waits this long for one to come back before it is discarded. */
export const HOLD_OUTPUT_MS = 5000;

/** Where one output comes from: its supervisor's connection, or nothing more (ended at `offset`). */
export type OutputSource =
  | { conn: Deno.UnixConn; offset: number; first: Uint8Array }
  | { ended: true; offset: number };

class _Pump {
  readonly name: "stdout" | "stderr";
  /** Bytes read and not yet sent: a view into the gatherer's buffers, valid until its next read. */
  #pending: Uint8Array | null;
  readonly #in: Gatherer | null;
  readonly #conn: Deno.UnixConn | null;
  #sink: StreamSink | null = null;
  #wake: (() => void) | null = null;
  #closed = false;
  /** Offset of the next byte to send (the first pending one). */
  #offset: number;
  /** When output with no receiver may start being discarded (null: hold until one attaches). */
  #holdUntil: number | null;
  #holdTimer: ReturnType<typeof setTimeout> | undefined;
  #ended = false;
  /** Bytes this daemon discarded with nobody to receive them. */
  discarded = 0;
  /** True while data waits for the receiver's credit (back-pressure, not silence). */
  waitingForCredit = false;
  lastActivity = performance.now();
  readonly done: Promise<void>;

  constructor(name: "stdout" | "stderr", source: OutputSource) {
    this.name = name;
    this.#offset = source.offset;
    this.#holdUntil = null;
    // No receiver yet (a new run's is attached at once; one taken over from an earlier
    // cmappserver waits for its manager to come back): hold for a grace, then discard.
    if ("conn" in source) this.#hold();
    if ("conn" in source) {
      this.#conn = source.conn;
      this.#in = new Gatherer(source.conn.readable);
      this.#pending = source.first.length > 0 ? source.first : null;
      this.done = this.#run();
    } else {
      this.#conn = null;
      this.#in = null;
      this.#pending = null;
      this.#ended = true;
      this.done = Promise.resolve();
    }
  }

  /** Offset of the next byte this stream will send. */
  get offset(): number {
    return this.#offset;
  }

  attach(sink: StreamSink | null): void {
    const prev = this.#sink;
    this.#sink = sink;
    clearTimeout(this.#holdTimer);
    if (sink) {
      sink.resume(this.name, this.#offset);
      if (this.#ended) sink.data(this.name, new Uint8Array(0));
    } else if (prev) {
      this.#hold();
    }
    this.#poke();
  }

  /** With no receiver: output waits HOLD_OUTPUT_MS (monotonic) for one, then is discarded. */
  #hold(): void {
    clearTimeout(this.#holdTimer);
    this.#holdUntil = performance.now() + HOLD_OUTPUT_MS;
    this.#holdTimer = setTimeout(() => this.#poke(), HOLD_OUTPUT_MS);
  }

  get sink(): StreamSink | null {
    return this.#sink;
  }

  /** The receiver is gone for good, or the run is forgotten: stop reading. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#holdTimer);
    void this.#in?.cancel();
    try {
      this.#conn?.close();
    } catch {
      // closed already
    }
    this.#poke();
  }

  poke(): void {
    this.#poke();
  }

  #poke(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  #sleep(): Promise<void> {
    return new Promise<void>((r) => this.#wake = r);
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        if (this.#closed) return;
        if (!this.#pending) {
          // One read, and what the connection already holds after it, within the credit.
          const room = this.#sink?.room(this.name) ?? 0;
          const limit = room > 0 ? Math.min(room, _GATHER_BYTES) : _GATHER_BYTES;
          const value = await this.#in!.next(limit);
          if (value === null) break;
          this.#pending = value;
          this.lastActivity = performance.now();
        }
        const sink = this.#sink;
        if (!sink) {
          if (this.#holdUntil === null || performance.now() < this.#holdUntil) {
            await this.#sleep(); // held for a receiver to come (back)
            continue;
          }
          this.discarded += this.#pending.length;
          this.#offset += this.#pending.length;
          this.#pending = null;
          continue;
        }
        const room = sink.room(this.name);
        if (room <= 0) {
          // Back-pressure: the receiver's credit, or its connection's write queue.
          this.waitingForCredit = true;
          await Promise.race([this.#sleep(), sink.whenRoom(this.name)]);
          this.waitingForCredit = false;
          this.lastActivity = performance.now();
          continue;
        }
        const n = Math.min(room, this.#pending.length);
        sink.data(this.name, this.#pending.subarray(0, n));
        this.#offset += n;
        this.lastActivity = performance.now();
        this.#pending = n === this.#pending.length ? null : this.#pending.subarray(n);
      }
    } catch {
      // the connection broke: treat as end of stream
    }
    this.#ended = true;
    clearTimeout(this.#holdTimer);
    try {
      this.#conn?.close();
    } catch {
      // closed already
    }
    this.#sink?.data(this.name, new Uint8Array(0));
  }
}

/** The run's stdin at its supervisor: the connection, and the bytes taken before it. */
export interface StdinSource {
  /** The connection (frames to the supervisor). */
  conn: Deno.UnixConn;
  /** Bytes of stdin the supervisor had taken when it was opened. */
  accepted: number;
}

/** Options for {@linkcode RunStreams}. */
export interface RunStreamsOptions {
  /** Where stdout comes from. */
  stdout: OutputSource;
  /** Where stderr comes from. */
  stderr: OutputSource;
  /**
   * The run's stdin: its source, "later" (given by {@linkcode RunStreams.setStdin} once the
   * supervisor hands it over), or null when the run has none.
   */
  stdin: StdinSource | "later" | null;
  /** Tells the supervisor to close the application's end of an output. */
  closeOutput(stream: "stdout" | "stderr"): void;
  /**
   * With no receiver for this long, the application's stdin is closed (it
   * reads its end), in ms; {@linkcode STDIN_GRACE_MS} by default.
   */
  stdinGraceMs?: number;
  /** Told when stdin is closed for want of a receiver (to log it). */
  onStdinAbandoned?(): void;
}

/** How long a run's stdin waits for a manager to come (back) before it is closed, by default. */
export const STDIN_GRACE_MS = 30_000;

/**
 * The streams of one run.
 *
 * @example
 * ```ts ignore
 * const io = new RunStreams({ stdout, stderr, stdin: null, closeOutput });
 * io.attach({ resume: (s, at) => {}, data: (stream, bytes) => send(stream, bytes) });
 * io.grant("stdout", 1 << 20);
 * ```
 */
export class RunStreams {
  readonly #out: _Pump;
  readonly #err: _Pump;
  readonly #hasStdin: boolean;
  readonly #closeOutput: (stream: "stdout" | "stderr") => void;
  #stdin: Deno.UnixConn | null = null;
  /** Bytes of stdin the supervisor has taken or has in its socket. */
  #stdinOffset = 0;
  #stdinClosed = false;
  #stdinWrites: Promise<unknown> = Promise.resolve();
  readonly #stdinGraceMs: number;
  readonly #onStdinAbandoned: () => void;
  #stdinTimer: ReturnType<typeof setTimeout> | undefined;
  /** The connection that feeds stdin: the receiver that asked to, not every receiver. */
  #stdinSink: StreamSink | null = null;
  /** Stdin is to be closed (its end came, or the grace ran out) before it was handed over. */
  #closeOnHandover = false;
  #closed = false;
  /** What the supervisor says the application wrote in all, once the run has ended. */
  #final: { stdout: number | null; stderr: number | null } | null = null;

  /** Starts pumping (held until a sink is attached). */
  constructor(options: RunStreamsOptions) {
    this.#out = new _Pump("stdout", options.stdout);
    this.#err = new _Pump("stderr", options.stderr);
    this.#closeOutput = options.closeOutput;
    this.#hasStdin = options.stdin !== null;
    this.#stdinGraceMs = options.stdinGraceMs ?? STDIN_GRACE_MS;
    this.#onStdinAbandoned = options.onStdinAbandoned ?? (() => {});
    if (options.stdin && options.stdin !== "later") this.setStdin(options.stdin);
    if (!this.#hasStdin) this.#stdinClosed = true;
    // No receiver yet (a new run's attaches at once; one taken over from an earlier
    // cmappserver waits for its manager to come back).
    this.#graceStdin();
  }

  /**
   * The streams of a run that ended while no cmappserver held them: nothing
   * more comes; a receiver is told where each ended.
   */
  static ended(counts: { stdout: number | null; stderr: number | null }): RunStreams {
    return new RunStreams({
      stdout: { ended: true, offset: counts.stdout ?? 0 },
      stderr: { ended: true, offset: counts.stderr ?? 0 },
      stdin: null,
      closeOutput: () => {},
    });
  }

  /** True when the manager feeds this run's stdin. */
  get hasStdin(): boolean {
    return this.#hasStdin;
  }

  /** The connection receiving output now, if any. */
  get sink(): StreamSink | null {
    return this.#out.sink;
  }

  /** The connection feeding stdin now, if any. */
  get stdinSink(): StreamSink | null {
    return this.#stdinSink;
  }

  /** Bytes discarded by this daemon for want of a receiver, per output. */
  get discarded(): { stdout: number; stderr: number } {
    return { stdout: this.#out.discarded, stderr: this.#err.discarded };
  }

  /**
   * The run's stdin, handed over by its supervisor (null: it could not be).
   * The receiver, if any, is told where it resumes.
   */
  setStdin(source: StdinSource | null): void {
    if (this.#closed || !source) {
      try {
        source?.conn.close();
      } catch {
        // closed already
      }
      if (!source) this.#stdinEnded();
      return;
    }
    this.#stdin = source.conn;
    this.#stdinOffset = source.accepted;
    if (this.#closeOnHandover) {
      void this.writeStdin(new Uint8Array(0));
      return;
    }
    const sink = this.#stdinSink;
    if (sink) this.#announceStdin(sink);
  }

  /**
   * With no receiver, the application's stdin is closed after the grace
   * period: it reads its end instead of waiting for ever for a manager that
   * is gone. A receiver that attaches within it feeds on.
   */
  #graceStdin(): void {
    clearTimeout(this.#stdinTimer);
    if (this.#stdinClosed || this.#closed || this.#stdinSink) return;
    this.#stdinTimer = setTimeout(() => {
      if (this.#stdinClosed || this.#closed || this.#stdinSink) return;
      this.#onStdinAbandoned();
      this.endStdin();
    }, this.#stdinGraceMs);
  }

  /**
   * Closes the application's stdin: now, or as soon as its supervisor hands
   * it over (a manager's end of input may come before that).
   */
  endStdin(): void {
    if (this.#stdinClosed) return;
    if (this.#stdin) void this.writeStdin(new Uint8Array(0));
    else this.#closeOnHandover = true;
  }

  /** Stdin is closed for good: the receiver is told (it feeds it no more). */
  #stdinEnded(): void {
    if (this.#stdinClosed) return;
    this.#stdinClosed = true;
    clearTimeout(this.#stdinTimer);
    this.#stdinSink?.stdinClosed();
  }

  /**
   * Tells `sink` where stdin resumes: once writes under way have finished
   * (what they carry counts as taken), and only if it is still the receiver.
   */
  #announceStdin(sink: StreamSink): void {
    if (!this.#hasStdin) {
      sink.stdinClosed();
      return;
    }
    if (!this.#stdin && !this.#stdinClosed) return; // told once it is handed over
    this.#stdinWrites.then(() => {
      if (this.#stdinSink !== sink || this.#closed) return;
      if (this.#stdinClosed) sink.stdinClosed();
      else sink.resume("stdin", this.#stdinOffset);
    });
  }

  /**
   * Sends output to `sink` from now on (null: hold, then discard); credit
   * starts at zero. The sink is told each stream's offset first. With
   * `feedsStdin` it also takes stdin over (told where it resumes once it can
   * be fed; the previous feeder is told it feeds no more); without, whoever
   * feeds stdin goes on (a manager that only watches the output).
   */
  attach(sink: StreamSink | null, feedsStdin = true): void {
    this.#out.attach(sink);
    this.#err.attach(sink);
    if (sink && feedsStdin) this.#feedFrom(sink);
    else if (sink && !this.#hasStdin) sink.stdinClosed();
  }

  /** Detaches `sink` from what it receives and feeds. */
  detach(sink: StreamSink): void {
    if (this.#out.sink === sink) this.attach(null);
    if (this.#stdinSink === sink) {
      this.#stdinSink = null;
      this.#graceStdin();
    }
  }

  #feedFrom(sink: StreamSink): void {
    const prev = this.#stdinSink;
    this.#stdinSink = sink;
    if (prev && prev !== sink && this.#hasStdin && !this.#stdinClosed) prev.stdinClosed();
    clearTimeout(this.#stdinTimer);
    this.#announceStdin(sink);
  }

  /** The receiver's room for `stream` may have grown (credit, a drained connection). */
  poke(): void {
    this.#out.poke();
    this.#err.poke();
  }

  /** The receiver closed `stream`: close the application's end. */
  closeOutput(stream: "stdout" | "stderr"): void {
    this.#closeOutput(stream);
    (stream === "stdout" ? this.#out : this.#err).close();
  }

  /**
   * Writes to the application's stdin (through its supervisor); empty bytes
   * close it. Resolves once the bytes are in the supervisor's socket (so
   * credit can be given back: they survive a crash of cmappserver from
   * there), false when stdin is closed, gone, or not handed over yet.
   */
  async writeStdin(bytes: Uint8Array): Promise<boolean> {
    if (!this.#stdin || this.#stdinClosed) return false;
    if (bytes.length === 0) {
      this.#stdinClosed = true;
      clearTimeout(this.#stdinTimer);
    }
    const conn = this.#stdin;
    const frame = frameStdin(bytes);
    const write = this.#stdinWrites.then(async () => {
      for (let off = 0; off < frame.length;) off += await conn.write(frame.subarray(off));
      this.#stdinOffset += bytes.length;
    });
    this.#stdinWrites = write.catch(() => {});
    try {
      await write;
      return true;
    } catch {
      this.#stdinEnded();
      return false;
    }
  }

  /**
   * The run has ended: what its supervisor says the application wrote in
   * all, per output (see {@linkcode tailLosses}).
   */
  setFinal(counts: { stdout: number | null; stderr: number | null }): void {
    this.#final = counts;
  }

  /**
   * Once the outputs have ended: for each one whose last bytes could not be
   * relayed (its supervisor had to cut what children of the application
   * still wrote), where it really ended. A receiver told so counts them lost.
   */
  tailLosses(): { stream: "stdout" | "stderr"; offset: number }[] {
    const f = this.#final;
    if (!f) return [];
    const out: { stream: "stdout" | "stderr"; offset: number }[] = [];
    for (const p of [this.#out, this.#err]) {
      const total = f[p.name];
      if (total !== null && total > p.offset) out.push({ stream: p.name, offset: total });
    }
    return out;
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
        const idle = performance.now() - Math.max(this.#out.lastActivity, this.#err.lastActivity);
        if (!blocked && idle >= quietMs) resolve();
        else quietTimer = setTimeout(check, blocked ? quietMs : quietMs - idle);
      };
      check();
    });
    await Promise.race([Promise.all([this.#out.done, this.#err.done]), quiet]);
    clearTimeout(quietTimer);
  }

  /** Stops everything (the run is forgotten, or cmappserver is closing). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#stdinTimer);
    this.#out.close();
    this.#err.close();
    if (!this.#stdinClosed) {
      this.#stdinClosed = true;
      this.#stdinSink?.stdinClosed();
    }
    const conn = this.#stdin;
    if (conn) {
      this.#stdinWrites.finally(() => {
        try {
          conn.close();
        } catch {
          // closed already
        }
      });
    }
  }
}
