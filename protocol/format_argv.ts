/**
 * A command line as one line of text for people: in messages, logs and lists.
 *
 * @module
 */

/** Words that need no quoting to be read back as one word. */
const _PLAIN = /^[A-Za-z0-9_@%+=:,./-]+$/;

/**
 * `argv` as one line: plain words as they are, any other word in double
 * quotes with JSON escapes (so blanks, quotes and control characters show),
 * cut to `max` characters with a trailing "…".
 *
 * @example
 * ```ts
 * import { formatArgv } from "./format_argv.ts";
 * formatArgv(["sh", "-c", "sleep 30"]); // 'sh -c "sleep 30"'
 * formatArgv(["echo", "x".repeat(10)], 8); // "echo xx…"
 * ```
 */
export function formatArgv(argv: readonly string[], max: number = 200): string {
  const line = argv.map((a) => _PLAIN.test(a) ? a : JSON.stringify(a)).join(" ");
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}
