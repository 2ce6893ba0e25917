// The fuzzing properties shared with `deno task fuzz` (tools/fuzz.ts), run
// briefly: the same code as the long session, a few hundred cases each.
import assert from "node:assert/strict";
import fc from "fast-check";
import { FUZZ_PROPERTIES, fuzzParams, newFuzzStats } from "./_fuzz.ts";

for (const property of FUZZ_PROPERTIES) {
  Deno.test(`fuzz: ${property.name}`, () => {
    const stats = newFuzzStats();
    fc.assert(property.make(stats), fuzzParams(300));
    assert.ok(stats.cases >= 300, `${stats.cases} cases`);
  });
}

Deno.test("fuzz: the shared properties both accept and reject", () => {
  const stats = newFuzzStats();
  for (const property of FUZZ_PROPERTIES) fc.assert(property.make(stats), { numRuns: 200 });
  // The generators reach both sides of every check.
  assert.ok(stats.accepted > 0, "nothing was ever accepted");
  for (const key of ["ProtocolError", "FrameError:oversize", "FrameError:truncated"]) {
    assert.ok((stats.rejections[key] ?? 0) > 0, `no ${key}: ${JSON.stringify(stats)}`);
  }
});
