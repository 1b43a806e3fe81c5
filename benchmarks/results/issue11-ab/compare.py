"""Old vs new side by side: every metric of every tierfs cell, each run's value, medians, ratio."""
import glob, json, statistics, sys
runs = {"old": sorted(glob.glob("/tmp/bench-cmp/old-*.json")), "new": sorted(glob.glob("/tmp/bench-cmp/new-*.json"))}
vals = {}
for side, files in runs.items():
    for f in files:
        d = json.load(open(f))
        for c in d["cells"]:
            if c.get("error") or c["situation"] != "unconstrained":
                continue
            for k, v in (c.get("metrics") or {}).items():
                if v is None: continue
                key = (c["target"], c["workload"], c["temperature"], k)
                vals.setdefault(key, {"old": [], "new": []})[side].append(v)
print(f"{'target':10} {'workload':7} {'temp':5} {'metric':14} {'old runs':>30} {'new runs':>30} {'new/old (median)':>17}")
for key in sorted(vals):
    o, n = vals[key]["old"], vals[key]["new"]
    if not o or not n: continue
    mo, mn = statistics.median(o), statistics.median(n)
    r = mn / mo if mo else float('nan')
    fmt = lambda xs: ", ".join(f"{x:,.0f}" if x >= 100 else f"{x:.3g}" for x in xs)
    print(f"{key[0]:10} {key[1]:7} {key[2]:5} {key[3]:14} {fmt(o):>30} {fmt(n):>30} {r:17.2f}")
