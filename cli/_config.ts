/**
 * Configuration files (`/etc/cmappserver.conf`, `/etc/cmappmgr.conf`): one
 * `name = value` per line, names as on the command line (`-port 5315` is
 * `port = 5315`), `#` starts a comment, repeatable options are repeated,
 * booleans are yes/no. The command line wins over the file. Every value is
 * checked before the program does anything, and an error names the file and
 * line.
 *
 * @module
 */

import {
  intOption,
  type OptionSpec,
  type ParsedArgs,
  secondsOption,
  stringOption,
  UsageError,
} from "./_args.ts";

/** Option values with where each one came from. */
export class Settings {
  readonly #values: ParsedArgs["values"];
  readonly #sources: Record<string, string>;

  /**
   * @param values option values by canonical name
   * @param sources "FILE:LINE" for values from a configuration file
   */
  constructor(values: ParsedArgs["values"], sources: Record<string, string> = {}) {
    this.#values = values;
    this.#sources = sources;
  }

  /** True when the option was given (on the command line or in the file). */
  has(name: string): boolean {
    return this.#values[name] !== undefined;
  }

  /** A string option. */
  string(name: string, fallback: string): string {
    return this.#check(name, () => stringOption(this.#values, name, fallback));
  }

  /** A whole number within bounds. */
  int(name: string, fallback: number, min: number, max: number): number {
    return this.#check(name, () => intOption(this.#values, name, fallback, min, max));
  }

  /** A duration in seconds, returned in ms. */
  seconds(name: string, fallback: number, min: number, max: number): number {
    return this.#check(name, () => secondsOption(this.#values, name, fallback, min, max));
  }

  /** A yes/no option. */
  bool(name: string, fallback: boolean): boolean {
    return this.#check(name, () => {
      const v = this.#values[name];
      if (v === undefined) return fallback;
      if (typeof v === "boolean") return v;
      const s = String(v).toLowerCase();
      if (["yes", "true", "on", "1"].includes(s)) return true;
      if (["no", "false", "off", "0"].includes(s)) return false;
      throw new UsageError(`${name} must be yes or no, not ${v}`);
    });
  }

  /** A string option that must be one of `choices`. */
  choice<T extends string>(name: string, fallback: T, choices: readonly T[]): T {
    return this.#check(name, () => {
      const v = stringOption(this.#values, name, fallback);
      if (!choices.includes(v as T)) {
        throw new UsageError(`${name} must be ${choices.join(", ")}, not ${v}`);
      }
      return v as T;
    });
  }

  /** A repeatable option's values, each checked by `check` (which throws UsageError). */
  checkedList(name: string, check: (value: string) => void): string[] {
    return this.#check(name, () => {
      const list = this.list(name);
      list.forEach(check);
      return list;
    });
  }

  /** A repeatable option's values. */
  list(name: string): string[] {
    const v = this.#values[name];
    return Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
  }

  /** Checks a value with `check`, naming its file and line when it fails. */
  #check<T>(name: string, check: () => T): T {
    try {
      return check();
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      const where = this.#sources[name];
      throw new UsageError(where ? `${where}: ${e.message}` : e.message);
    }
  }
}

/**
 * Reads a configuration file against the command line's option spec.
 * Returns null when `optional` and the file does not exist.
 *
 * @throws {UsageError} naming the file and line
 * @example
 * ```ts ignore
 * import { readConfig } from "./_config.ts";
 * const conf = await readConfig("/etc/cmappserver.conf", spec, true);
 * ```
 */
export async function readConfig(
  path: string,
  spec: Record<string, OptionSpec>,
  optional: boolean,
): Promise<{ values: ParsedArgs["values"]; sources: Record<string, string> } | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (optional && e instanceof Deno.errors.NotFound) return null;
    throw new UsageError(`cannot read configuration file ${path}: ${(e as Error).message}`);
  }
  const values: ParsedArgs["values"] = {};
  const sources: Record<string, string> = {};
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const where = `${path}:${i + 1}`;
    const raw = /^\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$/.exec(lines[i]);
    const line = lines[i].replace(/(^|\s)#.*$/, "").trim();
    const m = raw && spec[raw[1].replaceAll("-", "_")]?.raw
      ? raw
      : /^([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*)$/.exec(line);
    if (!m && line === "") continue;
    if (!m) throw new UsageError(`${where}: expected "name = value", got ${JSON.stringify(line)}`);
    const name = m[1].replaceAll("-", "_");
    let value = m[2];
    if (!spec[name]?.raw && /^".*"$/.test(value)) value = value.slice(1, -1);
    const s = spec[name];
    if (!s || name === "config" || name === "help" || name === "version") {
      throw new UsageError(`${where}: unknown option ${m[1]}`);
    }
    if (s.multiple) {
      const list = (values[name] as string[] | undefined) ?? [];
      list.push(value);
      values[name] = list;
    } else {
      if (name in values) {
        throw new UsageError(`${where}: ${name} set twice (also at ${sources[name]})`);
      }
      values[name] = value;
    }
    sources[name] = where;
  }
  return { values, sources };
}

/**
 * Merges a configuration file's values under the command line's: an option
 * on the command line replaces the file's (a repeatable one replaces the
 * whole list).
 */
export function mergeSettings(
  file: { values: ParsedArgs["values"]; sources: Record<string, string> } | null,
  cli: ParsedArgs["values"],
): Settings {
  const values = { ...(file?.values ?? {}), ...cli };
  const sources: Record<string, string> = {};
  for (const [k, where] of Object.entries(file?.sources ?? {})) if (!(k in cli)) sources[k] = where;
  return new Settings(values, sources);
}
