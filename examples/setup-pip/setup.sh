#!/bin/sh
# Runs once per app version, in the jail, when `karta serve` starts. The
# app folder is read-only here; what goes into $HOME (pip's --user site,
# ~/.local) is what every session gets, read-only.
set -eu
python3 -m pip install --user tabulate==0.9.0
python3 -c 'import tabulate; print("installed tabulate", tabulate.__version__)'
