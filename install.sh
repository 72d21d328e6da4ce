#!/usr/bin/env bash
# Builds backstop and installs it into an OpenNebula remotes tree (or takes it out again).
#
#   ./install.sh [--remotes-dir DIR] [--replace-stock] [--with-tm] [--with-services] [--dry-run]
#   ./install.sh --uninstall [--remotes-dir DIR] [--dry-run]
#   ./install.sh --check [--remotes-dir DIR]
#
#   --remotes-dir DIR  the tree oned runs drivers from; default $ONE_LOCATION/var/remotes when
#                      ONE_LOCATION is set, else /var/lib/one/remotes
#   --replace-stock    also install as DS_MAD "restic" (drop-in), keeping the stock files
#   --with-tm          also replace the backup actions of the qcow2/shared/ssh/local/ceph TM drivers
#   --with-services    also write systemd units for the scheduler and `backstop serve`
#   --services-only    only the units and their environment file (the step that needs root)
#   --systemd-dir DIR  where the units go (default /etc/systemd/system)
#   --env-file FILE    the services' settings and secrets (default /etc/backstop/backstop.env)
#   --uninstall        remove backstop and put back everything it replaced
#   --check            only say whether an OpenNebula upgrade overwrote any of backstop's files
#   --dry-run          change nothing; say what the install (or --uninstall) would do
#   --binary FILE      install this executable instead of building one (packagers, tests)
#   --allow-unimplemented  replace stock drivers even with actions not implemented (tests)
#   --oned-conf FILE   the oned.conf to work out the advice printed at the end from; default
#                      $ONE_LOCATION/etc/oned.conf, else /etc/one/oned.conf
#
# Every flag is checked before anything is built. --uninstall and --check need no Rust
# toolchain when a backstop executable only root (or you) can have written is at hand: the
# installed one, or a system-wide /usr/bin/backstop.
# Everything after the build is done by `backstop install`; see `backstop install --help`.
# Run as root over a tree another account owns, it never follows a link in the tree and never
# runs anything from it (docs/security.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
bad() { echo "install.sh: $*; see ./install.sh --help" >&2; exit 2; }
binary=""
remotes=""
action=install      # install, --uninstall or --check
dry_run=no
services_only=no
extras=()           # --replace-stock, --with-tm, --with-services
args=()
while [ $# -gt 0 ]; do
    flag=$1
    value=""
    case "$flag" in
        --*=*) value=${flag#*=}; flag=${flag%%=*}; has_value=yes ;;
        *) has_value=no ;;
    esac
    case "$flag" in
        --remotes-dir|--systemd-dir|--env-file|--oned-conf|--binary)
            if [ "$has_value" = no ]; then
                [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || bad "$flag needs a value"
                value=$2
                shift
            fi
            [ -n "$value" ] || bad "$flag needs a value"
            case "$flag" in
                --binary) binary=$value ;;
                --remotes-dir) remotes=$value; args+=(--remotes-dir "$value") ;;
                *) args+=("$flag" "$value") ;;
            esac ;;
        --replace-stock|--with-tm|--with-services|--services-only|--uninstall|--check|--dry-run|--allow-unimplemented|-h|--help)
            [ "$has_value" = no ] || bad "$flag takes no value"
            case "$flag" in
                -h|--help) usage; exit 0 ;;
                --uninstall|--check)
                    [ "$action" = install ] || bad "$action and $flag cannot be used together"
                    action=$flag ;;
                --dry-run) dry_run=yes ;;
                --services-only) services_only=yes ;;
                --replace-stock|--with-tm|--with-services) extras+=("$flag") ;;
            esac
            args+=("$flag") ;;
        *) bad "unknown option $1" ;;
    esac
    shift
done
if [ "$action" != install ] && [ "${#extras[@]}" -gt 0 ]; then
    bad "$action cannot be used with ${extras[*]}"
fi
if [ "$action" != install ] && [ "$services_only" = yes ]; then
    bad "$action cannot be used with --services-only"
fi
if [ "$services_only" = yes ] && [ "${#extras[@]}" -gt 0 ]; then
    bad "--services-only cannot be used with ${extras[*]}"
fi
[ "$action" = --check ] && [ "$dry_run" = yes ] && bad "--check changes nothing already; it takes no --dry-run"
# --check exits 1 only for files an upgrade overwrote; not being able to check is 2.
fail=1
[ "$action" = --check ] && fail=2

# Prints FILE's absolute path when only root, or the user running this, can have written it:
# no link anywhere on its path (a link would let whoever owns its directory point it at any
# program), and the file and every directory above it are theirs and writable by no group
# and no one else.
trusted() {
    local path me owner mode real
    me=$(id -u)
    real=$(readlink -e -- "$1") || return 1
    [ "$real" = "$(realpath -s -- "$1")" ] || return 1
    [ -f "$real" ] && [ -x "$real" ] || return 1
    path=$real
    while :; do
        owner=$(stat -c %u -- "$path") || return 1
        mode=$(stat -c %a -- "$path") || return 1
        [ "$owner" = 0 ] || [ "$owner" = "$me" ] || return 1
        (( (8#$mode & 8#022) == 0 )) || return 1
        [ "$path" = / ] && { printf '%s\n' "$real"; return 0; }
        path=$(dirname -- "$path")
    done
}

if [ -z "$binary" ] && [ "$action" != install ]; then
    # Changing nothing, or taking backstop out, needs no build when an executable nobody else
    # could have replaced is at hand. Whoever owns the tree can replace the installed one, so it
    # is run only where the tree is root's (or yours), never by root over oneadmin's tree.
    if [ -z "$remotes" ]; then
        if [ -n "${ONE_LOCATION:-}" ]; then remotes=$ONE_LOCATION/var/remotes; else remotes=/var/lib/one/remotes; fi
    fi
    for candidate in "$remotes/backstop/bin/backstop" /usr/bin/backstop; do
        if real=$(trusted "$candidate"); then binary=$real; break; fi
    done
    if [ -z "$binary" ] && [ "$action" != install ] && ! command -v cargo >/dev/null 2>&1; then
        echo "install.sh: as $(id -un), $action does not run $remotes/backstop/bin/backstop: another account can change it or a directory above it, or a link is on its path; pass --binary FILE with a backstop you trust, or run $action as that account" >&2
        exit $fail
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
