/**
 * Levelled logging shared by both programs: one line per event, with a
 * timestamp, the program name and the level.
 *
 * @module
 */

/** Log levels, most severe first. */
export type LogLevel = "error" | "warn" | "info" | "debug";

const _RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** Parses a level name; null when it is not one. */
export function parseLogLevel(s: string): LogLevel | null {
  const l = s.toLowerCase();
  return l in _RANK ? l as LogLevel : null;
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
}

const _encoder = new TextEncoder();

function _stderr(line: string): void {
  try {
    Deno.stderr.writeSync(_encoder.encode(line + "\n"));
  } catch {
    // stderr closed: nowhere left to report to.
  }
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
  const write = options.write ?? _stderr;
  const max = _RANK[options.level];
  const emit = (level: LogLevel) => (message: string) => {
    if (_RANK[level] > max) return;
    write(`${new Date().toISOString()} ${options.program}[${Deno.pid}] ${level}: ${message}`);
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
