#!/bin/bash
# old (b717100) vs new (5122d81) alternated, n=3 each, same flags
for i in 1 2 3; do
  for side in old new; do
    if [ $side = old ]; then d=/tmp/stress-check; else d=/tmp/ci-check; fi
    echo "== $side $i $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $d && .venv/bin/python benchmarks/run.py --targets direct,tierfs,tierfs-s3 --workloads rand,mixed,meta --memory-limit none --runtime 5 --out /tmp/bench-cmp/$side-$i.json $( [ $side = new ] && echo --chart none ) > /tmp/bench-cmp/$side-$i.log 2>&1)
    echo "   rc=$? $(date +%T)"
  done
done
echo DONE
