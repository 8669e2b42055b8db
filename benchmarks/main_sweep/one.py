"""One sweep variant: one.py NAME OVERRIDES_JSON WORKDIR (called by sweep.py)."""
import json, os, sys, time, logging
sys.path.insert(0, os.getcwd())
from jaxtok.configs import onedpiece


def main_config_with(overrides):
  """configs/onedpiece.py:main with {"a.b": value} overrides (lists become tuples)."""
  c = onedpiece.get_config("main")
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = tuple(v) if isinstance(v, list) else v
  return c


if __name__ == "__main__":
  from jaxtok.train import loop
  name, ov, wd = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
  c = main_config_with(ov)
  t = time.time()
  r = loop.train(c, wd, show_progress=False)
  dt = time.time() - t
  rows = [json.loads(l) for l in open(f"{wd}/tb/metrics.jsonl")]
  ev = [(d["step"], round(d["eval/psnr"], 2)) for d in rows if "eval/psnr" in d]
  print("evals", ev)
  print("RESULT", name, f"{dt:.0f}s", {k: round(m["psnr"], 2) for k, m in r["per_token_count"].items()})
