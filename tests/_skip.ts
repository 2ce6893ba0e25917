/**
 * Skipping a test whose tool is missing: one line naming what is missing and
 * the command that installs it, printed as `skipped: FILE: WHY` (the CI run
 * lists these lines at its end). With CI=true nothing may skip: the same
 * call throws, and the test fails.
 *
 * @module
 */

/** True in CI (`CI=true`), where a missing package fails the run. */
export const IN_CI: boolean = (() => {
  try {
    return Deno.env.get("CI") === "true";
  } catch {
    return false;
  }
})();

/**
 * Skips (prints the reason) or, in CI, fails (throws it).
 *
 * @example
 * ```ts ignore
 * if (!qemu) return skipOrFail("vm_test", "qemu-system-x86_64 not found: apt-get install qemu-system-x86");
 * ```
 */
export function skipOrFail(file: string, why: string): void {
  if (IN_CI) throw new Error(`${file}: cannot run in CI: ${why}`);
  console.log(`skipped: ${file}: ${why}`);
}

/**
 * Deno.test, or, when `reason` is set, a skipped test (ignored, its reason
 * in its name and printed) outside CI and a failing one in CI.
 *
 * @example
 * ```ts ignore
 * testOrSkip("ship_test", "shellcheck passes", await missing("shellcheck"), async () => {…});
 * ```
 */
export function testOrSkip(
  file: string,
  name: string,
  reason: string | undefined,
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  if (!reason) {
    Deno.test(name, fn);
    return;
  }
  if (IN_CI) {
    Deno.test(name, () => {
      throw new Error(`${file}: cannot run in CI: ${reason}`);
    });
    return;
  }
  console.log(`skipped: ${file}: "${name}": ${reason}`);
  Deno.test({ name: `${name} (skipped: ${reason})`, ignore: true, fn });
}
