/**
 * Benchmark helpers: statistics, a high-resolution wall clock, timed child
 * processes, and process memory read from /proc through a perl subprocess
 * (Deno refuses /proc paths without --allow-all).
 *
 * @module
 */

/** Milliseconds since the epoch, with sub-millisecond resolution (comparable to $EPOCHREALTIME). */
export function wallMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Sleeps `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Summary of a sample, in its own unit. */
export interface Summary {
  n: number;
  min: number;
  p50: number;
  p95: number;
  max: number;
  mean: number;
}

/** The q-quantile (0..1) of sorted values, linearly interpolated. */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Summarises a sample (rounded to 3 decimals). */
export function summarize(values: number[]): Summary {
  const s = [...values].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    n: s.length,
    min: r(s[0] ?? NaN),
    p50: r(quantile(s, 0.5)),
    p95: r(quantile(s, 0.95)),
    max: r(s[s.length - 1] ?? NaN),
    mean: r(s.reduce((a, b) => a + b, 0) / (s.length || 1)),
  };
}

/** Rounds to `d` decimals. */
export function round(x: number, d = 1): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}

/** The outcome of a timed child process. */
export interface Timed {
  /** From just before spawn to the moment its exit was seen, in ms. */
  ms: number;
  /** Wall clock (ms since the epoch) when its exit was seen. */
  endWall: number;
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@linkcode timedRun}. */
export interface TimedOptions {
  stdin?: "null" | "piped";
  /** Capture stdout (else /dev/null). */
  stdout?: boolean;
  env?: Record<string, string>;
  /** Called with the pid right after spawn. */
  onSpawn?: (child: Deno.ChildProcess) => void;
}

/** Runs a command to its end and times it (spawn to exit seen). */
export async function timedRun(
  cmd: string,
  args: string[],
  options: TimedOptions = {},
): Promise<Timed> {
  const t0 = performance.now();
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin ?? "null",
    stdout: options.stdout ? "piped" : "null",
    stderr: "piped",
    env: options.env,
  }).spawn();
  options.onSpawn?.(child);
  const out = options.stdout ? new Response(child.stdout).text() : Promise.resolve("");
  const err = new Response(child.stderr).text();
  const st = await child.status;
  const endWall = wallMs();
  const ms = performance.now() - t0;
  return { ms, endWall, code: st.code, stdout: await out, stderr: await err };
}

/** Runs a command to its end; its stdout as text (throws on failure to start). */
export async function capture(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
}

/** Memory of one process, in KiB (from /proc/PID/smaps_rollup and /proc/PID/status). */
export interface ProcMem {
  pid: number;
  ppid: number;
  comm: string;
  rss: number;
  pss: number;
  /** Private_Clean + Private_Dirty. */
  priv: number;
  /** VmHWM: peak RSS. */
  hwm: number;
  /** Anonymous memory (heap, stacks: not the program's file pages), from smaps_rollup. */
  anon: number;
}

// Reads /proc/*/stat for the process tree, then lists the roots named in
// ARGV and all their descendants, one line per process, with smaps_rollup and
// status figures for the roots and those whose command name matches the
// pattern in $ARGV[0] (the others get zeros: reading is not free).
const _MEM_PERL = String.raw`
my $want = shift @ARGV; my $re = qr/$want/;
my %roots = map { $_ => 1 } @ARGV;
my (%ppid, %comm, %kids);
opendir(my $d, "/proc") or die;
for my $p (grep { /^\d+$/ } readdir($d)) {
  open(my $s, "<", "/proc/$p/stat") or next; my $l = <$s>; close($s);
  next unless defined $l && $l =~ /^\d+ \((.*)\) (\S+) (\d+)/s;
  $comm{$p} = $1; $ppid{$p} = $3; push @{$kids{$3}}, $p;
}
my @todo = grep { exists $comm{$_} } keys %roots; my %seen;
while (@todo) {
  my $p = shift @todo; next if $seen{$p}++;
  push @todo, @{$kids{$p} || []};
  my ($rss, $pss, $priv, $hwm, $anon) = (0, 0, 0, 0, 0);
  my $measure = $roots{$p} || $comm{$p} =~ $re;
  if ($measure && open(my $m, "<", "/proc/$p/smaps_rollup")) {
    while (<$m>) {
      $rss = $1 if /^Rss:\s+(\d+)/; $pss = $1 if /^Pss:\s+(\d+)/;
      $priv += $1 if /^Private_(?:Clean|Dirty):\s+(\d+)/; $anon = $1 if /^Anonymous:\s+(\d+)/;
    }
    close($m);
  }
  if ($measure && open(my $st, "<", "/proc/$p/status")) {
    while (<$st>) { $hwm = $1 if /^VmHWM:\s+(\d+)/; }
    close($st);
  }
  my $c = $comm{$p}; $c =~ s/\s/_/g;
  print "$p $ppid{$p} $rss $pss $priv $hwm $anon $c\n";
}
`;

/**
 * `roots` and all their descendants, with the memory of the roots and of
 * the descendants whose command name matches `measure` (a Perl regexp).
 */
export async function processTree(roots: number[], measure = "."): Promise<ProcMem[]> {
  const out = await new Deno.Command("perl", {
    args: ["-e", _MEM_PERL, measure, ...roots.map(String)],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  const list: ProcMem[] = [];
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const f = line.split(" ");
    if (f.length < 8) continue;
    list.push({
      pid: Number(f[0]),
      ppid: Number(f[1]),
      rss: Number(f[2]),
      pss: Number(f[3]),
      priv: Number(f[4]),
      hwm: Number(f[5]),
      anon: Number(f[6]),
      comm: f.slice(7).join(" "),
    });
  }
  return list;
}

/** RSS in KiB as `ps -o rss=` reports it (null when the process is gone). */
export async function psRss(pid: number): Promise<number | null> {
  const out = await new Deno.Command("ps", {
    args: ["-o", "rss=", "-p", String(pid)],
    stdout: "piped",
    stderr: "null",
  }).output();
  const n = Number(new TextDecoder().decode(out.stdout).trim());
  return out.success && Number.isFinite(n) && n > 0 ? n : null;
}

let _tick = 0;

/**
 * CPU time of a process in seconds: user + system, plus (with `children`)
 * that of the children it has waited for. Null when it is gone.
 */
export async function cpuSeconds(pid: number, children = true): Promise<number | null> {
  if (!_tick) _tick = Number((await capture("getconf", ["CLK_TCK"])).trim()) || 100;
  const text = (await capture("cat", [`/proc/${pid}/stat`]).catch(() => "")).trim();
  const close = text.lastIndexOf(") ");
  if (close < 0) return null;
  const f = text.slice(close + 2).split(" ").map(Number);
  const ticks = f[11] + f[12] + (children ? f[13] + f[14] : 0);
  return Number.isFinite(ticks) ? ticks / _tick : null;
}

/** A free TCP port on 127.0.0.1 (closed again; a small race is acceptable here). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Runs `fn` for each of `n` items with at most `limit` in flight. */
export async function pool<T>(
  n: number,
  limit: number,
  fn: (i: number) => Promise<T>,
): Promise<T[]> {
  const out = new Array<T>(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
  return out;
}

/** Logs a progress line on stderr. */
export function note(text: string): void {
  const t = new Date().toISOString().slice(11, 19);
  Deno.stderr.writeSync(new TextEncoder().encode(`[bench ${t}] ${text}\n`));
}
