/**
 * What a manager may ask for: the allowed executables, run-as users and
 * groups, size limits, canonical working directories, and the environment
 * a process gets. Turns a launch request into exactly what will be started,
 * or a refusal with the reason.
 *
 * @module
 */

import { DEFAULT_PATH, type ProgramFailure, resolveProgram } from "./program.ts";

/** The daemon's launch policy. */
export interface LaunchPolicy {
  /** Globs of executables that may run (`*` within a path segment, `**` across); empty: any. */
  allowExec: string[];
  /** Users (names or uids) that requests may run as; empty: run-as is refused. */
  allowUsers: string[];
  /**
   * Groups (names or gids) a run-as request may ask for beyond the user's
   * own (its primary group and the groups that list it in /etc/group).
   */
  allowGroups: string[];
  /** Largest argv, in bytes of UTF-8 (each argument plus one). */
  maxArgvBytes: number;
  /** Largest environment, in bytes of UTF-8 ("NAME=value" plus one each). */
  maxEnvBytes: number;
  /** PATH given to processes whose request sets none. */
  defaultPath: string;
}

/** Defaults for {@linkcode LaunchPolicy}. */
export const DEFAULT_POLICY: LaunchPolicy = {
  allowExec: [],
  allowUsers: [],
  allowGroups: [],
  maxArgvBytes: 256 * 1024,
  maxEnvBytes: 256 * 1024,
  defaultPath: DEFAULT_PATH,
};

/** A launch as the manager asked for it. */
export interface LaunchRequest {
  /** Program and arguments. */
  argv: string[];
  /** The whole environment (PATH added when absent). */
  env?: Record<string, string>;
  /** Absolute, canonical working directory; "/" by default. */
  cwd?: string;
  /** User to run as. */
  user?: string;
  /** Group to run as (with a user). */
  group?: string;
}

/** A launch as it will be started. */
export interface PreparedLaunch {
  /** argv[0] resolved to a canonical absolute path. */
  program: string;
  /** The arguments as asked. */
  argv: string[];
  /** The whole environment. */
  env: Record<string, string>;
  /** The working directory. */
  cwd: string;
  /**
   * The identity to switch to, when asked: exactly this uid, gid and these
   * supplementary groups.
   */
  runAs?: { uid: number; gid: number; groups: number[]; user: string };
}

/** A refusal by policy. */
export interface PolicyRefusal {
  /** Always "policy". */
  code: "policy";
  /** One line for the manager. */
  message: string;
}

const _enc = new TextEncoder();

/** Lexically normalises an absolute path ("." and ".." resolved, "//" folded). */
export function normalizePath(path: string): string {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return "/" + out.join("/");
}

/** Compiles an allow-list glob. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      re += ".*";
      i++;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

interface _Account {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

async function _lookupUser(user: string): Promise<_Account | null> {
  const text = await Deno.readTextFile("/etc/passwd").catch(() => "");
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 7) continue;
    if (f[0] === user || f[2] === user) {
      return { name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] };
    }
  }
  return null;
}

interface _Group {
  name: string;
  gid: number;
  members: string[];
}

async function _groups(): Promise<_Group[]> {
  const text = await Deno.readTextFile("/etc/group").catch(() => "");
  const out: _Group[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 4 || !/^\d+$/.test(f[2])) continue;
    out.push({ name: f[0], gid: Number(f[2]), members: f[3].split(",").filter((m) => m) });
  }
  return out;
}

/** A group named or numbered `group`; a number not in /etc/group stands for itself. */
function _findGroup(groups: _Group[], group: string): { name: string; gid: number } | null {
  const g = groups.find((x) => x.name === group || String(x.gid) === group);
  if (g) return g;
  return /^\d+$/.test(group) ? { name: group, gid: Number(group) } : null;
}

/**
 * The groups a run as `account` gets, and checks: its primary group (or
 * the one asked for) and the groups that list it in /etc/group. A group
 * asked for must be one of the user's own or in `allowGroups`.
 */
async function _runAsGroups(
  account: _Account,
  requested: string | undefined,
  policy: LaunchPolicy,
): Promise<{ gid: number; groups: number[] } | string> {
  const all = await _groups();
  const own = new Set([
    account.gid,
    ...all.filter((g) => g.members.includes(account.name)).map((g) => g.gid),
  ]);
  let gid = account.gid;
  if (requested !== undefined) {
    const g = _findGroup(all, requested);
    if (!g) return `no such group ${JSON.stringify(requested)}`;
    const allowed = own.has(g.gid) ||
      policy.allowGroups.some((a) => a === g.name || a === String(g.gid));
    if (!allowed) {
      return `group ${g.name} is neither one of ${account.name}'s own groups nor among the ` +
        `allowed groups (${
          policy.allowGroups.join(", ") || "no allow_group in the configuration"
        })`;
    }
    gid = g.gid;
  }
  return { gid, groups: [...own].sort((a, b) => a - b) };
}

/**
 * Checks a launch request against the policy and resolves what to start.
 *
 * @example
 * ```ts ignore
 * import { DEFAULT_POLICY, prepareLaunch } from "./policy.ts";
 * const p = await prepareLaunch({ argv: ["sleep", "1"] }, DEFAULT_POLICY);
 * // { program: "/usr/bin/sleep", argv: ["sleep", "1"], env: { PATH: … }, cwd: "/" }
 * ```
 */
export async function prepareLaunch(
  req: LaunchRequest,
  policy: LaunchPolicy,
): Promise<PreparedLaunch | PolicyRefusal | ProgramFailure> {
  const refuse = (message: string): PolicyRefusal => ({ code: "policy", message });
  const argvBytes = req.argv.reduce((n, a) => n + _enc.encode(a).length + 1, 0);
  if (argvBytes > policy.maxArgvBytes) {
    return refuse(`argv is ${argvBytes} bytes, over this server's limit of ${policy.maxArgvBytes}`);
  }
  const env: Record<string, string> = { ...(req.env ?? {}) };
  env.PATH ??= policy.defaultPath;
  const envBytes = Object.entries(env).reduce(
    (n, [k, v]) => n + _enc.encode(k).length + _enc.encode(v).length + 2,
    0,
  );
  if (envBytes > policy.maxEnvBytes) {
    return refuse(
      `the environment is ${envBytes} bytes, over this server's limit of ${policy.maxEnvBytes}`,
    );
  }
  const cwd = req.cwd ?? "/";
  if (!cwd.startsWith("/") || normalizePath(cwd) !== cwd.replace(/(.)\/$/, "$1")) {
    return refuse(`working directory ${JSON.stringify(cwd)} is not a canonical absolute path`);
  }
  try {
    if (!(await Deno.stat(cwd)).isDirectory) {
      return refuse(`working directory ${cwd} is not a directory`);
    }
  } catch {
    return refuse(`working directory ${cwd} does not exist`);
  }
  let runAs: PreparedLaunch["runAs"];
  if (req.user !== undefined || req.group !== undefined) {
    if (req.user === undefined) return refuse("a group can only be given together with a user");
    const account = await _lookupUser(req.user);
    if (!account) return refuse(`no such user ${JSON.stringify(req.user)}`);
    const allowed = policy.allowUsers.some((u) => u === account.name || u === String(account.uid));
    if (!allowed) {
      return refuse(
        policy.allowUsers.length === 0
          ? `running as another user is not allowed here (no allow_user in the configuration)`
          : `user ${account.name} is not among the allowed users (${policy.allowUsers.join(", ")})`,
      );
    }
    const groups = await _runAsGroups(account, req.group, policy);
    if (typeof groups === "string") return refuse(groups);
    if (Deno.uid() !== 0) {
      return refuse("cmappserver is not running as root: it cannot switch users");
    }
    runAs = { uid: account.uid, gid: groups.gid, groups: groups.groups, user: account.name };
    env.HOME ??= account.home;
    env.USER ??= account.name;
    env.LOGNAME ??= account.name;
  }
  const resolved = await resolveProgram(
    req.argv[0].includes("/") && !req.argv[0].startsWith("/")
      ? `${cwd}/${req.argv[0]}`
      : req.argv[0],
    env.PATH,
  );
  if (typeof resolved !== "string") return resolved;
  const program = normalizePath(resolved);
  if (
    policy.allowExec.length > 0 && !policy.allowExec.some((g) => globToRegExp(g).test(program))
  ) {
    return refuse(`${program} is not among the executables this server allows`);
  }
  return { program, argv: req.argv, env, cwd, runAs };
}
