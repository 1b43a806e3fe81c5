#!/bin/bash
for i in 1 2 3; do
  for side in old new; do
    if [ $side = old ]; then d=/tmp/stress-check; else d=/work/wt-tests; fi
    echo "== $side $i $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd $d && .venv/bin/python benchmarks/run.py --targets tierfs-s3 --workloads meta --memory-limit none --runtime 5 --out /tmp/bench-cmp/s3meta-$side-$i.json $( [ $side = new ] && echo --chart none ) > /tmp/bench-cmp/s3meta-$side-$i.log 2>&1)
  done
done
echo DONE
