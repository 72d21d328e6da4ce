# >>> backstop: backstop:// URLs (added by backstop's install.sh; --uninstall removes it)
backstop://*|backstop+rbd://*)
    backstop_vars=$("$(dirname "$0")/backstop_downloader" "$FROM") || exit 1
    eval "$(printf '%s\n' "$backstop_vars" | grep -e '^command=' -e '^clean_command=')"
    ;;
# <<< backstop
