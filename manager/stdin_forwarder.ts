/**
 * Forwards a stream to a run's stdin across reconnections. Bytes sent are
 * kept until the guest says it has them (each stdin credit the server gives
 * back after its first grant); when a new connection becomes the run's
 * receiver, the server says (protocol 1.3, `resume`) how many bytes the
 * application's supervisor has taken, and the forwarder sends on from
 * there, so that nothing is lost or doubled across a dropped connection or
 * a restart of cmappserver. Keeps at most the server's window (256 KiB) and
 * a chunk. A forwarder that takes over the stdin of a run another manager
 * fed starts where the guest is. It stops, and lets go of its input, when
 * the run ends, when the server takes no more stdin from it (protocol 1.4),
 * or when {@linkcode StdinForwarder.stop} is called.
 *
 * @module
 */

import { Gatherer } from "../protocol/read_ahead.ts";
import type { Logger } from "../log/logger.ts";
import type { Client } from "./client.ts";

/**
 * Forwards `input` to a run's stdin on whichever connection is current.
 *
 * @example
 * ```ts ignore
 * import { StdinForwarder } from "./stdin_forwarder.ts";
 * const f = new StdinForwarder(Deno.stdin.readable, run, logger);
 * client.onStreamEvents(run, { resume: (s, at) => s === "stdin" && f.resume(at),
 *   stdinTaken: (n) => f.taken(n) });
 * f.attach(client);
 * void f.run();
 * ```
 */
export class StdinForwarder {
  readonly #gather: Gatherer;
  readonly #run: string;
  readonly #logger: Logger;
  #client: Client | null = null;
  /** The current connection tells where stdin resumes (1.3) before anything is sent on it. */
  #awaitResume = false;
  /** Where the current connection resumes, once told and not yet acted on. */
  #resumeAt: number | null = null;
  /** Offset of the next new byte. */
  #sent = 0;
  /** Bytes the guest has taken. */
  #taken = 0;
  /** Bytes sent and not yet taken: [#taken, #sent). */
  #retained: Uint8Array[] = [];
  #eof = false;
  #eofSent = false;
  #stopped = false;
  #wake: (() => void) | null = null;
  /** Taking over a run's stdin: the guest's offset at the first resume is our start. */
  #takeover: boolean;
  /** Bytes of stdin that may not have reached the application (older guests only). */
  lost = 0;

  /**
   * Takes `input`'s lock.
   * @param takeover the run was started by another manager: our input
   *   follows what the guest has already taken, whatever it is
   */
  constructor(input: ReadableStream<Uint8Array>, run: string, logger: Logger, takeover = false) {
    this.#gather = new Gatherer(input);
    this.#run = run;
    this.#logger = logger;
    this.#takeover = takeover;
  }

  /** A connection became the run's stream receiver. */
  attach(client: Client): void {
    this.#client = client;
    this.#awaitResume = client.features.resume;
    this.#eofSent = false;
    if (!this.#awaitResume && this.#retained.length > 0) {
      // An older guest says nothing of what it has: what was in flight may be gone.
      const n = this.#retained.reduce((a, c) => a + c.length, 0);
      this.lost += n;
      this.#logger.warn(`stdin: the connection broke; ${n} bytes may not have arrived`);
      this.#retained = [];
      this.#taken = this.#sent;
    }
    this.#poke();
  }

  /** The server says the guest has taken `offset` bytes of stdin (protocol 1.3). */
  resume(offset: number): void {
    if (this.#takeover) {
      // Nothing of ours was sent yet: the guest's offset is where our first byte goes.
      this.#takeover = false;
      this.#taken = this.#sent = offset;
    }
    this.#resumeAt = offset;
    this.#poke();
  }

  /**
   * The server takes no more stdin from us (protocol 1.4): the run's stdin
   * is closed, another manager took it over, or the run has none. What is
   * left of the input is not forwarded.
   */
  closed(): void {
    if (this.#stopped) return;
    const pending = this.#sent - this.#taken;
    this.#logger.warn(
      `stdin: cmappserver takes no more of it for run ${this.#run} (its stdin is closed, ` +
        `another manager took it over, or it has none)` +
        (pending > 0 ? `; ${pending} bytes sent may not have arrived` : "") +
        (this.#eof ? "" : "; the rest of our input is not forwarded"),
    );
    this.lost += pending;
    this.stop();
  }

  /** The server passed `bytes` more on to the application's supervisor. */
  taken(bytes: number): void {
    this.#trim(Math.min(this.#sent, this.#taken + bytes));
  }

  /** Stops forwarding (the run has ended); gives the input's lock back. */
  stop(): void {
    this.#stopped = true;
    void this.#gather.cancel();
    this.#poke();
  }

  /** Forwards until the input ends and the guest has it, or until {@linkcode stop}. */
  async run(): Promise<void> {
    try {
      while (!this.#stopped) {
        const c = this.#client;
        if (!c || c.isClosed) {
          await this.#sleep(); // until the next connection attaches
          continue;
        }
        if (this.#awaitResume && this.#resumeAt === null) {
          await this.#sleep(c.closed);
          continue;
        }
        if (this.#resumeAt !== null) {
          const at = this.#resumeAt;
          this.#resumeAt = null;
          this.#awaitResume = false;
          if (!await this.#resend(c, at)) continue;
        }
        if (this.#eof) {
          if (!this.#eofSent) {
            this.#eofSent = await this.#send(c, new Uint8Array(0));
          } else {
            await this.#sleep(c.closed);
          }
          continue;
        }
        const value = await this.#gather.next();
        if (this.#stopped) break;
        if (value === null) {
          this.#eof = true;
          continue;
        }
        const chunk = value.slice();
        this.#retained.push(chunk);
        this.#sent += chunk.length;
        // On failure the chunk stays kept, for the next connection's resume.
        await this.#send(this.#client ?? c, chunk);
      }
    } catch (e) {
      this.#logger.warn(`stdin: ${(e as Error).message}`);
    } finally {
      this.#gather.release();
    }
  }

  /** Sends what the guest lacks after `offset`; false when the connection broke. */
  async #resend(c: Client, offset: number): Promise<boolean> {
    if (offset < this.#taken || offset > this.#sent) {
      const n = Math.abs(offset - Math.min(Math.max(offset, this.#taken), this.#sent));
      this.lost += n;
      this.#logger.warn(
        `stdin: cmappserver has ${offset} bytes of it, and ${this.#taken} to ${this.#sent} ` +
          `were kept here; ${n} bytes may be lost`,
      );
      this.#retained = [];
      this.#taken = this.#sent = Math.max(offset, this.#sent);
      return true;
    }
    this.#trim(offset);
    for (const chunk of [...this.#retained]) {
      if (!await this.#send(c, chunk)) return false;
    }
    return true;
  }

  /** Drops kept bytes up to `offset` (the guest has them). */
  #trim(offset: number): void {
    let drop = offset - this.#taken;
    while (drop > 0 && this.#retained.length > 0) {
      const head = this.#retained[0];
      if (head.length <= drop) {
        this.#retained.shift();
        drop -= head.length;
      } else {
        this.#retained[0] = head.subarray(drop);
        drop = 0;
      }
    }
    this.#taken = offset;
  }

  async #send(c: Client, bytes: Uint8Array): Promise<boolean> {
    try {
      if (await c.sendStdin(this.#run, bytes)) return true;
      this.closed();
      return false;
    } catch {
      return false;
    }
  }

  #poke(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  #sleep(closed?: Promise<unknown>): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#wake = resolve;
      closed?.then(() => resolve());
    });
  }
}
