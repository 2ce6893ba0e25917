/**
 * The benchmark's outputs: a Markdown table (each cmapp figure beside
 * OpenSSH's, with the ratio and the target) and an SVG chart of the latency
 * distributions (empirical CDFs on a log scale), with no external library.
 *
 * @module
 */

// deno-lint-ignore no-explicit-any
type Json = any;

const fmt = (x: number | null | undefined, unit = "", d = 1): string => {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  const v = Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(d);
  return unit ? `${v} ${unit}` : v;
};
const mib = (kib: number | null | undefined): string =>
  kib === null || kib === undefined || !Number.isFinite(kib)
    ? "–"
    : `${(kib / 1024).toFixed(1)} MiB`;
const kib = (k: number | null | undefined): string => fmt(k, "KiB");
const ratio = (a: number | null | undefined, b: number | null | undefined): string =>
  a === null || a === undefined || b === null || b === undefined || !b || !Number.isFinite(a)
    ? "–"
    : `${(a / b).toFixed(2)}×`;
const mark = (ok: boolean | null): string => ok === null ? "" : ok ? "met" : "**missed**";

/** The results as a Markdown table with a few notes. */
export function renderMarkdown(r: Json): string {
  const rows: string[][] = [];
  const row = (
    what: string,
    cm: string,
    sh: string,
    rt: string,
    target = "",
    ok: boolean | null = null,
  ) => rows.push([what, cm, sh, rt, target, mark(ok)]);
  const L = r.launchToExit?.summary ?? {};
  const X = r.exitLatency?.summary ?? {};
  if (r.launchToExit) {
    const n = r.launchToExit.runs;
    for (const q of ["p50", "p95"] as const) {
      row(
        `Launch to exit, \`true\`, whole command, ${q} (${n} runs)`,
        fmt(L.cmappmgr?.[q], "ms"),
        fmt(L.ssh?.[q], "ms"),
        ratio(L.cmappmgr?.[q], L.ssh?.[q]),
        q === "p50" ? "≤ ssh" : "",
        q === "p50" && L.ssh ? L.cmappmgr[q] <= L.ssh[q] : null,
      );
    }
    row(
      "… over an already open connection, p50 (API launch+wait / ssh ControlMaster client)",
      fmt(L.api_open?.p50, "ms"),
      fmt(L.ssh_mux?.p50, "ms"),
      ratio(L.api_open?.p50, L.ssh_mux?.p50),
    );
    row(
      "… API connect + launch + wait, in-process (no program start-up), p50",
      fmt(L.api_connect?.p50, "ms"),
      fmt(L.ssh?.p50, "ms"),
      ratio(L.api_connect?.p50, L.ssh?.p50),
    );
    const O = r.launchToExit.overhead;
    if (O) {
      row(
        `Launch overhead of the supervisor: asked to start → the application runs, through ` +
          `cmapp-supervise minus Deno spawning it directly, p50 / p95 (${O.runs} runs)`,
        `${fmt(O.overheadP50Ms, "ms", 2)} / ${fmt(O.overheadP95Ms, "ms", 2)}`,
        "",
        "",
        "< 2 ms (p50)",
        Number.isFinite(O.overheadP50Ms) ? O.overheadP50Ms < 2 : null,
      );
      row(
        "… asked to start → the application runs, p50: Deno spawns it / through " +
          "cmapp-supervise (startSupervisor) / through the API on an open connection (network, " +
          "daemon, run record, supervisor)",
        `${fmt(O.direct?.p50, "ms", 2)} / ${fmt(O.supervised?.p50, "ms", 2)} / ${
          fmt(O.api?.p50, "ms", 2)
        }`,
        "",
        "",
      );
      row(
        "… start answered (pid known), p50: Deno's spawn() returned / startSupervisor() " +
          "resolved / API launch() resolved",
        `${fmt(O.answered?.directSpawnReturned?.p50, "ms", 2)} / ${
          fmt(O.answered?.startSupervisorResolved?.p50, "ms", 2)
        } / ${fmt(O.answered?.apiLaunchResolved?.p50, "ms", 2)}`,
        "",
        "",
      );
    }
  }
  if (r.exitLatency) {
    for (const q of ["p50", "p95"] as const) {
      row(
        `Exit notification, guest exit → host program exit, ${q}`,
        fmt(X.cmappmgr?.[q], "ms", 2),
        fmt(X.ssh?.[q], "ms", 2),
        ratio(X.cmappmgr?.[q], X.ssh?.[q]),
        q === "p50" ? "< 2 ms" : "",
        q === "p50" && X.cmappmgr ? X.cmappmgr[q] < 2 : null,
      );
    }
    for (const q of ["p50", "p95"] as const) {
      row(
        `Exit notification, guest exit → API wait() resolves (ssh: ControlMaster client exits), ${q}`,
        fmt(X.api?.[q], "ms", 2),
        fmt(X.ssh_mux?.[q], "ms", 2),
        ratio(X.api?.[q], X.ssh_mux?.[q]),
        q === "p50" ? "< 2 ms" : "",
        q === "p50" && X.api ? X.api[q] < 2 : null,
      );
    }
    row(
      "… API, run launched with streams (as cmappmgr does), p50",
      fmt(X.api_streams?.p50, "ms", 2),
      "",
      "",
    );
    const D = r.exitLatency.diagnostics;
    if (D) {
      row(
        "… pieces, p50: protocol round trip (ping) / release round trip / Deno sees its " +
          "child's exit / through cmapp-supervise (link.ended, no network)",
        `${fmt(D.pingRoundTripMs?.p50, "ms", 2)} / ${fmt(D.releaseRoundTripMs?.p50, "ms", 2)} / ${
          fmt(D.denoSeesChildExitMs?.p50, "ms", 2)
        } / ${fmt(D.throughSupervisorMs?.p50, "ms", 2)}`,
        "",
        "",
      );
      row(
        "… cmappmgr timeline, p50: guest exit → 'exited' in its log (after the release round " +
          "trip) / → process exit seen",
        `${fmt(D.cmappmgrGuestExitToExitLoggedMs?.p50, "ms")} / ${
          fmt(D.cmappmgrExitLoggedToProcessExitMs?.p50, "ms")
        }`,
        "",
        "",
      );
    }
    const B = r.exitLatency.apiBreakdown;
    if (B) {
      row(
        "… API p50 split: guest exit → supervisor wrote the exit record (runs/ID.exit) / → " +
          "wait() resolved",
        `${fmt(B.guestExitToStatusFile?.p50, "ms", 2)} / ${
          fmt(B.statusFileToWaitResolved?.p50, "ms", 2)
        }`,
        "",
        "",
      );
    }
  }
  const C = r.concurrency;
  if (C) {
    const yes = (x: Json) =>
      !x
        ? "–"
        : x.allCorrect
        ? "yes"
        : `no: ${x.failed ?? x.refused} failed, ${x.wrongCodes} wrong`;
    for (let i = 0; i < C.cmapp.length; i++) {
      const c = C.cmapp[i];
      const s = C.ssh[i];
      const m = C.sshMux[i];
      const sshN = `ssh: ${s?.n ?? "–"} separate connections / ${m?.n ?? "–"} multiplexed`;
      row(
        `**${c.n} simultaneous \`sleep 1; exit K\`**, one connection: all exit codes right (${sshN})`,
        yes(c),
        `${yes(s)} / ${yes(m)}`,
        "",
        c.n >= 1000 ? "every code right" : "",
        c.n >= 1000 ? c.allCorrect : null,
      );
      row(
        `… wall time, first launch to last exit (${sshN})`,
        fmt(c.wallMs, "ms"),
        `${fmt(s?.wallMs, "ms")} / ${fmt(m?.wallMs, "ms")}`,
        s && s.n === c.n ? ratio(c.wallMs, s.wallMs) : m ? ratio(c.wallMs, m.wallMs) : "–",
      );
      row(
        `… all launched after (cmapp: every launch answered)`,
        `${fmt(c.allLaunchedMs, "ms")} (${fmt(c.launchesPerSecond, "", 0)}/s)`,
        "",
        "",
      );
      row(
        `… most running at once (sampled every 0.2 s)`,
        fmt(c.peakConcurrent, "", 0),
        `${fmt(s?.peakConcurrent, "", 0)} / ${fmt(m?.peakConcurrent, "", 0)}`,
        "",
      );
      row(
        `… server memory at the peak, RSS / PSS (cmapp: daemon; ssh: all sshd processes)`,
        `${mib(c.peakDaemonRssKiB)} / ${mib(c.peakDaemonPssKiB)}`,
        `${mib(s?.atPeak?.sshdRssKiB)} / ${mib(s?.atPeak?.sshdPssKiB)} (separate); ${
          mib(m?.atPeak?.sshdRssKiB)
        } / ${mib(m?.atPeak?.sshdPssKiB)} (mux)`,
        "",
      );
      row(
        `… plus the supervisors (cmapp-supervise) at the peak: count: RSS / PSS / private`,
        c.atPeak
          ? `${c.atPeak.supervisors}: ${mib(c.atPeak.supervisorsRssKiB)} / ${
            mib(c.atPeak.supervisorsPssKiB)
          } / ${mib(c.atPeak.supervisorsPrivKiB)}`
          : "–",
        "",
        "",
      );
    }
    const x = C.cmappMulti;
    if (x) {
      row(
        `${x.n} simultaneous runs over ${x.connections} connections: codes right / wall / ` +
          `all launched / most at once`,
        `${yes(x)} / ${fmt(x.wallMs, "ms")} / ${fmt(x.allLaunchedMs, "ms")} / ${
          fmt(x.peakConcurrent, "", 0)
        }`,
        "",
        "",
      );
    }
  }
  const M = r.memory;
  if (M?.cmapp?.idle) {
    const sshIdle = M.ssh?.idle?.listenerRssKiB;
    row(
      "Idle daemon RSS (ssh: the sshd listener)",
      mib(M.cmapp.idle.daemonRssKiB),
      mib(sshIdle),
      ratio(M.cmapp.idle.daemonRssKiB, sshIdle),
      "< 40 MB",
      M.cmapp.idle.daemonRssKiB * 1024 < 40e6,
    );
    row(
      "Idle daemon PSS",
      mib(M.cmapp.idle.daemonPssKiB),
      "",
      "",
    );
    const D = M.denoBaseline;
    if (M.cmapp.idle.daemonAnonKiB) {
      row(
        "… of which anonymous (heap, stacks) / the rest (pages of the deno executable and " +
          "libraries, shared with other Deno processes)",
        `${mib(M.cmapp.idle.daemonAnonKiB)} / ` +
          mib(M.cmapp.idle.daemonRssKiB - M.cmapp.idle.daemonAnonKiB),
        "",
        "",
      );
    }
    if (D) {
      row(
        "… Deno floor: idle empty script RSS / idle script that only imported node:tls RSS / " +
          "idle script that only imported cmappserver's modules RSS",
        `${mib(D.emptyScript?.rssKiB)} / ${mib(D.nodeTlsImported?.rssKiB)} / ` +
          mib(D.cmappModulesImported?.rssKiB),
        "",
        "",
      );
      row(
        "… same, anonymous memory only",
        `${mib(D.emptyScript?.anonKiB)} / ${mib(D.nodeTlsImported?.anonKiB)} / ` +
          mib(D.cmappModulesImported?.anonKiB),
        "",
        "",
      );
    }
    const pp = M.cmapp.perProcess;
    if (pp) {
      row(
        `Daemon memory per monitored process (RSS slope, ${pp.basis}; ssh: per session on one ` +
          `multiplexed connection)`,
        kib(pp.daemonRssKiB),
        kib(M.sshMux?.perSessionRssKiB),
        ratio(pp.daemonRssKiB, M.sshMux?.perSessionRssKiB),
        "< 64 KiB",
        pp.daemonRssKiB < 64,
      );
      row(
        `… same, least-squares slope over the levels / 0 → ${pp.midRunning ?? 100} running only`,
        `${kib(pp.daemonRssKiB_leastSquares)} / ${
          kib(pp.daemonRssKiB_0toMid ?? pp.daemonRssKiB_0to100)
        }`,
        "",
        "",
      );
      row(
        "… same in PSS (2-point / least squares)",
        `${kib(pp.daemonPssKiB)} / ${kib(pp.daemonPssKiB_leastSquares)}`,
        "",
        "",
      );
      row(
        "**Daemon + supervisor per monitored process, PSS**, plain runs (ssh: sshd per separate " +
          "session, PSS)",
        kib(pp.totalPssKiB),
        kib(M.ssh?.perSessionPssKiB),
        ratio(pp.totalPssKiB, M.ssh?.perSessionPssKiB),
        "< 256 KiB (goal 32)",
        Number.isFinite(pp.totalPssKiB) ? pp.totalPssKiB < 256 : null,
      );
      if (pp.streamsTotalPssKiB !== undefined) {
        row(
          `… runs launched with streams, as cmappmgr launches them (${pp.streamsRunsAdded} ` +
            `more)`,
          kib(pp.streamsTotalPssKiB),
          "",
          "",
          "< 256 KiB (goal 32)",
          Number.isFinite(pp.streamsTotalPssKiB) ? pp.streamsTotalPssKiB < 256 : null,
        );
      }
      row(
        "Daemon + supervisor per monitored process, RSS (ssh: sshd per separate session, RSS)",
        kib(pp.totalRssKiB),
        kib(M.ssh?.perSessionRssKiB),
        ratio(pp.totalRssKiB, M.ssh?.perSessionRssKiB),
      );
      row(
        "… of which the supervisor (cmapp-supervise), plain runs: RSS / PSS / private",
        `${kib(pp.supervisorRssKiB)} / ${kib(pp.supervisorPssKiB)} / ${kib(pp.supervisorPrivKiB)}`,
        "",
        "",
      );
      if (pp.streamsSupervisorPssKiB !== undefined) {
        row(
          "… of which the supervisor, runs with streams: RSS / PSS / private",
          `${kib(pp.streamsSupervisorRssKiB)} / ${kib(pp.streamsSupervisorPssKiB)} / ${
            kib(pp.streamsSupervisorPrivKiB)
          }`,
          "",
          "",
        );
      }
      row(
        "Daemon per run launched with streams (as cmappmgr launches), RSS / PSS",
        `${kib(pp.streamsRunDaemonRssKiB)} / ${kib(pp.streamsRunDaemonPssKiB)}`,
        "",
        "",
      );
      const X = M.cmapp.missingSupervisors;
      if (X) {
        row(
          "**Supervisors missing** (found by argv / runs: the figures above are wrong)",
          `${X.plain}; ${X.streamed}`,
          "",
          "",
        );
      }
      const A = M.cmapp.afterEnd;
      if (A) {
        row(
          "… daemon once every run has ended and its supervisor is gone, RSS / PSS (idle " +
            "before the first run: RSS)",
          `${mib(A.daemonRssKiB)} / ${mib(A.daemonPssKiB)} (${mib(M.cmapp.idle.daemonRssKiB)})`,
          "",
          "",
        );
        row(
          "… so the daemon's memory held per running run ((last level − after the end) ÷ runs), " +
            "RSS / PSS",
          `${kib(pp.heldDaemonRssKiB)} / ${kib(pp.heldDaemonPssKiB)}`,
          "",
          "",
        );
      }
    }
  }
  const T = r.throughput?.summary;
  if (T) {
    const reps = r.throughput.reps ?? 1;
    const size = `${r.throughput.bytes / 1024 / 1024} MiB` +
      (reps > 1 ? ` (median of ${reps}, interleaved)` : "");
    for (const dir of ["stdout", "stdin"] as const) {
      const c = T[dir]?.cmappmgr?.MBps_median;
      const s = T[dir]?.ssh?.MBps_median;
      row(
        `${size} through ${dir}, whole command (cmappmgr / ssh)`,
        fmt(c, "MB/s"),
        fmt(s, "MB/s"),
        ratio(c, s),
        "≥ ssh",
        s ? c >= s : null,
      );
      row(
        `… through the client API, in-process`,
        fmt(T[dir]?.api?.MBps_median, "MB/s"),
        fmt(s, "MB/s"),
        ratio(T[dir]?.api?.MBps_median, s),
      );
      const cpu = (x: Json) =>
        x ? `${fmt(x.clientCpuSPerGiB, "", 2)} + ${fmt(x.serverCpuSPerGiB, "", 2)} s` : "–";
      const tot = (x: Json) =>
        x && x.clientCpuSPerGiB !== null && x.serverCpuSPerGiB !== null
          ? x.clientCpuSPerGiB + x.serverCpuSPerGiB
          : null;
      row(
        `… CPU per GiB, host program + server side (cmappmgr / ssh; API: ${cpu(T[dir]?.api)})`,
        cpu(T[dir]?.cmappmgr),
        cpu(T[dir]?.ssh),
        ratio(tot(T[dir]?.cmappmgr), tot(T[dir]?.ssh)),
      );
      if (T[dir]?.cmappmgr?.supervisorCpuSPerGiB !== undefined) {
        row(
          "… of the server side, cmapp-supervise and the application under it (cmappmgr / " +
            "API)",
          `${fmt(T[dir]?.cmappmgr?.supervisorCpuSPerGiB, "s", 2)} / ${
            fmt(T[dir]?.api?.supervisorCpuSPerGiB, "s", 2)
          }`,
          "",
          "",
        );
      }
    }
  }
  const F = r.throughput?.rawTlsFloor;
  if (F?.MBps_median) {
    row(
      "… floor: node:tls in Deno alone (project's listenTls/connectTls, no cmapp protocol), " +
        "Deno process → harness",
      fmt(F.MBps_median, "MB/s"),
      fmt(r.throughput.summary?.stdout?.ssh?.MBps_median, "MB/s"),
      ratio(F.MBps_median, r.throughput.summary?.stdout?.ssh?.MBps_median),
    );
  }
  const G = r.cmappmgr;
  if (G) {
    const s = G.startup;
    row(
      "Program start-up: `cmappmgr -version` / `ssh -V`, p50",
      fmt(s.cmappmgr_version?.p50, "ms"),
      fmt(s.ssh_version?.p50, "ms"),
      ratio(s.cmappmgr_version?.p50, s.ssh_version?.p50),
    );
    row(
      "… Deno process exit: from `Deno.exit()` to the exit seen by the parent, p50",
      fmt(s.deno_exit?.p50, "ms"),
      "",
      "",
    );
    row(
      "… Deno running an empty file (the floor for any Deno program), p50",
      fmt(s.deno_empty?.p50, "ms"),
      "",
      "",
    );
    row(
      "Host program peak RSS (VmHWM) following a `sleep 2` run",
      mib(G.followingSleep2?.cmappmgr?.peakHwmKiB),
      mib(G.followingSleep2?.ssh?.peakHwmKiB),
      ratio(G.followingSleep2?.cmappmgr?.peakHwmKiB, G.followingSleep2?.ssh?.peakHwmKiB),
    );
    const t = r.throughput?.summary?.stdout;
    if (t) {
      row(
        "… while streaming stdout",
        mib(t.cmappmgr?.peakHwmKiB),
        mib(t.ssh?.peakHwmKiB),
        ratio(t.cmappmgr?.peakHwmKiB, t.ssh?.peakHwmKiB),
      );
      // Issue 13's target: at most 16 MiB above the program's own idle peak.
      const above = (streaming?: number, idle?: number) =>
        streaming !== undefined && idle !== undefined ? streaming - idle : undefined;
      const mgrAbove = above(t.cmappmgr?.peakHwmKiB, G.followingSleep2?.cmappmgr?.peakHwmKiB);
      const sshAbove = above(t.ssh?.peakHwmKiB, G.followingSleep2?.ssh?.peakHwmKiB);
      row(
        "… streaming stdout, above the `sleep 2` peak (target: at most 16 MiB)",
        mib(mgrAbove),
        mib(sshAbove),
        ratio(mgrAbove, sshAbove),
      );
    }
  }
  const m = r.meta ?? {};
  const head = [
    `Run of ${m.date ?? "?"} (${m.mode ?? "?"} mode, ${m.durationS ?? "?"} s): ` +
    `${m.machine?.nproc ?? "?"} cores (${m.machine?.cpuModel ?? "?"}), ` +
    `${m.machine?.memTotalMiB ?? "?"} MiB, ${m.machine?.kernel ?? "?"}; ` +
    `load average at start ${(m.machine?.loadavgStart ?? "?").split(" ").slice(0, 3).join(" ")}, ` +
    `at end ${(m.machine?.loadavgEnd ?? "?").split(" ").slice(0, 3).join(" ")}. ` +
    `Deno ${m.versions?.deno ?? "?"}, ${m.versions?.ssh ?? "?"}, cmapp ` +
    `${m.versions?.cmapp?.SOFTWARE_VERSION ?? "?"} (protocol ${
      m.versions?.cmapp?.PROTOCOL_VERSION ?? "?"
    }), commit ${m.versions?.gitCommit ?? "?"}${
      m.versions?.gitDirty ? " with local changes" : ""
    }.`,
    "",
    "Ratio = cmapp ÷ ssh (below 1 is better for times and memory, above 1 for throughput).",
    "",
    "| Measure | cmapp | OpenSSH | Ratio | Target | |",
    "|---|---:|---:|---:|---|---|",
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
  if (m.sshd?.error) head.push("", `**No ssh figures**: ${m.sshd.error}`);
  const errs = Object.entries(r.errors ?? {});
  if (errs.length > 0) {
    head.push("", "Sections that failed:");
    for (const [k, v] of errs) head.push(`- ${k}: ${String(v).split("\n")[0]}`);
  }
  return head.join("\n") + "\n";
}

// ------------------------------------------------------------------ SVG

const COLORS: Record<string, string> = {
  cmappmgr: "#d62728",
  api_connect: "#ff7f0e",
  api_open: "#9467bd",
  api: "#9467bd",
  api_streams: "#e377c2",
  ssh: "#1f77b4",
  ssh_mux: "#17becf",
};
const LABELS: Record<string, string> = {
  cmappmgr: "cmappmgr (whole command)",
  api_connect: "cmapp API: connect + launch + wait",
  api_open: "cmapp API: launch + wait, open connection",
  api: "cmapp API: wait() resolves",
  api_streams: "cmapp API, run with streams",
  ssh: "ssh (whole command)",
  ssh_mux: "ssh via ControlMaster (whole client)",
};

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function panel(
  title: string,
  samples: Record<string, number[]>,
  x0: number,
  y0: number,
  w: number,
  h: number,
): string {
  const all = Object.values(samples).flat().filter((v) => v > 0);
  if (all.length === 0) return "";
  // Axis from the 1-2-5 step at or below the smallest value to the one at or above the largest.
  const steps = (v: number) => {
    const d = Math.pow(10, Math.floor(Math.log10(v)));
    return [d, 2 * d, 5 * d, 10 * d];
  };
  const lo = steps(Math.min(...all)).filter((s) => s <= Math.min(...all)).at(-1)!;
  const hi = steps(Math.max(...all)).find((s) => s >= Math.max(...all))!;
  const series = Object.values(samples).filter((v) => v.length > 0).length;
  const left = x0 + 50;
  const right = x0 + w - 25;
  const top = y0 + 30;
  const bottom = y0 + h - 60 - 15 * series;
  const X = (v: number) =>
    left + (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) *
      (right - left);
  const Y = (p: number) => bottom - p * (bottom - top);
  const out: string[] = [];
  out.push(
    `<text x="${x0 + w / 2}" y="${y0 + 18}" text-anchor="middle" font-weight="bold">${
      esc(title)
    }</text>`,
  );
  out.push(
    `<rect x="${left}" y="${top}" width="${right - left}" height="${
      bottom - top
    }" fill="none" stroke="#999"/>`,
  );
  for (let d = Math.pow(10, Math.floor(Math.log10(lo))); d <= hi * 1.0001; d *= 10) {
    for (const m of [1, 2, 5]) {
      const v = d * m;
      if (v < lo * 0.9999) continue;
      if (v > hi * 1.0001) break;
      const x = X(v).toFixed(1);
      out.push(
        `<line x1="${x}" y1="${top}" x2="${x}" y2="${bottom}" stroke="#eee"/>`,
        `<text x="${x}" y="${bottom + 14}" text-anchor="middle" font-size="10">${
          v >= 1 ? v.toFixed(0) : v.toPrecision(1)
        }</text>`,
      );
    }
  }
  for (const p of [0, 0.25, 0.5, 0.75, 0.95, 1]) {
    const y = Y(p).toFixed(1);
    out.push(
      `<line x1="${left}" y1="${y}" x2="${right}" y2="${y}" stroke="${
        p === 0.5 || p === 0.95 ? "#ccc" : "#eee"
      }"/>`,
      `<text x="${left - 4}" y="${Number(y) + 3}" text-anchor="end" font-size="10">${
        Math.round(p * 100)
      }%</text>`,
    );
  }
  out.push(
    `<text x="${(left + right) / 2}" y="${bottom + 30}" text-anchor="middle" font-size="11">` +
      `milliseconds (log scale); curve = share of runs at or below</text>`,
  );
  let ly = bottom + 52;
  for (const [name, vals] of Object.entries(samples)) {
    if (vals.length === 0) continue;
    const s = [...vals].sort((a, b) => a - b);
    const color = COLORS[name] ?? "#333";
    let d = `M${X(s[0]).toFixed(1)},${Y(0).toFixed(1)}`;
    s.forEach((v, i) => {
      d += ` L${X(v).toFixed(1)},${Y(i / s.length).toFixed(1)} L${X(v).toFixed(1)},${
        Y((i + 1) / s.length).toFixed(1)
      }`;
    });
    out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`);
    const p50 = s[Math.floor((s.length - 1) * 0.5)];
    const p95 = s[Math.floor((s.length - 1) * 0.95)];
    out.push(
      `<rect x="${left + 8}" y="${ly - 8}" width="12" height="4" fill="${color}"/>`,
      `<text x="${left + 26}" y="${ly - 3}" font-size="11">${esc(LABELS[name] ?? name)}: p50 ${
        p50.toFixed(p50 < 10 ? 2 : 0)
      } ms, p95 ${p95.toFixed(p95 < 10 ? 2 : 0)} ms (n=${s.length})</text>`,
    );
    ly += 15;
  }
  return out.join("\n");
}

/** An SVG of the launch-to-exit and exit-notification distributions. */
export function renderSvg(r: Json): string {
  const w = 900;
  const h = 420;
  const parts: string[] = [];
  let y = 0;
  if (r.launchToExit?.samples) {
    parts.push(panel("Launch to exit of `true`", r.launchToExit.samples, 0, y, w, h));
    y += h;
  }
  if (r.exitLatency?.samples) {
    parts.push(
      panel(
        "Exit notification: guest process exit → host side returns",
        r.exitLatency.samples,
        0,
        y,
        w,
        h,
      ),
    );
    y += h;
  }
  const m = r.meta ?? {};
  const foot = `cmapp ${m.versions?.cmapp?.SOFTWARE_VERSION ?? "?"} vs ${m.versions?.ssh ?? "?"}, ${
    m.machine?.nproc ?? "?"
  } cores, ${m.date ?? ""} (${m.mode ?? ""} mode)`;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${y + 24}" ` +
    `viewBox="0 0 ${w} ${y + 24}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    ...parts,
    `<text x="${w / 2}" y="${y + 14}" text-anchor="middle" font-size="10" fill="#666">${
      esc(foot)
    }</text>`,
    `</svg>`,
    "",
  ].join("\n");
}
