/**
 * The supervisor program cmappserver runs for each run (cmapp-supervise,
 * built from supervise/cmapp-supervise.c): where its bytes come from (the
 * bundle or the compiled binary embeds them; a checkout has them under
 * dist/supervise/), and installing it into the state directory by hash, so
 * that what runs is exactly what was shipped.
 *
 * @module
 */

const _embedded = new Map<string, Uint8Array>();

/**
 * The supervisor is not there for this machine; the message says how to get it.
 *
 * @example
 * ```ts ignore
 * import { installSupervisor, SupervisorMissingError } from "./supervisor_binary.ts";
 * try {
 *   await installSupervisor("/var/lib/cmappserver/bin");
 * } catch (e) {
 *   if (e instanceof SupervisorMissingError) console.error(e.message); // "deno task build:supervisor"
 * }
 * ```
 */
export class SupervisorMissingError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "SupervisorMissingError";
  }
}

/**
 * Registers the supervisor's bytes for an architecture; called by the
 * module that `deno task bundle` generates, before cmappserver starts.
 *
 * @example
 * ```ts ignore
 * import { embedSupervisor } from "./supervisor_binary.ts";
 * embedSupervisor("x86_64", "f0VMRgIBAQ…");
 * ```
 */
export function embedSupervisor(arch: string, base64: string): void {
  const bin = atob(base64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  _embedded.set(arch, bytes);
}

/** The supervisor's bytes for this machine: embedded, else from a checkout's dist/. */
async function _bytes(): Promise<Uint8Array> {
  const arch = Deno.build.arch;
  const embedded = _embedded.get(arch);
  if (embedded) return embedded;
  const url = new URL(`../dist/supervise/${arch}/cmapp-supervise`, import.meta.url);
  try {
    return await Deno.readFile(url);
  } catch {
    throw new SupervisorMissingError(
      `the supervisor program for ${arch} is not built (${url.pathname}): run ` +
        `"deno task build:supervisor" in the checkout (it needs a C compiler: apt-get install ` +
        `gcc libc6-dev, or musl-tools)`,
    );
  }
}

async function _sha256(bytes: Uint8Array): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Installs the supervisor into `binDir` as `cmapp-supervise-HASH` (mode
 * 0700), unless a file of that name already holds exactly those bytes;
 * removes older versions (running supervisors do not need their file);
 * and checks that it runs here (`-V`), so that a noexec state directory or
 * a wrong architecture stops cmappserver at start, not at the first launch.
 * Returns its path.
 *
 * @throws {SupervisorMissingError} when there is no supervisor for this machine, or it cannot run
 * @example
 * ```ts ignore
 * import { installSupervisor } from "./supervisor_binary.ts";
 * const path = await installSupervisor("/var/lib/cmappserver/bin");
 * ```
 */
export async function installSupervisor(binDir: string): Promise<string> {
  const bytes = await _bytes();
  const hash = await _sha256(bytes);
  const name = `cmapp-supervise-${hash.slice(0, 16)}`;
  const path = `${binDir}/${name}`;
  const have = await Deno.readFile(path).catch(() => null);
  if (!have || await _sha256(have) !== hash) {
    const tmp = `${path}.tmp-${Deno.pid}`;
    await Deno.remove(tmp).catch(() => {});
    await Deno.writeFile(tmp, bytes, { mode: 0o700, createNew: true });
    await Deno.chmod(tmp, 0o700);
    await Deno.rename(tmp, path);
  }
  for await (const e of Deno.readDir(binDir)) {
    if (e.name !== name && e.name.startsWith("cmapp-supervise-")) {
      await Deno.remove(`${binDir}/${e.name}`).catch(() => {});
    }
  }
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(path, {
      args: ["-V"],
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new SupervisorMissingError(
      `cannot run the supervisor ${path}: ${(e as Error).message} (is ${binDir} on a noexec ` +
        `mount?)`,
    );
  }
  if (out.code !== 0 || !new TextDecoder().decode(out.stdout).startsWith("cmapp-supervise ")) {
    throw new SupervisorMissingError(`the supervisor ${path} does not run here (exit ${out.code})`);
  }
  return path;
}
