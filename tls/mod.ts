/**
 * Keys, pinned trust and mutual-TLS sockets.
 *
 * @example
 * ```ts ignore
 * import { connectTls, loadIdentity, loadTrust } from "./mod.ts";
 * const identity = await loadIdentity("/etc/cmappmgr");
 * const trust = await loadTrust("/etc/cmappmgr", "server");
 * const { socket } = await connectTls({ host: "guest1", port: 5315, identity, trust, timeoutMs: 5000 });
 * ```
 *
 * @module
 */
export * from "./certificate.ts";
export * from "./keygen.ts";
export * from "./keydir.ts";
export * from "./sockets.ts";
