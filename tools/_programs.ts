/**
 * How to start our two programs from source (or from bundles) with the
 * project's one permission set. Used by the demo and the tests.
 *
 * @module
 */

/** The repository root. */
export const ROOT: string = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Arguments for `Deno.execPath()` that run a script (runtime flags first, if any, then the script and its arguments) with the
 * project's config and permission set (`-P=cmapp` from deno.json), as the
 * tasks do.
 */
export function scriptCommand(...scriptAndArgs: string[]): string[] {
  return [
    "run",
    "-q",
    "--no-prompt",
    "--config",
    `${ROOT}/deno.json`,
    "-P=cmapp",
    ...scriptAndArgs,
  ];
}

/**
 * Arguments for `Deno.execPath()` that run one of our programs with the
 * project's permission set. With CMAPP_BUNDLE_DIR set, the bundles in that
 * directory are run instead (with `--cached-only`: no downloads).
 */
export function programCommand(program: "cmappserver" | "cmappmgr"): string[] {
  const bundleDir = Deno.env.get("CMAPP_BUNDLE_DIR");
  const flags = RUNTIME_FLAGS[program];
  if (!bundleDir) return scriptCommand(...flags, `${ROOT}/cli/${program}.ts`);
  return scriptCommand("--cached-only", ...flags, `${bundleDir}/${program}.js`);
}

/**
 * The runtime flags each program runs with, wherever it runs: the deno.json
 * tasks, the tests, the bundles' wrappers and `deno compile` all pass them
 * (tests/runtime_flags_test.ts checks that they agree).
 * - Both: `--expose-gc`, for the scavenge every 2 MiB moved through a
 *   connection (protocol/_scavenger.ts): the runtime's TLS makes a native
 *   buffer per read and per write that only a collection frees. cmappmgr
 *   streaming 256 MiB peaked at 88 MiB instead of 150, and both directions
 *   got faster (stdout 118-125 to 155-181 MB/s).
 * - cmappserver: a 1 MiB young generation and 10 % old-generation growth make
 *   V8 collect before its heap grows. Without them, 3 peers flooding requests
 *   whose answers they do not read grew the daemon by 150 MiB, all of it
 *   garbage (the live heap was 11 MiB); with them, by 56 MiB, at the same
 *   throughput. (`--optimize-for-size` did as well on memory but tripled the
 *   daemon's CPU per GiB of stdin.)
 * - cmappserver: `--unstable-net`, for the one unix datagram it sends to
 *   systemd's $NOTIFY_SOCKET when it is ready (`Deno.listenDatagram`; the
 *   runtime has no stable way to send a datagram to a unix socket).
 */
export const RUNTIME_FLAGS: Record<"cmappserver" | "cmappmgr", readonly string[]> = {
  cmappserver: [
    "--unstable-net",
    "--v8-flags=--expose-gc,--max-semi-space-size=1,--heap-growing-percent=10",
  ],
  cmappmgr: ["--v8-flags=--expose-gc"],
};
