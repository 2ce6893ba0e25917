#!/usr/bin/env bash
# Installs the Debian packages the packaging tests need (tests/ship_test.ts,
# tests/pacemaker_test.ts): systemd (systemd-analyze verify), shellcheck,
# resource-agents (ocf-tester, ocf-shellfuncs) with libxml2-utils (the xmllint
# that ocf-tester validates meta-data with; only a Recommends of
# resource-agents, and recommends are not installed here), and a one-node
# cluster: pacemaker, corosync, pacemaker-cli-utils. The cmapp-supervise
# builds (tools/supervisor.ts, tests/supervise_test.ts): musl-tools,
# gcc-aarch64-linux-gnu with libc6-dev-arm64-cross, and qemu-user-static to
# run the aarch64 build. The VM tests (tests/_vm.ts,
# docs/vm-tests.md): qemu-system-x86 and busybox-static, then the guest
# kernel, which tools/vm_kernel.sh fetches (without installing it). The man pages
# (tests/ship_test.ts renders them): groff-base.
# Idempotent and quiet: does nothing when everything is installed, otherwise
# one apt-get update and one install (its output shown only if it fails).
# Without root it installs nothing and says so; the tests then skip.
set -euo pipefail

PACKAGES=(systemd shellcheck resource-agents libxml2-utils pacemaker corosync pacemaker-cli-utils
  musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
  qemu-system-x86 busybox-static faketime groff-base)

# Installs the missing PACKAGES, or says why not.
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null)" != installed ]; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "deps: all installed (${PACKAGES[*]})"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: not root, cannot install ${missing[*]}; the tests that need them will be skipped" >&2
    return 0
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
  cleanup
  trap - EXIT
}

install_packages
# The guest kernel for the VM tests (one line; nothing to do when cached).
"$(dirname "$0")/../tools/vm_kernel.sh"
