/**
 * The guest daemon: {@linkcode startServer} and its parts.
 *
 * @example
 * ```ts ignore
 * import { startServer } from "./mod.ts";
 * const server = await startServer({ identity, trust, stateDir: "/tmp/state", port: 0 });
 * ```
 *
 * @module
 */
export * from "./server.ts";
export { DEFAULT_POLICY, type LaunchPolicy } from "./policy.ts";
export { DEFAULT_PATH } from "./program.ts";
export { embedSupervisor, installSupervisor, SupervisorMissingError } from "./supervisor_binary.ts";
export { StateDirError } from "./store.ts";
export { ProtocolViolation, RequestError, UnknownRunError } from "./errors.ts";
