/**
 * The state directory: run records and their files on disk, so that runs
 * survive a restart of cmappserver. One directory per daemon (`-statedir`),
 * held with a lock, checked like sshd's StrictModes:
 *
 * ```
 * STATEDIR/lock               held (flock) by the cmappserver using the directory
 * STATEDIR/bin/               the supervisor program, installed by hash
 * STATEDIR/runs/ID.json       the run record, durable before its application starts
 * STATEDIR/runs/ID.pid        written by the supervisor before the application runs
 * STATEDIR/runs/ID.sock       the supervisor's socket, while it lives
 * STATEDIR/runs/ID.lock       flock'ed by the supervisor for its life
 * STATEDIR/runs/ID.exit       how the run ended
 * STATEDIR/runs/ID.delivered  present once a manager has received that
 * STATEDIR/damaged/           records that cannot be used, set aside
 * ```
 *
 * Files are written to a temporary name and renamed. The formats belong to
 * records.ts.
 *
 * @module
 */

import {
  type AnyRunRecord,
  type ExitRecord,
  formatExitRecord,
  formatRunRecord,
  parseExitRecord,
  parsePidRecord,
  parseRunRecord,
  type PidRecord,
  RecordError,
  type RunRecord,
} from "./records.ts";

/** A run as found on disk. */
export interface StoredRun {
  /** The record. */
  record: AnyRunRecord;
  /** Its exit record, when one was written. */
  exit: ExitRecord | null;
  /** When the exit record was written (its mtime), when known. */
  exitTime: Date | null;
  /** True once a manager received how it ended. */
  delivered: boolean;
  /** The supervisor's pid record, while it has one. */
  pid: PidRecord | null;
  /** True while the supervisor's socket exists. */
  socket: boolean;
}

/** A run's lock, held by cmappserver while it decides what became of the run. */
export interface RunLock {
  /** Lets it go. */
  release(): void;
  /** Forgets the run (every file of it) under the lock, then lets it go. */
  discard(): Promise<void>;
}

/**
 * The state directory cannot be used; the message says why and what to do.
 *
 * @example
 * ```ts ignore
 * import { StateDirError, startServer } from "./mod.ts";
 * try {
 *   await startServer({ identity, trust, stateDir: "/nonexistent/state" });
 * } catch (e) {
 *   if (e instanceof StateDirError) console.error(e.message); // which directory, and why
 * }
 * ```
 */
export class StateDirError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(message);
    this.name = "StateDirError";
  }
}

/** The longest path a unix socket address holds (sun_path, NUL included: 108). */
const _MAX_SOCKET_PATH = 107;
/** The longest run id this code makes: a sequence number (base 36) and 8 hex digits. */
export const MAX_NEW_RUN_ID = 20;

/**
 * Checks a directory the way sshd's StrictModes does: a real directory (not
 * a symlink), owned by us, writable by nobody else; and every directory
 * above it owned by root or us and writable by nobody else unless sticky.
 */
async function _checkModes(dir: string, uid: number): Promise<void> {
  const st = await Deno.lstat(dir);
  if (st.isSymlink || !st.isDirectory) {
    throw new StateDirError(`${dir} is not a directory (a symlink or a file): refusing to use it`);
  }
  const mode = (st.mode ?? 0) & 0o7777;
  if (st.uid !== uid) {
    throw new StateDirError(
      `${dir} belongs to uid ${st.uid}, not to cmappserver's uid ${uid}: refusing to use it ` +
        `(chown ${uid} ${dir})`,
    );
  }
  if (mode & 0o022) {
    throw new StateDirError(
      `${dir} is writable by others (mode ${mode.toString(8).padStart(4, "0")}): refusing to ` +
        `use it (chmod 700 ${dir})`,
    );
  }
  for (let p = dir.replace(/\/[^/]*$/, ""); p !== ""; p = p.replace(/\/[^/]*$/, "")) {
    const a = await Deno.stat(p);
    const m = (a.mode ?? 0) & 0o7777;
    if ((a.uid !== 0 && a.uid !== uid) || ((m & 0o022) && !(m & 0o1000))) {
      throw new StateDirError(
        `${p}, above the state directory ${dir}, can be changed by others (owner ${a.uid}, ` +
          `mode ${m.toString(8).padStart(4, "0")}): refusing to use it`,
      );
    }
  }
}

/**
 * Run records in a state directory.
 *
 * @example
 * ```ts ignore
 * import { RunStore } from "./store.ts";
 * const store = await RunStore.open("/var/lib/cmappserver");
 * const { runs, damaged } = await store.loadAll();
 * ```
 */
export class RunStore {
  /** The state directory. */
  readonly dir: string;
  /** Where run files live. */
  readonly runsDir: string;
  /** Where the supervisor program is installed. */
  readonly binDir: string;
  readonly #lock: Deno.FsFile;
  readonly #syncing = new Set<Promise<void>>();

  private constructor(dir: string, lock: Deno.FsFile) {
    this.dir = dir;
    this.runsDir = `${dir}/runs`;
    this.binDir = `${dir}/bin`;
    this.#lock = lock;
  }

  /**
   * Opens a state directory: creates it (mode 0700) if needed, checks its
   * owner and modes, and locks it against a second cmappserver.
   * @throws {StateDirError} saying what is wrong and what to do
   */
  static async open(dir: string): Promise<RunStore> {
    if (!dir.startsWith("/")) throw new StateDirError(`state directory ${dir} must be absolute`);
    dir = dir.replace(/\/+$/, "") || "/";
    const uid = Deno.uid() ?? 0;
    const runsDir = `${dir}/runs`;
    const room = _MAX_SOCKET_PATH - new TextEncoder().encode(`${runsDir}/.sock`).length;
    if (room < MAX_NEW_RUN_ID) {
      throw new StateDirError(
        `state directory ${dir} is too long a path for the supervisors' unix sockets ` +
          `(at most ${dir.length - (MAX_NEW_RUN_ID - room)} characters)`,
      );
    }
    try {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      for (const d of [dir, runsDir, `${dir}/bin`, `${dir}/damaged`]) {
        await Deno.mkdir(d, { recursive: true, mode: 0o700 });
        await _checkModes(d, uid);
      }
    } catch (e) {
      if (e instanceof StateDirError) throw e;
      throw new StateDirError(`cannot use state directory ${dir}: ${(e as Error).message}`);
    }
    let lock: Deno.FsFile;
    try {
      // Held read-only: an open file for writing would keep the disk from being remounted
      // read-only, and flock needs no more.
      lock = await Deno.open(`${dir}/lock`, { read: true }).catch(async (e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        await Deno.writeFile(`${dir}/lock`, new Uint8Array(0), { append: true, mode: 0o600 });
        return await Deno.open(`${dir}/lock`, { read: true });
      });
    } catch (e) {
      throw new StateDirError(`cannot open ${dir}/lock: ${(e as Error).message}`);
    }
    if (!(await lock.tryLock(true))) {
      lock.close();
      throw new StateDirError(
        `state directory ${dir} is in use by another cmappserver (${dir}/lock is locked)`,
      );
    }
    return new RunStore(dir, lock);
  }

  /** Releases the directory's lock. */
  close(): void {
    try {
      this.#lock.close();
    } catch {
      // closed already
    }
  }

  /** The supervisor's socket of run `id`. */
  socketPath(id: string): string {
    return `${this.runsDir}/${id}.sock`;
  }

  /**
   * Records a run before it starts: written to a temporary file, synced to
   * disk, renamed into place, and the rename synced. Once this resolves, a
   * crash of cmappserver or of the guest leaves the record, and the next
   * cmappserver resolves the run from it.
   */
  async writeRecord(record: RunRecord): Promise<void> {
    await this.#atomicWrite(`${this.runsDir}/${record.id}.json`, formatRunRecord(record), true);
  }

  /**
   * Takes the run's lock (`ID.lock`), which its supervisor holds for its
   * life: null when it is held (a supervisor is alive, if only starting).
   * While cmappserver holds it, no supervisor of the run can start.
   */
  async lockRun(id: string): Promise<RunLock | null> {
    const path = `${this.runsDir}/${id}.lock`;
    const f = await Deno.open(path, { read: true }).catch(async (e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await Deno.writeFile(path, new Uint8Array(0), { append: true, mode: 0o600 });
      return await Deno.open(path, { read: true });
    });
    if (!(await f.tryLock(true))) {
      f.close();
      return null;
    }
    return {
      release: () => f.close(),
      discard: async () => {
        // Under the lock: a supervisor too late to start finds no record and starts nothing.
        await this.remove(id);
        f.close();
      },
    };
  }

  /** The run's exit record; null when there is none (or it is unreadable). */
  async readExit(id: string): Promise<ExitRecord | null> {
    const text = await Deno.readTextFile(`${this.runsDir}/${id}.exit`).catch(() => null);
    return text === null ? null : parseExitRecord(text);
  }

  /** Writes the run's exit record (when the supervisor could not, or knew nothing). */
  async writeExit(id: string, exit: ExitRecord): Promise<void> {
    await this.#atomicWrite(`${this.runsDir}/${id}.exit`, formatExitRecord(exit), false);
  }

  /** The supervisor's pid record; null when absent or malformed. */
  async readPid(id: string): Promise<PidRecord | null> {
    const text = await Deno.readTextFile(`${this.runsDir}/${id}.pid`).catch(() => null);
    return text === null ? null : parsePidRecord(text);
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

  /** Settles once every background sync so far has finished (or failed). */
  async synced(): Promise<void> {
    while (this.#syncing.size > 0) await Promise.all([...this.#syncing]);
  }

  /** Forgets a run: every file of it. */
  async remove(id: string): Promise<void> {
    for (
      const ext of [
        ".json",
        ".exit",
        ".delivered",
        ".pid",
        ".sock",
        ".exit.tmp",
        ".pid.tmp",
        ".lock",
      ]
    ) {
      await Deno.remove(`${this.runsDir}/${id}${ext}`).catch(() => {});
    }
  }

  /**
   * Reads every run, in launch order. A record that cannot be parsed, or
   * holds values no run can have, is moved to `STATEDIR/damaged/` and named
   * in `damaged`; it is never fatal. Records of 0.1.0 are numbered after
   * their start times, before every newer record.
   */
  async loadAll(): Promise<{ runs: StoredRun[]; damaged: string[] }> {
    const names = new Set<string>();
    for await (const e of Deno.readDir(this.runsDir)) {
      if (e.name.includes(".tmp-")) {
        // the leftover of a write a crash interrupted
        await Deno.remove(`${this.runsDir}/${e.name}`).catch(() => {});
        continue;
      }
      names.add(e.name);
    }
    const runs: StoredRun[] = [];
    const damaged: string[] = [];
    for (const name of [...names].filter((n) => n.endsWith(".json")).sort()) {
      const id = name.slice(0, -".json".length);
      let record: AnyRunRecord;
      try {
        record = parseRunRecord(await Deno.readTextFile(`${this.runsDir}/${name}`), id);
      } catch (e) {
        const why = e instanceof RecordError ? e.message : `unreadable: ${(e as Error).message}`;
        damaged.push(`${this.runsDir}/${name}: ${why}`);
        await this.#setAside(id);
        continue;
      }
      const exit = names.has(`${id}.exit`) ? await this.readExit(id) : null;
      runs.push({
        record,
        exit,
        exitTime: exit
          ? await Deno.stat(`${this.runsDir}/${id}.exit`).then((st) => st.mtime, () => null)
          : null,
        delivered: names.has(`${id}.delivered`),
        pid: names.has(`${id}.pid`) ? await this.readPid(id) : null,
        socket: names.has(`${id}.sock`),
      });
    }
    const legacy = runs.filter((r) => r.record.format === 1)
      .sort((a, b) => a.record.startedAt.localeCompare(b.record.startedAt));
    legacy.forEach((r, i) => r.record.seq = i + 1);
    const offset = legacy.length;
    for (const r of runs) if (r.record.format === 2) r.record.seq += offset;
    runs.sort((a, b) => a.record.seq - b.record.seq);
    return { runs, damaged };
  }

  async #setAside(id: string): Promise<void> {
    const stamp = new Date().toISOString().replaceAll(":", "");
    for (const ext of [".json", ".exit", ".delivered", ".pid"]) {
      await Deno.rename(`${this.runsDir}/${id}${ext}`, `${this.dir}/damaged/${id}${ext}.${stamp}`)
        .catch(() => {});
    }
  }

  async #atomicWrite(path: string, text: string, durable: boolean): Promise<void> {
    const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
    try {
      const f = await Deno.open(tmp, { write: true, createNew: true, mode: 0o600 });
      try {
        const bytes = new TextEncoder().encode(text);
        for (let off = 0; off < bytes.length;) off += await f.write(bytes.subarray(off));
        if (durable) await f.syncData();
      } finally {
        f.close();
      }
      await Deno.rename(tmp, path);
      if (durable) await this.#syncDir();
    } catch (e) {
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
    if (!durable) this.#syncLater(path);
  }

  /** Syncs runs/ itself, so that a rename in it is on disk. */
  async #syncDir(): Promise<void> {
    const d = await Deno.open(this.runsDir, { read: true });
    try {
      await d.syncData();
    } finally {
      d.close();
    }
  }

  /** Syncs a file in the background. */
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
