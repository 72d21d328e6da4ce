#!/usr/bin/env bash
# backstop quickstart: build backstop, install it into a throw-away OpenNebula remotes tree, and
# run its main job on the embedded default: a backup datastore on a local directory (no server),
# a sample VM whose qcow2 disks are made here, a backup job in INCREMENT mode run twice with the
# disks changed in between, then both points restored with `backupjob image restore` and compared
# with the disks as they were, and the dashboard (`backstop serve`) asked what it shows.
# The VM's host is this machine, so every step runs here without ssh, exactly as oned would run
# the actions (argv and stdin). Touches nothing outside the work directory but cargo's build
# directory (target/).
#
#   ./quickstart.sh [WORK_DIR]      (default: a new directory under /tmp)
#
# WORK_DIR must be new, empty, or a directory an earlier quickstart made (it is then emptied and
# the quickstart starts afresh); anything else is refused before anything is written.
#
# Needs cargo, qemu-img, qemu-io, qemu-nbd and nbdinfo (Debian: qemu-utils, libnbd-bin).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
marker=.backstop-quickstart
step() { printf '\n== %s\n' "$*"; }
die() { echo "quickstart: $*" >&2; exit 1; }
for tool in qemu-img qemu-io qemu-nbd nbdinfo; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt install qemu-utils libnbd-bin)"
done
# Everything is checked before the first write: a directory of someone else's is never touched.
if [ $# -gt 1 ] || [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -gt 1 ] && exit 2
    exit 0
fi
if [ -n "${1:-}" ]; then
    work=$1
    if [ -e "$work" ] && [ ! -d "$work" ]; then
        die "$work exists and is not a directory"
    fi
    if [ -d "$work" ] && [ -n "$(ls -A "$work")" ] && { [ ! -f "$work/$marker" ] || [ -L "$work/$marker" ]; }; then
        die "$work is not empty and no earlier quickstart made it; give a new or empty directory"
    fi
else
    work=$(mktemp -d /tmp/backstop-quickstart.XXXXXX)
fi
mkdir -p "$work"
work=$(cd "$work" && pwd -P)
# The marker counts only as a file of this user's own, never through a link.
if [ -e "$work/$marker" ] || [ -L "$work/$marker" ]; then
    if [ -L "$work/$marker" ] || [ ! -f "$work/$marker" ] || [ ! -O "$work/$marker" ]; then
        die "$work/$marker is not a quickstart's marker of yours; give a new or empty directory"
    fi
    echo "quickstart: $work holds an earlier quickstart's run; emptying it and starting afresh"
    find "$work" -mindepth 1 -maxdepth 1 ! -name "$marker" -exec rm -rf {} +
fi
echo "made by backstop's quickstart.sh; a later quickstart into this directory empties it" > "$work/$marker"
remotes=$work/remotes
location=$work/datastores          # oned's DATASTORE_LOCATION
vm_dir=$location/0/7               # VM 7 on system datastore 0
state=$work/backstop-state.db
serve_pid=""
trap '[ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; true' EXIT

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
id_of() { sed -n 's/^ID: *//p' | head -1; }   # the id a create or register printed
ds=$(bj datastore create "$work/datastore.tmpl" | id_of)
echo "backup datastore $ds: local-backups, repositories under $work/backups"
vm=$(bj vm register "$work/vm7.xml" | id_of)
echo "VM $vm: sample, registered from its onevm show -x document"
sed -i "s/^DATASTORE_ID = .*/DATASTORE_ID = $ds/" "$work/job.tmpl"
job=$(bj create "$work/job.tmpl" | id_of)
echo "backup job $job: quickstart (VM $vm into datastore $ds, INCREMENT, KEEP_LAST=2)"

step "4. Run backup job $job: a FULL backup"
bj backup "$job"
keep_point 0

step "5. Change the disks, run backup job $job again: an increment (only the changed blocks are read)"
qemu-io -f qcow2 -c 'write -P 0x44 2M 3M' -c 'write -P 0x55 50M 1M' "$vm_dir/disk.0" >/dev/null
qemu-io -f qcow2 -c 'write -P 0x66 20M 2M' "$vm_dir/disk.1" >/dev/null
bj backup "$job"
keep_point 1
bj show "$job" | sed -n '/VIRTUAL MACHINE BACKUP STATUS/,/^$/p'

step "6. Restore both points with backupjob image restore and compare them with the disks as they were"
image=$(bj image list | awk -v vm="$vm" 'NR > 1 && $2 == vm { print $1; exit }')
[ -n "$image" ] || die "no backup image of VM $vm was recorded"
bj image show "$image"
for point in 0 1; do
    to=$work/restored/point$point
    echo "\$ backstop backupjob image restore $image --increment $point --to $to"
    bj image restore "$image" --increment "$point" --to "$to"
    for d in 0 1; do
        qemu-img compare -q -f qcow2 -F raw "$to/disk.$d.qcow2" "$work/point$point.disk$d.raw" \
            || die "point $point, disk $d: the restored disk differs from the disk at that point"
        echo "point $point, disk $d: restored and identical to the disk at that point"
    done
done
echo "The same points as restic sees them (restic -r $work/backups/job_$job snapshots):"
RESTIC_PASSWORD=$password "$remotes/backstop/bin/backstop" repo -r "$work/backups/job_$job" snapshots

step "7. The dashboard over what the quickstart made (backstop serve: read-only, loopback only)"
"$remotes/backstop/bin/backstop" serve --state "$state" --listen 127.0.0.1:0 \
    --remotes "$remotes" --datastore-location "$location" 2> "$work/serve.log" &
serve_pid=$!
address=""
for _ in $(seq 1 100); do
    address=$(sed -n 's|^backstop serve: listening on ||p' "$work/serve.log")
    [ -n "$address" ] && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; die "backstop serve stopped"; }
    sleep 0.1
done
[ -n "$address" ] || die "backstop serve did not start (see $work/serve.log)"
if command -v curl >/dev/null; then
    echo "\$ curl $address/api/status"
    curl -fsS "$address/api/status" || die "the dashboard did not answer at $address"
    echo
    curl -fsS "$address/" | grep -q "quickstart" || die "the dashboard's front page does not show job $job"
    echo "the front page at $address/ shows backup job $job"
else
    echo "(curl is not installed: the dashboard answered at $address)"
fi
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
serve_pid=""

step "Done"
cat <<EOF
backstop ran its main job: backup datastore $ds on a local directory, VM $vm with two qcow2
disks, backup job $job in INCREMENT mode run twice (full, then only the changed blocks, through
the same prebackup, backup and postbackup actions oned runs), and both points of backup image
$image restored byte-exact.
Everything is in $work (state: $state).
  See it again:  $remotes/backstop/bin/backstop serve --state $state
                 then open http://127.0.0.1:8421/
  Run it again:  ./quickstart.sh $work   (empties it and starts afresh)
  Remove it all: rm -rf $work
EOF
