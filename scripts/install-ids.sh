#!/usr/bin/env bash
# The `umld` system user and its subordinate id ranges (subuid(5)): the
# host ids that root-run machines get, 65536 per machine (umld/core/ids.py).
# Idempotent.  Without root (and without sudo) it says so and does nothing:
# umld then uses its documented default range.
set -euo pipefail
USER_NAME=umld
START=2147483648          # 2^31
COUNT=1073741824          # 2^30: 16384 machines of 65536 ids
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo "$0" "$@"
    fi
    echo "umld: not root: the '$USER_NAME' user and its id range are not created (umld uses its default range)" >&2
    exit 0
fi
if ! getent passwd "$USER_NAME" >/dev/null; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --comment "umld machines' id ranges" "$USER_NAME"
fi
for file in /etc/subuid /etc/subgid; do
    touch "$file"
    if ! grep -q "^$USER_NAME:" "$file"; then
        echo "$USER_NAME:$START:$COUNT" >> "$file"
    fi
done
