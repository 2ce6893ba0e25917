#!/usr/bin/env bash
# Installs the Debian packages the packaging tests need (tests/ship_test.ts,
# tests/pacemaker_test.ts): systemd (systemd-analyze verify), shellcheck,
# resource-agents (ocf-tester, ocf-shellfuncs) with libxml2-utils (the xmllint
# that ocf-tester validates meta-data with; only a Recommends of
# resource-agents, and recommends are not installed here), and a one-node
# cluster: pacemaker, corosync, pacemaker-cli-utils.
# Idempotent and quiet: does nothing when everything is installed, otherwise
# one apt-get update and one install (its output shown only if it fails).
# Without root it installs nothing and says so; the tests then skip.
set -euo pipefail

PACKAGES=(systemd shellcheck resource-agents libxml2-utils pacemaker corosync pacemaker-cli-utils)

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: all installed (${PACKAGES[*]})"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, cannot install ${missing[*]}; the tests that need them will be skipped" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Installing corosync/pacemaker would start them through their init scripts
# (with corosync's default configuration) on an image without a policy-rc.d:
# add one that forbids it for the duration of the install, then remove it.
made_policy=
log=$(mktemp)
cleanup() {
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  rm -f "$log"
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi

t0=$(date +%s)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "deps: installing ${missing[*]} failed" >&2
  exit 1
fi
echo "deps: installed ${missing[*]} in $(($(date +%s) - t0))s"
