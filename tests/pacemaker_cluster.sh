#!/usr/bin/env bash
# End-to-end test of the OCF agent (dist/ocf/cmapp) under a real, throwaway,
# one-node Corosync + Pacemaker cluster on 127.0.0.1, without systemd
# (recipe and pitfalls: ../shared/reference/pacemaker-one-node.md).
#
# The resource runs `sleep 100000` as the run "test1" on a cmappserver that
# the caller started (GUEST:PORT), with migration-threshold=3 and a monitor
# every 2 s. The application is then killed on the guest (the real process,
# by its pid from `cmappmgr -list -json`) three times: Pacemaker must restart
# it twice (a new pid each time) and stop it for good after the third failure.
# Everything is torn down at the end, whatever happens.
#
# Run by tests/pacemaker_test.ts. Needs root and the packages of .ci/deps.sh.
# It WIPES /var/lib/pacemaker/cib: meant for disposable test machines only.
#
# Environment:
#   W         scratch directory, mode 755 (logs, configuration, pid list)
#   AGENT     the agent to install as ocf:cmapp:cmapp
#   GUEST PORT KEYDIR CMAPPMGR   the resource's guest, port, keydir, cmappmgr
# Output: one line per step with its timing; last line "RESULT OK" (exit 0)
# or "RESULT FAILED: reason" (exit 1). Daemon pids are appended to $W/pids
# ("name pid" lines) as they start, for a caller that must clean up after a
# killed script.
set -euo pipefail

: "${W:?}" "${AGENT:?}" "${GUEST:?}" "${PORT:?}" "${KEYDIR:?}" "${CMAPPMGR:?}"
NODE=node1
RSC=test1
AGENT_DIR=/usr/lib/ocf/resource.d/cmapp
COROSYNC_PID='' PCMKD_PID='' PCMK_CHILDREN='' MADE_AGENT_DIR=''

now() { date +%s.%N; }
el() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "$(date +%T.%3N) $*"; }
fail() {
	log "RESULT FAILED: $*"
	exit 1
}
wait_for() { # wait_for TIMEOUT_S CMD...: poll every 0.2 s
	local end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "timed out waiting for: $*"
			return 1
		fi
		sleep 0.2
	done
}
stop_pid() { # stop_pid PID NAME TIMEOUT_S: SIGTERM, wait, SIGKILL as a last resort
	local pid=$1 name=$2 end t0
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	t0=$(now)
	kill -TERM "$pid" 2>/dev/null || true
	end=$(($(date +%s) + $3))
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$(date +%s)" -ge "$end" ]; then
			log "$name (pid $pid) did not stop: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		sleep 0.2
	done
	wait "$pid" 2>/dev/null || true
	log "$name (pid $pid) stopped in $(el "$t0")s"
}
cleanup() {
	set +e
	trap - EXIT INT TERM
	# pacemakerd stops the resource (the agent's stop), then its children.
	stop_pid "$PCMKD_PID" pacemakerd 90
	for pid in $PCMK_CHILDREN; do stop_pid "$pid" "pacemaker child" 10; done
	stop_pid "$COROSYNC_PID" corosync 30
	rm -f /var/lib/pacemaker/cib/cib* /var/lib/pacemaker/pengine/pe-* /var/lib/corosync/ringid_*
	if [ -n "$MADE_AGENT_DIR" ]; then rm -rf "$AGENT_DIR"; fi
	log "torn down"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# Runs of $RSC on the guest, one "STATE PID" line each, from `cmappmgr -list
# -json` (the same small JSON reader as the agent's).
runs() {
	"$CMAPPMGR" -node "$GUEST" -port "$PORT" -keydir "$KEYDIR" -cmappserver_timeout 10 \
		-list -json | awk -v want="$RSC" '
		{ buf = buf $0 "\n" }
		END {
			n = length(buf); depth = 0; key = ""; split("", val)
			for (i = 1; i <= n; i++) {
				c = substr(buf, i, 1)
				if (c == "\"") {
					s = ""
					for (j = i + 1; j <= n; j++) {
						d = substr(buf, j, 1)
						if (d == "\\") { s = s d substr(buf, j + 1, 1); j++; continue }
						if (d == "\"") break
						s = s d
					}
					i = j; k = i + 1
					while (k <= n && substr(buf, k, 1) ~ /[ \t\r\n]/) k++
					if (depth == 2 && substr(buf, k, 1) == ":") { key = s; i = k; continue }
					if (depth == 2 && key != "") val[key] = s
					key = ""; continue
				}
				if (c == "{" || c == "[") { if (depth == 1) split("", val); key = ""; depth++; continue }
				if (c == "}" || c == "]") {
					if (depth == 2 && val["name"] == want) print val["state"], val["pid"]
					depth--; continue
				}
				if (c ~ /[-0-9a-z]/) {
					t = ""
					while (i <= n && substr(buf, i, 1) ~ /[-+.0-9a-zA-Z]/) { t = t substr(buf, i, 1); i++ }
					i--
					if (depth == 2 && key != "") val[key] = t
					key = ""
				}
			}
		}'
}
running_pid() { runs | awk '$1 == "running" { print $2; exit }'; }
new_pid_running() { # new_pid_running OLD: a running run with another pid
	local p
	p=$(running_pid) && [ -n "$p" ] && [ "$p" != "$1" ]
}
none_running() {
	local out
	out=$(runs) && ! grep -q '^running ' <<<"$out"
}
# (Output captured first: with pipefail, `cmd | grep -q` can fail on SIGPIPE.)
crm_started() {
	local out
	out=$(crm_mon -1) && grep -qE "$RSC\b.*Started $NODE" <<<"$out"
}
crm_stopped() {
	local out
	out=$(crm_resource --locate -r "$RSC" 2>&1) || true
	grep -q 'NOT running' <<<"$out"
}
failcount() { crm_failcount --query -r "$RSC" -N "$NODE" | sed -n 's/.*value=\([0-9]*\).*/\1/p'; }
failcount_is() { [ "$(failcount)" = "$1" ]; }

# ---- 1. preflight and clean state -------------------------------------------
[ "$(id -u)" = 0 ] || fail "not root"
for c in corosync pacemakerd crm_mon cibadmin crm_attribute crm_resource crm_failcount \
	corosync-quorumtool corosync-cfgtool; do
	command -v "$c" >/dev/null || fail "$c is not installed"
done
if corosync-cfgtool -s >/dev/null 2>&1; then fail "corosync is already running; refusing"; fi
if pgrep -x pacemakerd >/dev/null; then fail "pacemakerd is already running; refusing"; fi
mkdir -p "$W/log" "$W/state"
chown hacluster:haclient "$W/log"
chmod 2770 "$W/log"
rm -f /var/lib/pacemaker/cib/cib* /var/lib/pacemaker/pengine/pe-* /var/lib/corosync/ringid_*

if [ ! -d "$AGENT_DIR" ]; then MADE_AGENT_DIR=1; fi
install -D -m 755 "$AGENT" "$AGENT_DIR/cmapp"
metadata=$(crm_resource --show-metadata ocf:cmapp:cmapp) || metadata=
if ! grep -q '<parameter name="service_name"' <<<"$metadata"; then
	fail "crm_resource --show-metadata ocf:cmapp:cmapp does not show the agent's meta-data"
fi

cat >"$W/corosync.conf" <<EOF
totem {
    version: 2
    cluster_name: cmapptest
    transport: knet
    crypto_cipher: none
    crypto_hash: none
}
nodelist {
    node {
        name: $NODE
        nodeid: 1
        ring0_addr: 127.0.0.1
    }
}
quorum {
    provider: corosync_votequorum
    expected_votes: 1
    two_node: 0
}
logging {
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: $W/log/corosync.log
    timestamp: hires
}
EOF
corosync -t -c "$W/corosync.conf" >/dev/null

# The CIB, seeded offline: no fencing, and dc-deadtime 2 s (the default 20 s
# is spent waiting for other nodes before electing itself DC).
cibadmin --empty >"$W/cib.xml"
CIB_file="$W/cib.xml" crm_attribute --type crm_config --name stonith-enabled --update false
CIB_file="$W/cib.xml" crm_attribute --type crm_config --name dc-deadtime --update 2s
install -o hacluster -g haclient -m 600 "$W/cib.xml" /var/lib/pacemaker/cib/cib.xml

# ---- 2. corosync, pacemaker --------------------------------------------------
T0=$(now)
corosync -f -c "$W/corosync.conf" >"$W/log/corosync.out" 2>&1 &
COROSYNC_PID=$!
echo "corosync $COROSYNC_PID" >>"$W/pids"
wait_for 30 sh -c 'corosync-quorumtool -s | grep -q "Quorate: *Yes"' || fail "corosync not quorate"
log "corosync pid $COROSYNC_PID quorate in $(el "$T0")s"

t0=$(now)
PCMK_logfile="$W/log/pacemaker.log" pacemakerd >"$W/log/pacemakerd.out" 2>&1 &
PCMKD_PID=$!
echo "pacemakerd $PCMKD_PID" >>"$W/pids"
wait_for 60 sh -c "crm_mon -1 | grep -q 'Current DC: $NODE' && crm_mon -1 | grep -q 'Online: \[ $NODE \]'" ||
	fail "pacemaker: node not online and DC"
PCMK_CHILDREN=$(pgrep -P "$PCMKD_PID" | tr '\n' ' ')
for pid in $PCMK_CHILDREN; do echo "pacemaker-child $pid" >>"$W/pids"; done
log "pacemakerd pid $PCMKD_PID (children: $PCMK_CHILDREN) online and DC in $(el "$t0")s"

# ---- 3. the resource ----------------------------------------------------------
t0=$(now)
cibadmin --create -o resources --xml-text "
<primitive id='$RSC' class='ocf' provider='cmapp' type='cmapp'>
  <instance_attributes id='$RSC-params'>
    <nvpair id='$RSC-guest' name='guest' value='$GUEST'/>
    <nvpair id='$RSC-port' name='port' value='$PORT'/>
    <nvpair id='$RSC-keydir' name='keydir' value='$KEYDIR'/>
    <nvpair id='$RSC-cmappmgr' name='cmappmgr' value='$CMAPPMGR'/>
    <nvpair id='$RSC-service' name='service_name' value='$RSC'/>
    <nvpair id='$RSC-command' name='command' value='sleep 100000'/>
    <nvpair id='$RSC-cst' name='cmappserver_timeout' value='10'/>
    <nvpair id='$RSC-state' name='state_dir' value='$W/state'/>
    <nvpair id='$RSC-output' name='output' value='$W/log/$RSC.out'/>
  </instance_attributes>
  <meta_attributes id='$RSC-meta'>
    <nvpair id='$RSC-meta-mt' name='migration-threshold' value='3'/>
  </meta_attributes>
  <operations>
    <op id='$RSC-start' name='start' interval='0' timeout='60s'/>
    <op id='$RSC-stop' name='stop' interval='0' timeout='60s'/>
    <op id='$RSC-mon' name='monitor' interval='2s' timeout='20s'/>
  </operations>
</primitive>"
wait_for 60 crm_started || fail "$RSC not started"
pid=$(running_pid)
[ -n "$pid" ] || fail "$RSC Started but not running on the guest"
log "$RSC Started in $(el "$t0")s: pid $pid on the guest"

# ---- 4. three failures ----------------------------------------------------------
for n in 1 2 3; do
	t0=$(now)
	kill -KILL "$pid" || fail "cannot kill pid $pid"
	wait_for 30 failcount_is "$n" || fail "failure $n not counted (fail-count $(failcount))"
	log "failure $n: application pid $pid killed; fail-count=$n after $(el "$t0")s"
	if [ "$n" -lt 3 ]; then
		wait_for 60 new_pid_running "$pid" || fail "failure $n: no new run"
		new=$(running_pid)
		wait_for 30 crm_started || fail "failure $n: not Started again"
		log "failure $n: restarted by Pacemaker after $(el "$t0")s: new pid $new"
		pid=$new
	else
		wait_for 60 crm_stopped || fail "failure 3: not stopped"
		log "failure $n: $RSC stopped (migration-threshold reached) after $(el "$t0")s"
	fi
done

# ---- 5. final state -------------------------------------------------------------
sleep 3 # a few more monitor intervals: it must stay stopped
out=$(crm_mon -1 --inactive --failcounts)
while IFS= read -r line; do echo "    $line"; done <<<"$out"
grep -qE "$RSC\b.*Stopped" <<<"$out" || fail "$RSC is not shown Stopped"
failcount_is 3 || fail "fail-count is $(failcount), not 3"
none_running || fail "a run of $RSC is still running on the guest"
if ls "$W/state"/cmapp-*.pid >/dev/null 2>&1; then fail "the agent left a pid file"; fi
log "Pacemaker's operations on $RSC, as far as its log records them (start and stop with their execution times, failed monitors):"
sed -nE \
	-e "s/^[A-Z][a-z]+ +[0-9]+ ([0-9:.]+) .*\(log_finished\).* $RSC (start|stop) \(call [0-9]+, PID [0-9]+\) exited with status ([0-9]+) \(execution time ([0-9.]+s)\).*/    \1 \2: status \3 in \4/p" \
	-e "s/^[A-Z][a-z]+ +[0-9]+ ([0-9:.]+) .*Result of monitor operation for $RSC on $NODE: not running.*/    \1 monitor: not running/p" \
	"$W/log/pacemaker.log"
log "total cluster run $(el "$T0")s"
log "RESULT OK"
