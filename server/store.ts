/**
 * The run record on disk, so that it survives a restart of cmappserver.
 * One directory per daemon (`-statedir`), one small file per run:
 *
 * ```
 * STATEDIR/runs/ID.json       the run, written once when it starts (atomically)
 * STATEDIR/runs/ID.exit       its exit status, written by its supervisor
 * STATEDIR/runs/ID.delivered  present once a manager has received that status
 * STATEDIR/damaged/           unreadable files, set aside with a warning
 * ```
 *
 * Every write goes to a temporary file that is renamed over the old one: a
 * crash of cmappserver leaves either the old file or the new one, never a
 * torn one. A write resolves once the file is renamed into place, which is
 * all that a restarted cmappserver needs (the page cache survives the death
 * of a process); it is synced to disk right after, off the caller's path
 * ({@linkcode RunStore.synced} waits for that). Only a crash of the whole
 * guest in between can lose it, and the runs of a previous boot are
 * reported lost anyway.
 *
 * @module
 */

import type { ExitStatus } from "../protocol/mod.ts";
import { readStatusFile } from "./supervisor.ts";

/** What is recorded about a run when it starts. */
export interface RunRecord {
  /** Server-assigned id. */
  id: string;
  /** The run's name. */
  name: string;
  /** Program and arguments. */
  argv: string[];
  /** The application's pid (and process group). */
  pid: number;
  /** Its start time in clock ticks since boot (tells it from a reused pid). */
  pidStart: number | null;
  /** The supervisor's pid. */
  supervisorPid: number;
  /**
   * The supervisor's start time in clock ticks since boot (tells a live
   * supervisor from a process that reused its pid); null or absent when
   * unknown (records of cmapp before 0.1.1).
   */
  supervisorStart?: number | null;
  /** The boot it started in. */
  bootId: string;
  /** Start time, ISO 8601. */
  startedAt: string;
  /** Fingerprint of the manager that launched it. */
  launchedBy: string;
  /** Grace period between SIGTERM and SIGKILL, in ms. */
  stopTimeoutMs: number;
  /** End time, ISO 8601, once known. */
  endedAt?: string;
  /** Set when the run ended without a supervisor to record how: why. */
  lost?: string;
}

/** A run as found on disk. */
export interface StoredRun {
  /** The record. */
  record: RunRecord;
  /** Its exit status, if its supervisor wrote one. */
  exit: ExitStatus | null;
  /** True once a manager received the exit status. */
  delivered: boolean;
}

const _ID = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Run records in a state directory.
 *
 * @example
 * ```ts ignore
 * import { RunStore } from "./store.ts";
 * const store = await RunStore.open("/var/lib/cmappserver", (w) => console.warn(w));
 * const { runs, damaged } = await store.loadAll();
 * ```
 */
export class RunStore {
  /** The state directory. */
  readonly dir: string;
  /** Where run files live. */
  readonly runsDir: string;
  /** Background syncs under way. */
  readonly #syncing = new Set<Promise<void>>();

  private constructor(dir: string) {
    this.dir = dir;
    this.runsDir = `${dir}/runs`;
  }

  /**
   * Opens (creating if needed, mode 0700) a state directory.
   * @throws when it cannot be created or written
   */
  static async open(dir: string): Promise<RunStore> {
    const store = new RunStore(dir);
    await Deno.mkdir(store.runsDir, { recursive: true, mode: 0o700 });
    // Prove it is writable now rather than at the first launch.
    const probe = `${store.runsDir}/.probe-${Deno.pid}`;
    await Deno.writeTextFile(probe, "");
    await Deno.remove(probe);
    return store;
  }

  /** Where the supervisor of run `id` writes its exit status. */
  statusFile(id: string): string {
    return `${this.runsDir}/${id}.exit`;
  }

  /** Records a run (atomically); resolves once it is in place, before it is synced. */
  async write(record: RunRecord): Promise<void> {
    await this.#atomicWrite(`${this.runsDir}/${record.id}.json`, JSON.stringify(record) + "\n");
  }

  /**
   * Records that a manager received the run's exit status; resolves once
   * the marker exists, before it is synced. An empty file cannot be torn,
   * so it is created in place.
   */
  async markDelivered(id: string): Promise<void> {
    const path = `${this.runsDir}/${id}.delivered`;
    await Deno.writeFile(path, new Uint8Array(0), { mode: 0o600 });
    this.#syncLater(path);
  }

  /** Settles once every write so far has been synced to disk (or failed to). */
  async synced(): Promise<void> {
    while (this.#syncing.size > 0) await Promise.all([...this.#syncing]);
  }

  /** Records an exit status found by other means than the supervisor's file. */
  async writeExit(id: string, line: string): Promise<void> {
    await this.#atomicWrite(this.statusFile(id), line + "\n");
  }

  /** Forgets a run. */
  async remove(id: string): Promise<void> {
    for (const ext of [".json", ".exit", ".delivered", ".exit.tmp"]) {
      await Deno.remove(`${this.runsDir}/${id}${ext}`).catch(() => {});
    }
  }

  /**
   * Reads every run. A file that cannot be parsed is moved to
   * `STATEDIR/damaged/` and named in `damaged`; it is never fatal.
   */
  async loadAll(): Promise<{ runs: StoredRun[]; damaged: string[] }> {
    const runs: StoredRun[] = [];
    const damaged: string[] = [];
    const names: string[] = [];
    for await (const e of Deno.readDir(this.runsDir)) {
      if (e.isFile && e.name.endsWith(".json")) names.push(e.name);
      // Leftovers of writes a crash interrupted.
      if (e.isFile && e.name.includes(".tmp-")) {
        await Deno.remove(`${this.runsDir}/${e.name}`).catch(() => {});
      }
    }
    for (const name of names.sort()) {
      const id = name.slice(0, -".json".length);
      const path = `${this.runsDir}/${name}`;
      let record: RunRecord;
      try {
        record = _validate(JSON.parse(await Deno.readTextFile(path)), id);
      } catch (e) {
        damaged.push(`${path}: ${(e as Error).message}`);
        await this.#setAside(id);
        continue;
      }
      const exit = await readStatusFile(this.statusFile(id));
      const delivered = await Deno.stat(`${this.runsDir}/${id}.delivered`).then(
        () => true,
        () => false,
      );
      runs.push({ record, exit, delivered });
    }
    runs.sort((a, b) => a.record.startedAt.localeCompare(b.record.startedAt));
    return { runs, damaged };
  }

  async #setAside(id: string): Promise<void> {
    const dest = `${this.dir}/damaged`;
    await Deno.mkdir(dest, { recursive: true, mode: 0o700 });
    const stamp = new Date().toISOString().replaceAll(":", "");
    for (const ext of [".json", ".exit", ".delivered"]) {
      await Deno.rename(`${this.runsDir}/${id}${ext}`, `${dest}/${id}${ext}.${stamp}`)
        .catch(() => {});
    }
  }

  async #atomicWrite(path: string, text: string): Promise<void> {
    const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeTextFile(tmp, text, { mode: 0o600 });
    await Deno.rename(tmp, path);
    this.#syncLater(path);
  }

  /** Syncs a file to disk in the background (a file removed meanwhile is fine). */
  #syncLater(path: string): void {
    const work = (async () => {
      try {
        const f = await Deno.open(path, { read: true });
        try {
          await f.syncData();
        } finally {
          f.close();
        }
      } catch {
        // removed (forgotten) meanwhile, or not syncable: nothing to keep
      }
    })();
    this.#syncing.add(work);
    work.finally(() => this.#syncing.delete(work));
  }
}

function _validate(v: unknown, id: string): RunRecord {
  const o = v as Record<string, unknown>;
  const bad = (what: string): never => {
    throw new Error(`invalid run record: ${what}`);
  };
  if (typeof o !== "object" || o === null) bad("not an object");
  if (o.id !== id || typeof o.id !== "string" || !_ID.test(o.id)) bad("id");
  if (typeof o.name !== "string" || o.name === "") bad("name");
  if (!Array.isArray(o.argv) || o.argv.length === 0 || o.argv.some((a) => typeof a !== "string")) {
    bad("argv");
  }
  for (const f of ["pid", "supervisorPid", "stopTimeoutMs"]) {
    if (typeof o[f] !== "number" || !Number.isInteger(o[f]) || (o[f] as number) < 0) bad(f);
  }
  if (o.pidStart !== null && typeof o.pidStart !== "number") bad("pidStart");
  if (
    o.supervisorStart !== undefined && o.supervisorStart !== null &&
    typeof o.supervisorStart !== "number"
  ) bad("supervisorStart");
  for (const f of ["bootId", "startedAt", "launchedBy"]) if (typeof o[f] !== "string") bad(f);
  if (o.endedAt !== undefined && typeof o.endedAt !== "string") bad("endedAt");
  if (o.lost !== undefined && typeof o.lost !== "string") bad("lost");
  return o as unknown as RunRecord;
}
