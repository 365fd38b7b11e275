#!/bin/sh
# Xandikos 0.4.10 for this example: multi-user, loopback only, trusting davproxy's
# X-Remote-User header from 127.0.0.1. Data and state go to data/ next to this script.
#
#   ./run-xandikos.sh                          # python3 with xandikos installed
#   PYTHON=/path/to/venv/bin/python ./run-xandikos.sh
#
# Equivalent to:  xandikos multi-user -d data/xandikos -l 127.0.0.1 -p 8090 \
#                     --trust-x-remote-user-from 127.0.0.1/32 --defaults
set -eu
cd "$(dirname "$0")"
exec "${PYTHON:-python3}" -m xandikos multi-user \
    -d data/xandikos \
    --state-dir data/xandikos-state \
    -l 127.0.0.1 -p 8090 \
    --trust-x-remote-user-from 127.0.0.1/32 \
    --defaults \
    --no-detect-systemd
