/**
 * Benchmark helpers: statistics, a high-resolution wall clock, timed child
 * processes, and process memory read from /proc through a perl subprocess
 * (Deno refuses /proc paths without --allow-all), with cmapp-supervise
 * processes found by their argv (they detach: they are no children of
 * cmappserver).
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
  /**
   * 0: not a supervisor asked for; 1: a cmapp-supervise of the state
   * directory asked for (its argv names its runs/), without streams; 2: one
   * with streams (`-o`).
   */
  supervisor: 0 | 1 | 2;
}

// Reads /proc/*/stat for the process tree, then lists the roots named in
// ARGV, the supervisors of the runs directory in $ARGV[1] (when not empty: a
// process whose argv[0] names cmapp-supervise and whose argv names that
// directory; they detach, so they are found by argv, not as children), and
// all their descendants, one line per process, with smaps_rollup and status
// figures for the roots, the supervisors and those whose command name
// matches the pattern in $ARGV[0] (the others get zeros: reading is not free).
const _MEM_PERL = String.raw`
my $want = shift @ARGV; my $re = qr/$want/;
my $runs = shift @ARGV;
my %roots = map { $_ => 1 } @ARGV;
my (%ppid, %comm, %kids, %sup);
opendir(my $d, "/proc") or die;
for my $p (grep { /^\d+$/ } readdir($d)) {
  open(my $s, "<", "/proc/$p/stat") or next; my $l = <$s>; close($s);
  next unless defined $l && $l =~ /^\d+ \((.*)\) (\S+) (\d+)/s;
  $comm{$p} = $1; $ppid{$p} = $3; push @{$kids{$3}}, $p;
  next unless $runs ne "" && $p != $$;
  open(my $c, "<", "/proc/$p/cmdline") or next; local $/; my $cl = <$c>; close($c);
  next unless defined $cl;
  my @a = split /\0/, $cl;
  next unless @a && $a[0] =~ /cmapp-supervise/ && grep { index($_, $runs) == 0 } @a;
  $sup{$p} = (grep { $_ eq "-o" } @a) ? 2 : 1;
}
my @todo = grep { exists $comm{$_} } (keys %roots, keys %sup); my %seen;
while (@todo) {
  my $p = shift @todo; next if $seen{$p}++;
  push @todo, @{$kids{$p} || []};
  my ($rss, $pss, $priv, $hwm, $anon) = (0, 0, 0, 0, 0);
  my $measure = $roots{$p} || $sup{$p} || $comm{$p} =~ $re;
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
  print "$p $ppid{$p} $rss $pss $priv $hwm $anon ", ($sup{$p} || 0), " $c\n";
}
`;

/**
 * `roots` and all their descendants, with the memory of the roots and of
 * the descendants whose command name matches `measure` (a Perl regexp).
 * With `runsDir` (a state directory's runs/), also the cmapp-supervise
 * processes of that directory (found by argv) and their descendants (the
 * applications), with the supervisors' memory.
 */
export async function processTree(
  roots: number[],
  measure = ".",
  runsDir = "",
): Promise<ProcMem[]> {
  const out = await new Deno.Command("perl", {
    args: ["-e", _MEM_PERL, measure, runsDir, ...roots.map(String)],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  const list: ProcMem[] = [];
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const f = line.split(" ");
    if (f.length < 9) continue;
    const sup = Number(f[7]);
    list.push({
      pid: Number(f[0]),
      ppid: Number(f[1]),
      rss: Number(f[2]),
      pss: Number(f[3]),
      priv: Number(f[4]),
      hwm: Number(f[5]),
      anon: Number(f[6]),
      supervisor: sup === 1 || sup === 2 ? sup : 0,
      comm: f.slice(8).join(" "),
    });
  }
  return list;
}

/**
 * Ends what is left of a state directory's runs: the applications (their
 * process groups, SIGKILL) and then their supervisors (which wait for a
 * cmappserver that will not come). Returns how many supervisors were left.
 */
export async function reapSupervisors(stateDir: string): Promise<number> {
  const tree = await processTree([], "^$", `${stateDir}/runs`);
  const sups = tree.filter((p) => p.supervisor > 0);
  const apps = tree.filter((p) => sups.some((s) => s.pid === p.ppid));
  const kill = (pid: number) => {
    if (pid <= 1 || pid === Deno.pid) return;
    for (const id of [-pid, pid]) {
      try {
        Deno.kill(id, "SIGKILL");
      } catch {
        // gone, or no such group
      }
    }
  };
  for (const a of apps) kill(a.pid);
  for (const s of sups) kill(s.pid);
  return sups.length;
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

// The supervisors of the runs directory in $ARGV[0] (argv[0] names
// cmapp-supervise, argv names the directory) and their descendants (the
// applications and their children): "pid ticks" each, ticks being the
// process's own user + system time from /proc/PID/stat (not its reaped
// children's: every process of the tree is counted by itself).
const _SUP_CPU_PERL = String.raw`
my $runs = shift @ARGV;
my (%ppid, %ticks, %kids, @sups);
opendir(my $d, "/proc") or die;
for my $p (grep { /^\d+$/ } readdir($d)) {
  next if $p == $$;
  open(my $s, "<", "/proc/$p/stat") or next; my $l = <$s>; close($s);
  next unless defined $l && $l =~ /\) (.*)$/s;
  my @f = split / /, $1;
  $ppid{$p} = $f[1]; $ticks{$p} = $f[11] + $f[12]; push @{$kids{$f[1]}}, $p;
  open(my $c, "<", "/proc/$p/cmdline") or next; my $cl = do { local $/; <$c> }; close($c);
  next unless defined $cl;
  my @a = split /\0/, $cl;
  push @sups, $p if @a && $a[0] =~ /cmapp-supervise/ && grep { index($_, $runs) == 0 } @a;
}
my @todo = @sups; my %seen;
while (@todo) {
  my $p = shift @todo; next if $seen{$p}++;
  push @todo, @{$kids{$p} || []};
  print "$p $ticks{$p}\n";
}
`;

/**
 * Follows the CPU time of a state directory's supervisors and of what runs
 * under them while something runs: cmapp-supervise detaches, so neither its
 * time (the relay) nor the application's ever reaches cmappserver's
 * children's time. Polls every `everyMs`; `stop()` polls once more and
 * returns the seconds used since the start by every process seen (each
 * process's own time, up to the last poll that saw it: one that ends between
 * two polls loses at most `everyMs` of CPU).
 */
export async function followSupervisorCpu(
  stateDir: string,
  everyMs = 200,
): Promise<{ stop(): Promise<number> }> {
  if (!_tick) _tick = Number((await capture("getconf", ["CLK_TCK"])).trim()) || 100;
  const poll = async () => {
    const out = await new Deno.Command("perl", {
      args: ["-e", _SUP_CPU_PERL, `${stateDir}/runs`],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    const m = new Map<number, number>();
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      const [pid, ticks] = line.split(" ").map(Number);
      if (Number.isFinite(pid) && Number.isFinite(ticks)) m.set(pid, ticks);
    }
    return m;
  };
  const base = await poll();
  const last = new Map<number, number>();
  let done = false;
  const loop = (async () => {
    while (!done) {
      for (const [pid, t] of await poll()) last.set(pid, Math.max(t, last.get(pid) ?? 0));
      await delay(everyMs);
    }
  })();
  return {
    async stop() {
      done = true;
      await loop;
      for (const [pid, t] of await poll()) last.set(pid, Math.max(t, last.get(pid) ?? 0));
      let ticks = 0;
      for (const [pid, t] of last) ticks += t - (base.get(pid) ?? 0);
      return ticks / _tick;
    },
  };
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
