/**
 * Builds cmapp-supervise, the per-run supervisor (supervise/cmapp-supervise.c),
 * into dist/supervise/ARCH/cmapp-supervise: static, stripped, with
 * `-Wall -Wextra -Werror`. musl-gcc is used when installed (a ~90 KB
 * binary), else the system's cc with glibc's static libc. The aarch64 build
 * needs gcc-aarch64-linux-gnu. A build is skipped when its stamp (the
 * source's and the command's hash) matches.
 *
 * ```sh
 * deno run -P=cmapp tools/supervisor.ts            # this machine's architecture
 * deno run -P=cmapp tools/supervisor.ts all        # x86_64 and aarch64
 * deno run -P=cmapp tools/supervisor.ts asan       # x86_64 with ASan and UBSan (tests)
 * ```
 *
 * @module
 */

import { ROOT } from "./_programs.ts";

/** The architectures cmapp ships a supervisor for. */
export const SUPERVISOR_ARCHES = ["x86_64", "aarch64"] as const;
/** One of {@linkcode SUPERVISOR_ARCHES}, or the sanitizer build. */
export type SupervisorFlavour = typeof SUPERVISOR_ARCHES[number] | "x86_64-asan";

const SOURCE = `${ROOT}/supervise/cmapp-supervise.c`;
const WARN = ["-std=c11", "-Wall", "-Wextra", "-Werror"];

/** The supervisor's source is missing a compiler here; the message says what to install. */
export class NoCompilerError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "NoCompilerError";
  }
}

async function _which(name: string): Promise<string | null> {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    const p = `${dir}/${name}`;
    const st = await Deno.stat(p).catch(() => null);
    if (st?.isFile && ((st.mode ?? 0) & 0o111)) return p;
  }
  return null;
}

/** The compiler and flags for a flavour; throws NoCompilerError naming the package. */
async function _command(flavour: SupervisorFlavour): Promise<string[]> {
  if (flavour === "aarch64") {
    const cc = await _which("aarch64-linux-gnu-gcc");
    if (!cc) {
      throw new NoCompilerError(
        "building cmapp-supervise for aarch64 needs a cross compiler: " +
          "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
      );
    }
    return [cc, ...WARN, "-Os", "-static", "-s"];
  }
  if (flavour === "x86_64-asan") {
    const cc = await _which("gcc") ?? await _which("cc");
    if (!cc) throw new NoCompilerError("the sanitizer build needs gcc: apt-get install gcc");
    return [cc, ...WARN, "-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"];
  }
  if (Deno.build.arch !== "x86_64") {
    throw new NoCompilerError(`this machine is ${Deno.build.arch}: build x86_64 on an x86_64 host`);
  }
  const musl = await _which("musl-gcc");
  if (musl) return [musl, ...WARN, "-Os", "-static", "-s"];
  const cc = await _which("cc") ?? await _which("gcc");
  if (!cc) {
    throw new NoCompilerError(
      "cmappserver's supervisor (supervise/cmapp-supervise.c) must be built, and no C compiler " +
        "was found: apt-get install gcc libc6-dev (or musl-tools for a smaller binary)",
    );
  }
  return [cc, ...WARN, "-Os", "-static", "-s"];
}

/** Where the build of a flavour goes. */
export function supervisorPath(flavour: SupervisorFlavour): string {
  return `${ROOT}/dist/supervise/${flavour}/cmapp-supervise`;
}

async function _hash(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Builds one flavour unless its stamp says it is up to date; returns its path.
 * @throws {NoCompilerError} when no compiler for it is installed
 * @throws {Error} with the compiler's output when the build fails
 */
export async function buildSupervisor(
  flavour: SupervisorFlavour = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64",
): Promise<string> {
  const out = supervisorPath(flavour);
  const cmd = await _command(flavour);
  const stamp = await _hash(cmd.join("\0") + "\0" + await Deno.readTextFile(SOURCE));
  const have = await Deno.readTextFile(`${out}.stamp`).catch(() => "");
  if (have === stamp && await Deno.stat(out).then(() => true, () => false)) return out;
  await Deno.mkdir(`${ROOT}/dist/supervise/${flavour}`, { recursive: true });
  const tmp = `${out}.tmp-${Deno.pid}`;
  const r = await new Deno.Command(cmd[0], {
    args: [...cmd.slice(1), "-o", tmp, SOURCE],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (r.code !== 0) {
    await Deno.remove(tmp).catch(() => {});
    const d = new TextDecoder();
    throw new Error(
      `building cmapp-supervise (${flavour}) failed:\n${cmd.join(" ")}\n` +
        d.decode(r.stdout) + d.decode(r.stderr),
    );
  }
  await Deno.rename(tmp, out);
  await Deno.writeTextFile(`${out}.stamp`, stamp);
  return out;
}

if (import.meta.main) {
  const quiet = Deno.args.includes("-q");
  const what = Deno.args.filter((a) => a !== "-q")[0] ?? "native";
  const flavours: SupervisorFlavour[] = what === "all"
    ? [...SUPERVISOR_ARCHES]
    : what === "asan"
    ? ["x86_64-asan"]
    : what === "native"
    ? [Deno.build.arch === "aarch64" ? "aarch64" : "x86_64"]
    : [];
  if (flavours.length === 0) {
    console.error("usage: deno run -P=cmapp tools/supervisor.ts [native|all|asan]");
    Deno.exit(2);
  }
  try {
    for (const f of flavours) {
      const p = await buildSupervisor(f);
      if (!quiet) console.log(`${p}  ${(await Deno.stat(p)).size} bytes`);
    }
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
