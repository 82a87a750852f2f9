#!/usr/bin/env bash
# no-sql-outside-storage.sh - every SQL statement lives in storage/ and migrations/.
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -nE '"[^"]*\b(SELECT|INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM)\b' \
    ciba/*.c oauth/*.c server/*.c sms/*.c util/*.c 2>/dev/null; then
    echo "SQL found outside storage/: move it behind storage/storage.h" >&2
    exit 1
fi
