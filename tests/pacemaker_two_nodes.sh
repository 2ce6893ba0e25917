#!/usr/bin/env bash
# End-to-end test of the OCF agent (dist/ocf/cmapp) under a real two-node
# Corosync + Pacemaker cluster, built on this one machine from namespaces
# (facts: ../shared/reference/pacemaker-two-node.md):
#
#   n1 10.77.0.1 --+
#   n2 10.77.0.2 --+-- bridge (a network namespace of its own)
#   guest 10.77.0.3 -+
#
# Each node is corosync + pacemakerd as pid 1's children in its own network,
# mount, pid, uts and ipc namespaces, with a tmpfs on /run and /dev/shm and
# private directories bound over /var/lib/pacemaker, /var/lib/corosync,
# /var/log/pacemaker and /usr/lib/ocf/resource.d (which holds only this
# agent, as ocf:cmapp:cmapp). Each node has its own cmappmgr key, pinned on
# the guest. The guest is a cmappserver in its own network, mount and pid
# namespaces (its pids are the guest's own, as in a VM); killing its pid 1 is
# the guest's power-off.
#
# The resource "app1" runs `sleep 100000` on the guest (migration-threshold=2,
# resource-stickiness=100, monitor every 2 s). The script checks, in order:
#   1. n1 alone starts it (run 1);
#   2. n2 joins: its probe says "not running"; the run is untouched;
#   3. the application is killed in the guest: Pacemaker counts the failure on
#      n1 with the agent's reason and restarts it on n1 (run 2);
#   4. killed again (migration-threshold): it fails over to n2 (run 3), exactly
#      one copy runs, n1's follower is gone;
#   5. `crm_resource --cleanup`, then `--refresh`: failures cleared, both
#      nodes re-probed, the run untouched;
#   6. n2 is killed (every process in its namespaces, SIGKILL): n1 takes the
#      resource over by attaching to run 3; no run 4;
#   7. n2 rejoins: probed "not running", the run untouched, still on n1;
#   8. the guest's cmappserver restarts (down 2 s): no failure is counted,
#      the follower reconnects, the run is untouched.
# "Untouched" means the same pid, and the guest's list of runs of app1 (which
# keeps finished runs) has not grown: a restart anywhere would add one.
# Everything is torn down at the end, whatever happens: the nodes stop (n2,
# then n1, whose agent stops the application), the guest is powered off, the
# namespaces are deleted.
#
# Run by tests/pacemaker_two_nodes_test.ts. Needs root, unshare, nsenter, ip
# and the packages of .ci/deps.sh. Touches nothing of the machine's own
# cluster state: every directory the daemons write is under $W.
#
# Environment:
#   W            scratch directory, mode 755 (logs, keys, node directories)
#   AGENT        the agent to install as ocf:cmapp:cmapp
#   CMAPPMGR     cmappmgr (or a wrapper that execs it)
#   CMAPPSERVER  cmappserver (or a wrapper that execs it)
# Output: one line per step with its timing; lines "figure: NAME SECONDS" for
# the failover timings; last line "RESULT OK" (exit 0) or "RESULT FAILED:
# reason" (exit 1). Every pid to kill and namespace to delete if the script
# itself is killed goes into $W/pids ("what pid") and $W/netns as it is made.
set -euo pipefail

: "${W:?}" "${AGENT:?}" "${CMAPPMGR:?}" "${CMAPPSERVER:?}"
SELF=$(readlink -f "$0")
RSC=app1
NET=10.77.0
GUEST=$NET.3
PORT=5315
NODE_KEYS=/run/cmapp-keys # each node's own keys, at the same path on both
AGENT_STATE=/run/resource-agents
NS_PREFIX=cmt$$
declare -A INIT=() # node or "guest" -> pid (in this namespace) of its pid 1

now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "$(date +%T.%3N) $*"; }
fail() {
	log "RESULT FAILED: $*"
	exit 1
}
wait_for() { # wait_for TIMEOUT_S CMD...: poll every 0.25 s
	local end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "timed out waiting for: $*"
			return 1
		fi
		sleep 0.25
	done
}

# ---- inside a node: pid 1 of its namespaces -----------------------------------
# Mounts the node's private state, starts corosync then pacemakerd, and on
# SIGTERM stops them in the other order (pacemakerd first stops the resources
# this node runs).
node_init() {
	local n=$1 d=$W/$1 cpid pk
	hostname "$n"
	mount -t tmpfs -o mode=755 tmpfs /run
	mount -t tmpfs -o mode=1777 tmpfs /dev/shm
	mkdir -p /run/lock
	mount --bind "$d/lib/pacemaker" /var/lib/pacemaker
	mount --bind "$d/lib/corosync" /var/lib/corosync
	mount --bind "$d/log/pacemaker" /var/log/pacemaker
	mount --bind "$W/resource.d" /usr/lib/ocf/resource.d
	cp -a "$d/keys" "$NODE_KEYS"
	corosync -f -c "$d/corosync.conf" >>"$d/log/corosync.out" 2>&1 &
	cpid=$!
	wait_for 30 corosync-cfgtool -s || exit 1
	PCMK_logfile=$d/log/pacemaker.log pacemakerd >>"$d/log/pacemakerd.out" 2>&1 &
	pk=$!
	# shellcheck disable=SC2317 # (run by the trap)
	node_stop() {
		kill -TERM "$pk" 2>/dev/null || true
		wait "$pk" 2>/dev/null || true
		kill -TERM "$cpid" 2>/dev/null || true
		wait "$cpid" 2>/dev/null || true
		exit 0
	}
	trap node_stop TERM
	wait "$pk" || true
	kill -TERM "$cpid" 2>/dev/null || true
	wait "$cpid" || true
}

# ---- inside the guest: pid 1 of its namespaces ---------------------------------
# Runs cmappserver, and again 2 s after it exits (as systemd's Restart= would),
# until SIGTERM. Its current pid (the guest's own) is in
# $W/guest/cmappserver.pid. bash as pid 1
# reaps whatever is orphaned to it, as a guest's init would.
guest_init() {
	local stopping='' child
	mount -t tmpfs -o mode=755 tmpfs /run
	# shellcheck disable=SC2317 # (run by the trap)
	guest_stop() {
		stopping=1
		kill -TERM "$child" 2>/dev/null || true
	}
	trap guest_stop TERM
	while [ -z "$stopping" ]; do
		"$CMAPPSERVER" -keydir "$W/guest/keys" -bind "$GUEST" -port "$PORT" \
			-statedir "$W/guest/state" -config /dev/null -loglevel debug \
			>>"$W/guest/cmappserver.log" 2>&1 &
		child=$!
		echo "$child" >"$W/guest/cmappserver.pid.tmp"
		mv "$W/guest/cmappserver.pid.tmp" "$W/guest/cmappserver.pid"
		wait "$child" || true
		wait "$child" 2>/dev/null || true
		[ -n "$stopping" ] || sleep 2
	done
}

case "${1:-}" in
node-init)
	node_init "$2"
	exit 0
	;;
guest-init)
	guest_init
	exit 0
	;;
esac

# ---- from the machine ---------------------------------------------------------------
in_node() { # in_node NODE CMD...: runs CMD inside NODE's namespaces
	local n=$1
	shift
	nsenter -t "${INIT[$n]}" -n -m -p -u -i -- "$@"
}
# Starts a pid-1 process in NS (from `ip netns exec`), records it in INIT[WHO].
spawn_init() { # spawn_init WHO NS UNSHARE_ARGS... -- SUBCOMMAND
	local who=$1 ns=$2 launcher child
	shift 2
	local ua=()
	while [ "$1" != -- ]; do
		ua+=("$1")
		shift
	done
	shift
	ip netns exec "$ns" unshare --fork --kill-child --pid --mount-proc "${ua[@]}" \
		bash "$SELF" "$@" </dev/null >>"$W/$who.init.out" 2>&1 &
	launcher=$!
	echo "$who-launcher $launcher" >>"$W/pids"
	wait_for 10 pgrep -P "$launcher" || fail "$who: no pid 1"
	child=$(pgrep -P "$launcher" | head -1)
	INIT[$who]=$child
	echo "$who $child" >>"$W/pids"
}
# Stops WHO's pid 1 (SIGTERM, SIGKILL after TIMEOUT_S): with it goes every
# process of its pid namespace.
stop_init() { # stop_init WHO TIMEOUT_S
	local who=$1 pid=${INIT[$1]:-} end t0
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	t0=$(now)
	kill -TERM "$pid" 2>/dev/null || true
	end=$(($(date +%s) + $2))
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "$who (pid $pid) did not stop in $2 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		sleep 0.2
	done
	log "$who stopped in $(el "$t0")s"
	INIT[$who]=
}
kill_init() { # kill_init WHO: SIGKILL to pid 1, waits until it is gone
	local pid=${INIT[$1]}
	kill -KILL "$pid"
	wait_for 30 sh -c "! kill -0 $pid" || fail "$1 (pid $pid) survived SIGKILL"
	INIT[$1]=
}

cleanup() {
	set +e
	trap - EXIT INT TERM
	stop_init n2 90
	stop_init n1 120
	[ -n "${INIT[guest]:-}" ] && kill -KILL "${INIT[guest]}" 2>/dev/null
	sleep 0.5
	while read -r ns; do ip netns del "$ns" 2>/dev/null; done <"$W/netns"
	log "torn down"
}

make_net() {
	local br=${NS_PREFIX}br who i
	: >"$W/netns"
	ip netns add "$br"
	echo "$br" >>"$W/netns"
	ip -n "$br" link add br0 type bridge
	ip -n "$br" link set br0 up
	i=1
	for who in n1 n2 guest; do
		ip netns add "$NS_PREFIX$who"
		echo "$NS_PREFIX$who" >>"$W/netns"
		ip link add "${NS_PREFIX}a$i" netns "$NS_PREFIX$who" type veth peer "${NS_PREFIX}b$i" netns "$br"
		ip -n "$br" link set "${NS_PREFIX}b$i" master br0 up
		ip -n "$NS_PREFIX$who" link set lo up
		ip -n "$NS_PREFIX$who" link set "${NS_PREFIX}a$i" name eth0
		ip -n "$NS_PREFIX$who" addr add "$NET.$i/24" dev eth0
		ip -n "$NS_PREFIX$who" link set eth0 up
		i=$((i + 1))
	done
}

# Keys as docs/install.md makes them: the guest's names its address; each
# node's certificate pinned on the guest, the guest's on each node.
make_keys() {
	local n
	"$CMAPPSERVER" keygen -keydir "$W/guest/keys" -name "$GUEST" >/dev/null
	for n in n1 n2; do
		"$CMAPPMGR" keygen -keydir "$W/$n/keys" >/dev/null
		cp "$W/$n/keys/cert.pem" "$W/guest/keys/trusted/$n.pem"
		cp "$W/guest/keys/cert.pem" "$W/$n/keys/trusted/guest.pem"
	done
}

make_node_dirs() { # make_node_dirs NODE NODEID
	local n=$1 d=$W/$1
	mkdir -p "$d/lib/corosync" "$d/log/pacemaker"
	install -d -o hacluster -g haclient -m 750 "$d/lib/pacemaker" \
		"$d/lib/pacemaker/cib" "$d/lib/pacemaker/pengine" "$d/lib/pacemaker/blackbox" \
		"$d/lib/pacemaker/cores"
	chown hacluster:haclient "$d/log" "$d/log/pacemaker"
	chmod 2770 "$d/log"
	cat >"$d/corosync.conf" <<EOF
totem {
    version: 2
    cluster_name: cmapp2
    transport: knet
    crypto_cipher: none
    crypto_hash: none
}
nodelist {
    node {
        name: n1
        nodeid: 1
        ring0_addr: $NET.1
    }
    node {
        name: n2
        nodeid: 2
        ring0_addr: $NET.2
    }
}
quorum {
    provider: corosync_votequorum
    two_node: 1
    wait_for_all: 0
}
logging {
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: $d/log/corosync.log
    timestamp: hires
}
EOF
	# (-t looks for this node's address, so it runs in the node's network.)
	ip netns exec "$NS_PREFIX$n" corosync -t -c "$d/corosync.conf" >/dev/null
}

# The CIB n1 starts with: a test cluster's settings (no fencing, quorum
# ignored, dc-deadtime 2 s instead of 20) and stickiness, without which the
# scheduler may move a healthy resource back after a cleanup.
seed_cib() {
	cibadmin --empty >"$W/cib.xml"
	CIB_file="$W/cib.xml" crm_attribute --type crm_config --name stonith-enabled --update false
	CIB_file="$W/cib.xml" crm_attribute --type crm_config --name no-quorum-policy --update ignore
	CIB_file="$W/cib.xml" crm_attribute --type crm_config --name dc-deadtime --update 2s
	CIB_file="$W/cib.xml" cibadmin --create -o configuration --xml-text "<rsc_defaults>
	  <meta_attributes id='rsc-options'>
	    <nvpair id='rsc-options-stickiness' name='resource-stickiness' value='100'/>
	  </meta_attributes></rsc_defaults>"
	install -o hacluster -g haclient -m 600 "$W/cib.xml" "$W/n1/lib/pacemaker/cib/cib.xml"
}

RESOURCE="
<primitive id='$RSC' class='ocf' provider='cmapp' type='cmapp'>
  <instance_attributes id='$RSC-params'>
    <nvpair id='$RSC-guest' name='guest' value='$GUEST'/>
    <nvpair id='$RSC-port' name='port' value='$PORT'/>
    <nvpair id='$RSC-keydir' name='keydir' value='$NODE_KEYS'/>
    <nvpair id='$RSC-cmappmgr' name='cmappmgr' value='$CMAPPMGR'/>
    <nvpair id='$RSC-service' name='service_name' value='$RSC'/>
    <nvpair id='$RSC-command' name='command' value='sleep 100000'/>
    <nvpair id='$RSC-cst' name='cmappserver_timeout' value='10'/>
  </instance_attributes>
  <meta_attributes id='$RSC-meta'>
    <nvpair id='$RSC-meta-mt' name='migration-threshold' value='2'/>
  </meta_attributes>
  <operations>
    <op id='$RSC-start' name='start' interval='0' timeout='60s'/>
    <op id='$RSC-stop' name='stop' interval='0' timeout='60s'/>
    <op id='$RSC-mon' name='monitor' interval='2s' timeout='20s'/>
  </operations>
</primitive>"

# ---- what the checks read -----------------------------------------------------------
# The guest's runs of $RSC as "STATE PID" lines, oldest first (`cmappmgr -list`,
# asked from n1 or, when n1 is down, n2).
runs() {
	local n=n1 out
	[ -n "${INIT[n1]:-}" ] || n=n2
	out=$(in_node "$n" "$CMAPPMGR" -node "$GUEST" -port "$PORT" -keydir "$NODE_KEYS" \
		-cmappserver_timeout 10 -list) || return 1
	awk -v want="$RSC" 'NR > 1 && $2 == want { print $4, $3 }' <<<"$out"
}
run_count() { runs | wc -l; }
running_pid() { runs | awk '$1 == "running" { print $2 }'; }
# Exactly one run of $RSC runs, with pid $1 (or any pid, if $1 is empty), and
# the list holds $2 runs of it.
one_run() { # one_run PID COUNT
	local out pids
	out=$(runs) || return 1
	pids=$(awk '$1 == "running" { print $2 }' <<<"$out")
	[ "$(wc -w <<<"$pids")" = 1 ] || return 1
	[ -z "$1" ] || [ "$pids" = "$1" ] || return 1
	[ "$(wc -l <<<"$out")" = "$2" ]
}
new_pid_running() { # new_pid_running OLD
	local p
	p=$(running_pid) && [ "$(wc -w <<<"$p")" = 1 ] && [ "$p" != "$1" ]
}
mon() { in_node "$1" crm_mon -1 --inactive --failcounts; }
started_on() { # started_on ASKED_NODE NODE
	local out
	out=$(mon "$1") && grep -qE "$RSC\b.*Started $2\b" <<<"$out"
}
online() { # online ASKED_NODE NODE...: those nodes are online, seen from ASKED_NODE
	local out n
	out=$(in_node "$1" crm_mon -1) || return 1
	shift
	for n in "$@"; do grep -qE "^ *\* Online: \[.* $n( |\])" <<<"$out" || return 1; done
}
offline() { # offline ASKED_NODE NODE
	local out
	out=$(in_node "$1" crm_mon -1) && grep -qE "OFFLINE: \[.* $2( |\])" <<<"$out"
}
failcount() { # failcount ASKED_NODE NODE
	in_node "$1" crm_failcount --query -r "$RSC" -N "$2" | sed -n 's/.*value=\([0-9]*\).*/\1/p'
}
failcount_is() { [ "$(failcount "$1" "$2")" = "$3" ]; }
# This node's follower (the agent's background cmappmgr) is alive.
follower_alive() { # follower_alive NODE
	in_node "$1" sh -c "kill -0 \$(cat $AGENT_STATE/cmapp-$RSC.pid 2>/dev/null) 2>/dev/null"
}
probes() { # probes NODE: how many probe results its log has
	grep -c "Result of probe operation for $RSC on $1: " "$W/$1/log/pacemaker.log" || true
}
probed_since() { [ "$(probes "$1")" -gt "$2" ]; } # probed_since NODE COUNT
last_probe() { # last_probe NODE: what its last probe said ("not running", "ok", ...)
	sed -nE "s/.*Result of probe operation for $RSC on $1: ([^|]*[^| ]) *\|.*/\1/p" \
		"$W/$1/log/pacemaker.log" | tail -1
}
# No scheduler (on any node, DC or not) saw the resource active twice: the
# mark of a monitor that is not node-local, and the cause of a restart.
never_twice() {
	! grep -h "$RSC might be active on 2 nodes" "$W"/n[12]/log/pacemaker.log
}
kill_app() { # kill_app PID: SIGKILL to the application (a guest's pid), inside the guest
	nsenter -t "${INIT[guest]}" -p -m -- kill -KILL "$1"
}
# A few monitor intervals: anything a probe or a cleanup would do has been done.
settle() { sleep 6; }
reason_recorded() { # reason_recorded NODE REASON: a failed action on NODE shows it
	local out
	out=$(mon "$1") && grep "monitor on $1 returned 'error'" <<<"$out" | grep -qF "$2"
}

start_node() { # start_node NODE
	spawn_init "$1" "$NS_PREFIX$1" --mount --uts --ipc -- node-init "$1"
}

# ---- 0. preflight ------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "not root"
for c in corosync pacemakerd crm_mon cibadmin crm_attribute crm_resource crm_failcount \
	corosync-cfgtool ip unshare nsenter pgrep; do
	command -v "$c" >/dev/null || fail "$c is not installed"
done
mkdir -p "$W/guest/state" "$W/resource.d/cmapp"
install -m 755 "$AGENT" "$W/resource.d/cmapp/cmapp"
: >"$W/pids"
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

T0=$(now)
make_net
make_keys
make_node_dirs n1 1
make_node_dirs n2 2
seed_cib
log "namespaces, keys and node directories made in $(el "$T0")s"

# ---- the guest -------------------------------------------------------------------------------
spawn_init guest "${NS_PREFIX}guest" --mount -- guest-init
wait_for 30 grep -q "listening on $GUEST:$PORT" "$W/guest/cmappserver.log" ||
	fail "the guest's cmappserver is not listening: $(tail -5 "$W/guest/cmappserver.log")"
log "guest: cmappserver listening on $GUEST:$PORT"

# ---- 1. n1 alone starts it --------------------------------------------------------------------
t0=$(now)
start_node n1
wait_for 60 online n1 n1 || fail "n1 not online"
log "n1 online in $(el "$t0")s"
t0=$(now)
in_node n1 cibadmin --create -o resources --xml-text "$RESOURCE"
wait_for 60 started_on n1 n1 || fail "$RSC not started on n1"
wait_for 30 one_run "" 1 || fail "$RSC Started but not running once on the guest: $(runs)"
pid=$(running_pid)
follower_alive n1 || fail "no follower on n1"
log "1. $RSC Started on n1 in $(el "$t0")s: pid $pid on the guest"

# ---- 2. n2 joins --------------------------------------------------------------------------------
t0=$(now)
start_node n2
wait_for 90 online n1 n1 n2 || fail "n2 did not join"
wait_for 60 probed_since n2 0 || fail "n2 never probed $RSC"
[ "$(last_probe n2)" = "not running" ] || fail "n2's probe said '$(last_probe n2)', not 'not running'"
settle
never_twice || fail "Pacemaker saw $RSC active on two nodes"
one_run "$pid" 1 || fail "n2's join touched the run: $(runs)"
started_on n1 n1 || fail "$RSC no longer Started on n1 after n2 joined"
follower_alive n2 && fail "a follower runs on n2"
log "2. n2 joined and probed $RSC as not running in $(el "$t0")s; run untouched (pid $pid)"

# ---- 3. killed in the guest: restarted on n1, with the reason ----------------------------------
t0=$(now)
kill_app "$pid"
wait_for 60 failcount_is n1 n1 1 || fail "failure not counted on n1 (fail-count $(failcount n1 n1))"
counted=$(el "$t0")
wait_for 60 new_pid_running "$pid" || fail "not restarted after the first kill: $(runs)"
wait_for 30 started_on n1 n1 || fail "not Started on n1 after the first kill"
wait_for 10 reason_recorded n1 "killed by signal 9" || fail "no exit reason shown: $(mon n1)"
one_run "" 2 || fail "not exactly one copy after the restart: $(runs)"
pid=$(running_pid)
log "3. killed; counted on n1 after ${counted}s; restarted on n1 after $(el "$t0")s (pid $pid), reason 'killed by signal 9' recorded"
echo "figure: kill_counted $counted"
echo "figure: kill_restarted $(el "$t0")"

# ---- 4. killed again: failover to n2 -------------------------------------------------------------
t0=$(now)
kill_app "$pid"
wait_for 90 started_on n1 n2 || fail "no failover to n2: $(mon n1)"
wait_for 30 new_pid_running "$pid" || fail "not running after failover: $(runs)"
one_run "" 3 || fail "not exactly one copy after failover: $(runs)"
pid=$(running_pid)
failcount_is n1 n1 2 || fail "fail-count on n1 is $(failcount n1 n1), not 2"
follower_alive n2 || fail "no follower on n2"
follower_alive n1 && fail "n1's follower still runs"
log "4. killed again; failed over to n2 after $(el "$t0")s (pid $pid); one copy"
echo "figure: failover $(el "$t0")"

# ---- 5. cleanup, then refresh ------------------------------------------------------------------
# --cleanup re-probes where the resource failed (n1); --refresh everywhere.
t0=$(now)
p1=$(probes n1)
in_node n1 crm_resource --cleanup -r "$RSC" >/dev/null
wait_for 60 failcount_is n1 n1 0 || fail "cleanup left fail-count $(failcount n1 n1)"
wait_for 60 probed_since n1 "$p1" || fail "n1 not re-probed after the cleanup"
[ "$(last_probe n1)" = "not running" ] || fail "n1's probe said '$(last_probe n1)', not 'not running'"
p1=$(probes n1) p2=$(probes n2)
in_node n1 crm_resource --refresh -r "$RSC" >/dev/null
wait_for 60 probed_since n1 "$p1" || fail "n1 not re-probed after the refresh"
wait_for 60 probed_since n2 "$p2" || fail "n2 not re-probed after the refresh"
[ "$(last_probe n1)" = "not running" ] || fail "n1's probe said '$(last_probe n1)', not 'not running'"
[ "$(last_probe n2)" = "ok" ] || fail "n2's probe said '$(last_probe n2)', not 'ok'"
settle
never_twice || fail "Pacemaker saw $RSC active on two nodes"
one_run "$pid" 3 || fail "the cleanup or the refresh touched the run: $(runs)"
started_on n1 n2 || fail "$RSC no longer Started on n2 after the cleanup"
log "5. cleanup and refresh: fail-counts cleared, re-probed, run untouched in $(el "$t0")s"

# ---- 6. n2 killed: n1 attaches -------------------------------------------------------------------
t0=$(now)
kill_init n2
wait_for 90 started_on n1 n1 || fail "n1 did not take over: $(mon n1)"
took=$(el "$t0")
wait_for 30 follower_alive n1 || fail "no follower on n1 after the takeover"
one_run "$pid" 3 || fail "a second copy, or a restart, after n2 was killed: $(runs)"
never_twice || fail "Pacemaker saw $RSC active on two nodes"
offline n1 n2 || fail "n2 not shown OFFLINE"
log "6. n2 killed; n1 took $RSC over after ${took}s by attaching to pid $pid; no new run"
echo "figure: node_kill_takeover $took"

# ---- 7. n2 rejoins ----------------------------------------------------------------------------------------
t0=$(now)
p2=$(probes n2)
start_node n2
wait_for 90 online n1 n1 n2 || fail "n2 did not rejoin"
wait_for 60 probed_since n2 "$p2" || fail "n2 not probed after rejoining"
[ "$(last_probe n2)" = "not running" ] || fail "n2's probe said '$(last_probe n2)', not 'not running'"
settle
never_twice || fail "Pacemaker saw $RSC active on two nodes"
one_run "$pid" 3 || fail "n2's rejoin touched the run: $(runs)"
started_on n1 n1 || fail "$RSC moved after n2 rejoined"
log "7. n2 rejoined and probed not running in $(el "$t0")s; run untouched (pid $pid)"

# ---- 8. the guest's cmappserver restarts -------------------------------------------------------
# Down for 2 s (SIGTERM, started again by the guest's init): the follower
# reconnects within cmappserver_timeout; nothing fails, nothing restarts.
t0=$(now)
old=$(cat "$W/guest/cmappserver.pid")
listening=$(grep -c "listening on $GUEST:$PORT" "$W/guest/cmappserver.log")
nsenter -t "${INIT[guest]}" -p -m -- kill -TERM "$old"
wait_for 60 sh -c "[ \$(grep -c 'listening on $GUEST:$PORT' '$W/guest/cmappserver.log') -gt $listening ]" ||
	fail "the guest's cmappserver did not come back"
log "8. cmappserver (pid $old) restarted as pid $(cat "$W/guest/cmappserver.pid") after $(el "$t0")s"
settle
follower_alive n1 || fail "n1's follower ended with the cmappserver restart"
failcount_is n1 n1 0 || fail "the cmappserver restart was counted as a failure ($(failcount n1 n1))"
one_run "$pid" 3 || fail "the cmappserver restart touched the run: $(runs)"
started_on n1 n1 || fail "$RSC no longer Started on n1 after the cmappserver restart"
log "8. the guest's cmappserver restarted: no failure, run untouched (pid $pid)"

out=$(mon n1)
while IFS= read -r line; do echo "    $line"; done <<<"$out"
log "total $(el "$T0")s"
log "RESULT OK"
