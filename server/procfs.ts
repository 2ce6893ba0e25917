/**
 * What the kernel says about processes (/proc), read through `cat`: Deno
 * 2.9 refuses every /proc path to a program without --allow-all, and
 * cmappserver runs with a narrower permission set. One `cat` reads any
 * number of processes at once.
 *
 * @module
 */

/** One process's line of /proc/PID/stat, the fields cmapp uses. */
export interface ProcStat {
  /** Process id. */
  pid: number;
  /** State letter: R, S, D, T, Z (zombie), X (dead), … */
  state: string;
  /** Process group id. */
  pgrp: number;
  /** Session id. */
  session: number;
  /** Start time in clock ticks since boot (tells a process from one reusing its pid). */
  startTime: number;
}

let _cat = "/bin/cat";

/** Sets the absolute path of `cat` (found once at start-up, never from a request's PATH). */
export function setCatPath(path: string): void {
  _cat = path;
}

async function _cat_(paths: string[], glob?: string): Promise<string> {
  const cmd = glob
    ? new Deno.Command("/bin/sh", {
      args: ["-c", `exec "$0" ${glob} 2>/dev/null`, _cat],
      clearEnv: true,
      stdout: "piped",
      stderr: "null",
    })
    : new Deno.Command(_cat, {
      args: paths,
      clearEnv: true,
      stdout: "piped",
      stderr: "null",
    });
  try {
    const out = await cmd.output();
    return new TextDecoder().decode(out.stdout);
  } catch {
    return "";
  }
}

/** Parses /proc/PID/stat lines (the command name may hold spaces and parentheses). */
export function parseStatLines(text: string): Map<number, ProcStat> {
  const out = new Map<number, ProcStat>();
  for (const line of text.split("\n")) {
    const open = line.indexOf(" (");
    const close = line.lastIndexOf(") ");
    if (open < 0 || close < open) continue;
    const pid = Number(line.slice(0, open));
    const rest = line.slice(close + 2).split(" ");
    if (!Number.isInteger(pid) || rest.length < 20) continue;
    out.set(pid, {
      pid,
      state: rest[0],
      pgrp: Number(rest[2]),
      session: Number(rest[3]),
      startTime: Number(rest[19]),
    });
  }
  return out;
}

/**
 * The stat lines of the given processes (missing ones are simply absent):
 * one `cat` per 2000 of them, to stay well within the kernel's limit on
 * the size of a command line.
 */
export async function procStats(pids: number[]): Promise<Map<number, ProcStat>> {
  const out = new Map<number, ProcStat>();
  const unique = [...new Set(pids)];
  for (let i = 0; i < unique.length; i += 2000) {
    const chunk = unique.slice(i, i + 2000).map((p) => `/proc/${p}/stat`);
    for (const [pid, st] of parseStatLines(await _cat_(chunk))) out.set(pid, st);
  }
  return out;
}

/** The stat lines of every process. */
export async function allProcStats(): Promise<Map<number, ProcStat>> {
  return parseStatLines(await _cat_([], "/proc/[0-9]*/stat"));
}

/** True for a process that exists and has not exited (zombies have exited). */
export function isLive(s: ProcStat | undefined): s is ProcStat {
  return s !== undefined && s.state !== "Z" && s.state !== "X";
}

/**
 * The start time of a live process, or null when there is none (or only
 * its zombie).
 */
export async function processStartTime(pid: number): Promise<number | null> {
  const s = (await procStats([pid])).get(pid);
  return isLive(s) ? s.startTime : null;
}

/** This boot's id: processes recorded under another boot are gone. */
export async function bootId(): Promise<string> {
  return (await _cat_(["/proc/sys/kernel/random/boot_id"])).trim() || "unknown";
}
