#!/bin/bash
# Local warm metadata walk, old (b717100) vs new (wt-tests), alternated; tierfs default config.
SRC=/var/tmp/tierfs-bench-data/s3root/bench
for i in 1 2 3; do
  for side in old new; do
    if [ $side = old ]; then d=/tmp/stress-check; else d=/work/wt-tests; fi
    M=/tmp/bench-cmp/mnt-$side; C=/tmp/bench-cmp/cache-$side-$i
    mkdir -p $M; rm -rf $C
    $d/.venv/bin/tierfs mount $SRC $M --cache $C --log /tmp/bench-cmp/meta-$side.log || { echo mount failed; continue; }
    for t in cold warm warm2; do
      r=$($d/.venv/bin/python $d/benchmarks/metawalk.py $M --count 4000 --per-dir 100)
      echo "$side $i $t load=$(cut -d' ' -f1 /proc/loadavg) $(echo $r | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["files_per_s"]), d["p50_us"], d["p99_us"])')"
    done
    $d/.venv/bin/tierfs umount $M || fusermount3 -u -z $M
    rm -rf $C
  done
done
