#!/usr/bin/env bash
# backstop quickstart: build, install into a throw-away remotes tree, and run a real driver
# action the way oned runs it. Needs cargo; touches nothing outside the work directory.
#
#   ./quickstart.sh [WORK_DIR]      (default: a new directory under /tmp)
#
# Until the repository engine and the backup-job runner land, the "main job" here is the
# datastore monitor action against a local directory: it is what oned runs every few minutes on
# each backup datastore, and the first action backstop implements completely.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=${1:-$(mktemp -d /tmp/backstop-quickstart.XXXXXX)}
mkdir -p "$work"
remotes=$work/remotes
base=$work/datastores/100

step() { printf '\n== %s\n' "$*"; }

step "1. Build backstop and install it into $remotes (install.sh --remotes-dir)"
"$here/install.sh" --remotes-dir "$remotes" | sed -n '1,3p;/backstop is/p'

step "2. A backup datastore as oned describes it (DS_MAD=backstop, local BASE_PATH=$base)"
xml="<DS_DRIVER_ACTION_DATA><DATASTORE><ID>100</ID><NAME>backups</NAME>\
<DS_MAD><![CDATA[backstop]]></DS_MAD><TM_MAD><![CDATA[-]]></TM_MAD>\
<BASE_PATH><![CDATA[$base]]></BASE_PATH><TYPE>3</TYPE><TEMPLATE>\
<RESTIC_PASSWORD><![CDATA[quickstart-only]]></RESTIC_PASSWORD>\
<TYPE><![CDATA[BACKUP_DS]]></TYPE></TEMPLATE></DATASTORE></DS_DRIVER_ACTION_DATA>"
printf '%s' "$xml" | base64 -w0 > "$work/monitor.stdin"
echo "stdin: $(wc -c < "$work/monitor.stdin") bytes of base64, as one_datastore sends it"

step "3. Run datastore/backstop/monitor 100 exactly as oned does"
out=$("$remotes/datastore/backstop/monitor" 100 < "$work/monitor.stdin")
echo "$out"
[ -d "$base" ] || { echo "quickstart: BASE_PATH was not created" >&2; exit 1; }
total=$(printf '%s\n' "$out" | sed -n 's/^TOTAL_MB=//p')
df_total=$(df -B1M --output=size "$base" | tail -1 | tr -d ' ')
diff=$(( total > df_total ? total - df_total : df_total - total ))
[ "$diff" -le 1 ] || { echo "quickstart: TOTAL_MB=$total but df says $df_total" >&2; exit 1; }
echo "checked: BASE_PATH exists and TOTAL_MB matches df ($df_total MB)"

step "4. What oned sees on bad input and on unsupported actions (exit 1, one stderr line)"
set +e
echo -n 'not base64!' | "$remotes/datastore/backstop/monitor" 100; echo "  -> exit $?"
"$remotes/datastore/backstop/cp" 5 < /dev/null; echo "  -> exit $?"
set -e

step "Done"
cat <<EOF
backstop is installed in $remotes and answered oned's monitor call for a local datastore.
backup, backup_cancel, stat, ls, rm, increment_flatten, restore and the downloader work too
(see README, Status).
The TM's prebackup, postbackup and restore work for powered-off VMs; prebackup_live and
postbackup_live are not written yet (they decode and validate their input, then say so).
Remove it all with: rm -rf $work
EOF
