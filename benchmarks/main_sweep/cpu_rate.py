"""CPU seconds per step of a main-config variant: cpu_rate.py OVERRIDES_JSON (90 steps, last 60 timed)."""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from one import main_config_with
from jaxtok.train import loop
ov = json.loads(sys.argv[1])
c = main_config_with(ov)
c.total_steps = 90; c.optim.warmup_steps = 10; c.log_every = 30; c.eval_every = 1000; c.ckpt_every = 1000; c.final_eval = False
wd = f"/tmp/rate_{os.getpid()}"
loop.train(c, wd, show_progress=False)
rows = [json.loads(l) for l in open(f"{wd}/tb/metrics.jsonl")]
t = {d["step"]: d["step"] / d["steps_per_s"] for d in rows if "steps_per_s" in d}
print("STEP_S", sys.argv[1], round((t[90] - t[30]) / 60, 4))
