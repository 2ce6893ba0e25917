/**
 * Command-line options in both HP style (`-node guest1`) and GNU style
 * (`--node guest1`, `--node=guest1`); `_` and `-` inside names are the same
 * (`-cmappserver_timeout` = `--cmappserver-timeout`). Options end at `--`
 * or at the first argument that is not an option: everything after it is
 * the command, passed through untouched.
 *
 * @module
 */

/** How one option is written and what it takes. */
export interface OptionSpec {
  /** "string" takes a value; "boolean" does not. */
  type: "string" | "boolean";
  /** May be given more than once (values collected in order). */
  multiple?: boolean;
  /** One-letter alias, e.g. "h" for -h. */
  short?: string;
  /**
   * In a configuration file, the value is the rest of the line as written
   * (no `#` comment cut, no quotes removed): it has a syntax of its own.
   */
  raw?: boolean;
}

/** Parsed options and the rest. */
export interface ParsedArgs {
  /** Option values by canonical (underscore) name. */
  values: Record<string, string | boolean | string[]>;
  /** Arguments after the options. */
  rest: string[];
}

/**
 * A command line that cannot be understood: printed with the usage, exit
 * status 2.
 *
 * @example
 * ```ts
 * import { parseArgs, UsageError } from "./_args.ts";
 * try {
 *   parseArgs(["-nope"], {});
 * } catch (e) {
 *   if (e instanceof UsageError) console.log(e.message); // unknown option -nope
 * }
 * ```
 */
export class UsageError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * Parses `args` against `spec`.
 *
 * @throws {UsageError}
 * @example
 * ```ts
 * import { parseArgs } from "./_args.ts";
 * parseArgs(["-node", "g1", "--port=99", "ls", "-l"], {
 *   node: { type: "string" },
 *   port: { type: "string" },
 * }); // { values: { node: "g1", port: "99" }, rest: ["ls", "-l"] }
 * ```
 */
export function parseArgs(args: string[], spec: Record<string, OptionSpec>): ParsedArgs {
  const values: ParsedArgs["values"] = {};
  const shorts = new Map<string, string>();
  for (const [name, s] of Object.entries(spec)) if (s.short) shorts.set(s.short, name);
  let i = 0;
  for (; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      i++;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") break;
    const body = arg.replace(/^--?/, "");
    const eq = body.indexOf("=");
    const rawName = eq >= 0 ? body.slice(0, eq) : body;
    const name = rawName.length === 1 && !arg.startsWith("--")
      ? (shorts.get(rawName) ?? rawName)
      : rawName.replaceAll("-", "_");
    const s = spec[name];
    if (!s) throw new UsageError(`unknown option ${arg.split("=")[0]}`);
    let value: string | boolean;
    if (s.type === "boolean") {
      if (eq >= 0) throw new UsageError(`option -${name} takes no value`);
      value = true;
    } else if (eq >= 0) {
      value = body.slice(eq + 1);
    } else {
      if (i + 1 >= args.length) throw new UsageError(`option -${name} needs a value`);
      value = args[++i];
    }
    if (s.multiple) {
      const list = (values[name] as string[] | undefined) ?? [];
      list.push(value as string);
      values[name] = list;
    } else {
      if (name in values) throw new UsageError(`option -${name} given more than once`);
      values[name] = value;
    }
  }
  return { values, rest: args.slice(i) };
}

/**
 * Reads a whole number option within bounds.
 *
 * @throws {UsageError}
 * @example
 * ```ts
 * import { intOption } from "./_args.ts";
 * intOption({ port: "5315" }, "port", 5315, 0, 65535); // 5315
 * ```
 */
export function intOption(
  values: ParsedArgs["values"],
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const v = values[name];
  if (v === undefined) return fallback;
  if (typeof v !== "string" || !/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new UsageError(`-${name} must be a whole number from ${min} to ${max}, not ${v}`);
  }
  return Number(v);
}

/**
 * Reads a duration in seconds (decimals allowed) as milliseconds.
 *
 * @throws {UsageError}
 * @example
 * ```ts
 * import { secondsOption } from "./_args.ts";
 * secondsOption({ t: "1.5" }, "t", 30, 0.1, 3600); // 1500
 * ```
 */
export function secondsOption(
  values: ParsedArgs["values"],
  name: string,
  fallbackSeconds: number,
  min: number,
  max: number,
): number {
  const v = values[name];
  if (v === undefined) return fallbackSeconds * 1000;
  const n = typeof v === "string" && /^\d+(\.\d+)?$/.test(v) ? Number(v) : NaN;
  if (!(n >= min && n <= max)) {
    throw new UsageError(`-${name} must be a number of seconds from ${min} to ${max}, not ${v}`);
  }
  return Math.round(n * 1000);
}

/** Reads a string option. */
export function stringOption(
  values: ParsedArgs["values"],
  name: string,
  fallback: string,
): string {
  const v = values[name];
  return typeof v === "string" ? v : fallback;
}
