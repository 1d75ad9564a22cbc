#!/bin/sh
# The failing variant of disko-standin.sh for the end-to-end failure
# test: it touches no disk and exits 1 with one clear line on stderr.
echo "disko-standin-fail: refusing to partition: simulated disko failure for the e2e test" >&2
exit 1
