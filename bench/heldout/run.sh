#!/bin/sh
# Every model of the held-out zoo, each in its own process with one thread and a time limit.
cd "$(dirname "$0")"
for n in $(python -c "import models; print(' '.join(models.ZOO))"); do
  OMP_NUM_THREADS=1 timeout 600 python run_one.py "$n" 2>/dev/null | grep RESULT || echo "RESULT {\"name\": \"$n\", \"status\": \"TIMEOUT/DIED\"}"
done
