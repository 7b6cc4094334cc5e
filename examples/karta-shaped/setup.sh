#!/bin/sh
# Runs once per app version, in the jail, when `karta serve` starts: what it
# leaves in $HOME becomes the read-only layer every session starts from.
set -eu
echo "nothing to install"
