/**
 * cmapp for the benchmark: key directories made like the tests make them,
 * the real cmappserver program on 127.0.0.1 (ephemeral port, its own state
 * directory, log to a file), the client API, and the cmappmgr command line.
 *
 * @module
 */

import { trust, writeIdentity } from "../tests/_harness.ts";
import { programCommand, ROOT, scriptCommand } from "../tools/_programs.ts";
import { type Client, connect } from "../manager/mod.ts";
import { type Identity, loadIdentity, loadTrust, type TrustStore } from "../tls/mod.ts";
import { delay, note, reapSupervisors } from "./_lib.ts";

/** A server and a manager key directory that trust each other. */
export interface CmappKeys {
  server: string;
  manager: string;
}

/** Writes both key directories under `dir`. */
export async function makeCmappKeys(dir: string): Promise<CmappKeys> {
  const server = `${dir}/server-keys`;
  const manager = `${dir}/manager-keys`;
  const s = await writeIdentity(server, { commonName: "cmappserver@bench" });
  const m = await writeIdentity(manager, { commonName: "cmappmgr@bench" });
  await trust(server, "manager", m.certPem);
  await trust(manager, "server", s.certPem);
  return { server, manager };
}

/** A running cmappserver. */
export interface CmappServer {
  port: number;
  pid: number;
  args: string[];
  stateDir: string;
  log(): Promise<string>;
  /**
   * SIGTERM, waits for the exit, then ends what is left of its runs
   * (applications still running and their supervisors, which outlive it).
   */
  stop(): Promise<number>;
}

/** Starts the real cmappserver program; `tag` names its state directory and log. */
export async function startCmappServer(
  dir: string,
  keys: CmappKeys,
  tag: string,
  maxProcesses = 2000,
): Promise<CmappServer> {
  const logPath = `${dir}/cmappserver-${tag}.log`;
  const args = [
    ...programCommand("cmappserver"),
    "-keydir",
    keys.server,
    "-bind",
    "127.0.0.1",
    "-port",
    "0",
    "-statedir",
    `${dir}/state-${tag}`,
    "-config",
    "/dev/null",
    "-max_processes",
    String(maxProcesses),
    "-loglevel",
    "info",
    "-logfile",
    logPath,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const log = () => Deno.readTextFile(logPath).catch(() => "");
  const deadline = Date.now() + 30_000;
  let port = 0;
  while (!port) {
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(await log());
    if (m) port = Number(m[1]);
    else if (exited) throw new Error(`cmappserver exited: ${await stderr}${await log()}`);
    else if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`cmappserver did not start: ${await log()}`);
    } else await delay(20);
  }
  return {
    port,
    pid: child.pid,
    args,
    stateDir: `${dir}/state-${tag}`,
    log,
    async stop() {
      if (!exited) child.kill("SIGTERM");
      const s = await status;
      await stderr;
      const left = await reapSupervisors(`${dir}/state-${tag}`);
      if (left > 0) note(`   cmappserver ${tag}: ${left} supervisor(s) left behind, killed`);
      return s.code;
    },
  };
}

const _loaded = new Map<string, Promise<[Identity, TrustStore]>>();

/** Opens a client API connection to `server` (the manager keys are loaded once). */
export async function cmappClient(keys: CmappKeys, server: CmappServer): Promise<Client> {
  let p = _loaded.get(keys.manager);
  if (!p) {
    p = Promise.all([loadIdentity(keys.manager), loadTrust(keys.manager, "server")]);
    _loaded.set(keys.manager, p);
  }
  const [identity, trust] = await p;
  return await connect({ host: "127.0.0.1", port: server.port, identity, trust });
}

/** The cmappmgr command line (for `Deno.execPath()`) running `argv` on `server`. */
export function mgrArgs(
  keys: CmappKeys,
  server: CmappServer,
  argv: string[],
  options: string[] = [],
): string[] {
  return [
    ...programCommand("cmappmgr"),
    "-node",
    "127.0.0.1",
    "-port",
    String(server.port),
    "-keydir",
    keys.manager,
    ...options,
    "--",
    ...argv,
  ];
}

/** A shell word, quoted for sh. */
export function shq(s: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** A running `bench/_tls_sender.ts`. */
export interface TlsSender {
  /** Its TLS port on 127.0.0.1. */
  port: number;
  /** Its process (for CPU figures). */
  child: Deno.ChildProcess;
  /** Ends it. */
  stop(): Promise<void>;
}

/**
 * Starts `bench/_tls_sender.ts` with the server keys of `keys`: every
 * connection to it gets `bytes` bytes, from one buffer or through a pipe.
 */
export async function startTlsSender(
  keys: CmappKeys,
  bytes: number,
  mode: "buffer" | "pipe" = "buffer",
): Promise<TlsSender> {
  const child = new Deno.Command(Deno.execPath(), {
    args: scriptCommand(`${ROOT}/bench/_tls_sender.ts`, keys.server, String(bytes), mode),
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // gone
    }
    await child.status;
  };
  const port = Number(text.trim());
  if (!Number.isInteger(port) || port <= 0) {
    await stop();
    throw new Error("the TLS sender did not start");
  }
  return { port, child, stop };
}
