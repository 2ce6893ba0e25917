// A hostile but trusted manager: a pinned manager certificate, and framing
// code of its own (not the project's codec, channel or client), so that it can
// break every rule the protocol sets: data beyond credit, credit without
// reading, requests whose answers it never reads.

/** A decoded frame: JSON messages as objects, data frames as their parts. */
export type RawFrame =
  | { kind: "json"; message: Record<string, unknown> }
  | {
    kind: "data";
    run: string;
    stream: "stdin" | "stdout" | "stderr";
    bytes: number;
    /** The bytes as text, for frames of at most 256 bytes (answers, not bulk). */
    text?: string;
  };

const _STREAMS = ["stdin", "stdout", "stderr"] as const;
const _te = new TextEncoder();
const _td = new TextDecoder();

/** One frame: a 4-byte big-endian length, then the payload. */
export function rawFrame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length);
  out.set(payload, 4);
  return out;
}

/** A JSON message as a frame. */
export function rawJson(message: Record<string, unknown>): Uint8Array {
  return rawFrame(_te.encode(JSON.stringify(message)));
}

/** A data message as a frame: tag 1, stream index, run id length, run id, bytes. */
export function rawData(
  run: string,
  stream: "stdin" | "stdout" | "stderr",
  bytes: Uint8Array,
): Uint8Array {
  const p = new Uint8Array(3 + run.length + bytes.length);
  p[0] = 1;
  p[1] = _STREAMS.indexOf(stream);
  p[2] = run.length;
  p.set(_te.encode(run), 3);
  p.set(bytes, 3 + run.length);
  return rawFrame(p);
}

/** A raw connection. */
export interface RawPeer {
  /** Writes bytes as they are (in order, in the background); false while 256 KiB wait. */
  write(bytes: Uint8Array): boolean;
  /** Sends the hello of protocol 1.`minor` and waits for the server's. */
  hello(minor?: number): Promise<Record<string, unknown>>;
  /** Stops reading the socket (the server's writes then back up). */
  stopReading(): void;
  /** Reads again. */
  startReading(): void;
  /** Every frame received so far. */
  readonly frames: RawFrame[];
  /** Resolves with the first JSON message matching `match` (fails if the server closes first). */
  next(
    match: (m: Record<string, unknown>) => boolean,
    ms?: number,
  ): Promise<Record<string, unknown>>;
  /** Settles when the server has closed the connection. */
  readonly closed: Promise<void>;
  /** True once closed. */
  readonly isClosed: boolean;
  /** Drops the connection. */
  close(): Promise<void>;
}

/**
 * Connects to 127.0.0.1:`port` with the key directory's key and certificate.
 * Deno's own TLS client, not node:tls: its reads stop when we stop asking,
 * so that a peer that "does not read" really leaves the bytes in TCP.
 */
export async function rawPeer(keydir: string, port: number): Promise<RawPeer> {
  const key = await Deno.readTextFile(`${keydir}/key.pem`);
  const cert = await Deno.readTextFile(`${keydir}/cert.pem`);
  const caCerts: string[] = [];
  for await (const e of Deno.readDir(`${keydir}/trusted`)) {
    caCerts.push(await Deno.readTextFile(`${keydir}/trusted/${e.name}`));
  }
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts, cert, key });
  await conn.handshake();
  const frames: RawFrame[] = [];
  let buffered = new Uint8Array(0);
  let notify = () => {};
  let isClosed = false;
  let reading = true;
  let wakeReader = () => {};
  let writes: Promise<unknown> = Promise.resolve();
  let pendingWrites = 0;
  const parse = (chunk: Uint8Array) => {
    const all = new Uint8Array(buffered.length + chunk.length);
    all.set(buffered);
    all.set(chunk, buffered.length);
    let at = 0;
    while (all.length - at >= 4) {
      const n = new DataView(all.buffer, at).getUint32(0);
      if (all.length - at - 4 < n) break;
      const p = all.subarray(at + 4, at + 4 + n);
      if (p[0] === 1) {
        const run = _td.decode(p.subarray(3, 3 + p[2]));
        const bytes = n - 3 - p[2];
        const text = bytes <= 256 ? _td.decode(p.subarray(3 + p[2])) : undefined;
        frames.push({ kind: "data", run, stream: _STREAMS[p[1]], bytes, text });
      } else {
        frames.push({ kind: "json", message: JSON.parse(_td.decode(p)) });
      }
      at += 4 + n;
    }
    buffered = all.slice(at);
    notify();
  };
  const closed = (async () => {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        while (!reading) await new Promise<void>((r) => wakeReader = r);
        const n = await conn.read(buf);
        if (n === null) break;
        parse(buf.subarray(0, n));
      }
    } catch {
      // reset: closed
    }
    isClosed = true;
    await writes;
    try {
      conn.close(); // the server's close is ours too: nothing is left open
    } catch {
      // closed by close() already
    }
    notify();
  })();
  let seen = 0;
  const peer: RawPeer = {
    write(bytes) {
      pendingWrites += bytes.length;
      writes = writes.then(async () => {
        try {
          for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
        } catch {
          // closed
        }
        pendingWrites -= bytes.length;
      });
      return pendingWrites < 256 * 1024;
    },
    async hello(minor = 4) {
      peer.write(rawJson({ type: "hello", version: { major: 1, minor }, agent: "raw-peer" }));
      return await peer.next((m) => m.type === "hello" || m.type === "error");
    },
    stopReading: () => void (reading = false),
    startReading: () => {
      reading = true;
      wakeReader();
    },
    frames,
    async next(match, ms = 20_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        for (; seen < frames.length; seen++) {
          const f = frames[seen];
          if (f.kind === "json" && match(f.message)) {
            seen++;
            return f.message;
          }
        }
        if (isClosed) throw new Error("the server closed the connection");
        const left = deadline - Date.now();
        if (left <= 0) throw new Error("no matching message in time");
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((r) => {
          notify = r;
          timer = setTimeout(r, Math.min(left, 200));
        });
        clearTimeout(timer);
      }
    },
    closed,
    get isClosed() {
      return isClosed;
    },
    async close() {
      try {
        conn.close();
      } catch {
        // closed already
      }
      reading = true;
      wakeReader();
      await closed;
      await writes;
    },
  };
  return peer;
}

/** Resident memory of a process, in KiB (from ps: Deno needs --allow-all for /proc). */
export async function rssKiB(pid: number): Promise<number> {
  const out = await new Deno.Command("ps", { args: ["-o", "rss=", "-p", String(pid)] }).output();
  return Number(new TextDecoder().decode(out.stdout).trim());
}
