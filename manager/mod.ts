/**
 * The host side: the client API ({@linkcode connect}, {@linkcode Client})
 * and {@linkcode runCommand}, which follows a command to its end.
 *
 * @example
 * ```ts ignore
 * import { runCommand } from "./mod.ts";
 * const { exit } = await runCommand({ host: "guest1", identity, trust, argv: ["/bin/true"],
 *   serverTimeoutMs: 30_000, pollIntervalMs: 1000 });
 * ```
 *
 * @module
 */
export * from "./batch_writer.ts";
export * from "./client.ts";
export * from "./errors.ts";
export * from "./named_runs.ts";
export * from "./session.ts";
