#!/bin/sh
# Runs once per app version (not run by Karta host yet).
set -eu
echo "nothing to install"
