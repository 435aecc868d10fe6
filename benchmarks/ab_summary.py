"""The table of benchmarks/ab.sh's runs: medians per side, now/before, PyTorch/now."""
import collections
import glob
import json
import os
import statistics
import sys
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for f in sorted(glob.glob(os.path.join(sys.argv[1] if len(sys.argv) > 1 else '.benchmarks/ab', '*.json'))):
    side, t, r = f.split('/')[-1][:-5].split('-')
    for b in json.load(open(f))['benchmarks']:
        name = b['name'].split('[')[1].rstrip(']')
        case, peer = name.rsplit('-', 1)
        kind = 'train' if 'train' in b['name'] else 'infer'
        rows[(kind, case, t)][(side, peer)].append(b['stats']['median'] * 1e3)
print("| what | case | threads | before ms | now ms | now/before | PyTorch ms (now run) | ratio PyTorch/now |")
print("|---|---|---|---|---|---|---|---|")
for (kind, case, t), d in sorted(rows.items()):
    b = statistics.median(d[('base','auto')]) if d[('base','auto')] else float('nan')
    h = statistics.median(d[('head','auto')]) if d[('head','auto')] else float('nan')
    tt = statistics.median(d[('head','torch')]) if d[('head','torch')] else float('nan')
    print(f"| {kind} | {case} | {t[1:]} | {b:.3g} | {h:.3g} | {h/b:.3f} | {tt:.3g} | {tt/h:.2f} |")
