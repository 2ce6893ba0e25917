/**
 * Levelled logging shared by both programs: one line per event, with a
 * timestamp, the program name and the level.
 *
 * @module
 */

import { type LogSink, stderrSink } from "./sinks.ts";

/** Log levels, most severe first. */
export type LogLevel = "error" | "warn" | "info" | "debug";

const _RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** Parses a level name; null when it is not one. */
export function parseLogLevel(s: string): LogLevel | null {
  const l = s.toLowerCase();
  return l in _RANK ? l as LogLevel : null;
}

/**
 * Escapes what could end or forge a log line: C0 control characters, DEL
 * and the Unicode line breaks (NEL, LS, PS) become `\n`, `\t`, `\xNN` or
 * `\uNNNN`. Every message is escaped on its way to a sink, so no field of
 * a request (a cwd, an argv entry, a name) can start a line of its own.
 *
 * @example
 * ```ts
 * import { escapeControl } from "./logger.ts";
 * escapeControl("a\nb"); // "a\\nb": one line
 * ```
 */
export function escapeControl(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\x00-\x1f\x7f\x85\u2028\u2029]/g, (c) => {
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    const n = c.charCodeAt(0);
    return n < 0x100 ? `\\x${n.toString(16).padStart(2, "0")}` : `\\u${n.toString(16)}`;
  });
}

/** Where log lines go. */
export interface Logger {
  /** Something failed. */
  error(message: string): void;
  /** Something is wrong but work goes on. */
  warn(message: string): void;
  /** A state change worth keeping. */
  info(message: string): void;
  /** Detail for debugging. */
  debug(message: string): void;
}

/** Options for {@linkcode createLogger}. */
export interface LoggerOptions {
  /** Program name shown on each line. */
  program: string;
  /** Least severe level written. */
  level: LogLevel;
  /** Receives each formatted line (without newline); stderr by default. */
  write?: (line: string) => void;
  /**
   * Destinations; used instead of `write` when given. A destination given
   * with its own level gets only lines at that level or more severe.
   */
  sinks?: (LogSink | { sink: LogSink; level: LogLevel })[];
  /** Prepended to each message, e.g. "[web] " for a service name. */
  prefix?: string;
}

/**
 * A logger writing lines like
 * `2026-11-24T10:00:00.000Z cmappserver[42] info: listening on 0.0.0.0:5315`.
 *
 * @example
 * ```ts
 * import { createLogger } from "./logger.ts";
 * const log = createLogger({ program: "cmappserver", level: "info" });
 * log.info("listening");
 * ```
 */
export function createLogger(options: LoggerOptions): Logger {
  const write = options.write;
  const sinks = (options.sinks ?? (write ? [] : [stderrSink])).map((s) =>
    "sink" in s ? { sink: s.sink, max: Math.min(_RANK[s.level], _RANK[options.level]) } : {
      sink: s,
      max: _RANK[options.level],
    }
  );
  const max = Math.max(_RANK[options.level], ...sinks.map((s) => s.max));
  const prefix = options.prefix ?? "";
  const emit = (level: LogLevel) => (message: string) => {
    if (_RANK[level] > max) return;
    const text = escapeControl(prefix + message);
    const line = `${new Date().toISOString()} ${options.program}[${Deno.pid}] ${level}: ${text}`;
    if (write) write(line);
    for (const s of sinks) if (_RANK[level] <= s.max) s.sink.write(line, level, text);
  };
  return { error: emit("error"), warn: emit("warn"), info: emit("info"), debug: emit("debug") };
}

/** A logger that drops everything. */
export const silentLogger: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
};
