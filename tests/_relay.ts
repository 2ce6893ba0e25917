/**
 * A TCP relay on 127.0.0.1 that a test controls, to play a network between
 * cmappmgr and cmappserver: pass traffic, blackhole it (stop forwarding both
 * ways without closing anything, like a partition: TCP keeps the bytes and
 * delivers them if it heals), delay it (one way or both), reset every
 * connection, cut it (reset, then drop or refuse new connections), heal.
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
  /** Connections dropped on arrival while cut. */
  dropped = 0;
  readonly #target: number;
  #listener: Deno.TcpListener | null;
  readonly #pairs = new Set<_Pair>();
  #accepting: Promise<void>;
  #mode: RelayMode = "pass";
  #cut = false;
  /** Milliseconds each chunk is held: towards the target, and back. */
  readonly #delayMs = { up: 0, down: 0 };
  #gate: Promise<void> = Promise.resolve();
  #openGate: () => void = () => {};
  #closing = false;

  /** Listens on an ephemeral port of 127.0.0.1 and relays to `targetPort`. */
  constructor(targetPort: number) {
    this.#target = targetPort;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = this.#listener.addr.port;
    this.#accepting = this._acceptLoop(this.#listener);
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

  /**
   * Forwards again; what waited behind the blackhole goes through, in order.
   * After a `cut()`, new connections are relayed again.
   */
  heal(): void {
    this.#mode = "pass";
    this.#openGate();
    this.#cut = false;
    if (!this.#listener && !this.#closing) {
      this.#listener = Deno.listen({ hostname: "127.0.0.1", port: this.port });
      this.#accepting = this._acceptLoop(this.#listener);
    }
  }

  /**
   * Holds each chunk `ms` before forwarding it, both ways or one way only
   * ("up": towards the target; "down": back from it); 0 for none.
   */
  delay(ms: number, direction: "both" | "up" | "down" = "both"): void {
    if (direction !== "down") this.#delayMs.up = ms;
    if (direction !== "up") this.#delayMs.down = ms;
  }

  /**
   * Resets every relayed connection, then, until `heal()`, either drops new
   * ones on arrival (accept, then close: a port forwarder whose target is
   * down) or refuses them (nothing listens: a guest's closed port).
   */
  async cut(how: "drop" | "refuse" = "drop"): Promise<void> {
    this.#cut = true;
    this.reset();
    if (how === "refuse" && this.#listener) {
      this.#listener.close();
      this.#listener = null;
      await this.#accepting;
    }
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
      this.#listener?.close();
    } catch {
      // already closed
    }
    this.#listener = null;
    await this.#accepting;
    const pairs = [...this.#pairs];
    for (const p of pairs) p.close();
    await Promise.all(pairs.map((p) => p.done));
  }

  /** Waits while blackholed (or returns at once). */
  async _pass(): Promise<void> {
    while (this.#mode === "blackhole" && !this.#closing) await this.#gate;
  }

  async _acceptLoop(listener: Deno.TcpListener): Promise<void> {
    try {
      for await (const conn of listener) {
        if (this.#cut) {
          this.dropped++;
          conn.close();
          continue;
        }
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
          this._pump(down, up, "up").finally(close),
          this._pump(up, down, "down").finally(close),
        ]);
      } finally {
        close();
        this.#pairs.delete(pair);
      }
    })();
  }

  /** Copies bytes one way until either side ends or fails. */
  async _pump(from: Deno.Conn, to: Deno.Conn, direction: "up" | "down"): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        await this._pass();
        const n = await from.read(buf);
        if (n === null) return;
        const chunk = buf.slice(0, n);
        const ms = this.#delayMs[direction];
        if (ms > 0) await new Promise((r) => setTimeout(r, ms));
        await this._pass();
        let off = 0;
        while (off < chunk.length) off += await to.write(chunk.subarray(off));
      }
    } catch {
      // closed by reset(), close() or the other direction
    }
  }
}
