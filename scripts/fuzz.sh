#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a while each (default 20s).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-20s}
for pkg in $(go list ./...); do
	for f in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $f ($dur)"
		go test -run '^$' -fuzz "^$f\$" -fuzztime "$dur" "$pkg"
	done
done
