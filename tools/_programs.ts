/**
 * How to start our two programs from source (or from bundles) with the
 * project's one permission set. Used by the demo and the tests.
 *
 * @module
 */

/** The repository root. */
export const ROOT: string = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Arguments for `Deno.execPath()` that run `script` (and `args`) with the
 * project's config and permission set (`-P=cmapp` from deno.json), as the
 * tasks do.
 */
export function scriptCommand(script: string, ...args: string[]): string[] {
  return ["run", "-q", "--no-prompt", "--config", `${ROOT}/deno.json`, "-P=cmapp", script, ...args];
}

/**
 * Arguments for `Deno.execPath()` that run one of our programs with the
 * project's permission set. With CMAPP_BUNDLE_DIR set, the bundles in that
 * directory are run instead (with `--cached-only`: no downloads).
 */
export function programCommand(program: "cmappserver" | "cmappmgr"): string[] {
  const bundleDir = Deno.env.get("CMAPP_BUNDLE_DIR");
  if (!bundleDir) return scriptCommand(`${ROOT}/cli/${program}.ts`);
  return scriptCommand("--cached-only", `${bundleDir}/${program}.js`);
}
