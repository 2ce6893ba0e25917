/**
 * Tiny real VM guests for the tests: qemu (TCG, no KVM needed) boots Debian's cloud kernel
 * (fetched by tools/vm_kernel.sh into $CMAPP_VM_DIR, default /var/cache/cmapp-vm) with an
 * initramfs written here: static busybox (only the applets asked for, as symlinks), the files
 * and binaries (with their shared libraries) the test passes in, and a /init that mounts the
 * usual file systems, brings up virtio networking (qemu user mode, 10.0.2.15/24, gateway
 * 10.0.2.2), prints `cmapp-vm: ready`, runs the test's script and then reaps zombies forever.
 *
 * The serial console is the guest's stdout/stderr; the host side sees it through
 * {@link Guest.console}. Guest TCP ports are forwarded to free ports on 127.0.0.1 only. A QMP
 * monitor on a unix socket freezes and thaws the guest. See docs/vm-tests.md.
 *
 * Every guest must be closed (`await using`, or `close()` in a `finally`): then no qemu process,
 * temporary file, socket, timer or handle is left, as Deno's test sanitizers require.
 *
 * @module
 */

/**
 * Where tools/vm_kernel.sh puts the guest kernel and modules: $CMAPP_VM_DIR, default
 * /var/cache/cmapp-vm.
 *
 * @example
 * ```ts ignore
 * const kernel = `${VM_DIR}/vmlinuz`;
 * ```
 */
export const VM_DIR: string = Deno.env.get("CMAPP_VM_DIR") ?? "/var/cache/cmapp-vm";

const QEMU = "qemu-system-x86_64";
const BUSYBOX = "/bin/busybox";
/** Applets /init itself needs. */
const INIT_APPLETS = ["sh", "mount", "mkdir", "insmod", "ip", "sleep"];
/** Where /init finds its modules (their insmod order in `modules.load`). */
const GUEST_MODULES = "/lib/modules/cmapp-vm";
const GUEST_SCRIPT = "/etc/cmapp-vm/script.sh";
const READY = /cmapp-vm: ready/;
const INIT_FAILED = /cmapp-vm: init failed: .*|Initramfs unpacking failed: .*|Kernel panic.*/;

/**
 * A file for the guest: a copy of a host file (its mode, unless `mode` is given), or given
 * contents (mode 0644 unless given).
 *
 * @example
 * ```ts ignore
 * const files: Record<string, GuestFile> = {
 *   "/etc/cmappserver.conf": { content: "port = 5315\n" },
 *   "/etc/cmappserver/key.pem": { hostPath: "/tmp/keys/key.pem", mode: 0o600 },
 * };
 * ```
 */
export type GuestFile =
  | { hostPath: string; mode?: number }
  | { content: string | Uint8Array; mode?: number };

/**
 * What to boot.
 *
 * @example
 * ```ts ignore
 * const options: GuestOptions = {
 *   script: "export HOME=/tmp DENO_DIR=/tmp/deno\nexec deno run -A /opt/cmapp/dist/cmappserver.js",
 *   binaries: { "/usr/local/bin/deno": Deno.execPath() },
 *   files: { "/opt/cmapp/dist/cmappserver.js": { hostPath: "dist/cmappserver.js" } },
 *   applets: ["cat", "sleep"],
 *   forward: [5315],
 * };
 * ```
 */
export interface GuestOptions {
  /**
   * Shell script (busybox sh) /init runs in the background once the guest is up, with stdin
   * /dev/null, stdout and stderr on the console, HOME=/root and
   * PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin. When it ends, /init prints
   * `cmapp-vm: script exited with status N`; the guest stays up.
   */
  script: string;
  /** Busybox applets to add as /bin symlinks, beyond the ones /init needs. */
  applets?: string[];
  /** Files to add: guest path → file. Parent directories are made. */
  files?: Record<string, GuestFile>;
  /**
   * Dynamically (or statically) linked host programs to add: guest path → host path. Each is
   * added with the shared libraries `ldd` names and its ELF interpreter, at their host paths.
   */
  binaries?: Record<string, string>;
  /** Guest TCP ports to forward from free ports on 127.0.0.1 (see {@link Guest.hostPort}). */
  forward?: number[];
  /**
   * Guest memory in MiB. Default: 192 + 3 × the initramfs size, rounded up to 64 (256 for
   * busybox alone, 512 with the Deno binary). The unpacked initramfs lives in a tmpfs limited to
   * half the memory, and the packed copy is held until it is unpacked: with too little, the
   * boot fails with "Initramfs unpacking failed".
   */
  memoryMiB?: number;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Upper bound for the boot, until `cmapp-vm: ready`, in ms (default 120 000). */
  bootTimeoutMs?: number;
  /** Cut the guest off from the host and the outside network (qemu `restrict=on`; default true). */
  isolated?: boolean;
}

/**
 * A running guest, from {@link bootGuest}.
 *
 * @example
 * ```ts ignore
 * await using guest = await bootGuest({ script: "echo hi" });
 * await guest.waitForConsole(/^hi$/m);
 * await guest.freeze();
 * await guest.thaw();
 * ```
 */
export interface Guest extends AsyncDisposable {
  /** qemu's process id. */
  readonly pid: number;
  /** The guest's temporary directory on the host (initramfs, QMP socket). */
  readonly dir: string;
  /** The guest's memory (-m), in MiB. */
  readonly memoryMiB: number;
  /** The port on 127.0.0.1 that reaches `guestPort` (one of `forward`). */
  hostPort(guestPort: number): number;
  /** Everything the guest printed on its console so far ("\r\n" made "\n"). */
  console(): string;
  /**
   * Waits until the console, from offset `from` (default 0: its start; pass `console().length`
   * to wait for something new), matches `pattern`; fails after `ms` (default 60 000) or when
   * qemu exits.
   */
  waitForConsole(pattern: RegExp, ms?: number, from?: number): Promise<RegExpMatchArray>;
  /** Freezes the guest (QMP `stop`): no guest code runs, qemu's network side still accepts. */
  freeze(): Promise<void>;
  /** Thaws a frozen guest (QMP `cont`). */
  thaw(): Promise<void>;
  /** The run state from QMP `query-status`, e.g. "running" or "paused". */
  status(): Promise<string>;
  /** Sends any QMP command; resolves with its `return` value. */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** True once qemu has exited. */
  exited(): boolean;
  /**
   * SIGKILLs qemu and waits for it: the guest dies without notice, its forwarded ports close.
   * The temporary directory stays until close().
   */
  kill(): Promise<void>;
  /**
   * Stops qemu (QMP `quit`; SIGKILL if it has not exited 5 s later), waits for it and its output,
   * and removes the temporary directory. Idempotent; also what `await using` calls.
   */
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Prerequisites

/** The path of an executable on PATH, if any. */
function which(cmd: string): string | undefined {
  for (const d of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!d) continue;
    try {
      const st = Deno.statSync(`${d}/${cmd}`);
      if (st.isFile && (st.mode ?? 0) & 0o111) return `${d}/${cmd}`;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** True when `path` exists and is not empty. */
async function nonEmpty(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).size > 0;
  } catch {
    return false;
  }
}

/**
 * Why the VM tests cannot run here, as one line naming what is missing and how to install it; or
 * undefined when they can.
 *
 * @example
 * ```ts ignore
 * const reason = await vmSkipReason();
 * if (reason) console.log(`skipping: ${reason}`);
 * ```
 */
export async function vmSkipReason(): Promise<string | undefined> {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    return `VM tests need a linux x86_64 host, not ${Deno.build.os} ${Deno.build.arch}`;
  }
  if (!which(QEMU)) return `${QEMU} not found: apt-get install qemu-system-x86`;
  try {
    if (await elfInterpreter(BUSYBOX)) {
      return `${BUSYBOX} is not static: apt-get install busybox-static`;
    }
  } catch {
    return `${BUSYBOX} not found: apt-get install busybox-static`;
  }
  for (const f of ["vmlinuz", "modules.load", "kernel-version"]) {
    if (!(await nonEmpty(`${VM_DIR}/${f}`))) {
      return `no guest kernel in ${VM_DIR}: run .ci/deps.sh (or tools/vm_kernel.sh)`;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// ELF and shared libraries

/**
 * The ELF interpreter (PT_INTERP) a 64-bit little-endian ELF file names, e.g.
 * "/lib64/ld-linux-x86-64.so.2"; undefined for a static executable.
 *
 * @example
 * ```ts ignore
 * await elfInterpreter("/bin/busybox"); // undefined: busybox-static
 * ```
 */
export async function elfInterpreter(path: string): Promise<string | undefined> {
  using f = await Deno.open(path);
  const head = new Uint8Array(64);
  if ((await readFully(f, head, 0)) < 64) throw new Error(`${path}: not an ELF file`);
  const v = new DataView(head.buffer);
  if (v.getUint32(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) {
    throw new Error(`${path}: not a 64-bit little-endian ELF file`);
  }
  const phoff = Number(v.getBigUint64(32, true));
  const phentsize = v.getUint16(54, true);
  const phnum = v.getUint16(56, true);
  const ph = new Uint8Array(phentsize * phnum);
  await readFully(f, ph, phoff);
  const pv = new DataView(ph.buffer);
  for (let i = 0; i < phnum; i++) {
    const o = i * phentsize;
    if (pv.getUint32(o, true) !== 3) continue; // PT_INTERP
    const name = new Uint8Array(Number(pv.getBigUint64(o + 32, true)));
    await readFully(f, name, Number(pv.getBigUint64(o + 8, true)));
    return new TextDecoder().decode(name).replace(/\0.*$/s, "");
  }
  return undefined;
}

/** Reads into `buf` from `offset` until full or end of file; returns the bytes read. */
async function readFully(f: Deno.FsFile, buf: Uint8Array, offset: number): Promise<number> {
  await f.seek(offset, Deno.SeekMode.Start);
  let got = 0;
  while (got < buf.length) {
    const n = await f.read(buf.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}

/**
 * The host paths of the shared libraries and the ELF interpreter a program needs (from `ldd`),
 * or [] for a static one.
 *
 * @example
 * ```ts ignore
 * await sharedLibraries(Deno.execPath());
 * // ["/lib/x86_64-linux-gnu/libdl.so.2", …, "/lib64/ld-linux-x86-64.so.2"]
 * ```
 */
export async function sharedLibraries(hostPath: string): Promise<string[]> {
  if (!(await elfInterpreter(hostPath))) return [];
  const out = await new Deno.Command("ldd", {
    args: [hostPath],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`ldd ${hostPath} failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  const libs: string[] = [];
  for (const line of text.split("\n")) {
    if (/=>\s*not found/.test(line)) throw new Error(`ldd ${hostPath}: ${line.trim()}`);
    const m = /=>\s*(\/\S+)\s+\(0x/.exec(line) ?? /^\s*(\/\S+)\s+\(0x/.exec(line);
    if (m) libs.push(m[1]);
  }
  return libs;
}

// ---------------------------------------------------------------------------------------------
// The initramfs: a newc cpio archive

/** One archive member. */
type Entry =
  | { kind: "dir"; mode: number }
  | { kind: "file"; mode: number; hostPath: string }
  | { kind: "data"; mode: number; content: Uint8Array }
  | { kind: "symlink"; target: string }
  | { kind: "chardev"; mode: number; major: number; minor: number };

/** The tree of an initramfs being put together: guest path → entry. */
class Tree {
  readonly entries = new Map<string, Entry>();

  /** Adds `entry` at the absolute guest `path`, making its parent directories. */
  add(path: string, entry: Entry): void {
    const parts = path.split("/").filter((p) => p && p !== ".");
    if (!path.startsWith("/") || parts.includes("..") || !parts.length) {
      throw new Error(`bad guest path: ${path}`);
    }
    for (let i = 1; i < parts.length; i++) {
      const dir = "/" + parts.slice(0, i).join("/");
      const there = this.entries.get(dir);
      if (!there) this.entries.set(dir, { kind: "dir", mode: 0o755 });
      else if (there.kind !== "dir") throw new Error(`guest path ${dir} is not a directory`);
    }
    const full = "/" + parts.join("/");
    if (this.entries.get(full)?.kind === "dir" && entry.kind !== "dir") {
      throw new Error(`guest path ${full} is a directory`);
    }
    this.entries.set(full, entry);
  }
}

/** A newc cpio header plus the NUL-terminated, 4-byte-padded name. */
function cpioHeader(
  name: string,
  f: {
    ino: number;
    mode: number;
    nlink: number;
    size: number;
    mtime?: number;
    rdev?: [number, number];
  },
): Uint8Array {
  const nameBytes = new TextEncoder().encode(name + "\0");
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  const fields = [
    f.ino,
    f.mode,
    0, // uid
    0, // gid
    f.nlink,
    f.mtime ?? 0,
    f.size,
    0, // devmajor
    0, // devminor
    f.rdev?.[0] ?? 0,
    f.rdev?.[1] ?? 0,
    nameBytes.length,
    0, // check
  ];
  const head = new TextEncoder().encode("070701" + fields.map(hex).join(""));
  const out = new Uint8Array(pad4(head.length + nameBytes.length));
  out.set(head);
  out.set(nameBytes, head.length);
  return out;
}

/** `n` rounded up to a multiple of 4. */
function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Writes all of `bytes`. */
async function writeAll(f: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await f.write(bytes.subarray(done));
}

/** Appends a host file's contents, in chunks. */
async function copyInto(out: Deno.FsFile, hostPath: string, size: number): Promise<void> {
  using src = await Deno.open(hostPath);
  const buf = new Uint8Array(1 << 20);
  let left = size;
  while (left > 0) {
    const n = await src.read(buf.subarray(0, Math.min(buf.length, left)));
    if (n === null) throw new Error(`${hostPath} shrank while being copied`);
    await writeAll(out, buf.subarray(0, n));
    left -= n;
  }
}

/** An entry's cpio mode, size and (unless it is a host file, copied later) contents. */
async function member(e: Entry): Promise<{ mode: number; size: number; data?: Uint8Array }> {
  switch (e.kind) {
    case "dir":
      return { mode: 0o040000 | e.mode, size: 0 };
    case "chardev":
      return { mode: 0o020000 | e.mode, size: 0 };
    case "symlink": {
      const data = new TextEncoder().encode(e.target);
      return { mode: 0o120777, size: data.length, data };
    }
    case "data":
      return { mode: 0o100000 | e.mode, size: e.content.length, data: e.content };
    case "file":
      return { mode: 0o100000 | e.mode, size: (await Deno.stat(e.hostPath)).size };
  }
}

/** Writes the tree as an uncompressed newc cpio archive (what the kernel unpacks as rootfs). */
async function writeCpio(tree: Tree, path: string): Promise<void> {
  using out = await Deno.open(path, { write: true, create: true, truncate: true });
  let ino = 1;
  const mtime = Math.floor(Date.now() / 1000);
  // Sorted, a directory comes before everything in it.
  for (const name of [...tree.entries.keys()].sort()) {
    const e = tree.entries.get(name)!;
    const { mode, size, data } = await member(e);
    const rdev: [number, number] | undefined = e.kind === "chardev"
      ? [e.major, e.minor]
      : undefined;
    const nlink = e.kind === "dir" ? 2 : 1;
    await writeAll(out, cpioHeader(name.slice(1), { ino: ino++, mode, nlink, size, mtime, rdev }));
    if (e.kind === "file") await copyInto(out, e.hostPath, size);
    else if (data) await writeAll(out, data);
    await writeAll(out, new Uint8Array(pad4(size) - size));
  }
  await writeAll(out, cpioHeader("TRAILER!!!", { ino: 0, mode: 0, nlink: 1, size: 0 }));
}

/** Adds a host file at `guestPath` (mode: the host file's, unless given). */
async function addHostFile(tree: Tree, guestPath: string, hostPath: string, mode?: number) {
  const real = await Deno.realPath(hostPath);
  const st = await Deno.stat(real);
  if (!st.isFile) throw new Error(`${hostPath} is not a regular file`);
  tree.add(guestPath, { kind: "file", hostPath: real, mode: mode ?? (st.mode ?? 0o644) & 0o7777 });
}

/** The /init script (busybox sh, PID 1). */
function initScript(): string {
  return `#!/bin/sh
# /init of a cmapp test guest (tests/_vm.ts). PID 1: must never exit.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
exec </dev/null >/dev/console 2>&1
echo guest >/proc/sys/kernel/hostname
fail() { echo "cmapp-vm: init failed: $*"; }
while read -r m; do
  insmod ${GUEST_MODULES}/"$m" || fail "insmod $m"
done <${GUEST_MODULES}/modules.load
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
ip link set lo up
if ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 &&
  ip route add default via 10.0.2.2 dev eth0; then
  read -r up _ </proc/uptime
  echo "cmapp-vm: ready (up \${up}s)"
  (
    /bin/sh ${GUEST_SCRIPT}
    echo "cmapp-vm: script exited with status $?"
  ) &
else
  fail "no network (eth0)"
fi
# Reap every child, adopted orphans included: while a job runs, ash's wait
# blocks in waitpid(-1), which reaps any child.
while :; do
  sleep 86400 &
  wait
done
`;
}

/** The files every guest has: busybox, the applets, /init, the modules, a few /etc files. */
async function baseTree(options: GuestOptions): Promise<Tree> {
  const tree = new Tree();
  for (const d of ["/proc", "/sys", "/dev", "/run", "/root"]) {
    tree.add(d, { kind: "dir", mode: 0o755 });
  }
  for (const d of ["/tmp", "/var/tmp"]) tree.add(d, { kind: "dir", mode: 0o1777 });
  tree.add("/dev/console", { kind: "chardev", mode: 0o600, major: 5, minor: 1 });
  await addHostFile(tree, "/bin/busybox", BUSYBOX, 0o755);
  for (const a of new Set([...INIT_APPLETS, ...(options.applets ?? [])])) {
    if (!/^[\w.[-]+$/.test(a) || a === "busybox") throw new Error(`bad applet name: ${a}`);
    tree.add(`/bin/${a}`, { kind: "symlink", target: "busybox" });
  }
  const text = (s: string, mode = 0o644): Entry => ({
    kind: "data",
    mode,
    content: new TextEncoder().encode(s),
  });
  tree.add("/init", text(initScript(), 0o755));
  tree.add(GUEST_SCRIPT, text(options.script, 0o755));
  tree.add("/etc/passwd", text("root:x:0:0:root:/root:/bin/sh\n"));
  tree.add("/etc/group", text("root:x:0:\n"));
  tree.add("/etc/hosts", text("127.0.0.1 localhost\n10.0.2.15 guest\n"));
  tree.add("/etc/resolv.conf", text("nameserver 10.0.2.3\n"));
  const modules = (await Deno.readTextFile(`${VM_DIR}/modules.load`)).split("\n").filter(Boolean);
  for (const m of modules) {
    await addHostFile(tree, `${GUEST_MODULES}/${m}`, `${VM_DIR}/modules/${m}`);
  }
  tree.add(`${GUEST_MODULES}/modules.load`, text(modules.join("\n") + "\n"));
  return tree;
}

/** Adds the caller's files and binaries (with their libraries) to the tree. */
async function addPayload(tree: Tree, options: GuestOptions): Promise<void> {
  for (const [guestPath, f] of Object.entries(options.files ?? {})) {
    if ("hostPath" in f) await addHostFile(tree, guestPath, f.hostPath, f.mode);
    else {
      const content = typeof f.content === "string"
        ? new TextEncoder().encode(f.content)
        : f.content;
      tree.add(guestPath, { kind: "data", mode: f.mode ?? 0o644, content });
    }
  }
  for (const [guestPath, hostPath] of Object.entries(options.binaries ?? {})) {
    await addHostFile(tree, guestPath, hostPath, 0o755);
    for (const lib of await sharedLibraries(hostPath)) {
      if (!tree.entries.has(lib)) await addHostFile(tree, lib, lib, 0o755);
    }
  }
}

/**
 * Writes the initramfs a guest boots from to `path`: what {@link bootGuest} does before starting
 * qemu, exposed for inspection (e.g. `cpio -t < path`).
 *
 * @example
 * ```ts ignore
 * await buildInitramfs({ script: "echo hi", applets: ["echo"] }, "/tmp/initrd.cpio");
 * ```
 */
export async function buildInitramfs(options: GuestOptions, path: string): Promise<void> {
  const tree = await baseTree(options);
  await addPayload(tree, options);
  await writeCpio(tree, path);
}

// ---------------------------------------------------------------------------------------------
// QMP

/** Runs one QMP command on a fresh connection; resolves with its `return` value. */
async function qmpCommand(
  socket: string,
  command: string,
  args: Record<string, unknown> | undefined,
  ms: number,
): Promise<unknown> {
  const conn = await Deno.connect({ transport: "unix", path: socket });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`QMP ${command}: no answer in ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([qmpDialog(conn, command, args), timeout]);
  } finally {
    clearTimeout(timer);
    conn.close();
  }
}

/** Greeting, capabilities negotiation, the command; events are skipped. */
async function qmpDialog(
  conn: Deno.Conn,
  command: string,
  args: Record<string, unknown> | undefined,
): Promise<unknown> {
  const lines = qmpLines(conn);
  const next = async (): Promise<Record<string, unknown>> => {
    for (;;) {
      const r = await lines.next();
      if (r.done) throw new Error(`QMP ${command}: connection closed`);
      const msg = JSON.parse(r.value) as Record<string, unknown>;
      if (!("event" in msg)) return msg;
    }
  };
  const send = (execute: string, a?: Record<string, unknown>) =>
    writeAllConn(conn, new TextEncoder().encode(JSON.stringify({ execute, arguments: a }) + "\n"));
  await next(); // {"QMP": {...}}
  await send("qmp_capabilities");
  await next();
  await send(command, args);
  const reply = await next();
  if ("error" in reply) throw new Error(`QMP ${command}: ${JSON.stringify(reply.error)}`);
  return reply.return;
}

/** The lines a connection sends. */
async function* qmpLines(conn: Deno.Conn): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(65536);
  let text = "";
  for (;;) {
    let nl: number;
    while ((nl = text.indexOf("\n")) >= 0) {
      const line = text.slice(0, nl).trim();
      text = text.slice(nl + 1);
      if (line) yield line;
    }
    const n = await conn.read(buf);
    if (n === null) return;
    text += decoder.decode(buf.subarray(0, n), { stream: true });
  }
}

/** Writes all of `bytes` to a connection. */
async function writeAllConn(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

// ---------------------------------------------------------------------------------------------
// qemu

/** A free TCP port on 127.0.0.1 (free when asked: qemu may still lose a race for it). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** qemu's arguments. */
function qemuArgs(
  options: GuestOptions,
  dir: string,
  ports: Map<number, number>,
  memoryMiB: number,
): string[] {
  const fwd = [...ports].map(([g, h]) => `,hostfwd=tcp:127.0.0.1:${h}-:${g}`).join("");
  const restrict = options.isolated === false ? "" : ",restrict=on";
  return [
    ...["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"],
    ...["-machine", "pc", "-accel", "tcg", "-cpu", "max"],
    ...["-smp", String(options.cpus ?? 1), "-m", String(memoryMiB)],
    ...["-kernel", `${VM_DIR}/vmlinuz`, "-initrd", `${dir}/initrd.cpio`],
    ...["-append", "console=ttyS0 panic=-1 quiet"],
    ...["-serial", "stdio"],
    ...["-netdev", `user,id=n0${restrict}${fwd}`, "-device", "virtio-net-pci,netdev=n0,romfile="],
    ...["-device", "virtio-rng-pci"],
    ...["-qmp", `unix:${dir}/qmp.sock,server=on,wait=off`],
  ];
}

/** qemu running, its console and stderr collected. */
class Qemu {
  #console = "";
  #stderr = "";
  #exited = false;
  #wake = new Set<() => void>();
  readonly child: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  readonly pumped: Promise<void>;

  constructor(args: string[]) {
    // setpriv: qemu gets SIGKILL if the thread that started it (the test's) ends first.
    const setpriv = which("setpriv");
    this.child = new Deno.Command(setpriv ?? QEMU, {
      args: setpriv ? ["--pdeathsig", "KILL", "--", QEMU, ...args] : args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.status = this.child.status.then((s) => {
      this.#exited = true;
      this.#notify();
      return s;
    });
    this.pumped = Promise.all([
      this.#pump(this.child.stdout, (t) => this.#console += t.replaceAll("\r", "")),
      this.#pump(this.child.stderr, (t) => this.#stderr += t),
    ]).then(() => this.#notify());
  }

  get console(): string {
    return this.#console;
  }
  get stderr(): string {
    return this.#stderr;
  }
  get exited(): boolean {
    return this.#exited;
  }

  #notify(): void {
    for (const w of this.#wake) w();
  }

  async #pump(stream: ReadableStream<Uint8Array>, add: (text: string) => void): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      add(decoder.decode(chunk, { stream: true }));
      this.#notify();
    }
  }

  /**
   * Waits for `pattern` on the console from offset `from` (or `failure`, which throws); fails
   * on exit or after `ms`.
   */
  async waitFor(
    pattern: RegExp,
    ms: number,
    from = 0,
    failure?: RegExp,
  ): Promise<RegExpMatchArray> {
    const deadline = Date.now() + ms;
    for (;;) {
      const m = this.#console.slice(from).match(pattern);
      if (m) return m;
      const bad = failure && this.#console.match(failure);
      if (bad) throw new Error(`guest: ${bad[0]}\n${this.describe()}`);
      if (this.#exited) throw new Error(`qemu exited before ${pattern}\n${this.describe()}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no ${pattern} on the console in ${ms} ms\n${this.describe()}`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      let wake: (() => void) | undefined;
      await new Promise<void>((resolve) => {
        wake = resolve;
        this.#wake.add(resolve);
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.#wake.delete(wake!);
    }
  }

  /** The console and qemu's stderr, for error messages. */
  describe(): string {
    return `--- console:\n${this.#console}\n--- qemu stderr:\n${this.#stderr}`;
  }

  /** SIGKILL (unless exited), then waits for the exit and the end of the output. */
  async kill(): Promise<void> {
    if (!this.#exited) {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await this.status;
    await this.pumped;
  }
}

/** The default guest memory for an initramfs of `bytes` (see {@link GuestOptions.memoryMiB}). */
function defaultMemoryMiB(bytes: number): number {
  return Math.ceil((192 + 3 * bytes / 2 ** 20) / 64) * 64;
}

/** Starts qemu, retrying with other ports when it loses a race for one. */
async function startQemu(options: GuestOptions, dir: string) {
  const memory = options.memoryMiB ??
    defaultMemoryMiB((await Deno.stat(`${dir}/initrd.cpio`)).size);
  for (let attempt = 1;; attempt++) {
    const ports = new Map((options.forward ?? []).map((g) => [g, freePort()]));
    const qemu = new Qemu(qemuArgs(options, dir, ports, memory));
    try {
      await qemu.waitFor(READY, options.bootTimeoutMs ?? 120_000, 0, INIT_FAILED);
      return { qemu, ports, memory };
    } catch (e) {
      await qemu.kill();
      const lostPort = /host forwarding rule|Could not set up host forwarding/i.test(qemu.stderr);
      if (!lostPort || attempt >= 5) throw e;
    }
  }
}

/**
 * Boots a guest and resolves once its /init printed `cmapp-vm: ready` (network up; the script
 * has just been started). Fails, leaving nothing behind, if that does not happen within
 * `bootTimeoutMs`; the error holds the console and qemu's stderr.
 *
 * @example
 * ```ts ignore
 * await using guest = await bootGuest({
 *   script: "nc -ll -p 7 -e /bin/cat",
 *   applets: ["nc", "cat"],
 *   forward: [7],
 * });
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: guest.hostPort(7) });
 * ```
 */
export async function bootGuest(options: GuestOptions): Promise<Guest> {
  const dir = await Deno.makeTempDir({ prefix: "cmapp-vm-" });
  let started: Awaited<ReturnType<typeof startQemu>>;
  try {
    await buildInitramfs(options, `${dir}/initrd.cpio`);
    started = await startQemu(options, dir);
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  return guestHandle(started.qemu, started.ports, started.memory, dir);
}

/** The {@link Guest} for a booted qemu. */
function guestHandle(
  qemu: Qemu,
  ports: Map<number, number>,
  memoryMiB: number,
  dir: string,
): Guest {
  const socket = `${dir}/qmp.sock`;
  let queue: Promise<unknown> = Promise.resolve();
  const qmp = (command: string, args?: Record<string, unknown>): Promise<unknown> => {
    if (qemu.exited) return Promise.reject(new Error(`QMP ${command}: qemu has exited`));
    // One QMP client at a time: commands are queued.
    const p = queue.then(() => qmpCommand(socket, command, args, 10_000));
    queue = p.catch(() => {});
    return p;
  };
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    closing ??= (async () => {
      if (!qemu.exited) {
        await qmp("quit").catch(() => {});
        if (!(await exitsWithin(qemu, 5_000))) await qemu.kill();
      }
      await qemu.kill();
      await queue;
      await Deno.remove(dir, { recursive: true });
    })();
  return {
    pid: qemu.child.pid,
    dir,
    memoryMiB,
    hostPort(guestPort) {
      const p = ports.get(guestPort);
      if (p === undefined) throw new Error(`guest port ${guestPort} is not forwarded`);
      return p;
    },
    console: () => qemu.console,
    waitForConsole: (pattern, ms = 60_000, from = 0) => qemu.waitFor(pattern, ms, from),
    freeze: async () => void await qmp("stop"),
    thaw: async () => void await qmp("cont"),
    status: async () => ((await qmp("query-status")) as { status: string }).status,
    qmp,
    exited: () => qemu.exited,
    kill: () => qemu.kill(),
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** True if qemu exits within `ms` (the timer is cleared either way). */
async function exitsWithin(qemu: Qemu, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      qemu.status.then(() => true),
      new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
