#!/usr/bin/env bash
# libvirt 11.3 and qemu-system-x86_64 10.0.2 from bookworm-backports (bookworm's own libvirt 9.0
# cannot start qemu 10, and its qemu 7.2 would replace qemu-utils 10.0.2), for the live-backup
# tests. A private source list: /etc/apt is not changed. The daemons are not started here:
# the live test starts its own and stops them by PID.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
d=${BACKSTOP_APT_BPO:-/tmp/backstop-apt-bpo}
mkdir -p "$d/parts" "$d/lists/partial"
cp /etc/apt/sources.list.d/debian.sources "$d/parts/"
uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -1)
printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" > "$d/parts/bpo.sources"
o=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$d/parts" -o "Dir::State::Lists=$d/lists")
B=bookworm-backports
apt-get "${o[@]}" update -qq
# qemu-block-extra: qemu's rbd driver (Ceph tests), the same version as qemu-utils.
pkgs=(qemu-system-x86/$B qemu-system-common/$B qemu-system-data/$B seabios/$B qemu-utils/$B
      qemu-block-extra/$B
      libvirt-daemon/$B libvirt-daemon-driver-qemu/$B
      libvirt-clients/$B libvirt0/$B libvirt-common/$B libvirt-daemon-common/$B
      libvirt-daemon-log/$B)
sdv=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
inst() { apt-get "${o[@]}" -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null; }
inst "${pkgs[@]}" ${sdv:+systemd-container=$sdv} libxml2-utils/bookworm-security || inst "${pkgs[@]}"
# qemu as root: libvirt does not re-probe qemu on every lookup, and qemu can bind the backup
# NBD socket inside the root-owned VM directory.
sed -i 's/^#\?user = "[^"]*"/user = "root"/; s/^#\?group = "[^"]*"/group = "root"/' /etc/libvirt/qemu.conf
grep -qx 'user = "root"' /etc/libvirt/qemu.conf
grep -qx 'group = "root"' /etc/libvirt/qemu.conf
virsh --version
qemu-system-x86_64 --version | head -1
qemu-img --version | head -1
