/**
 * Writing whole strings to stdout and stderr from the command-line programs.
 *
 * @module
 */

import type { LogLevel } from "../log/logger.ts";
import { forStderr } from "../log/sinks.ts";

const _encoder = new TextEncoder();

function _writeAll(w: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = _encoder.encode(text);
  try {
    while (bytes.length > 0) bytes = bytes.subarray(w.writeSync(bytes));
  } catch {
    // The reader went away; nothing left to tell it.
  }
}

/** Writes `text` to stdout. */
export function printOut(text: string): void {
  _writeAll(Deno.stdout, text);
}

/**
 * Writes a message of ours to stderr; under the journal each line carries
 * the priority of `level` (an error by default).
 */
export function printErr(text: string, level: LogLevel = "error"): void {
  _writeAll(Deno.stderr, forStderr(text, level));
}
