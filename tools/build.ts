/**
 * Build and packaging of the two programs.
 *
 * - `deno task bundle`: dist/cmappserver.js and dist/cmappmgr.js, single
 *   files made by `deno bundle` that run with
 *   `deno run --cached-only -P=cmapp` and no network.
 * - `deno task build`: dist/bin/x86_64/{cmappserver,cmappmgr} and
 *   dist/bin/aarch64/{…} made by `deno compile` with the project's one
 *   permission set. `deno compile` needs the Deno runtime `denort` for each
 *   target; where it cannot be downloaded, give it as DENORT_BIN_X86_64 and
 *   DENORT_BIN_AARCH64 (or DENORT_BIN for the machine's own architecture).
 *
 * @module
 */

import { ROOT } from "./_programs.ts";

const PROGRAMS = ["cmappserver", "cmappmgr"] as const;
const TARGETS = [
  { arch: "x86_64", triple: "x86_64-unknown-linux-gnu", env: "DENORT_BIN_X86_64" },
  { arch: "aarch64", triple: "aarch64-unknown-linux-gnu", env: "DENORT_BIN_AARCH64" },
] as const;

async function deno(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, output: d.decode(out.stdout) + d.decode(out.stderr) };
}

function mb(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function bundle(): Promise<number> {
  await Deno.mkdir(`${ROOT}/dist`, { recursive: true });
  for (const p of PROGRAMS) {
    const out = `dist/${p}.js`;
    const r = await deno(["bundle", "-q", "--platform", "deno", "-o", out, `cli/${p}.ts`]);
    if (r.code !== 0) {
      console.error(`bundle of ${p} failed:\n${r.output}`);
      return 1;
    }
    console.log(`${out}  ${mb((await Deno.stat(`${ROOT}/${out}`)).size)}`);
  }
  console.log(`run with: deno run --cached-only -P=cmapp --config deno.json dist/cmappserver.js`);
  return 0;
}

async function build(): Promise<number> {
  const hostArch = Deno.build.arch;
  let failed = 0;
  for (const t of TARGETS) {
    const denort = Deno.env.get(t.env) ??
      (t.arch === hostArch ? Deno.env.get("DENORT_BIN") : undefined);
    await Deno.mkdir(`${ROOT}/dist/bin/${t.arch}`, { recursive: true });
    for (const p of PROGRAMS) {
      const out = `dist/bin/${t.arch}/${p}`;
      const r = await deno(
        [
          "compile",
          "-q",
          "--no-prompt",
          "-P=cmapp",
          "--target",
          t.triple,
          "-o",
          out,
          `cli/${p}.ts`,
        ],
        denort ? { DENORT_BIN: denort } : {},
      );
      if (r.code !== 0) {
        failed++;
        if (/dl\.deno\.land|denort|error sending request/.test(r.output)) {
          console.error(
            `${out}: deno compile needs the Deno ${Deno.version.deno} runtime "denort" for ` +
              `${t.triple}, and could not ${denort ? `use ${denort}` : "download it"}.\n` +
              `  Get denort-${t.triple}.zip for Deno ${Deno.version.deno} (from ` +
              `https://dl.deno.land/release/v${Deno.version.deno}/denort-${t.triple}.zip, on ` +
              `a machine that can reach it), unzip it, and run:\n` +
              `  ${t.env}=/path/to/denort deno task build\n` +
              `  (deno task bundle makes single-file programs that need no denort.)`,
          );
        } else {
          console.error(`${out}: deno compile failed:\n${r.output}`);
        }
        break;
      }
      console.log(`${out}  ${mb((await Deno.stat(`${ROOT}/${out}`)).size)}`);
    }
  }
  return failed === 0 ? 0 : 1;
}

if (import.meta.main) {
  const what = Deno.args[0];
  if (what === "bundle") Deno.exit(await bundle());
  if (what === "build") Deno.exit(await build());
  console.error("usage: deno run -P=cmapp tools/build.ts bundle|build");
  Deno.exit(2);
}
