#!/bin/sh
# backstop-shim: runs backstop's action for this file's path; installed by backstop's install.sh.
exec "$(dirname -- "$0")/@UP@backstop/bin/backstop" action "$0" "$@"
