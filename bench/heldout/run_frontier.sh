#!/bin/sh
# The frontier models (or those named), each in its own process with one thread and a 300 s limit, one at a time.
cd "$(dirname "$0")"
names="$*"
[ -n "$names" ] || names=$(python -c "import frontier; print(' '.join(frontier.ZOO))")
for n in $names; do
  OMP_NUM_THREADS=1 timeout 300 python run_frontier.py "$n" 2>/dev/null | grep RESULT || echo "RESULT {\"name\": \"$n\", \"status\": \"TIMEOUT/DIED\"}"
done
