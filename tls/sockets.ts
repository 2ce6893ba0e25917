/**
 * Mutually authenticated TLS sockets with pinned certificates: the server
 * side (listen, handshake timeout, peer check) and the client side
 * (connect, peer check, clear errors). Knows nothing of frames.
 *
 * @module
 */

import tls from "node:tls";
import type { AddressInfo } from "node:net";
import { certificateFromDer, type CertificateInfo, certificateProblem } from "./certificate.ts";
import type { Identity, TrustStore } from "./keydir.ts";
import { type AcceptWatchdog, watchAccepts } from "./_accept_watchdog.ts";

/** The TLS socket type handed to upper layers. */
export type TlsSocket = tls.TLSSocket;

/** The outcome of checking a peer's certificate against our pins. */
export interface PeerCheck {
  /** The peer's "address:port". */
  address: string;
  /** Fingerprint of the certificate it presented, if any. */
  fingerprint: string | null;
  /** The pinned certificate it matched. */
  info: CertificateInfo | null;
  /** Why it is refused, or null when it is accepted. */
  problem: string | null;
  /**
   * The refusal in plain words, for logs: "no certificate", "not pinned",
   * "expired", "not yet valid" or "a CA certificate"; null when accepted.
   */
  refusal: PeerRefusal | null;
}

/** Why a peer's certificate is refused, in the words a log uses. */
export type PeerRefusal =
  | "no certificate"
  | "not pinned"
  | "expired"
  | "not yet valid"
  | "a CA certificate";

/** The plain-words kind of a {@linkcode certificateProblem}. */
function _refusalOf(problem: string): PeerRefusal {
  if (problem.startsWith("expired")) return "expired";
  if (problem.startsWith("not valid before")) return "not yet valid";
  return "a CA certificate";
}

type _Peer = { remoteAddress?: string; remotePort?: number; _parent?: _Peer };

/** A TCP socket as node:tls's "connection" event hands it over. */
type _Raw = _Peer & {
  destroy(): void;
  once(e: "close", f: () => void): void;
  off?(e: "close", f: () => void): void;
  /** Our close handler, kept to remove it when we count the socket out ourselves. */
  _cmappClosed?: () => void;
};

/** The TCP handle under a server-side TLS socket, as Deno 2.9's node:tls builds it. */
type _TcpHandle = { readStop?(): number; readStart?(): number };

/**
 * Makes `pause()` hold the peer back. Deno 2.9's node:tls goes on reading
 * from TCP while its TLS socket is paused, and buffers whatever the peer
 * sends (a peer that writes and never reads its answers grew a server by
 * 60 MiB in 3 s); stopping the TCP handle under it leaves the bytes in the
 * kernel, and the peer's writes back up. Only a pause of ours is undone.
 */
function _pauseForReal(sock: tls.TLSSocket): void {
  const tcp = (sock as unknown as { _parent?: { _handle?: _TcpHandle } })._parent?._handle;
  if (typeof tcp?.readStop !== "function" || typeof tcp.readStart !== "function") return;
  const pause = sock.pause.bind(sock);
  const resume = sock.resume.bind(sock);
  let stopped = false;
  sock.pause = () => {
    if (!stopped && !sock.destroyed) {
      stopped = true;
      tcp.readStop!();
    }
    return pause();
  };
  sock.resume = () => {
    if (stopped && !sock.destroyed) {
      stopped = false;
      tcp.readStart!();
    }
    return resume();
  };
}

function _address(sock: _Peer): string {
  // Before the handshake completes, Node's TLS socket may not know the
  // address yet; the TCP socket under it (_parent) does.
  const s = sock.remoteAddress ? sock : (sock._parent ?? sock);
  const host = s.remoteAddress ?? "?";
  return `${host.includes(":") ? `[${host}]` : host}:${s.remotePort ?? "?"}`;
}

async function _checkPeer(sock: tls.TLSSocket, trust: TrustStore): Promise<PeerCheck> {
  const address = _address(sock);
  const raw = sock.getPeerCertificate(true)?.raw;
  if (!raw || raw.length === 0) {
    return {
      address,
      fingerprint: null,
      info: null,
      problem: "none was presented",
      refusal: "no certificate",
    };
  }
  const presented = await certificateFromDer(new Uint8Array(raw));
  const pinned = trust.byFingerprint.get(presented.fingerprint);
  if (!pinned) {
    return {
      address,
      fingerprint: presented.fingerprint,
      info: presented,
      problem: `certificate ${presented.fingerprint} (${presented.subject}) is not in ${trust.dir}`,
      refusal: "not pinned",
    };
  }
  const problem = certificateProblem(pinned);
  return {
    address,
    fingerprint: pinned.fingerprint,
    info: pinned,
    problem: problem ? `certificate ${pinned.fingerprint} (${pinned.subject}) ${problem}` : null,
    refusal: problem ? _refusalOf(problem) : null,
  };
}

/** Options for {@linkcode listenTls}. */
export interface TlsListenOptions {
  /** Our key and certificate. */
  identity: Identity;
  /** The managers we accept. */
  trust: TrustStore;
  /** Address to bind. */
  hostname: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** A client that has not finished the handshake by then is dropped. */
  handshakeTimeoutMs: number;
  /** Connections beyond this many at once are dropped on arrival. */
  maxConnections?: number;
  /** A handshake completed; `peer.problem` says whether to refuse it. */
  onSecureConnection(socket: TlsSocket, peer: PeerCheck): void;
  /** A handshake failed (garbage, plaintext, untrusted certificate, timeout). */
  onHandshakeError(address: string, reason: string): void;
  /** The listener itself: it stopped accepting (out of file descriptors), it listens again. */
  onListenerEvent?(message: string): void;
}

/** A listening mutual-TLS server. */
export interface TlsListener {
  /** Bound address. */
  readonly hostname: string;
  /** Bound port. */
  readonly port: number;
  /** Replaces the trusted certificates for new connections. */
  setTrust(trust: TrustStore): void;
  /** Stops listening (live connections are left to their owners). */
  close(): Promise<void>;
}

/**
 * Listens for mutual-TLS clients. Only clients presenting a pinned
 * certificate complete the handshake; garbage and plaintext are dropped at
 * once, silent clients after the handshake timeout.
 *
 * @example
 * ```ts ignore
 * import { listenTls } from "./sockets.ts";
 * const l = await listenTls({ identity, trust, hostname: "127.0.0.1", port: 0,
 *   handshakeTimeoutMs: 10_000, onSecureConnection: (s, peer) => {}, onHandshakeError: () => {} });
 * ```
 */
export function listenTls(options: TlsListenOptions): Promise<TlsListener> {
  let trust = options.trust;
  const server = tls.createServer({
    key: options.identity.keyPem,
    cert: options.identity.certPem,
    ca: trust.pems,
    // A certificate is asked for, and its possession proven (TLS checks the client's signature
    // whatever else), but the pins are checked after the handshake (_checkPeer): a refusal in the
    // handshake would leave neither side knowing which certificate was refused, or why.
    requestCert: true,
    rejectUnauthorized: false,
    handshakeTimeout: options.handshakeTimeoutMs,
    minVersion: "TLSv1.2",
  });
  // Connections dropped for max_connections: their TLS layer then reports a
  // failed handshake, which is not news.
  const dropped = new WeakSet<object>();
  // Connections that have not finished the TLS handshake, oldest first: at
  // most half of max_connections, so that silent or slow clients (slowloris)
  // can never lock a real manager out; beyond that, the oldest is dropped.
  const handshaking = new Set<_Raw>();
  if (options.maxConnections !== undefined) {
    const max = options.maxConnections;
    const maxHandshaking = Math.max(1, Math.ceil(max / 2));
    let open = 0;
    server.on("connection", (raw: _Raw) => {
      if (handshaking.size >= maxHandshaking || (open >= max && handshaking.size > 0)) {
        const oldest = handshaking.values().next().value!;
        handshaking.delete(oldest);
        options.onHandshakeError(
          _address(oldest),
          `dropped: the oldest of ${handshaking.size + 1} connections still in the TLS handshake ` +
            `(at most ${maxHandshaking}, half of max_connections ${max}), for a new one`,
        );
        dropped.add(oldest);
        oldest.destroy();
        // Its close event comes later: count it out now, and only once.
        open--;
        oldest.off?.("close", oldest._cmappClosed!);
      }
      if (open >= max) {
        options.onHandshakeError(
          _address(raw),
          `dropped: ${open} connections already open (max_connections ${max})`,
        );
        dropped.add(raw);
        raw.destroy();
        return;
      }
      open++;
      handshaking.add(raw);
      raw._cmappClosed = () => {
        open--;
        handshaking.delete(raw);
      };
      raw.once("close", raw._cmappClosed);
    });
  }
  server.on("secureConnection", (sock: tls.TLSSocket) => {
    const raw = (sock as _Peer)._parent as _Raw | undefined;
    if (raw) handshaking.delete(raw);
    sock.setNoDelay(true);
    _pauseForReal(sock);
    // Errors after this point belong to the connection's owner; until it
    // attaches, keep an unhandled one from crashing the process.
    sock.on("error", () => {});
    _checkPeer(sock, trust).then(
      (peer) => {
        if (sock.destroyed) {
          options.onHandshakeError(peer.address, "closed the connection right after the handshake");
          return;
        }
        if (peer.problem) {
          // Refused: it is told why and closed by the owner. Meanwhile it reads nothing more (what
          // the peer sends waits in TCP, not in memory), and it no longer counts against
          // max_connections, so that refused peers cannot lock a pinned manager out.
          sock.pause();
          const closed = raw?._cmappClosed;
          if (raw && closed) {
            closed();
            raw.off?.("close", closed);
            raw._cmappClosed = undefined;
          }
        }
        options.onSecureConnection(sock, peer);
      },
      (e) => {
        options.onHandshakeError(_address(sock), `unreadable certificate: ${(e as Error).message}`);
        sock.destroy();
      },
    );
  });
  let watchdog: AcceptWatchdog | null = null;
  server.on("tlsClientError", (err: Error, sock: tls.TLSSocket) => {
    const parent = (sock as _Peer | undefined)?._parent;
    if ((parent && dropped.has(parent)) || watchdog?.isProbe(parent?.remotePort)) {
      sock.destroy();
      return;
    }
    options.onHandshakeError(sock ? _address(sock as _Peer) : "?", _tlsReason(err));
    sock?.destroy();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.hostname, () => {
      server.off("error", reject);
      server.on("error", () => {});
      const addr = server.address() as AddressInfo;
      watchdog = watchAccepts(
        server,
        options.hostname,
        addr.port,
        (m) => options.onListenerEvent?.(m),
      );
      resolve({
        hostname: addr.address,
        port: addr.port,
        setTrust(next: TrustStore) {
          trust = next;
          server.setSecureContext({
            key: options.identity.keyPem,
            cert: options.identity.certPem,
            ca: next.pems,
          });
        },
        close: () => {
          watchdog?.stop();
          return new Promise<void>((res) => server.close(() => res()));
        },
      });
    });
  });
}

/**
 * A failed server-side handshake in plain words. The server refuses no
 * client certificate during the handshake (the pins are checked after it),
 * so an alert about certificates comes from a client that refused ours.
 */
function _tlsReason(err: Error): string {
  const msg = err.message || String(err);
  if (/handshake timeout/i.test(msg)) {
    return "handshake timeout: it did not finish the TLS handshake in time";
  }
  if (/wrong version number|InvalidContentType|http request|corrupt message/i.test(msg)) {
    return "not a TLS client: it sent plaintext or garbage";
  }
  const alert = /fatal alert:? *(\w+)/i.exec(msg)?.[1];
  if (
    alert && /UnknownCA|BadCertificate|CertificateUnknown|DecryptError|Unsupported|Expired/i.test(
      alert,
    )
  ) {
    return `the manager does not trust this guest's certificate (TLS alert ${alert}): pin this ` +
      `guest's cert.pem in the host's trusted/ directory`;
  }
  if (alert) return `the client ended the TLS handshake with the alert ${alert}`;
  if (/ECONNRESET|socket hang up|EPIPE/i.test(msg)) {
    return "hung up: it closed the connection during the TLS handshake";
  }
  return `TLS handshake failed: ${msg}`;
}

/** What went wrong when connecting. */
export type TlsConnectErrorKind =
  /**
   * No connection, or it was lost before the handshake completed: refused,
   * unreachable (whatever the route said: unreachable, blackhole, prohibit),
   * name not found, timed out, reset. Worth trying again.
   */
  | "unreachable"
  /** The server's certificate is not one we trust, or is expired/not yet valid. */
  | "server_untrusted"
  /** The peer spoke TLS wrongly, or not at all: a protocol failure, not a network one. */
  | "handshake";

/**
 * A failed connection attempt, with one clear line of explanation.
 *
 * @example
 * ```ts ignore
 * try { await connectTls(opts); } catch (e) {
 *   if (e instanceof TlsConnectError && e.kind === "unreachable") retryLater();
 * }
 * ```
 */
export class TlsConnectError extends Error {
  /** The category, for exit codes and retries. */
  readonly kind: TlsConnectErrorKind;
  /** Builds the error. */
  constructor(kind: TlsConnectErrorKind, message: string) {
    super(message);
    this.name = "TlsConnectError";
    this.kind = kind;
  }
}

/** Options for {@linkcode connectTls}. */
export interface TlsConnectOptions {
  /** Server host name or address. */
  host: string;
  /** Server port. */
  port: number;
  /** Our key and certificate. */
  identity: Identity;
  /** The servers we accept. */
  trust: TrustStore;
  /** Give up on TCP connect plus handshake after this long. */
  timeoutMs: number;
}

/** A connected, verified TLS client socket. */
export interface TlsConnection {
  /** The socket. */
  socket: TlsSocket;
  /** The server's pinned certificate. */
  server: CertificateInfo;
}

type _ConnectFailure = Error & { code?: string; tcpConnected?: boolean };

function _connectOnce(
  options: TlsConnectOptions,
  verify: boolean,
): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    let tcpConnected = false;
    const isIp = /^[\d.]+$/.test(options.host) || options.host.includes(":");
    const sock = tls.connect({
      host: options.host,
      port: options.port,
      key: options.identity.keyPem,
      cert: options.identity.certPem,
      ca: options.trust.pems,
      rejectUnauthorized: verify,
      servername: isIp ? undefined : options.host,
      minVersion: "TLSv1.2",
    });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(
        new TlsConnectError(
          "unreachable",
          `no TLS connection to ${options.host}:${options.port} within ${options.timeoutMs} ms`,
        ),
      );
    }, options.timeoutMs);
    sock.once("secureConnect", () => {
      clearTimeout(timer);
      sock.off("error", onError);
      sock.on("error", () => {});
      sock.setNoDelay(true);
      resolve(sock);
    });
    sock.once("connect", () => tcpConnected = true);
    const onError = (err: _ConnectFailure) => {
      clearTimeout(timer);
      sock.destroy();
      err.tcpConnected = tcpConnected;
      reject(err);
    };
    sock.once("error", onError);
  });
}

/** Errors of the connection itself, once TCP is up: the network, not the peer's TLS. */
const _LOST_CODES = new Set(["ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"]);

/**
 * Connects to a cmappserver over mutual TLS and checks that it presents a
 * pinned, currently valid certificate naming `host`. When the handshake
 * fails on the server's certificate, a second, unverified probe fetches
 * that certificate only to say precisely what is wrong with it.
 *
 * @throws {TlsConnectError}
 * @example
 * ```ts ignore
 * import { connectTls } from "./sockets.ts";
 * const { socket, server } = await connectTls({ host: "guest1", port: 5315, identity, trust,
 *   timeoutMs: 10_000 });
 * ```
 */
export async function connectTls(options: TlsConnectOptions): Promise<TlsConnection> {
  const where = `${options.host}:${options.port}`;
  let sock: tls.TLSSocket;
  try {
    sock = await _connectOnce(options, true);
  } catch (e) {
    if (e instanceof TlsConnectError) throw e;
    const err = e as _ConnectFailure;
    // Whatever stops TCP from connecting is the network's doing (a blackhole route gives EINVAL,
    // a prohibit route EACCES): the TLS layer has not spoken yet.
    if (!err.tcpConnected) {
      throw new TlsConnectError("unreachable", `cannot connect to ${where}: ${err.message}`);
    }
    // A connection reset or cut during the handshake is lost, not refused: our own server refuses
    // a certificate only after the handshake has completed (TLS 1.3), with a clean close.
    if (err.code && _LOST_CODES.has(err.code)) {
      throw new TlsConnectError(
        "unreachable",
        `lost the connection to ${where} during the TLS handshake (${err.code}): ${err.message}`,
      );
    }
    const diagnosis = await _diagnose(options).catch(() => null);
    if (diagnosis) throw new TlsConnectError("server_untrusted", `${where}: server ${diagnosis}`);
    throw new TlsConnectError("handshake", `TLS handshake with ${where} failed: ${err.message}`);
  }
  let peer: PeerCheck;
  try {
    peer = await _checkPeer(sock, options.trust);
  } catch (e) {
    sock.destroy();
    throw new TlsConnectError("server_untrusted", `${where}: ${(e as Error).message}`);
  }
  if (peer.problem || !peer.info) {
    sock.destroy();
    throw new TlsConnectError("server_untrusted", `${where}: server ${peer.problem}`);
  }
  return { socket: sock, server: peer.info };
}

async function _diagnose(options: TlsConnectOptions): Promise<string | null> {
  const sock = await _connectOnce(options, false);
  try {
    const check = await _checkPeer(sock, options.trust);
    if (check.problem) return check.problem;
    if (check.info && !_namesHost(check.info, options.host)) {
      return `certificate ${check.info.fingerprint} does not name ${options.host} (it names: ${
        check.info.names.join(", ") || "nothing"
      }); regenerate it with 'cmappserver keygen -force -name ${options.host}' or connect by one of its names`;
    }
    return null;
  } finally {
    sock.destroy();
  }
}

function _namesHost(info: CertificateInfo, host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  return info.names.some((n) => {
    const name = n.toLowerCase();
    if (name === h) return true;
    return name.startsWith("*.") && h.endsWith(name.slice(1)) &&
      h.split(".").length === name.split(".").length;
  });
}
