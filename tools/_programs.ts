/**
 * How to start our two programs from source (or from bundles) with the
 * project's one permission set. Used by the demo and the tests.
 *
 * @module
 */

/** The repository root. */
export const ROOT: string = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Arguments for `Deno.execPath()` that run one of our programs with the
 * project's permission set (`-P=cmapp` from deno.json). With
 * CMAPP_BUNDLE_DIR set, the bundles in that directory are run instead.
 */
export function programCommand(program: "cmappserver" | "cmappmgr"): string[] {
  const bundleDir = Deno.env.get("CMAPP_BUNDLE_DIR");
  const entry = bundleDir ? `${bundleDir}/${program}.js` : `${ROOT}/cli/${program}.ts`;
  const cached = bundleDir ? ["--cached-only"] : [];
  return [
    "run",
    "-q",
    "--no-prompt",
    "--config",
    `${ROOT}/deno.json`,
    "-P=cmapp",
    ...cached,
    entry,
  ];
}
