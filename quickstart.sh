#!/usr/bin/env bash
# backstop quickstart: build backstop, install it into a throw-away OpenNebula remotes tree, and
# run its main job on the embedded default: a backup datastore on a local directory (no server),
# a sample VM whose qcow2 disks are made here, a backup job in INCREMENT mode run twice with the
# disks changed in between, then both points restored and compared with the disks as they were.
# The VM's host is this machine, so every step runs here without ssh, exactly as oned would run
# the actions (argv and stdin). Touches nothing outside the work directory.
#
#   ./quickstart.sh [WORK_DIR]      (default: a new directory under /tmp)
#
# Needs cargo, qemu-img, qemu-io, qemu-nbd and nbdinfo (Debian: qemu-utils, libnbd-bin).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${1:-$(mktemp -d /tmp/backstop-quickstart.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
remotes=$work/remotes
location=$work/datastores          # oned's DATASTORE_LOCATION
vm_dir=$location/0/7               # VM 7 on system datastore 0
state=$work/backstop-state.db

step() { printf '\n== %s\n' "$*"; }
for tool in qemu-img qemu-io qemu-nbd nbdinfo; do
    command -v "$tool" >/dev/null || { echo "quickstart: $tool is missing (apt install qemu-utils libnbd-bin)" >&2; exit 1; }
done

step "1. Build backstop and install it into $remotes (install.sh --remotes-dir)"
mkdir -p "$remotes/datastore"
# A stand-in for OpenNebula's downloader.sh (install.sh adds its backstop:// arm to it).
cat > "$remotes/datastore/downloader.sh" <<'DOWNLOADER'
#!/bin/bash
# quickstart stand-in for OpenNebula's datastore/downloader.sh
[ "$1" = "--nodecomp" ] && shift
FROM="$1"
TO="$2"
case "$FROM" in
*)
    command="cat '$FROM'"
    ;;
esac
if [ "$TO" = "-" ]; then eval "$command"; else eval "$command" > "$TO"; fi
[ -n "$clean_command" ] && eval "$clean_command"
exit 0
DOWNLOADER
chmod +x "$remotes/datastore/downloader.sh"
"$here/install.sh" --remotes-dir "$remotes" | sed -n '1,3p;/backstop is/p'
# backstop's own prebackup and postbackup for the qcow2 TM driver (what install.sh --with-tm
# does on a real front-end, where the stock files are kept aside).
mkdir -p "$remotes/tm/qcow2"
for action in prebackup postbackup restore; do
    ln -sf ../../backstop/bin/backstop "$remotes/tm/qcow2/$action"
done
# The host step runs the host's copy of the tree; here the host is this machine.
mkdir -p "$remotes/etc/datastore"
cat > "$remotes/etc/datastore/backstop.conf" <<EOF
SCRIPTS_REMOTE_DIR=$remotes
RUN_DIR=$work/run
TM_DELIVERY=direct
EOF
bj() { "$remotes/backstop/bin/backstop" backupjob --state "$state" --remotes "$remotes" --datastore-location "$location" "$@"; }

step "2. A sample VM: two qcow2 disks with data (VM 7, powered off, host localhost)"
mkdir -p "$vm_dir"
qemu-img create -q -f qcow2 "$vm_dir/disk.0" 64M
qemu-img create -q -f qcow2 "$vm_dir/disk.1" 32M
qemu-io -f qcow2 -c 'write -P 0x11 0 8M' -c 'write -P 0x22 40M 4M' "$vm_dir/disk.0" >/dev/null
qemu-io -f qcow2 -c 'write -P 0x33 1M 6M' "$vm_dir/disk.1" >/dev/null
cat > "$work/vm7.xml" <<EOF
<VM><ID>7</ID><UID>0</UID><NAME>sample</NAME><STATE>8</STATE><LCM_STATE>0</LCM_STATE>
<DEPLOY_ID>one-7</DEPLOY_ID><TEMPLATE>
<DISK><DISK_ID>0</DISK_ID><FORMAT>qcow2</FORMAT><SIZE>64</SIZE><TYPE>FILE</TYPE><TARGET>vda</TARGET></DISK>
<DISK><DISK_ID>1</DISK_ID><FORMAT>qcow2</FORMAT><SIZE>32</SIZE><TYPE>FILE</TYPE><TARGET>vdb</TARGET></DISK>
</TEMPLATE><USER_TEMPLATE/><HISTORY_RECORDS><HISTORY><HOSTNAME>localhost</HOSTNAME><HID>0</HID>
<DS_ID>0</DS_ID><TM_MAD>qcow2</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS></VM>
EOF
keep_point() { # the disks as they are now, raw, for the comparison at the end
    for d in 0 1; do qemu-img convert -O raw "$vm_dir/disk.$d" "$work/point$1.disk$d.raw"; done
}

step "3. A backup datastore on a local directory, the VM, and a job (INCREMENT, KEEP_LAST=2)"
password=$(head -c 18 /dev/urandom | base64)
cat > "$work/datastore.tmpl" <<EOF
NAME = "local-backups"
DS_MAD = "backstop"
BASE_PATH = "$work/backups"
RESTIC_PASSWORD = "$password"
EOF
cat > "$work/job.tmpl" <<EOF
NAME = "quickstart"
BACKUP_VMS = "7"
DATASTORE_ID = 1
MODE = "INCREMENT"
KEEP_LAST = 2
EXECUTION = "SEQUENTIAL"
EOF
bj datastore create "$work/datastore.tmpl"
bj vm register "$work/vm7.xml"
bj create "$work/job.tmpl"

step "4. Run the job: a FULL backup"
bj backup 1
keep_point 0

step "5. Change the disks, run the job again: an increment (only the changed blocks are read)"
qemu-io -f qcow2 -c 'write -P 0x44 2M 3M' -c 'write -P 0x55 50M 1M' "$vm_dir/disk.0" >/dev/null
qemu-io -f qcow2 -c 'write -P 0x66 20M 2M' "$vm_dir/disk.1" >/dev/null
bj backup 1
keep_point 1
bj show 1 | sed -n '/VIRTUAL MACHINE BACKUP STATUS/,/^$/p'

step "6. Restore both points and compare them with the disks as they were"
export RESTIC_PASSWORD=$password
repo=$work/backups/job_1
"$remotes/backstop/bin/backstop" repo -r "$repo" snapshots
mapfile -t ids < <("$remotes/backstop/bin/backstop" repo -r "$repo" snapshots --json \
    | grep -o '"id":"[0-9a-f]*"' | sed 's/"id":"//; s/"//')
[ "${#ids[@]}" -eq 2 ] || { echo "quickstart: expected 2 snapshots, found ${#ids[@]}" >&2; exit 1; }
for point in 0 1; do
    for d in 0 1; do
        restored=$work/restored.point$point.disk$d.raw
        "$remotes/backstop/bin/backstop" repo -r "$repo" restore "${ids[$point]}" \
            "$vm_dir/backup/disk.$d.$point" --target "$restored" >/dev/null
        cmp "$restored" "$work/point$point.disk$d.raw"
        echo "point $point, disk $d: restored and identical to the disk at that point"
    done
done
unset RESTIC_PASSWORD

step "Done"
cat <<EOF
backstop ran its main job: a local backup datastore, VM 7 with two qcow2 disks, a backup job in
INCREMENT mode run twice (full, then only the changed blocks, through the same prebackup,
backup and postbackup actions oned runs), and both points restored byte-exact.
Everything is in $work (state: $state). Remove it all with: rm -rf $work
EOF
