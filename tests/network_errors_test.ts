// How cmappmgr names a failure to reach a guest: every way the network can
// fail is "unreachable" (exit 200), never "refused our certificate" (202) or
// "protocol error" (203), which are kept for a peer that really refused us or
// spoke wrongly. Each route type runs cmappmgr in a network namespace of its
// own (unshare --net), where only the route under test exists.
import assert from "node:assert/strict";
import { MGR_EXIT } from "../cli/exit_codes.ts";
import { makeKeys, programCommand, runMgr, startServerProcess } from "./_harness.ts";
import { testOrSkip } from "./_skip.ts";

const FILE = "tests/network_errors_test.ts";

async function _have(cmd: string, ...args: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

const reason = !(await _have("ip", "-V"))
  ? "no ip (apt-get install iproute2)"
  : !(await _have("unshare", "--net", "true"))
  ? "cannot make a network namespace (unshare --net: needs root)"
  : undefined;

/** Runs cmappmgr in a new network namespace, after `setup` (sh) there. */
async function mgrInNamespace(
  setup: string,
  args: string[],
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command("unshare", {
    args: [
      "--net",
      "sh",
      "-c",
      `ip link set lo up && ${setup} && exec "$@"`,
      "sh",
      Deno.execPath(),
      ...programCommand("cmappmgr"),
      ...args,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

testOrSkip(
  FILE,
  "every failed route is unreachable: exit 200, with the reason",
  reason,
  async (t) => {
    const keys = await makeKeys();
    try {
      const to = (host: string, ...verb: string[]) => [
        "-node",
        host,
        "-port",
        "5315",
        "-keydir",
        keys.manager,
        "-cmappserver_timeout",
        "2",
        ...verb,
      ];
      const cases: [string, string, string, RegExp][] = [
        ["blackhole", "ip route add blackhole 10.99.0.1/32", "10.99.0.1", /10\.99\.0\.1:5315/],
        ["prohibit", "ip route add prohibit 10.99.0.1/32", "10.99.0.1", /10\.99\.0\.1:5315/],
        ["unreachable", "ip route add unreachable 10.99.0.1/32", "10.99.0.1", /10\.99\.0\.1:5315/],
        // Packets leave and nothing ever answers: a veth pair whose far end has no address, and a
        // fixed neighbour entry so that not even ARP fails.
        [
          "drop",
          "ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up && " +
          "ip addr add 10.98.0.2/24 dev v0 && " +
          "ip neigh add 10.98.0.1 lladdr 02:00:00:00:00:01 dev v0 nud permanent",
          "10.98.0.1",
          /10\.98\.0\.1:5315/,
        ],
      ];
      for (const [name, setup, host, names] of cases) {
        await t.step(`${name}: a run, -ping and -list`, async () => {
          for (const verb of [["--", "true"], ["-ping"], ["-list"]]) {
            const r = await mgrInNamespace(setup, to(host, ...verb));
            assert.equal(r.code, MGR_EXIT.unreachable, `${verb[0]}: ${r.stderr}`);
            assert.match(r.stderr, names);
            assert.doesNotMatch(r.stderr, /refused our certificate|protocol/);
          }
        });
      }
    } finally {
      await keys.root.cleanup();
    }
  },
);

Deno.test("a connection lost during the TLS handshake is unreachable (200), a refused certificate still 202", async () => {
  const keys = await makeKeys();
  // Takes the connection, reads the ClientHello, and hangs up: what a cut network or a guest
  // dying at that moment looks like.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const cutting = (async () => {
    for await (const conn of listener) {
      await conn.read(new Uint8Array(4096)).catch(() => null);
      conn.close();
    }
  })();
  try {
    const args = (port: number, keydir: string, ...verb: string[]) => [
      "-node",
      "127.0.0.1",
      "-port",
      String(port),
      "-keydir",
      keydir,
      "-cmappserver_timeout",
      "2",
      ...verb,
    ];
    const cut = await runMgr(args(listener.addr.port, keys.manager, "--", "true"));
    assert.equal(cut.code, MGR_EXIT.unreachable, cut.stderr);
    assert.match(cut.stderr, /during the TLS handshake/);
    assert.doesNotMatch(cut.stderr, /refused our certificate/);
    const ping = await runMgr(args(listener.addr.port, keys.manager, "-ping"));
    assert.equal(ping.code, MGR_EXIT.unreachable, ping.stderr);

    // A real cmappserver that does not trust us: refused, 202.
    const other = await makeKeys();
    const server = await startServerProcess(other.server);
    try {
      // Our manager trusts that server, but the server does not trust our manager.
      const trusted = `${keys.manager}/trusted/other.pem`;
      await Deno.copyFile(`${other.server}/cert.pem`, trusted);
      const refused = await runMgr(args(server.port, keys.manager, "-ping"));
      assert.equal(refused.code, MGR_EXIT.rejected, refused.stderr);
      assert.match(refused.stderr, /refused our certificate/);
    } finally {
      await server.stop();
      await other.root.cleanup();
    }
  } finally {
    listener.close();
    await cutting;
    await keys.root.cleanup();
  }
});
