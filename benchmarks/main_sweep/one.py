"""One sweep variant: one.py NAME OVERRIDES_JSON WORKDIR (called by sweep.py)."""
import json, os, sys, time, logging
sys.path.insert(0, os.getcwd())
name, ov, wd = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
from configs import onedpiece
from jaxtok.train import loop
c = onedpiece.get_config("main")
for k, v in ov.items():
  node = c
  parts = k.split(".")
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = tuple(v) if isinstance(v, list) else v
t = time.time()
r = loop.train(c, wd, show_progress=False)
dt = time.time() - t
rows = [json.loads(l) for l in open(f"{wd}/tb/metrics.jsonl")]
ev = [(d["step"], round(d["eval/psnr"], 2)) for d in rows if "eval/psnr" in d]
print("evals", ev)
print("RESULT", name, f"{dt:.0f}s", {k: round(m["psnr"], 2) for k, m in r["per_token_count"].items()})
