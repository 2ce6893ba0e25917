/**
 * Crash points, for the fault tests: `CMAPP_CRASH_AT=launch.after-spawn`
 * (a comma-separated list) makes cmappserver kill itself with SIGKILL when
 * it reaches that point, as a power cut or an OOM kill would. The names are
 * listed in docs/cmappserver.md; without the variable, nothing happens.
 *
 * @module
 */

let _points: ReadonlySet<string> | null = null;

function _load(): ReadonlySet<string> {
  try {
    return new Set((Deno.env.get("CMAPP_CRASH_AT") ?? "").split(",").filter((p) => p !== ""));
  } catch {
    return new Set(); // no permission to read the environment: no crash points
  }
}

/**
 * Dies at once (SIGKILL to ourselves) if `name` is one of the crash points asked for.
 *
 * @example
 * ```ts ignore
 * import { crashPoint } from "./_crash.ts";
 * crashPoint("launch.after-record");
 * ```
 */
export function crashPoint(name: string): void {
  _points ??= _load();
  if (_points.has(name)) Deno.kill(Deno.pid, "SIGKILL");
}
