/**
 * The long fuzzing session (`deno task fuzz`): runs the frame decoder and
 * message validator properties of tests/_fuzz.ts (the same ones the CI tests
 * run briefly) for a million cases or more, in batches, and checks between
 * batches that the process's memory stays bounded.
 *
 * ```sh
 * deno task fuzz                      # 1,000,000 cases in all
 * deno task fuzz -cases 5000000       # more
 * deno task fuzz -minutes 10          # stop after 10 minutes, whatever the count
 * deno task fuzz -property 3 -seed S -path P   # replay a failure it printed
 * ```
 *
 * Exits 0 when every case passed, 1 on a failure (with the seed and path to
 * replay it) or when memory grew past `-max_rss_mb`, 2 on a bad command line.
 *
 * @module
 */

import fc from "fast-check";
import { FUZZ_PROPERTIES, type FuzzStats, newFuzzStats } from "../tests/_fuzz.ts";

/** Settings of a fuzzing session. */
export interface FuzzOptions {
  /** Cases in all, shared evenly between the properties. */
  cases: number;
  /** Cases per batch (memory is sampled between batches). */
  batch: number;
  /** Stop after this long even if fewer cases ran (0: no limit). */
  minutes: number;
  /** Fail when the resident set grows past this many MiB. */
  maxRssMb: number;
  /** First seed; batch i of property p uses seed + p * 1e6 + i. */
  seed: number;
  /** Only this property (index), for replays. */
  property?: number;
  /** A counterexample path to replay (with `seed` and `property`). */
  path?: string;
}

/** A bad command line. */
export class FuzzUsageError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "FuzzUsageError";
  }
}

const USAGE = `usage: deno task fuzz [-cases N] [-batch N] [-minutes M] [-max_rss_mb MB]
                      [-seed S] [-property I [-path P]]`;

/** Parses the command line. */
export function parseFuzzArgs(args: readonly string[]): FuzzOptions {
  const o: FuzzOptions = {
    cases: 1_000_000,
    batch: 5_000,
    minutes: 0,
    maxRssMb: 512,
    seed: Date.now() % 0x7fffffff,
  };
  for (let i = 0; i < args.length; i++) {
    const name = args[i].replace(/^--?/, "").replaceAll("-", "_");
    const value = args[++i];
    if (value === undefined) throw new FuzzUsageError(`-${name} needs a value`);
    const n = Number(value);
    const whole = Number.isInteger(n) && n >= 0;
    switch (name) {
      case "cases":
      case "batch":
      case "max_rss_mb":
      case "seed":
      case "property":
        if (!whole) throw new FuzzUsageError(`-${name} must be a whole number, not ${value}`);
        if (name === "cases") o.cases = n;
        else if (name === "batch") o.batch = Math.max(1, n);
        else if (name === "max_rss_mb") o.maxRssMb = n;
        else if (name === "seed") o.seed = n;
        else o.property = n;
        break;
      case "minutes":
        if (!(n >= 0)) throw new FuzzUsageError(`-minutes must be a number, not ${value}`);
        o.minutes = n;
        break;
      case "path":
        o.path = value;
        break;
      default:
        throw new FuzzUsageError(`unknown option -${name}`);
    }
  }
  if (o.property !== undefined && o.property >= FUZZ_PROPERTIES.length) {
    throw new FuzzUsageError(`-property must be below ${FUZZ_PROPERTIES.length}`);
  }
  return o;
}

function _mb(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}

function _say(line: string): void {
  console.log(line);
}

/** The outcome of a session. */
export interface FuzzReport {
  /** Everything counted, over all properties. */
  stats: FuzzStats;
  /** Wall time, ms. */
  elapsedMs: number;
  /** Highest resident set seen, bytes. */
  peakRss: number;
  /** Resident set after the first batch (warm), bytes. */
  warmRss: number;
  /** Null when everything passed, else why not. */
  failure: string | null;
}

/** Runs a session, printing progress; never throws for a failing case. */
export function runFuzz(o: FuzzOptions): FuzzReport {
  const stats = newFuzzStats();
  const start = performance.now();
  const deadline = o.minutes > 0 ? start + o.minutes * 60_000 : Infinity;
  const limit = o.maxRssMb * 1048576;
  let peakRss = Deno.memoryUsage().rss;
  let warmRss = 0;
  const indices = o.property === undefined ? FUZZ_PROPERTIES.map((_, i) => i) : [o.property];
  const perProperty = Math.ceil(o.cases / indices.length);
  const done = new Array(FUZZ_PROPERTIES.length).fill(0);
  let batchNo = 0;
  const finish = (failure: string | null): FuzzReport => ({
    stats,
    elapsedMs: performance.now() - start,
    peakRss,
    warmRss,
    failure,
  });
  if (o.path !== undefined) {
    const p = FUZZ_PROPERTIES[o.property ?? 0];
    const details = fc.check(p.make(stats), { seed: o.seed, path: o.path, numRuns: 1 });
    return finish(details.failed ? fc.defaultReportMessage(details) ?? "failed" : null);
  }
  // Round-robin, one batch of each property at a time, so that a time limit
  // still covers all of them.
  for (let round = 0; indices.some((i) => done[i] < perProperty); round++) {
    for (const i of indices) {
      if (done[i] >= perProperty) continue;
      if (performance.now() > deadline) {
        _say(`time limit of ${o.minutes} min reached`);
        return finish(null);
      }
      const numRuns = Math.min(o.batch, perProperty - done[i]);
      const seed = (o.seed + i * 1_000_000 + round) % 0x7fffffff;
      const details = fc.check(FUZZ_PROPERTIES[i].make(stats), { numRuns, seed });
      done[i] += numRuns;
      if (details.failed) {
        return finish(
          `property ${i} (${FUZZ_PROPERTIES[i].name}) failed; replay with ` +
            `deno task fuzz -property ${i} -seed ${seed} -path ${
              JSON.stringify(details.counterexamplePath)
            }\n` +
            (fc.defaultReportMessage(details) ?? ""),
        );
      }
      const rss = Deno.memoryUsage().rss;
      peakRss = Math.max(peakRss, rss);
      if (++batchNo === indices.length) warmRss = rss;
      if (rss > limit) {
        return finish(`resident set ${_mb(rss)} MiB is over the bound of ${o.maxRssMb} MiB`);
      }
    }
    const s = (performance.now() - start) / 1000;
    _say(
      `${stats.cases} cases, ${s.toFixed(0)} s, ${(stats.cases / s).toFixed(0)} cases/s, ` +
        `rss ${_mb(Deno.memoryUsage().rss)} MiB (peak ${_mb(peakRss)})`,
    );
  }
  return finish(null);
}

/** Prints the summary of a session. */
export function printReport(r: FuzzReport, o: FuzzOptions): void {
  const s = r.elapsedMs / 1000;
  _say(`\nseed ${o.seed}, properties ${FUZZ_PROPERTIES.length}`);
  _say(`cases run: ${r.stats.cases} in ${s.toFixed(1)} s (${(r.stats.cases / s).toFixed(0)}/s)`);
  _say(`accepted (payloads or messages): ${r.stats.accepted}`);
  _say("clean rejections by error class:");
  for (const [k, n] of Object.entries(r.stats.rejections).sort((a, b) => b[1] - a[1])) {
    _say(`  ${k.padEnd(24)} ${n}`);
  }
  _say(
    `rss: warm ${_mb(r.warmRss)} MiB, peak ${_mb(r.peakRss)} MiB (bound ${o.maxRssMb} MiB)`,
  );
  _say(r.failure ? `FAILED: ${r.failure}` : "result: no failure");
}

if (import.meta.main) {
  let options: FuzzOptions;
  try {
    options = parseFuzzArgs(Deno.args);
  } catch (e) {
    if (!(e instanceof FuzzUsageError)) throw e;
    console.error(`fuzz: ${e.message}\n${USAGE}`);
    Deno.exit(2);
  }
  const report = runFuzz(options);
  printReport(report, options);
  Deno.exit(report.failure ? 1 : 0);
}
