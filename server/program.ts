/**
 * Finding the program a launch names, the way execvp would: the default
 * PATH, and the lookup of a name in a PATH. Knows nothing of policy or
 * processes.
 *
 * @module
 */

/** The PATH given to every process unless the request sets one. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Why a program cannot be run. */
export interface ProgramFailure {
  /** "not_found" (shell 127), "not_executable" (shell 126) or "spawn_failed". */
  code: "not_found" | "not_executable" | "spawn_failed";
  /** One line for the manager. */
  message: string;
}

function _shortName(name: string): string {
  return name.length > 200 ? `${name.slice(0, 200)}…` : name;
}

/**
 * Resolves a program name the way execvp would, against `path`; returns
 * the absolute path, or why it cannot be run.
 *
 * @example
 * ```ts ignore
 * import { DEFAULT_PATH, resolveProgram } from "./program.ts";
 * await resolveProgram("sh", DEFAULT_PATH); // "/usr/bin/sh"
 * ```
 */
export async function resolveProgram(
  program: string,
  path: string,
): Promise<string | ProgramFailure> {
  const candidates = program.includes("/")
    ? [program]
    : path.split(":").filter((d) => d.startsWith("/")).map((d) => `${d}/${program}`);
  let refusal: string | null = null;
  for (const c of candidates) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(c);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) continue;
      if (e instanceof Deno.errors.PermissionDenied) {
        refusal ??= "permission denied";
        continue;
      }
      const reason = (e as Error).message.replace(/ \(os error \d+\)[\s\S]*$/, "");
      return { code: "spawn_failed", message: `${_shortName(program)}: ${reason}` };
    }
    if (st.isDirectory) {
      refusal ??= "is a directory";
      continue;
    }
    if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return c;
    refusal ??= st.isFile ? "permission denied (not executable)" : "not a regular file";
  }
  return refusal
    ? { code: "not_executable", message: `${_shortName(program)}: ${refusal}` }
    : { code: "not_found", message: `${_shortName(program)}: command not found` };
}
