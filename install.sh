#!/usr/bin/env bash
# Builds backstop and installs it into an OpenNebula remotes tree (or takes it out again).
#
#   ./install.sh [--remotes-dir DIR] [--replace-stock] [--with-tm] [--with-services] [--uninstall]
#
#   --remotes-dir DIR  the tree oned runs drivers from; default $ONE_LOCATION/var/remotes when
#                      ONE_LOCATION is set, else /var/lib/one/remotes
#   --replace-stock    also install as DS_MAD "restic" (drop-in), keeping the stock files
#   --with-tm          also replace the backup actions of the qcow2/shared/ssh/local TM drivers
#   --with-services    also write systemd units for the scheduler and `backstop serve`
#   --services-only    only the units and their environment file (the step that needs root)
#   --uninstall        remove backstop and put back everything it replaced
#   --check            only say whether an OpenNebula upgrade overwrote any of backstop's files
#   --binary FILE      install this executable instead of building one (packagers, tests)
#   --oned-conf FILE   the oned.conf to work out the advice printed at the end from; default
#                      $ONE_LOCATION/etc/oned.conf, else /etc/one/oned.conf
#
# Everything after the build is done by `backstop install`; see `backstop install --help`.
# Run as root over a tree another account owns, it never follows a link in the tree and never
# runs anything from it (docs/security.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
binary=""
uninstall=no
mode=""
remotes=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || { echo "install.sh: --binary needs a file" >&2; exit 2; }
                  binary=$2; shift 2; continue ;;
        --binary=*) binary=${1#--binary=}; shift; continue ;;
        --uninstall|--check) uninstall=yes; mode=$1 ;;
        --remotes-dir) [ $# -ge 2 ] || { echo "install.sh: --remotes-dir needs a directory" >&2; exit 2; }
                       remotes=$2 ;;
        --remotes-dir=*) remotes=${1#--remotes-dir=} ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
    args+=("$1")
    shift
done
# --check exits 1 only for files an upgrade overwrote; not being able to check is 2.
fail=1
[ "$mode" = --check ] && fail=2

if [ -z "$binary" ] && [ "$uninstall" = yes ]; then
    # Uninstalling (or checking) needs no build: the installed executable knows how. But whoever owns the
    # tree can replace that executable, so it is run only by its own owner, never by root
    # (root builds one, or is given one with --binary).
    if [ -z "$remotes" ]; then
        if [ -n "${ONE_LOCATION:-}" ]; then remotes=$ONE_LOCATION/var/remotes; else remotes=/var/lib/one/remotes; fi
    fi
    installed=$remotes/backstop/bin/backstop
    if [ -f "$installed" ] && [ ! -L "$installed" ] && [ -x "$installed" ]; then
        me=$(id -u)
        if [ "$me" != 0 ] && [ "$(stat -c %u -- "$installed")" = "$me" ]; then
            binary=$installed
        elif ! command -v cargo >/dev/null 2>&1; then
            echo "install.sh: as $(id -un), $mode does not run $installed (its owner, uid $(stat -c %u -- "$installed"), can replace it); pass --binary FILE with a backstop you trust, or run $mode as that user" >&2
            exit $fail
        fi
    fi
fi

if [ -z "$binary" ]; then
    command -v cargo >/dev/null 2>&1 || {
        echo "install.sh: cargo is needed to build backstop (https://rustup.rs), or pass --binary FILE" >&2
        exit $fail
    }
    echo "building backstop (release)..."
    (cd "$here" && cargo build --release --locked --quiet --bin backstop) || exit $fail
    # Where cargo put it: CARGO_TARGET_DIR (relative to the workspace) or target/.
    target_dir=${CARGO_TARGET_DIR:-target}
    case "$target_dir" in /*) ;; *) target_dir=$here/$target_dir ;; esac
    binary=$target_dir/release/backstop
fi

[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit $fail; }
exec "$binary" install --binary "$binary" "${args[@]}"
