#!/usr/bin/env bash
# Put experiment variants over a copy of the package:
#   bash benchmarks/variants/apply.sh PKG_DIR VARIANT[+VARIANT...]
# Each .py file of benchmarks/variants/VARIANT/ replaces PKG_DIR/<same name>; the package's own
# module is kept first as PKG_DIR/_tree_<name>, so a variant may be a whole module or only what
# it changes ("from vllm_maxact._tree_<name> import *", then its own definitions, patched into
# the tree module where the tree's code calls them). `a+b` applies a, then b.
set -euo pipefail
pkg=$1
here=$(cd "$(dirname "$0")" && pwd)
for v in ${2//+/ }; do
  for f in "$here/$v"/*.py; do
    name=$(basename "$f")
    [ -e "$pkg/_tree_$name" ] || cp "$pkg/$name" "$pkg/_tree_$name"
    cp "$f" "$pkg/$name"
  done
done
