#!/bin/sh
# Regenerate the committed completion scripts from the app itself.
# Run from anywhere, with the Python that has ot-hook installed:  sh completions/regenerate.sh
# tests/test_completions.py fails when a committed script differs from what this writes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
gen() { _OT_HOOK_COMPLETE="source_$1" "$python" -m ot_hook > "$here/$2"; }
gen bash ot-hook.bash
gen zsh _ot-hook
gen fish ot-hook.fish
gen powershell ot-hook.ps1
echo "wrote $here/ot-hook.bash _ot-hook ot-hook.fish ot-hook.ps1"
