/**
 * Unit and property tests of message validation and encoding
 * (protocol/messages.ts), version negotiation (protocol/version.ts) and exit
 * statuses (protocol/exit_status.ts).
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type ClientMessage,
  decodeClientMessage,
  decodeServerMessage,
  describeExit,
  encodeDataPayload,
  encodeMessage,
  formatVersion,
  MAX_ARGV_ENTRIES,
  MAX_RUN_ID_LENGTH,
  MAX_TEXT_LENGTH,
  negotiateVersion,
  PROTOCOL_VERSION,
  ProtocolError,
  type ServerMessage,
  shellExitCode,
  signalName,
  signalNumber,
} from "../protocol/mod.ts";
import {
  ALL_TYPES,
  ALLOWED_KEYS,
  CLIENT_TYPES,
  clientMessageArb,
  ERROR_CODES,
  errorArb,
  exitedArb,
  fuzzParams,
  helloArb,
  jsonBytes,
  jsonTextArb,
  launchArb,
  launchedArb,
  messageLikeArb,
  mutatedArb,
  pingArb,
  pongArb,
  runStatusArb,
  SERVER_TYPES,
  serverHelloArb,
  serverMessageArb,
  statusArb,
  utf8,
  versionArb,
} from "./_fuzz.ts";

type Decoder = (payload: Uint8Array) => ClientMessage | ServerMessage;
const DECODERS: [string, Decoder][] = [
  ["client", decodeClientMessage],
  ["server", decodeServerMessage],
];

/** Asserts that decoding `value` (JSON-encoded unless bytes) throws a ProtocolError. */
function rejects(decode: Decoder, value: unknown, pattern?: RegExp): ProtocolError {
  const bytes = value instanceof Uint8Array ? value : jsonBytes(value);
  let caught: unknown;
  try {
    const m = decode(bytes);
    assert.fail(`accepted ${JSON.stringify(value)} as ${JSON.stringify(m)}`);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof ProtocolError, `expected a ProtocolError, got ${caught}`);
  assert.equal(caught.name, "ProtocolError");
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

const client = (v: unknown, p?: RegExp) => rejects(decodeClientMessage, v, p);
const server = (v: unknown, p?: RegExp) => rejects(decodeServerMessage, v, p);

// Valid examples of every message.
const HELLO = { type: "hello", version: { major: 1, minor: 0 }, agent: "cmappmgr 0.1.0" };
const SHELLO = { ...HELLO, agent: "cmappserver 0.1.0", max_frame: 1048576 };
const LAUNCH = { type: "launch", id: 1, argv: ["/bin/echo", "hi", ""] };
const STATUS = { type: "status", id: 2, run: "r-1.a_B" };
const PING = { type: "ping", id: 3 };
const LAUNCHED = { type: "launched", id: 4, run: "run-4", pid: 1234 };
const RUNNING = { type: "run_status", id: 5, run: "run-4", pid: 1234, state: "running" };
const EXITED_RS = { ...RUNNING, state: "exited", exit: { code: 3 } };
const EXITED = { type: "exited", run: "run-4", exit: { signal: 9 } };
const PONG = { type: "pong", id: 6 };
const ERROR = { type: "error", id: 7, code: "not_found", message: "nope: command not found" };
const ERROR_NO_ID = { type: "error", code: "protocol", message: "bad frame" };

const CLIENT_EXAMPLES = [HELLO, LAUNCH, STATUS, PING];
const SERVER_EXAMPLES = [SHELLO, LAUNCHED, RUNNING, EXITED_RS, EXITED, PONG, ERROR, ERROR_NO_ID];

// ---------------------------------------------------------------- valid

Deno.test("messages: every valid example decodes to itself", () => {
  for (const m of CLIENT_EXAMPLES) assert.deepEqual(decodeClientMessage(jsonBytes(m)), m);
  for (const m of SERVER_EXAMPLES) assert.deepEqual(decodeServerMessage(jsonBytes(m)), m);
});

Deno.test("messages: encodeMessage is UTF-8 JSON", () => {
  const m = { type: "hello", version: { major: 1, minor: 2 }, agent: "é€😀" } as const;
  const bytes = encodeMessage(m);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(bytes)), m);
  assert.deepEqual(
    bytes.subarray(bytes.length - 11),
    Uint8Array.of(0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0x22, 0x7d),
  );
  assert.deepEqual(decodeClientMessage(bytes), m);
});

Deno.test("messages: each side refuses the other side's message types", () => {
  for (const t of ["launched", "run_status", "exited", "pong", "error"]) {
    client({ ...PONG, type: t }, /unknown message type/);
  }
  for (const t of ["launch", "status", "ping"]) {
    server({ ...PING, type: t }, /unknown message type/);
  }
  // A client hello has no max_frame, so a manager refuses it.
  server(HELLO, /"max_frame"/);
});

Deno.test("messages: unknown fields are ignored and not returned", () => {
  const extra = { extra: 1, nested: { a: [1, 2] }, __proto__x: "y", Type: "pong" };
  for (const m of CLIENT_EXAMPLES) {
    assert.deepEqual(decodeClientMessage(jsonBytes({ ...m, ...extra })), m);
  }
  for (const m of SERVER_EXAMPLES) {
    assert.deepEqual(decodeServerMessage(jsonBytes({ ...m, ...extra })), m);
  }
  // Unknown fields inside known objects too.
  assert.deepEqual(
    decodeClientMessage(jsonBytes({ ...HELLO, version: { major: 1, minor: 0, patch: 9 } })),
    HELLO,
  );
  assert.deepEqual(
    decodeServerMessage(jsonBytes({ ...EXITED, exit: { signal: 9, core: true } })),
    EXITED,
  );
  // A client hello carrying max_frame: dropped.
  assert.deepEqual(decodeClientMessage(jsonBytes({ ...HELLO, max_frame: 5 })), HELLO);
});

Deno.test("messages: a __proto__ key in the payload does not leak through", () => {
  const m = decodeClientMessage(utf8('{"type":"ping","id":1,"__proto__":{"id":2,"argv":["x"]}}'));
  assert.deepEqual(m, PING_1);
  assert.equal(Object.getPrototypeOf(m), Object.prototype);
});
const PING_1 = { type: "ping", id: 1 };

// ---------------------------------------------------------------- envelope

Deno.test("messages: invalid UTF-8 is refused", () => {
  const bad = [
    [0xff],
    [0xc3], // truncated sequence
    [0xc0, 0xaf], // overlong "/"
    [0xed, 0xa0, 0x80], // UTF-8 encoded surrogate
    [0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
  ];
  for (const [, decode] of DECODERS) {
    for (const b of bad) rejects(decode, Uint8Array.of(...b), /UTF-8/);
    // Valid JSON but for one bad byte inside a string: a lenient decoder
    // would turn it into U+FFFD and accept the message.
    const ping = utf8('{"type":"ping","id":1,"x":"?"}');
    ping[ping.indexOf(0x3f)] = 0xff;
    rejects(decode, ping, /UTF-8/);
  }
});

Deno.test("messages: invalid JSON is refused", () => {
  for (const [, decode] of DECODERS) {
    for (const text of ["", " ", "{", '{"type":"ping","id":1', "{'type':'ping'}", "ping", "NaN"]) {
      rejects(decode, utf8(text), /JSON/);
    }
  }
});

Deno.test("messages: JSON that is not an object is refused", () => {
  for (const [, decode] of DECODERS) {
    for (const v of [null, 1, "ping", true, [], [PING]]) rejects(decode, v, /must be an object/);
  }
});

Deno.test("messages: the type must be a known string", () => {
  for (const [, decode] of DECODERS) {
    rejects(decode, { id: 1 }, /"type"/);
    for (const t of [1, null, ["ping"], { ping: 1 }, true]) {
      rejects(decode, { ...PING, type: t }, /"type"/);
    }
    for (const t of ["nope", "", "PING", "Ping", " ping", "__proto__", "toString", "constructor"]) {
      rejects(decode, { ...PING, type: t }, /unknown message type/);
    }
  }
  // A long unknown type is not echoed in full.
  const e = client({ type: "x".repeat(10000) }, /unknown message type/);
  assert.ok(e.message.length < 200, e.message);
});

// ---------------------------------------------------------------- ids and ints

Deno.test("messages: request ids are integers from 0 to 2^32-1", () => {
  for (const m of [LAUNCH, STATUS, PING]) {
    for (const id of [0, 0xffffffff]) {
      assert.equal((decodeClientMessage(jsonBytes({ ...m, id })) as { id: number }).id, id);
    }
    for (const id of [-1, 0x100000000, 1.5, "1", null, true, [1], { id: 1 }]) {
      client({ ...m, id }, /"id"/);
    }
    const { id: _, ...noId } = m;
    client(noId, /"id"/);
    client(utf8(JSON.stringify(m).replace(/"id":\d+/, '"id":1e400')), /"id"/); // Infinity
  }
  for (const m of [LAUNCHED, RUNNING, PONG, ERROR]) {
    for (const id of [-1, 0x100000000, 0.5, "7"]) server({ ...m, id }, /"id"/);
  }
  for (const m of [LAUNCHED, RUNNING, PONG]) {
    const { id: _, ...noId } = m;
    server(noId, /"id"/);
  }
});

Deno.test("messages: pids are integers from 1 to 2^31-1", () => {
  for (const m of [LAUNCHED, RUNNING]) {
    for (const pid of [1, 0x7fffffff]) {
      assert.equal((decodeServerMessage(jsonBytes({ ...m, pid })) as { pid: number }).pid, pid);
    }
    for (const pid of [0, -1, 0x80000000, 2.5, "1234", null]) server({ ...m, pid }, /"pid"/);
    const { pid: _, ...noPid } = m;
    server(noPid, /"pid"/);
  }
});

// ---------------------------------------------------------------- hello

Deno.test("messages: hello version fields", () => {
  for (const [side, decode] of DECODERS) {
    const base = side === "client" ? HELLO : SHELLO;
    for (const version of [{ major: 0, minor: 0 }, { major: 65535, minor: 65535 }]) {
      assert.deepEqual(decode(jsonBytes({ ...base, version })), { ...base, version });
    }
    const { version: _, ...noVersion } = base;
    rejects(decode, noVersion, /"version"/);
    for (const version of [1, "1.0", null, [1, 0], true]) {
      rejects(decode, { ...base, version }, /"version" must be an object/);
    }
    for (const field of ["major", "minor"]) {
      const ok = { major: 1, minor: 0 };
      for (const v of [-1, 65536, 1.5, "1", null]) {
        rejects(decode, { ...base, version: { ...ok, [field]: v } }, new RegExp(`"${field}"`));
      }
      const missing: Record<string, number> = { ...ok };
      delete missing[field];
      rejects(decode, { ...base, version: missing }, new RegExp(`"${field}"`));
    }
  }
});

Deno.test("messages: hello agent is a string of at most 256 characters", () => {
  for (const [side, decode] of DECODERS) {
    const base = side === "client" ? HELLO : SHELLO;
    assert.equal(
      (decode(jsonBytes({ ...base, agent: "a".repeat(256) })) as typeof base).agent.length,
      256,
    );
    rejects(decode, { ...base, agent: "a".repeat(257) }, /"agent" is longer than 256/);
    for (const agent of [1, null, ["x"], { a: 1 }]) {
      rejects(decode, { ...base, agent }, /"agent" must be a string/);
    }
    const { agent: _, ...noAgent } = base;
    rejects(decode, noAgent, /"agent"/);
  }
});

Deno.test("messages: server hello max_frame is an integer from 1 to 2^32-1", () => {
  for (const max_frame of [1, 0xffffffff]) {
    assert.deepEqual(decodeServerMessage(jsonBytes({ ...SHELLO, max_frame })), {
      ...SHELLO,
      max_frame,
    });
  }
  for (const max_frame of [0, -1, 0x100000000, 1.5, "1048576", null]) {
    server({ ...SHELLO, max_frame }, /"max_frame"/);
  }
});

// ---------------------------------------------------------------- launch

Deno.test("messages: argv must be a non-empty array of strings", () => {
  const { argv: _, ...noArgv } = LAUNCH;
  client(noArgv, /"argv" must be an array/);
  for (const argv of ["/bin/ls", 1, null, { 0: "ls" }]) {
    client({ ...LAUNCH, argv }, /"argv" must be an array/);
  }
  client({ ...LAUNCH, argv: [] }, /"argv" must name a program/);
  client({ ...LAUNCH, argv: [1] }, /argv\[0\] must be a string/);
  client({ ...LAUNCH, argv: ["ls", "-l", null] }, /argv\[2\] must be a string/);
  client({ ...LAUNCH, argv: ["ls", ["-l"]] }, /argv\[1\] must be a string/);
});

Deno.test("messages: argv[0] must not be empty; later entries may be", () => {
  client({ ...LAUNCH, argv: [""] }, /argv\[0\] must not be empty/);
  client({ ...LAUNCH, argv: ["", "x"] }, /argv\[0\] must not be empty/);
  assert.deepEqual(decodeClientMessage(jsonBytes({ ...LAUNCH, argv: ["x", "", ""] })), {
    ...LAUNCH,
    argv: ["x", "", ""],
  });
});

Deno.test("messages: no NUL inside any argv entry", () => {
  client({ ...LAUNCH, argv: ["/bin/ls\0"] }, /argv\[0\] contains a NUL/);
  client({ ...LAUNCH, argv: ["\0"] }, /argv\[0\] contains a NUL/);
  client({ ...LAUNCH, argv: ["ls", "a", "b\0c"] }, /argv\[2\] contains a NUL/);
  // Other control characters are fine.
  const argv = ["ls", "\x01\n\t\x7f", "\u{10ffff}"];
  assert.deepEqual(decodeClientMessage(jsonBytes({ ...LAUNCH, argv })), { ...LAUNCH, argv });
});

Deno.test(`messages: at most ${MAX_ARGV_ENTRIES} argv entries`, () => {
  const argv = Array.from({ length: MAX_ARGV_ENTRIES }, (_, i) => `a${i}`);
  const m = decodeClientMessage(jsonBytes({ ...LAUNCH, argv })) as { argv: string[] };
  assert.deepEqual(m.argv, argv);
  client({ ...LAUNCH, argv: [...argv, "one-too-many"] }, /more than 4096 entries/);
});

// ---------------------------------------------------------------- run ids

const BAD_RUN_IDS: unknown[] = [
  "",
  "a b",
  "a/b",
  "../x",
  "a\n",
  "\na",
  "a\0",
  "é",
  "ａ", // fullwidth a
  "a:b",
  "a*",
  "x".repeat(MAX_RUN_ID_LENGTH + 1),
  5,
  null,
  ["a"],
];

Deno.test("messages: run ids are 1 to 64 characters of A-Z a-z 0-9 . _ -", () => {
  const good = ["a", "Z", "0", ".", "_", "-", "aZ09._-", "x".repeat(MAX_RUN_ID_LENGTH)];
  for (const run of good) {
    assert.equal((decodeClientMessage(jsonBytes({ ...STATUS, run })) as { run: string }).run, run);
    for (const m of [LAUNCHED, RUNNING, EXITED]) {
      assert.equal((decodeServerMessage(jsonBytes({ ...m, run })) as { run: string }).run, run);
    }
  }
  for (const run of BAD_RUN_IDS) {
    client({ ...STATUS, run }, /"run"/);
    for (const m of [LAUNCHED, RUNNING, EXITED]) server({ ...m, run }, /"run"/);
  }
  const { run: _, ...noRun } = STATUS;
  client(noRun, /"run"/);
});

// ---------------------------------------------------------------- run status and exit

Deno.test("messages: run_status state is running or exited", () => {
  const { state: _, ...noState } = RUNNING;
  server(noState, /"state"/);
  for (const state of ["done", "Running", "", 1, null]) server({ ...RUNNING, state }, /"state"/);
});

Deno.test("messages: run_status has an exit exactly when exited", () => {
  const { exit: _, ...noExit } = EXITED_RS;
  server(noExit, /"exit"/);
  // An exit on a running process is dropped.
  assert.deepEqual(decodeServerMessage(jsonBytes({ ...RUNNING, exit: { code: 0 } })), RUNNING);
  assert.ok(!("exit" in decodeServerMessage(jsonBytes(RUNNING))));
});

Deno.test("messages: exit has exactly one of code and signal", () => {
  for (const base of [EXITED, EXITED_RS]) {
    server({ ...base, exit: { code: 0, signal: 9 } }, /exactly one of "code" or "signal"/);
    server({ ...base, exit: {} }, /exactly one of "code" or "signal"/);
    server({ ...base, exit: { status: 0 } }, /exactly one of "code" or "signal"/);
    for (const exit of [0, "0", null, [0], true]) {
      server({ ...base, exit }, /"exit" must be an object/);
    }
    const { exit: _, ...noExit } = base;
    server(noExit, /"exit"/);
  }
});

Deno.test("messages: exit code is 0 to 255, signal 1 to 127", () => {
  for (const exit of [{ code: 0 }, { code: 255 }, { signal: 1 }, { signal: 127 }]) {
    assert.deepEqual(decodeServerMessage(jsonBytes({ ...EXITED, exit })), { ...EXITED, exit });
  }
  for (const code of [-1, 256, 1.5, "0", null, true]) {
    server({ ...EXITED, exit: { code } }, /"code"/);
  }
  for (const signal of [0, -9, 128, 9.5, "9", "SIGKILL", null]) {
    server({ ...EXITED, exit: { signal } }, /"signal"/);
  }
});

// ---------------------------------------------------------------- error

Deno.test("messages: error keeps every known code", () => {
  for (const code of ERROR_CODES) {
    assert.deepEqual(decodeServerMessage(jsonBytes({ ...ERROR, code })), { ...ERROR, code });
  }
});

Deno.test("messages: an unknown error code from a newer peer becomes internal", () => {
  for (const code of ["brand_new", "", "PROTOCOL", "x".repeat(64)]) {
    assert.deepEqual(decodeServerMessage(jsonBytes({ ...ERROR, code })), {
      ...ERROR,
      code: "internal",
    });
  }
  for (const code of [1, null, ["limit"]]) server({ ...ERROR, code }, /"code" must be a string/);
  server({ ...ERROR, code: "x".repeat(65) }, /"code" is longer than 64/);
  const { code: _, ...noCode } = ERROR;
  server(noCode, /"code"/);
});

Deno.test("messages: error message text and optional id", () => {
  const long = "m".repeat(MAX_TEXT_LENGTH);
  assert.deepEqual(decodeServerMessage(jsonBytes({ ...ERROR, message: long })), {
    ...ERROR,
    message: long,
  });
  server({ ...ERROR, message: long + "m" }, /"message" is longer than 4096/);
  for (const message of [1, null, ["x"]]) {
    server({ ...ERROR, message }, /"message" must be a string/);
  }
  const { message: _, ...noMessage } = ERROR;
  server(noMessage, /"message"/);
  // Without an id, none appears; with an invalid one, refused.
  const m = decodeServerMessage(jsonBytes(ERROR_NO_ID));
  assert.ok(!("id" in m), JSON.stringify(m));
  for (const id of [null, "7", -1, 0.5]) server({ ...ERROR, id }, /"id"/);
});

Deno.test("ProtocolError is an Error", () => {
  const e = new ProtocolError("boom");
  assert.ok(e instanceof Error);
  assert.equal(e.name, "ProtocolError");
  assert.equal(e.message, "boom");
});

// ---------------------------------------------------------------- properties

/** Decodes, accepting only a message or a ProtocolError; checks what comes back. */
function tryDecode(decode: Decoder, bytes: Uint8Array): ClientMessage | ServerMessage | null {
  let m: ClientMessage | ServerMessage;
  try {
    m = decode(bytes);
  } catch (e) {
    if (e instanceof ProtocolError) return null;
    throw e;
  }
  const types: readonly string[] = decode === decodeClientMessage ? CLIENT_TYPES : SERVER_TYPES;
  assert.ok(types.includes(m.type), `decoded type ${m.type}`);
  for (const k of Object.keys(m)) {
    assert.ok(ALLOWED_KEYS[m.type].includes(k), `unexpected key ${k} in ${m.type}`);
  }
  // What was accepted is stable: it re-encodes to itself.
  assert.deepEqual(decode(encodeMessage(m)), m);
  return m;
}

Deno.test("property: arbitrary bytes decode to a message or a ProtocolError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      for (const [, decode] of DECODERS) tryDecode(decode, bytes);
    }),
    fuzzParams(),
  );
});

Deno.test("property: arbitrary JSON decodes to a message or a ProtocolError", () => {
  fc.assert(
    fc.property(jsonTextArb, (text) => {
      for (const [, decode] of DECODERS) tryDecode(decode, utf8(text));
    }),
    fuzzParams(),
  );
});

Deno.test("property: arbitrary JSON values (and objects) decode or throw ProtocolError", () => {
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue(), fc.object()), (v) => {
      const text = JSON.stringify(v) ?? "null";
      for (const [, decode] of DECODERS) tryDecode(decode, utf8(text));
    }),
    fuzzParams(),
  );
});

Deno.test("property: records with a real type and random fields decode or throw ProtocolError", () => {
  let accepted = 0;
  fc.assert(
    fc.property(messageLikeArb, (m) => {
      for (const [, decode] of DECODERS) if (tryDecode(decode, jsonBytes(m))) accepted++;
    }),
    fuzzParams(),
  );
  // Not only refusals: the generator does reach valid messages.
  assert.ok(accepted > 0, "no random record was ever accepted");
});

Deno.test("property: valid messages with one field changed decode or throw ProtocolError", () => {
  fc.assert(
    fc.property(mutatedArb(clientMessageArb), mutatedArb(serverMessageArb), (c, s) => {
      for (const [, decode] of DECODERS) {
        tryDecode(decode, jsonBytes(c));
        tryDecode(decode, jsonBytes(s));
      }
    }),
    fuzzParams(),
  );
});

Deno.test("property: a single invalid byte anywhere in a valid message is refused", () => {
  fc.assert(
    fc.property(
      clientMessageArb,
      fc.nat(),
      fc.constantFrom(0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xf8, 0xfe, 0xff),
      (m, at, b) => {
        const bytes = encodeMessage(m);
        // 0xc0, 0xc1 and 0xf5..0xff are never valid; a continuation byte is
        // invalid where an ASCII byte was.
        const where = b >= 0xc0
          ? [...bytes.keys()]
          : [...bytes.keys()].filter((i) => bytes[i] < 0x80);
        bytes[where[at % where.length]] = b;
        rejects(decodeClientMessage, bytes, /UTF-8/);
      },
    ),
    fuzzParams(),
  );
});

const ROUND_TRIPS: [string, fc.Arbitrary<ClientMessage | ServerMessage>, Decoder][] = [
  ["hello (client)", helloArb, decodeClientMessage],
  ["launch", launchArb, decodeClientMessage],
  ["status", statusArb, decodeClientMessage],
  ["ping", pingArb, decodeClientMessage],
  ["hello (server)", serverHelloArb, decodeServerMessage],
  ["launched", launchedArb, decodeServerMessage],
  ["run_status", runStatusArb, decodeServerMessage],
  ["exited", exitedArb, decodeServerMessage],
  ["pong", pongArb, decodeServerMessage],
  ["error", errorArb, decodeServerMessage],
];

for (const [name, arb, decode] of ROUND_TRIPS) {
  Deno.test(`property: every valid ${name} survives encode then decode unchanged`, () => {
    fc.assert(
      fc.property(arb, (m) => {
        assert.deepEqual(decode(encodeMessage(m)), m);
      }),
      fuzzParams(),
    );
  });
}

Deno.test("property: the type names used by the fuzzers are the real ones", () => {
  // Guards the generators: every listed type is accepted by some decoder.
  const seen = new Set<string>();
  for (const m of [...CLIENT_EXAMPLES, ...SERVER_EXAMPLES]) seen.add(m.type);
  assert.deepEqual([...seen].sort(), [...ALL_TYPES].sort());
});

// ---------------------------------------------------------------- version

Deno.test("version: same major, different minors → the smaller minor", () => {
  assert.deepEqual(negotiateVersion({ major: 1, minor: 0 }, { major: 1, minor: 4 }), {
    major: 1,
    minor: 0,
  });
  assert.deepEqual(negotiateVersion({ major: 1, minor: 7 }, { major: 1, minor: 3 }), {
    major: 1,
    minor: 3,
  });
  assert.deepEqual(negotiateVersion({ major: 0, minor: 2 }, { major: 0, minor: 2 }), {
    major: 0,
    minor: 2,
  });
});

Deno.test("version: different majors → null", () => {
  assert.equal(negotiateVersion({ major: 1, minor: 0 }, { major: 2, minor: 0 }), null);
  assert.equal(negotiateVersion({ major: 2, minor: 5 }, { major: 1, minor: 5 }), null);
  assert.equal(negotiateVersion({ major: 0, minor: 0 }, { major: 1, minor: 0 }), null);
});

Deno.test("property: negotiateVersion is symmetric and never exceeds either side", () => {
  fc.assert(
    fc.property(versionArb, versionArb, fc.boolean(), (a, b, sameMajor) => {
      const theirs = sameMajor ? { ...b, major: a.major } : b;
      const ab = negotiateVersion(a, theirs);
      assert.deepEqual(negotiateVersion(theirs, a), ab);
      if (a.major !== theirs.major) {
        assert.equal(ab, null);
      } else {
        assert.deepEqual(ab, { major: a.major, minor: Math.min(a.minor, theirs.minor) });
      }
    }),
    fuzzParams(),
  );
});

Deno.test("version: negotiateVersion does not alias or change its inputs", () => {
  const ours = { major: 1, minor: 2 };
  const theirs = { major: 1, minor: 5 };
  const v = negotiateVersion(ours, theirs)!;
  assert.deepEqual(ours, { major: 1, minor: 2 });
  assert.deepEqual(theirs, { major: 1, minor: 5 });
  v.minor = 99;
  assert.equal(ours.minor, 2);
});

Deno.test("version: formatVersion", () => {
  assert.equal(formatVersion({ major: 1, minor: 2 }), "1.2");
  assert.equal(formatVersion({ major: 10, minor: 0 }), "10.0");
  assert.equal(formatVersion({ major: 0, minor: 65535 }), "0.65535");
  assert.equal(
    formatVersion(PROTOCOL_VERSION),
    `${PROTOCOL_VERSION.major}.${PROTOCOL_VERSION.minor}`,
  );
});

Deno.test("version: PROTOCOL_VERSION is frozen and speaks with itself", () => {
  assert.ok(Object.isFrozen(PROTOCOL_VERSION));
  assert.deepEqual(negotiateVersion(PROTOCOL_VERSION, PROTOCOL_VERSION), { ...PROTOCOL_VERSION });
  // It is a valid hello version.
  const hello = { type: "hello", version: { ...PROTOCOL_VERSION }, agent: "x" } as const;
  assert.deepEqual(decodeClientMessage(encodeMessage(hello)), hello);
});

// ---------------------------------------------------------------- exit status

Deno.test("exit_status: shellExitCode", () => {
  assert.equal(shellExitCode({ code: 0 }), 0);
  assert.equal(shellExitCode({ code: 3 }), 3);
  assert.equal(shellExitCode({ code: 255 }), 255);
  assert.equal(shellExitCode({ signal: 1 }), 129);
  assert.equal(shellExitCode({ signal: 9 }), 137);
  assert.equal(shellExitCode({ signal: 15 }), 143);
  assert.equal(shellExitCode({ signal: 127 }), 255);
});

Deno.test("exit_status: signalNumber", () => {
  assert.equal(signalNumber("SIGKILL"), 9);
  assert.equal(signalNumber("KILL"), 9);
  assert.equal(signalNumber("SIGTERM"), 15);
  assert.equal(signalNumber("TERM"), 15);
  assert.equal(signalNumber("SIGHUP"), 1);
  assert.equal(signalNumber("SIGINT"), 2);
  assert.equal(signalNumber("SIGSEGV"), 11);
  assert.equal(signalNumber("SIGSYS"), 31);
  assert.equal(signalNumber("SIGRTMIN"), 34);
  assert.equal(signalNumber("RTMIN+2"), 36);
  for (const unknown of ["SIGFOO", "FOO", "", "SIG", "9", "SIGSIGKILL", "SIGKILLX", "SIGRTMIN+"]) {
    assert.equal(signalNumber(unknown), null, unknown);
  }
});

Deno.test("exit_status: signalName", () => {
  assert.equal(signalName(9), "SIGKILL");
  assert.equal(signalName(15), "SIGTERM");
  assert.equal(signalName(1), "SIGHUP");
  assert.equal(signalName(31), "SIGSYS");
  assert.equal(signalName(0), "signal 0");
  assert.equal(signalName(32), "signal 32");
  assert.equal(signalName(100), "signal 100");
});

Deno.test("exit_status: signalName and signalNumber agree on 1..31", () => {
  for (let n = 1; n <= 31; n++) {
    const name = signalName(n);
    assert.match(name, /^SIG[A-Z0-9]+$/);
    assert.equal(signalNumber(name), n);
    assert.equal(signalNumber(name.slice(3)), n);
  }
});

Deno.test("exit_status: describeExit", () => {
  assert.equal(describeExit({ code: 0 }), "exited with code 0");
  assert.equal(describeExit({ code: 42 }), "exited with code 42");
  assert.equal(describeExit({ signal: 9 }), "killed by signal 9 (SIGKILL)");
  assert.equal(describeExit({ signal: 15 }), "killed by signal 15 (SIGTERM)");
  assert.match(describeExit({ signal: 40 }), /^killed by signal 40\b/);
});

// Real-time signal names stop at SIGRTMAX (64).
Deno.test({
  name: "exit_status: signalNumber refuses SIGRTMIN offsets past SIGRTMAX",
  fn() {
    assert.equal(signalNumber("SIGRTMIN+30"), 64);
    assert.equal(signalNumber("SIGRTMIN+31"), null);
    assert.equal(signalNumber("SIGRTMIN+100"), null);
  },
});

Deno.test("messages: encodeDataPayload leaves the header room and encodes as encodeMessage does", () => {
  const m = {
    type: "data" as const,
    run: "mwu9r2k1-3c5e7a9b1d2f",
    stream: "stdout" as const,
    data: new Uint8Array([0, 1, 2, 255]),
  };
  const plain = encodeMessage(m);
  assert.deepEqual(encodeDataPayload(m), plain);
  const roomy = encodeDataPayload(m, 4);
  assert.deepEqual(roomy.subarray(0, 4), new Uint8Array(4));
  assert.deepEqual(roomy.subarray(4), plain);
  assert.deepEqual(decodeServerMessage(roomy.subarray(4)), m);
});

Deno.test("messages: data frames of several runs decode each to its own run id", () => {
  const frame = (run: string, data: number[]) =>
    encodeMessage({ type: "data", run, stream: "stdout", data: new Uint8Array(data) });
  // The same id length, different ids: a cache of the last id must not mix them up.
  const a = decodeServerMessage(frame("run-a", [1]));
  const b = decodeServerMessage(frame("run-b", [2]));
  const a2 = decodeServerMessage(frame("run-a", [3]));
  assert.deepEqual([a, b, a2].map((m) => m.type === "data" && m.run), ["run-a", "run-b", "run-a"]);
  // An invalid id is refused even right after a valid one of the same length.
  const bad = frame("run-a", [1]);
  bad[3 + 3] = 0x20; // "run a"
  assert.throws(() => decodeServerMessage(bad), ProtocolError);
});
