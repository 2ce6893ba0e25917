/**
 * Shared fast-check arbitraries and helpers for the protocol tests.
 *
 * Property tests run a few hundred cases by default so that CI stays fast.
 * Set CMAPP_FUZZ_RUNS to a larger number for a long fuzzing session, and
 * CMAPP_FUZZ_SEED to replay the seed a failure printed.
 *
 * @module
 */

import fc from "fast-check";
import {
  type ClientMessage,
  DATA_FRAME_TAG,
  decodeClientMessage,
  decodeServerMessage,
  DEFAULT_MAX_FRAME_SIZE,
  encodeFrame,
  encodeMessage,
  type ErrorCode,
  type ErrorMessage,
  type ExitedMessage,
  type ExitStatus,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameError,
  type HelloMessage,
  type LaunchedMessage,
  type LaunchMessage,
  MAX_RUN_ID_LENGTH,
  MAX_TEXT_LENGTH,
  type Message,
  type PingMessage,
  type PongMessage,
  ProtocolError,
  type ProtocolVersion,
  type RunStatusMessage,
  type ServerHelloMessage,
  type ServerMessage,
  type StatusMessage,
} from "../protocol/mod.ts";

function _env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // No env permission: use the defaults.
    return undefined;
  }
}

/** Number of cases per property: CMAPP_FUZZ_RUNS, or `defaultRuns`. */
export function fuzzRuns(defaultRuns = 200): number {
  const n = Number(_env("CMAPP_FUZZ_RUNS"));
  return Number.isInteger(n) && n > 0 ? n : defaultRuns;
}

/** Parameters for `fc.assert`: the number of runs, and the seed when one is set. */
export function fuzzParams(defaultRuns = 200): { numRuns: number; seed?: number } {
  const seed = Number(_env("CMAPP_FUZZ_SEED"));
  return Number.isInteger(seed) && _env("CMAPP_FUZZ_SEED")
    ? { numRuns: fuzzRuns(defaultRuns), seed }
    : { numRuns: fuzzRuns(defaultRuns) };
}

// ---------------------------------------------------------------- bytes

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** UTF-8 JSON bytes of any value, as a peer would send it. */
export function jsonBytes(value: unknown): Uint8Array {
  return utf8(JSON.stringify(value));
}

/** One buffer holding every chunk, in order. */
export function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/**
 * Cuts `bytes` at the given positions (taken modulo length+1, sorted,
 * duplicates kept, so that empty chunks happen too).
 */
export function cutAt(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const points = cuts.map((c) => c % (bytes.length + 1)).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.slice(prev, p));
    prev = p;
  }
  out.push(bytes.slice(prev));
  return out;
}

/** Every byte of `bytes` as its own chunk. */
export function bytewise(bytes: Uint8Array): Uint8Array[] {
  return Array.from(bytes, (b) => Uint8Array.of(b));
}

/** Deterministic non-constant filler, so that a mix-up of bytes shows. */
export function pattern(length: number, seed = 0): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

/** Frames, in one buffer, for the given payloads. */
export function frames(payloads: readonly Uint8Array[], maxFrameSize?: number): Uint8Array {
  return concat(payloads.map((p) => encodeFrame(p, maxFrameSize)));
}

// ---------------------------------------------------------------- names

/** Every message type a manager sends. */
export const CLIENT_TYPES = ["hello", "launch", "status", "ping"] as const;
/** Every message type a server sends. */
export const SERVER_TYPES = ["hello", "launched", "run_status", "exited", "pong", "error"] as const;
/** Every message type name. */
export const ALL_TYPES = [...new Set<string>([...CLIENT_TYPES, ...SERVER_TYPES])];

/** Every error code of the protocol. */
export const ERROR_CODES: readonly ErrorCode[] = [
  "protocol",
  "version",
  "unauthorized",
  "limit",
  "not_found",
  "not_executable",
  "spawn_failed",
  "unknown_run",
  "shutting_down",
  "internal",
];

/** Every field name some message has, at any level. */
export const FIELD_NAMES = [
  "type",
  "version",
  "major",
  "minor",
  "agent",
  "max_frame",
  "id",
  "argv",
  "run",
  "pid",
  "state",
  "exit",
  "code",
  "signal",
  "message",
] as const;

/** The keys a decoded message of each type may have. */
export const ALLOWED_KEYS: Readonly<Record<string, readonly string[]>> = {
  hello: ["type", "version", "agent", "max_frame"],
  launch: ["type", "id", "argv"],
  status: ["type", "id", "run"],
  ping: ["type", "id"],
  launched: ["type", "id", "run", "pid"],
  run_status: ["type", "id", "run", "pid", "state", "exit"],
  exited: ["type", "run", "exit"],
  pong: ["type", "id"],
  error: ["type", "id", "code", "message"],
};

// ---------------------------------------------------------------- fields

const RUN_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

/** A request id: 0 to 2^32-1, biased to the edges. */
export const idArb: fc.Arbitrary<number> = fc.oneof(
  fc.integer({ min: 0, max: 0xffffffff }),
  fc.constantFrom(0, 1, 0xffffffff),
);

/** A valid run id. */
export const runIdArb: fc.Arbitrary<string> = fc.string({
  unit: fc.constantFrom(...RUN_ID_CHARS),
  minLength: 1,
  maxLength: MAX_RUN_ID_LENGTH,
});

/** A valid pid. */
export const pidArb: fc.Arbitrary<number> = fc.oneof(
  fc.integer({ min: 1, max: 0x7fffffff }),
  fc.constantFrom(1, 0x7fffffff),
);

/**
 * One code point of any kind: mostly ASCII (controls included), else
 * anything up to U+10FFFF, lone surrogates included.
 */
export const charArb: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.integer({ min: 0, max: 0x7f }) },
  { weight: 1, arbitrary: fc.integer({ min: 0x80, max: 0x10ffff }) },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }) },
).map((cp) => String.fromCodePoint(cp));

/** Any string of at most `max` UTF-16 code units. */
export function textArb(max: number = MAX_TEXT_LENGTH, minLength = 0): fc.Arbitrary<string> {
  return fc.string({ unit: charArb, minLength, maxLength: Math.min(max, 64) })
    .map((s) => s.slice(0, max));
}

/** One valid argv entry (anything but NUL); `nonEmpty` for argv[0]. */
function argArb(nonEmpty: boolean): fc.Arbitrary<string> {
  return fc.string({ unit: charArb.filter((c) => c !== "\0"), minLength: nonEmpty ? 1 : 0 });
}

/** A valid argv. */
export const argvArb: fc.Arbitrary<string[]> = fc.tuple(
  argArb(true),
  fc.array(argArb(false), { maxLength: 12 }),
).map(([first, rest]) => [first, ...rest]);

/** A valid exit status. */
export const exitArb: fc.Arbitrary<ExitStatus> = fc.oneof(
  fc.record({ code: fc.integer({ min: 0, max: 255 }) }, { noNullPrototype: true }),
  fc.record({ signal: fc.integer({ min: 1, max: 127 }) }, { noNullPrototype: true }),
);

/** A valid protocol version. */
export const versionArb: fc.Arbitrary<ProtocolVersion> = fc.record({
  major: fc.integer({ min: 0, max: 65535 }),
  minor: fc.integer({ min: 0, max: 65535 }),
}, { noNullPrototype: true });

// ---------------------------------------------------------------- messages

const REC = { noNullPrototype: true } as const;

/** A valid manager hello. */
export const helloArb: fc.Arbitrary<HelloMessage> = fc.record({
  type: fc.constant("hello" as const),
  version: versionArb,
  agent: textArb(256),
}, REC);

/** A valid server hello. */
export const serverHelloArb: fc.Arbitrary<ServerHelloMessage> = fc.record({
  type: fc.constant("hello" as const),
  version: versionArb,
  agent: textArb(256),
  max_frame: fc.oneof(fc.integer({ min: 1, max: 0xffffffff }), fc.constantFrom(1, 0xffffffff)),
}, REC);

/** A valid launch request. */
export const launchArb: fc.Arbitrary<LaunchMessage> = fc.record({
  type: fc.constant("launch" as const),
  id: idArb,
  argv: argvArb,
}, REC);

/** A valid status request. */
export const statusArb: fc.Arbitrary<StatusMessage> = fc.record({
  type: fc.constant("status" as const),
  id: idArb,
  run: runIdArb,
}, REC);

/** A valid ping. */
export const pingArb: fc.Arbitrary<PingMessage> = fc.record({
  type: fc.constant("ping" as const),
  id: idArb,
}, REC);

/** A valid "launched" answer. */
export const launchedArb: fc.Arbitrary<LaunchedMessage> = fc.record({
  type: fc.constant("launched" as const),
  id: idArb,
  run: runIdArb,
  pid: pidArb,
}, REC);

/** A valid "run_status" answer: exit present exactly when exited. */
export const runStatusArb: fc.Arbitrary<RunStatusMessage> = fc.oneof(
  fc.record({
    type: fc.constant("run_status" as const),
    id: idArb,
    run: runIdArb,
    pid: pidArb,
    state: fc.constant("running" as const),
  }, REC),
  fc.record({
    type: fc.constant("run_status" as const),
    id: idArb,
    run: runIdArb,
    pid: pidArb,
    state: fc.constant("exited" as const),
    exit: exitArb,
  }, REC),
);

/** A valid "exited" push. */
export const exitedArb: fc.Arbitrary<ExitedMessage> = fc.record({
  type: fc.constant("exited" as const),
  run: runIdArb,
  exit: exitArb,
}, REC);

/** A valid pong. */
export const pongArb: fc.Arbitrary<PongMessage> = fc.record({
  type: fc.constant("pong" as const),
  id: idArb,
}, REC);

/** A valid error, with or without an id. */
export const errorArb: fc.Arbitrary<ErrorMessage> = fc.record({
  type: fc.constant("error" as const),
  id: idArb,
  code: fc.constantFrom(...ERROR_CODES),
  message: textArb(MAX_TEXT_LENGTH),
}, { requiredKeys: ["type", "code", "message"], noNullPrototype: true });

/** Any valid message a manager sends. */
export const clientMessageArb: fc.Arbitrary<ClientMessage> = fc.oneof(
  helloArb,
  launchArb,
  statusArb,
  pingArb,
);

/** Any valid message a server sends. */
export const serverMessageArb: fc.Arbitrary<ServerMessage> = fc.oneof(
  serverHelloArb,
  launchedArb,
  runStatusArb,
  exitedArb,
  pongArb,
  errorArb,
);

// ---------------------------------------------------------------- near misses

/** Values that are valid for some field, or close to the edge of validity. */
const edgeValueArb: fc.Arbitrary<unknown> = fc.oneof(
  idArb,
  runIdArb,
  pidArb,
  exitArb,
  versionArb,
  argvArb,
  fc.constantFrom(
    -1,
    0,
    0.5,
    -0,
    65536,
    0x100000000,
    0x80000000,
    Number.MAX_SAFE_INTEGER,
    1e300,
    "",
    "\0",
    "running",
    "exited",
    "internal",
    "a b",
    "x".repeat(MAX_RUN_ID_LENGTH + 1),
    null,
    true,
    false,
    [],
    [""],
    ["a\0b"],
    {},
    { code: 0, signal: 9 },
    { code: 256 },
    { signal: 0 },
    { signal: 128 },
    { major: 1 },
  ),
);

/** Any field value: plausible, at the edge, or arbitrary JSON. */
export const fieldValueArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: edgeValueArb },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);

const fieldsArb: fc.Arbitrary<Record<string, unknown>> = fc.dictionary(
  fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...FIELD_NAMES.filter((f) => f !== "type")) },
    { weight: 1, arbitrary: fc.string({ maxLength: 8 }) },
  ),
  fieldValueArb,
  { maxKeys: 8, noNullPrototype: true },
);

/**
 * Records with a real "type" and a random mix of real and made-up fields:
 * either only random fields, or a valid message's fields overlaid with
 * random ones (so that some are accepted).
 */
export const messageLikeArb: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  fc.tuple(fc.constantFrom(...ALL_TYPES), fieldsArb)
    .map(([type, fields]) => ({ ...fields, type })),
  fc.tuple(fc.oneof(clientMessageArb, serverMessageArb), fieldsArb)
    .map(([msg, fields]) => ({ ...msg, ...fields, type: msg.type })),
);

/** A valid message with one field replaced, deleted, or added. */
export function mutatedArb(base: fc.Arbitrary<object>): fc.Arbitrary<Record<string, unknown>> {
  return fc.tuple(
    base,
    fc.constantFrom("replace", "delete", "add") as fc.Arbitrary<"replace" | "delete" | "add">,
    fc.nat(),
    fc.constantFrom(...FIELD_NAMES),
    fieldValueArb,
  ).map(([msg, op, pick, field, value]) => {
    const m: Record<string, unknown> = structuredClone(msg) as Record<string, unknown>;
    const keys = Object.keys(m);
    const key = op === "add" ? field : keys[pick % keys.length];
    if (op === "delete") delete m[key];
    else m[key] = value;
    return m;
  });
}

/** JSON text that is not a message, or barely one. */
export const jsonTextArb: fc.Arbitrary<string> = fc.oneof(
  fc.json({ maxDepth: 3 }),
  messageLikeArb.map((m) => JSON.stringify(m)),
  fc.object({ maxDepth: 2 }).map((o) => JSON.stringify(o) ?? "null"),
);

// ---------------------------------------------------------------- shared properties
//
// The properties below are run both by the CI tests (tests/fuzz_test.ts, a
// few hundred cases each) and by the long fuzzing session (`deno task fuzz`,
// tools/fuzz.ts, a million cases or more): the same code, only the number of
// cases differs.

/** What a run of the shared properties saw. */
export interface FuzzStats {
  /** Inputs tried. */
  cases: number;
  /** Payloads or messages accepted. */
  accepted: number;
  /** Clean rejections, by "ErrorClass" or "ErrorClass:code". */
  rejections: Record<string, number>;
}

/** An empty {@linkcode FuzzStats}. */
export function newFuzzStats(): FuzzStats {
  return { cases: 0, accepted: 0, rejections: {} };
}

/** An input that made the decoder or validator misbehave (not a clean rejection). */
export class FuzzFailure extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "FuzzFailure";
  }
}

function _ensure(ok: boolean, message: string): void {
  if (!ok) throw new FuzzFailure(message);
}

function _reject(stats: FuzzStats, key: string): void {
  stats.rejections[key] = (stats.rejections[key] ?? 0) + 1;
}

/**
 * Checks that `e` is one of the protocol's own named errors, with a message
 * (never a TypeError, RangeError, SyntaxError...), and counts it; anything
 * else is rethrown.
 */
export function cleanRejection(stats: FuzzStats, e: unknown, allowed: "frame" | "message"): void {
  if (allowed === "frame" && e instanceof FrameError) {
    _ensure(e.name === "FrameError" && e.message.length > 0, `bare FrameError: ${e}`);
    _reject(stats, `FrameError:${e.code}`);
    return;
  }
  if (allowed === "message" && e instanceof ProtocolError) {
    _ensure(e.name === "ProtocolError" && e.message.length > 0, `bare ProtocolError: ${e}`);
    _ensure(e.message.length <= 2 * MAX_TEXT_LENGTH, `${e.message.length}-character message`);
    _reject(stats, "ProtocolError");
    return;
  }
  throw e;
}

const _DECODERS = [decodeClientMessage, decodeServerMessage] as const;

/**
 * Runs a payload through both message validators: each accepts it as a
 * message of its own side that re-encodes to itself, or refuses it with a
 * ProtocolError.
 */
export function validateBoth(stats: FuzzStats, payload: Uint8Array): void {
  for (const decode of _DECODERS) {
    let m: Message;
    try {
      m = decode(payload);
    } catch (e) {
      cleanRejection(stats, e, "message");
      continue;
    }
    stats.accepted++;
    const types: readonly string[] = decode === decodeClientMessage
      ? [...CLIENT_TYPES, "stop", "release", "list", "window", "close_stream", "data"]
      : [...SERVER_TYPES, "released", "run_list", "window", "data"];
    _ensure(types.includes(m.type), `decoded unexpected type ${m.type}`);
    // What was accepted is stable: it re-encodes to the same message.
    const again = decode(encodeMessage(m));
    _ensure(
      JSON.stringify(again, _bytesAsList) === JSON.stringify(m, _bytesAsList),
      `not stable: ${JSON.stringify(m, _bytesAsList).slice(0, 200)}`,
    );
  }
}

function _bytesAsList(_key: string, value: unknown): unknown {
  return value instanceof Uint8Array ? Array.from(value) : value;
}

/**
 * Feeds chunks to a FrameDecoder of maximum `max`, checking after every step
 * that only FrameError is thrown, payloads are 1..max bytes, at most max+4
 * bytes stay buffered, and every byte pushed is accounted for. Returns the
 * payloads decoded before the end or the first error.
 */
export function feedFrames(stats: FuzzStats, max: number, chunks: readonly Uint8Array[]): {
  payloads: Uint8Array[];
  error: string | null;
} {
  const d = new FrameDecoder(max);
  const payloads: Uint8Array[] = [];
  let pushed = 0;
  let consumed = 0;
  for (const c of chunks) {
    let out: Uint8Array[];
    try {
      out = d.push(c);
    } catch (e) {
      cleanRejection(stats, e, "frame");
      const code = (e as FrameError).code;
      _ensure(code === "empty" || code === "oversize", `push threw ${code}`);
      _ensure(d.buffered === 0, `${d.buffered} bytes kept after an error`);
      _ensureBroken(d, code);
      return { payloads, error: code };
    }
    pushed += c.length;
    for (const p of out) {
      _ensure(p.length >= 1 && p.length <= max, `payload of ${p.length} bytes (max ${max})`);
      consumed += FRAME_HEADER_SIZE + p.length;
    }
    stats.accepted += out.length;
    payloads.push(...out);
    if (d.error) {
      // Good frames came out first; the error follows on the next call.
      _ensure(out.length > 0, "an error deferred with no frame before it");
      _ensureBroken(d, d.error.code);
      return { payloads, error: d.error.code };
    }
    _ensure(d.buffered < max + FRAME_HEADER_SIZE, `${d.buffered} bytes buffered (max ${max})`);
    _ensure(d.buffered === pushed - consumed, "bytes lost or invented");
  }
  try {
    d.finish();
  } catch (e) {
    cleanRejection(stats, e, "frame");
    return { payloads, error: (e as FrameError).code };
  }
  _ensure(d.buffered === 0, "finish() accepted a partial frame");
  return { payloads, error: null };
}

/** After an error the decoder stays broken: every later call throws the same code. */
function _ensureBroken(d: FrameDecoder, code: string): void {
  for (const call of [() => d.push(Uint8Array.of(0, 0, 0, 1, 7)), () => d.finish()]) {
    try {
      call();
    } catch (e) {
      _ensure(e instanceof FrameError && e.code === code, `then threw ${String(e)}`);
      continue;
    }
    _ensure(false, `a broken decoder (${code}) accepted more input`);
  }
}

/** A 4-byte big-endian length header. */
export function frameHeader(length: number): Uint8Array {
  const h = new Uint8Array(4);
  new DataView(h.buffer).setUint32(0, length, false);
  return h;
}

/** Chunks of garbage, valid frames (JSON-ish, binary data or random) and bare headers. */
export function frameNoiseArb(max: number): fc.Arbitrary<Uint8Array[]> {
  const payload = fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: Math.min(max, 40) }),
    // Cut to the maximum (never filtered: a filter could retry forever).
    jsonTextArb.map((t) => utf8(t).slice(0, max)),
    dataPayloadArb.map((p) => p.slice(0, max)),
  );
  return fc.array(
    fc.oneof(
      { weight: 3, arbitrary: fc.uint8Array({ maxLength: 40 }) },
      { weight: 3, arbitrary: payload.map((p) => encodeFrame(p, max)) },
      {
        weight: 1,
        arbitrary: fc.oneof(
          fc.constantFrom(0, 1, max, max + 1, 0xffffffff),
          fc.integer({ min: 0, max: 0xffffffff }),
        ).map((n) => frameHeader(Math.min(n, 0xffffffff))),
      },
    ),
    { maxLength: 12 },
  );
}

/** Binary data-frame payloads (tag 0x01), valid or close to it. */
export const dataPayloadArb: fc.Arbitrary<Uint8Array> = fc.tuple(
  fc.integer({ min: 0, max: 4 }),
  fc.oneof(runIdArb.map(utf8), fc.uint8Array({ maxLength: 70 })),
  fc.integer({ min: 0, max: 255 }),
  fc.uint8Array({ maxLength: 64 }),
).map(([stream, run, lengthByte, data]) => {
  const n = lengthByte % 3 === 0 ? run.length : lengthByte;
  return concat([Uint8Array.of(DATA_FRAME_TAG, stream, n & 0xff), run, data]);
});

/** One property shared by the CI tests and the long fuzzing session. */
export interface FuzzProperty {
  /** What it checks. */
  name: string;
  /** The fast-check property, counting into `stats`. */
  make(stats: FuzzStats): fc.IRawProperty<[unknown], false>;
}

function _prop<T>(
  name: string,
  arb: fc.Arbitrary<T>,
  check: (input: T, stats: FuzzStats) => void,
): FuzzProperty {
  return {
    name,
    make: (stats) =>
      fc.property(arb, (input) => {
        stats.cases++;
        check(input, stats);
      }) as unknown as fc.IRawProperty<[unknown], false>,
  };
}

const _maxArb = fc.oneof(
  fc.integer({ min: 1, max: 64 }),
  fc.constant(DEFAULT_MAX_FRAME_SIZE),
);

/**
 * The frame decoder and message validator properties: no crash, no
 * unbounded buffering, every rejection a FrameError or ProtocolError.
 */
export const FUZZ_PROPERTIES: readonly FuzzProperty[] = [
  _prop(
    "frames: garbage, frames and headers in chunks give payloads or a FrameError",
    _maxArb.chain((max) => fc.tuple(fc.constant(max), frameNoiseArb(max))),
    ([max, chunks], stats) => void feedFrames(stats, max, chunks),
  ),
  _prop(
    "frames: the verdict does not depend on how the bytes are cut",
    fc.integer({ min: 1, max: 64 }).chain((max) =>
      fc.tuple(fc.constant(max), frameNoiseArb(max), fc.array(fc.nat(), { maxLength: 20 }))
    ),
    ([max, chunks, cuts], stats) => {
      const stream = concat(chunks);
      const ref = feedFrames(stats, max, bytewise(stream));
      const other = feedFrames(stats, max, cutAt(stream, cuts));
      _ensure(other.error === ref.error, `verdict ${other.error} vs ${ref.error}`);
      _ensure(
        JSON.stringify(other.payloads, _bytesAsList) === JSON.stringify(ref.payloads, _bytesAsList),
        "payloads differ with the chunking",
      );
    },
  ),
  _prop(
    "frames then messages: a byte stream through the decoder and both validators",
    fc.tuple(frameNoiseArb(DEFAULT_MAX_FRAME_SIZE), fc.array(fc.nat(), { maxLength: 8 })),
    ([chunks, cuts], stats) => {
      const { payloads } = feedFrames(stats, DEFAULT_MAX_FRAME_SIZE, cutAt(concat(chunks), cuts));
      for (const p of payloads) validateBoth(stats, p);
    },
  ),
  _prop(
    "messages: arbitrary bytes and data frames",
    fc.oneof(fc.uint8Array({ maxLength: 200 }), dataPayloadArb),
    (bytes, stats) => validateBoth(stats, bytes),
  ),
  _prop(
    "messages: arbitrary JSON text",
    jsonTextArb,
    (text, stats) => validateBoth(stats, utf8(text)),
  ),
  _prop(
    "messages: records with a real type and random fields",
    messageLikeArb,
    (m, stats) => validateBoth(stats, jsonBytes(m)),
  ),
  _prop(
    "messages: valid messages with one field replaced, deleted or added",
    fc.oneof(mutatedArb(clientMessageArb), mutatedArb(serverMessageArb)),
    (m, stats) => validateBoth(stats, jsonBytes(m)),
  ),
  _prop(
    "messages: valid messages with one byte changed",
    fc.tuple(
      fc.oneof(clientMessageArb, serverMessageArb),
      fc.nat(),
      fc.integer({
        min: 0,
        max: 255,
      }),
    ),
    ([m, at, b], stats) => {
      const bytes = encodeMessage(m);
      bytes[at % bytes.length] = b;
      validateBoth(stats, bytes);
    },
  ),
];
