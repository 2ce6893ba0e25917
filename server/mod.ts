/**
 * The guest daemon: {@linkcode startServer} and its parts.
 *
 * @example
 * ```ts ignore
 * import { startServer } from "./mod.ts";
 * const server = await startServer({ identity, trust, hostname: "127.0.0.1", port: 0 });
 * ```
 *
 * @module
 */
export * from "./server.ts";
export { type ExitListener, type Run, RunTable } from "./runs.ts";
export { DEFAULT_PATH, signalGroup, spawnProcess } from "./supervisor.ts";
