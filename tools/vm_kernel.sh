#!/usr/bin/env bash
# Fetches the guest kernel for the VM tests (tests/_vm.ts, docs/vm-tests.md):
# Debian's current cloud kernel (the package linux-image-cloud-amd64 depends
# on), downloaded with `apt-get download` and unpacked with `dpkg-deb -x`
# (nothing is installed on the host), into $CMAPP_VM_DIR (default
# /var/cache/cmapp-vm):
#   vmlinuz         the kernel
#   modules/*.ko    the modules the guest needs for virtio networking and
#                   entropy, with their dependencies (from each module's
#                   depends= field, as modinfo would show it)
#   modules.load    those file names, one a line, in insmod order
#   kernel-version  "PACKAGE VERSION", then "modules: ROOTS"; written last,
#                   when the cache is complete
# Idempotent: does nothing when the cache holds the current kernel. Prints one
# line saying what it did. Without write access to the directory it changes
# nothing and says so (the VM tests then use what is there, or skip, or fail
# under CI=true).
set -euo pipefail

DIR=${CMAPP_VM_DIR:-/var/cache/cmapp-vm}
META=linux-image-cloud-amd64
# What the guest insmods (dependencies are added); built-in ones are skipped.
ROOTS=(virtio_pci virtio_net virtio_rng)

# The versioned kernel package META depends on, e.g.
# linux-image-6.1.0-57-cloud-amd64, or nothing when apt does not know it.
kernel_package() {
  apt-cache depends "$META" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -1
}

# The candidate version of a package, e.g. 6.1.192-3.
candidate() {
  apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | head -1
}

# Prints the .ko files of the modules named in "$@" (names with _), and of
# their dependencies, dependencies first; modules built into the kernel are
# left out. $MODROOT: the unpacked lib/modules/VERSION directory.
declare -A KO=() SEEN=()
resolve() {
  local name dep deps
  for name in "$@"; do
    [ -z "${SEEN[$name]:-}" ] || continue
    SEEN[$name]=1
    if [ -z "${KO[$name]:-}" ]; then
      if grep -qE "/${name//_/[-_]}\.ko$" "$MODROOT/modules.builtin"; then continue; fi
      echo "vm_kernel: module $name is neither built in nor a module" >&2
      return 1
    fi
    deps=$(tr '\0' '\n' <"${KO[$name]}" | sed -n 's/^depends=//p' | head -1)
    for dep in ${deps//,/ }; do resolve "${dep//-/_}"; done
    echo "${KO[$name]}"
  done
}

have=$(head -1 "$DIR/kernel-version" 2>/dev/null || true)
writable=
if mkdir -p "$DIR" 2>/dev/null && [ -w "$DIR" ]; then writable=1; fi
if [ -z "$writable" ] && [ -z "$have" ]; then
  echo "vm_kernel: cannot write $DIR (not root? set CMAPP_VM_DIR); the VM tests will be skipped" >&2
  exit 0
fi

pkg=$(kernel_package)
if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
  apt-get update -qq >/dev/null 2>&1 || true
  pkg=$(kernel_package)
fi
if [ -z "$pkg" ]; then
  if [ -n "$have" ]; then
    echo "vm_kernel: apt does not know $META; keeping $have in $DIR"
    exit 0
  fi
  echo "vm_kernel: apt does not know $META (apt-get update?); no guest kernel" >&2
  exit 1
fi
want="$pkg $(candidate "$pkg")"
if [ "$(cat "$DIR/kernel-version" 2>/dev/null)" = "$want"$'\n'"modules: ${ROOTS[*]}" ] &&
  [ -s "$DIR/vmlinuz" ] && [ -s "$DIR/modules.load" ]; then
  echo "vm_kernel: $want already in $DIR"
  exit 0
fi
if [ -z "$writable" ]; then
  echo "vm_kernel: cannot write $DIR to replace $have with $want (not root?); keeping it" >&2
  exit 0
fi

t0=$(date +%s)
work=$(mktemp -d "$DIR/.new.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$work/log"
# apt-get download drops privileges to _apt when it can write the directory.
mkdir "$work/deb"
if id _apt >/dev/null 2>&1; then chown _apt "$work/deb" 2>/dev/null || true; fi
if ! (cd "$work/deb" && apt-get download -qq "$pkg") >"$log" 2>&1; then
  cat "$log" >&2
  echo "vm_kernel: apt-get download $pkg failed" >&2
  exit 1
fi
deb=$(echo "$work"/deb/*.deb)
want="$pkg $(dpkg-deb -f "$deb" Version)"
dpkg-deb -x "$deb" "$work/x"

kver=${pkg#linux-image-}
MODROOT="$work/x/lib/modules/$kver"
while IFS= read -r ko; do
  name=$(basename "$ko" .ko)
  KO[${name//-/_}]=$ko
done < <(find "$MODROOT/kernel" -name '*.ko')
mkdir "$work/modules"
: >"$work/modules.load"
# (resolve in the current shell: it fills SEEN; a pipeline would lose it.)
resolve "${ROOTS[@]}" >"$work/order"
while IFS= read -r ko; do
  cp "$ko" "$work/modules/"
  basename "$ko" >>"$work/modules.load"
done <"$work/order"
cp "$work/x/boot/vmlinuz-$kver" "$work/vmlinuz"

rm -f "$DIR/kernel-version"
rm -rf "$DIR/modules"
mv "$work/modules" "$DIR/modules"
mv -f "$work/vmlinuz" "$work/modules.load" "$DIR/"
printf '%s\nmodules: %s\n' "$want" "${ROOTS[*]}" >"$DIR/kernel-version"
echo "vm_kernel: fetched $want into $DIR ($(wc -l <"$DIR/modules.load") modules) in $(($(date +%s) - t0))s"
