/**
 * A TCP relay on 127.0.0.1 that a test controls, to play a network between
 * cmappmgr and cmappserver: pass traffic, blackhole it (stop forwarding both
 * ways without closing anything, like a partition: TCP keeps the bytes and
 * delivers them if it heals), delay it, reset every connection, heal.
 *
 * In-process, built on Deno.listen/Deno.connect, on an ephemeral port.
 * Everything it opens is closed by `close()` (test sanitizers stay quiet).
 *
 * @module
 */

/** What the relay does with traffic now. */
export type RelayMode = "pass" | "blackhole";

/** One relayed connection: both sockets and the tasks pumping between them. */
interface _Pair {
  close(): void;
  done: Promise<void>;
}

/** A relay between a test's client and a target port on 127.0.0.1. */
export class Relay {
  /** The port to point cmappmgr at. */
  readonly port: number;
  /** Connections accepted in all. */
  accepted = 0;
  /** Connections closed by `reset()`. */
  resets = 0;
  readonly #target: number;
  readonly #listener: Deno.TcpListener;
  readonly #pairs = new Set<_Pair>();
  readonly #accepting: Promise<void>;
  #mode: RelayMode = "pass";
  #delayMs = 0;
  #gate: Promise<void> = Promise.resolve();
  #openGate: () => void = () => {};
  #closing = false;

  /** Listens on an ephemeral port of 127.0.0.1 and relays to `targetPort`. */
  constructor(targetPort: number) {
    this.#target = targetPort;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = this.#listener.addr.port;
    this.#accepting = this._acceptLoop();
  }

  /** The current mode. */
  get mode(): RelayMode {
    return this.#mode;
  }

  /** Connections being relayed (or held) now. */
  get open(): number {
    return this.#pairs.size;
  }

  /**
   * Stops forwarding in both directions, on live and new connections,
   * without closing anything: bytes wait (in the relay and the kernel)
   * until `heal()`, as they would behind a partition.
   */
  blackhole(): void {
    if (this.#mode === "blackhole") return;
    this.#mode = "blackhole";
    this.#gate = new Promise((r) => this.#openGate = r);
  }

  /** Forwards again; what waited behind the blackhole goes through, in order. */
  heal(): void {
    this.#mode = "pass";
    this.#openGate();
  }

  /** Holds each chunk `ms` before forwarding it (both ways); 0 for none. */
  delay(ms: number): void {
    this.#delayMs = ms;
  }

  /** Closes every relayed connection at once (new ones are relayed as before). */
  reset(): void {
    for (const p of this.#pairs) {
      this.resets++;
      p.close();
    }
  }

  /** Stops listening and closes everything. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#openGate();
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    await this.#accepting;
    const pairs = [...this.#pairs];
    for (const p of pairs) p.close();
    await Promise.all(pairs.map((p) => p.done));
  }

  /** Waits while blackholed (or returns at once). */
  async _pass(): Promise<void> {
    while (this.#mode === "blackhole" && !this.#closing) await this.#gate;
  }

  async _acceptLoop(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        this.accepted++;
        this._relay(conn);
      }
    } catch {
      // listener closed
    }
  }

  _relay(down: Deno.Conn): void {
    let up: Deno.Conn | null = null;
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      for (const c of [down, up]) {
        try {
          c?.close();
        } catch {
          // already closed
        }
      }
    };
    const pair: _Pair = { close, done: Promise.resolve() };
    this.#pairs.add(pair);
    pair.done = (async () => {
      try {
        // Behind a blackhole, even the connection to the target waits.
        await this._pass();
        if (closed || this.#closing) return;
        try {
          up = await Deno.connect({ hostname: "127.0.0.1", port: this.#target });
        } catch {
          return;
        }
        if (closed) {
          up.close();
          return;
        }
        await Promise.all([
          this._pump(down, up).finally(close),
          this._pump(up, down).finally(close),
        ]);
      } finally {
        close();
        this.#pairs.delete(pair);
      }
    })();
  }

  /** Copies bytes one way until either side ends or fails. */
  async _pump(from: Deno.Conn, to: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        await this._pass();
        const n = await from.read(buf);
        if (n === null) return;
        const chunk = buf.slice(0, n);
        if (this.#delayMs > 0) await new Promise((r) => setTimeout(r, this.#delayMs));
        await this._pass();
        let off = 0;
        while (off < chunk.length) off += await to.write(chunk.subarray(off));
      }
    } catch {
      // closed by reset(), close() or the other direction
    }
  }
}
