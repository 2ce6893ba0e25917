/**
 * Stream throughput probe (issue 6): N bytes through a run's stdout and
 * stdin, by the client API in-process and by the cmappmgr command line, with
 * MB/s, CPU seconds per GiB of each side, and cmappmgr's peak RSS; and the
 * floor, the project's TLS stack alone. The server side is cmappserver (with
 * the children it reaped) plus the run's cmapp-supervise and the application
 * under it, which are no children of cmappserver and are followed apart;
 * "daemon alone" is cmappserver's own time. Runs the programs of the tree it is
 * in, so a copy of an older tree measures that tree.
 *
 *   deno run -P=cmapp bench/_stream_probe.ts [-bytes N] [-reps R] [-only a,b]
 *
 * @module
 */

import {
  cmappClient,
  makeCmappKeys,
  mgrArgs,
  shq,
  startCmappServer,
  startTlsSender,
} from "./_cmapp.ts";
import { cpuSeconds, delay, followSupervisorCpu, processTree, round } from "./_lib.ts";
import { ROOT } from "../tools/_programs.ts";
import { shellExitCode } from "../protocol/mod.ts";

const args = Deno.args;
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`-${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const N = Number(opt("bytes", String(256 * 1024 * 1024)));
const REPS = Number(opt("reps", "1"));
const ONLY = opt("only", "tls,tlspipe,api_out,api_in,cli_out,cli_in").split(",");
const GIB = N / 2 ** 30;

const tmp = await Deno.makeTempDir({ prefix: "cmapp-probe-" });
const keys = await makeCmappKeys(tmp);
const server = await startCmappServer(tmp, keys, "probe");
const client = await cmappClient(keys, server);
let seq = 0;

type Row = { what: string; MBps: number; clientCpuPerGiB: number; serverCpuPerGiB: number } & {
  peakRssMiB?: number;
  avgChunkKiB?: number;
  daemonCpuPerGiB?: number;
  windows?: number;
};
const rows: Row[] = [];

const _mbps = (ms: number) => round(N / 1e6 / (ms / 1000));

async function apiOut(): Promise<Row> {
  const c0 = (await cpuSeconds(Deno.pid, false))!;
  const sup = await followSupervisorCpu(server.stateDir);
  const s0 = (await cpuSeconds(server.pid))!;
  const d0 = (await cpuSeconds(server.pid, false))!;
  const t0 = performance.now();
  let count = 0;
  const { run } = await client.launch(["head", "-c", String(N), "/dev/zero"], {
    name: `probe-so-${seq++}`,
    streams: true,
  });
  let chunks = 0;
  client.onOutput(run, (_s, b) => {
    count += b.length;
    chunks++;
  });
  client.grant(run, "stdout", 1 << 20);
  client.grant(run, "stderr", 1 << 20);
  const exit = await client.wait(run);
  const ms = performance.now() - t0;
  await client.release(run).catch(() => {});
  if (shellExitCode(exit) !== 0 || count !== N) throw new Error(`api out: ${count} of ${N}`);
  await delay(200);
  const c1 = (await cpuSeconds(Deno.pid, false))!;
  const s1 = (await cpuSeconds(server.pid))!;
  const supS = await sup.stop();
  const d1 = (await cpuSeconds(server.pid, false))!;
  return {
    what: "api stdout",
    MBps: _mbps(ms),
    avgChunkKiB: round(N / chunks / 1024),
    clientCpuPerGiB: round((c1 - c0) / GIB, 2),
    serverCpuPerGiB: round((s1 - s0 + supS) / GIB, 2),
    daemonCpuPerGiB: round((d1 - d0) / GIB, 2),
  };
}

async function apiIn(): Promise<Row> {
  const c0 = (await cpuSeconds(Deno.pid, false))!;
  const sup = await followSupervisorCpu(server.stateDir);
  const s0 = (await cpuSeconds(server.pid))!;
  const d0 = (await cpuSeconds(server.pid, false))!;
  const t0 = performance.now();
  const { run } = await client.launch(["sh", "-c", "cat > /dev/null"], {
    name: `probe-si-${seq++}`,
    streams: true,
    stdin: true,
  });
  client.onOutput(run, () => {});
  client.grant(run, "stdout", 1 << 20);
  client.grant(run, "stderr", 1 << 20);
  const chunk = new Uint8Array(1 << 20);
  for (let sent = 0; sent < N; sent += chunk.length) {
    await client.sendStdin(run, chunk.subarray(0, Math.min(chunk.length, N - sent)));
  }
  await client.sendStdin(run, new Uint8Array(0));
  const exit = await client.wait(run);
  const ms = performance.now() - t0;
  await client.release(run).catch(() => {});
  if (shellExitCode(exit) !== 0) throw new Error(`api in: exit ${JSON.stringify(exit)}`);
  await delay(200);
  const c1 = (await cpuSeconds(Deno.pid, false))!;
  const s1 = (await cpuSeconds(server.pid))!;
  const supS = await sup.stop();
  const d1 = (await cpuSeconds(server.pid, false))!;
  return {
    what: "api stdin",
    MBps: _mbps(ms),
    clientCpuPerGiB: round((c1 - c0) / GIB, 2),
    serverCpuPerGiB: round((s1 - s0 + supS) / GIB, 2),
    daemonCpuPerGiB: round((d1 - d0) / GIB, 2),
  };
}

async function cli(dir: "stdout" | "stdin"): Promise<Row> {
  const cpuFile = `${tmp}/cpu.txt`;
  await Deno.remove(cpuFile).catch(() => {});
  const mgr = (remote: string[], o: string[] = []) =>
    `/usr/bin/time -f '%U %S' -o ${shq(cpuFile)} ` +
    [Deno.execPath(), ...mgrArgs(keys, server, remote, o)].map(shq).join(" ");
  const script = dir === "stdout"
    ? `${mgr(["head", "-c", String(N), "/dev/zero"])} | wc -c`
    : `head -c ${N} /dev/zero | ${mgr(["sh", "-c", "cat > /dev/null"], ["-stdin"])}`;
  const sup = await followSupervisorCpu(server.stateDir);
  const s0 = (await cpuSeconds(server.pid))!;
  const d0 = (await cpuSeconds(server.pid, false))!;
  const t0 = performance.now();
  const child = new Deno.Command("sh", { args: ["-c", script], stdout: "piped", stderr: "piped" })
    .spawn();
  let peak = 0;
  let done = false;
  const watch = (async () => {
    while (!done) {
      for (const p of await processTree([child.pid], "^deno$")) {
        if (p.comm === "deno" && p.hwm > peak) peak = p.hwm;
      }
      await delay(200);
    }
  })();
  const out = await child.output();
  const ms = performance.now() - t0;
  done = true;
  await watch;
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || (dir === "stdout" && Number(text) !== N)) {
    throw new Error(`cli ${dir}: ${out.code} ${text} ${new TextDecoder().decode(out.stderr)}`);
  }
  await delay(200);
  const s1 = (await cpuSeconds(server.pid))!;
  const supS = await sup.stop();
  const d1 = (await cpuSeconds(server.pid, false))!;
  const cpu = (await Deno.readTextFile(cpuFile)).trim().split(/\s+/).map(Number);
  return {
    what: `cli ${dir}`,
    MBps: _mbps(ms),
    clientCpuPerGiB: round((cpu[0] + cpu[1]) / GIB, 2),
    serverCpuPerGiB: round((s1 - s0 + supS) / GIB, 2),
    daemonCpuPerGiB: round((d1 - d0) / GIB, 2),
    peakRssMiB: round(peak / 1024),
  };
}

/**
 * The project's TLS stack alone: a child Deno process writes N bytes in
 * 64 KiB writes of one buffer ("raw tls"), or (`fromPipe`) each chunk it
 * reads from a `head -c N /dev/zero` child's stdout, as the daemon reads a
 * run's output ("tls+pipe"); no cmapp protocol either way.
 */
async function rawTls(fromPipe = false): Promise<Row> {
  const sender = await startTlsSender(keys, N, fromPipe ? "pipe" : "buffer");
  const child = sender.child;
  try {
    const { connectTls, loadIdentity, loadTrust } = await import("../tls/mod.ts");
    const c0 = (await cpuSeconds(Deno.pid, false))!;
    const s0 = (await cpuSeconds(child.pid))!;
    const t0 = performance.now();
    const { socket } = await connectTls({
      host: "127.0.0.1",
      port: sender.port,
      identity: await loadIdentity(keys.manager),
      trust: await loadTrust(keys.manager),
      timeoutMs: 10_000,
    });
    let got = 0;
    await new Promise<void>((resolve) => {
      socket.on("data", (c: Uint8Array) => got += c.length);
      socket.on("close", () => resolve());
    });
    const ms = performance.now() - t0;
    const c1 = (await cpuSeconds(Deno.pid, false))!;
    await delay(200); // head reaped
    const s1 = (await cpuSeconds(child.pid))!;
    if (got < N) throw new Error(`raw TLS: got ${got} of ${N}`);
    return {
      what: fromPipe ? "tls+pipe" : "raw tls",
      MBps: _mbps(ms),
      clientCpuPerGiB: round((c1 - c0) / GIB, 2),
      serverCpuPerGiB: round((s1 - s0) / GIB, 2),
    };
  } finally {
    await sender.stop();
  }
}

/**
 * The protocol path alone, in-process, no TLS, no processes: a server-side
 * channel sends N bytes as data frames of `frame` bytes within the credit a
 * real `Client` grants back, over an in-memory byte stream that delivers
 * writes in fresh 16 KiB chunks (as TLS records arrive). CPU of both sides.
 */
async function codec(frame: number): Promise<Row> {
  const P = await import("../protocol/mod.ts");
  const { Client } = await import("../manager/client.ts");
  type Listener = (c: Uint8Array) => void;
  const _pipe = () => {
    const make = () => {
      const listeners: Record<string, Listener[]> = {};
      let queue: Uint8Array[] = [];
      let scheduled = false;
      const s = {
        peer: null as null | { deliver(c: Uint8Array[]): void },
        deliver(chunks: Uint8Array[]) {
          for (const c of chunks) for (const l of listeners.data ?? []) l(c);
        },
        write(data: Uint8Array): boolean {
          for (let o = 0; o < data.length; o += 16384) {
            queue.push(data.slice(o, o + 16384));
          }
          if (!scheduled) {
            scheduled = true;
            setTimeout(() => {
              scheduled = false;
              const q = queue;
              queue = [];
              s.peer!.deliver(q);
            }, 0);
          }
          return true;
        },
        end() {
          setTimeout(() => {
            for (const l of listeners.close ?? []) l(new Uint8Array(0));
          }, 1);
        },
        destroy() {
          s.end();
        },
        on(ev: string, l: (x: never) => void) {
          (listeners[ev] ??= []).push(l as Listener);
          return s;
        },
      };
      return s;
    };
    const a = make(), b = make();
    a.peer = b;
    b.peer = a;
    return [a, b];
  };
  const [sa, sb] = _pipe();
  const run = "mwu9r2k1-3c5e7a9b1d2f";
  const buf = new Uint8Array(frame);
  let credit = 0, sent = 0, windows = 0, frames = 0;
  const server = new P.MessageChannel(sa, P.decodeClientMessage, {
    onMessage: (m) => {
      if (m.type !== "window") return;
      windows++;
      credit += m.bytes;
      pump();
    },
    onInvalid: (e) => console.error(e),
    onClose: () => {},
  });
  const pump = () => {
    while (credit > 0 && sent < N) {
      const n = Math.min(credit, frame, N - sent);
      server.send({ type: "data", run, stream: "stdout", data: buf.subarray(0, n) });
      frames++;
      credit -= n;
      sent += n;
      if (sent === N) {
        server.send({ type: "data", run, stream: "stdout", data: new Uint8Array(0) });
        server.send({ type: "exited", run, exit: { code: 0 } });
      }
    }
  };
  let handler: { message(m: unknown): void; closed(e: Error | null): void } | null = null;
  const ch = new P.MessageChannel(sb, P.decodeServerMessage, {
    onMessage: (m) => handler!.message(m),
    onInvalid: (e) => console.error(e),
    onClose: (e) => handler?.closed(e),
  });
  const client = new Client(ch, {
    agent: "probe",
    version: { major: 1, minor: 2 },
    certificate: null as unknown as import("../tls/mod.ts").CertificateInfo,
  }, {
    setHandler: (h) => handler = h as typeof handler,
  });
  let count = 0;
  client.onOutput(run, (_s, b) => {
    count += b.length;
  });
  const c0 = (await cpuSeconds(Deno.pid, false))!;
  const t0 = performance.now();
  client.grant(run, "stdout", 1 << 20);
  await client.wait(run);
  const ms = performance.now() - t0;
  const c1 = (await cpuSeconds(Deno.pid, false))!;
  client.close();
  server.close();
  await client.closed;
  if (count !== N) throw new Error(`codec: ${count} of ${N}`);
  return {
    what: `codec ${frame / 1024}K`,
    MBps: _mbps(ms),
    clientCpuPerGiB: round((c1 - c0) / GIB, 2),
    serverCpuPerGiB: NaN,
    avgChunkKiB: round(N / frames / 1024),
    windows,
  };
}

try {
  for (let rep = 0; rep < REPS; rep++) {
    if (ONLY.includes("codec")) {
      rows.push(await codec(26 * 1024));
      rows.push(await codec(64 * 1024));
    }
    if (ONLY.includes("tls")) rows.push(await rawTls());
    if (ONLY.includes("tlspipe")) rows.push(await rawTls(true));
    if (ONLY.includes("api_out")) rows.push(await apiOut());
    if (ONLY.includes("api_in")) rows.push(await apiIn());
    if (ONLY.includes("cli_out")) rows.push(await cli("stdout"));
    if (ONLY.includes("cli_in")) rows.push(await cli("stdin"));
  }
} finally {
  client.close();
  await client.closed;
  await server.stop();
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
}
console.log(`# ${ROOT}: ${N / 2 ** 20} MiB, ${REPS} rep(s)`);
for (const r of rows) {
  console.log(
    `${r.what.padEnd(11)} ${String(r.MBps).padStart(7)} MB/s  cpu/GiB client ${
      String(r.clientCpuPerGiB).padStart(5)
    } s server ${String(r.serverCpuPerGiB).padStart(5)} s (daemon alone ${r.daemonCpuPerGiB} s)` +
      (r.peakRssMiB !== undefined ? `  peak RSS ${r.peakRssMiB} MiB` : "") +
      (r.avgChunkKiB !== undefined ? `  ${r.avgChunkKiB} KiB/frame` : "") +
      (r.windows !== undefined ? `  ${r.windows} windows` : ""),
  );
}
