/**
 * A private OpenSSH server on 127.0.0.1 for the comparison: its own
 * sshd_config in a temporary directory, its own port and host key, public
 * key authentication only, for one generated client key. Started with
 * `/usr/sbin/sshd -D -f CONFIG` (plus `-E LOGFILE`) and stopped by the
 * harness.
 *
 * @module
 */

import { capture, delay, freePort } from "./_lib.ts";

/** Where sshd is expected. */
export const SSHD = "/usr/sbin/sshd";

/** A running private sshd. */
export interface Sshd {
  port: number;
  /** The listener's pid (every session's sshd processes descend from it). */
  pid: number;
  configPath: string;
  config: string;
  /** The client key. */
  keyPath: string;
  /** ssh arguments up to and including the host: append the remote command. */
  sshArgs(extra?: string[]): string[];
  /** What sshd logged. */
  log(): Promise<string>;
  /** Notes on the set-up (e.g. a directory that had to be created). */
  notes: string[];
  /** SIGTERM, then waits. */
  stop(): Promise<void>;
}

async function _exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts the private sshd; returns a reason instead when it cannot (no sshd
 * installed, config refused, authentication not working).
 */
export async function startSshd(dir: string): Promise<Sshd | { error: string }> {
  if (!await _exists(SSHD)) {
    return {
      error: `${SSHD} not found: install openssh-server (apt-get install -y openssh-server) ` +
        `to get the ssh figures`,
    };
  }
  for (const p of ["ssh", "ssh-keygen"]) {
    const ok = await new Deno.Command("sh", { args: ["-c", `command -v ${p}`], stdout: "null" })
      .output().then((o) => o.success, () => false);
    if (!ok) return { error: `${p} not found: install openssh-client` };
  }
  const notes: string[] = [];
  // Debian's sshd refuses to start without its privilege separation directory.
  if (!await _exists("/run/sshd")) {
    try {
      await Deno.mkdir("/run/sshd", { mode: 0o755 });
      notes.push("created /run/sshd (sshd's privilege separation directory, absent here)");
    } catch (e) {
      return { error: `sshd needs /run/sshd and it cannot be created: ${(e as Error).message}` };
    }
  }
  await Deno.mkdir(dir, { recursive: true });
  const hostKey = `${dir}/ssh_host_ed25519_key`;
  const keyPath = `${dir}/client_ed25519`;
  for (const k of [hostKey, keyPath]) {
    const out = await new Deno.Command("ssh-keygen", {
      args: ["-q", "-t", "ed25519", "-N", "", "-C", "cmapp-bench", "-f", k],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      return { error: `ssh-keygen failed: ${new TextDecoder().decode(out.stderr)}` };
    }
  }
  await Deno.copyFile(`${keyPath}.pub`, `${dir}/authorized_keys`);
  const port = freePort();
  const config = [
    `# cmapp benchmark: a private sshd, for comparison only`,
    `Port ${port}`,
    `ListenAddress 127.0.0.1`,
    `HostKey ${hostKey}`,
    `PidFile ${dir}/sshd.pid`,
    `AuthorizedKeysFile ${dir}/authorized_keys`,
    `AuthenticationMethods publickey`,
    `PubkeyAuthentication yes`,
    `PasswordAuthentication no`,
    `KbdInteractiveAuthentication no`,
    `PermitRootLogin prohibit-password`,
    `StrictModes no`,
    `UsePAM no`,
    `UseDNS no`,
    `PrintMotd no`,
    `PrintLastLog no`,
    `X11Forwarding no`,
    `AllowAgentForwarding no`,
    `AcceptEnv none`,
    // Limits as high as they go, to see how many concurrent sessions it takes.
    `MaxSessions 10000`,
    `MaxStartups 10000`,
    `PerSourceMaxStartups none`,
    `LogLevel INFO`,
    // The login shell here (bash) sources ~/.bashrc when started by sshd at
    // shell level 1; this machine's root .bashrc runs pyenv init (~0.8 s).
    // SHLVL=1 makes bash count as nested and skip it, so the figures are
    // ssh's, not this account's dotfiles'.
    `SetEnv SHLVL=1`,
    ``,
  ].join("\n");
  const configPath = `${dir}/sshd_config`;
  await Deno.writeTextFile(configPath, config);
  const test = await new Deno.Command(SSHD, {
    args: ["-t", "-f", configPath],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!test.success) {
    return {
      error: `sshd refused the configuration: ${new TextDecoder().decode(test.stderr).trim()}`,
    };
  }
  const logPath = `${dir}/sshd.log`;
  const child = new Deno.Command(SSHD, {
    args: ["-D", "-f", configPath, "-E", logPath],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const log = () => Deno.readTextFile(logPath).catch(() => "");
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch {
        // gone
      }
    }
    await status;
    await stderr;
  };
  // Ready when it sends its banner.
  const deadline = Date.now() + 10_000;
  let ready = false;
  while (!ready && !exited && Date.now() < deadline) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      const buf = new Uint8Array(64);
      const n = await c.read(buf);
      c.close();
      ready = n !== null && new TextDecoder().decode(buf.subarray(0, n)).startsWith("SSH-");
    } catch {
      await delay(50);
    }
  }
  if (!ready) {
    await stop();
    return { error: `sshd did not start: ${await stderr}${await log()}` };
  }
  const sshArgs = (extra: string[] = []) => [
    "-F",
    "/dev/null",
    "-p",
    String(port),
    "-i",
    keyPath,
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
    ...extra,
    "127.0.0.1",
  ];
  const check = await capture("ssh", [...sshArgs(), "echo cmapp-bench-ok"]);
  if (!check.includes("cmapp-bench-ok")) {
    await stop();
    return { error: `ssh to the private sshd failed: ${check.trim()}\n${await log()}` };
  }
  return { port, pid: child.pid, configPath, config, keyPath, sshArgs, log, notes, stop };
}

/** An ssh ControlMaster connection that ssh clients can multiplex sessions over. */
export interface SshMaster {
  /** ssh arguments for a client using the master (append the remote command). */
  args: string[];
  pid: number;
  stop(): Promise<void>;
}

/** Opens a ControlMaster connection to `sshd`. */
export async function startMaster(sshd: Sshd, dir: string): Promise<SshMaster | { error: string }> {
  const path = `${dir}/mux.sock`;
  const child = new Deno.Command("ssh", {
    args: [
      ...sshd.sshArgs(["-o", "ControlMaster=yes", "-o", `ControlPath=${path}`, "-N"]),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const args = sshd.sshArgs(["-o", "ControlMaster=no", "-o", `ControlPath=${path}`]);
  const deadline = Date.now() + 10_000;
  while (!exited && Date.now() < deadline) {
    if (await _exists(path)) {
      const out = await capture("ssh", [...args, "echo mux-ok"]);
      if (out.includes("mux-ok")) {
        return {
          args,
          pid: child.pid,
          stop: async () => {
            if (!exited) child.kill("SIGTERM");
            await status;
            await stderr;
          },
        };
      }
    }
    await delay(50);
  }
  if (!exited) child.kill("SIGTERM");
  await status;
  return { error: `ssh ControlMaster did not come up: ${await stderr}` };
}
