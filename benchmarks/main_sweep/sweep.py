"""Main-job sweep: trains config variants of configs/onedpiece.py:main in parallel subprocesses.

  python benchmarks/main_sweep/sweep.py benchmarks/main_sweep/v2.json   (from the repo root)

Each JSON entry maps a variant name to config overrides ("optim.lr": 1e-3, ...); logs go to $OUT
(default /tmp/sweep_out) and each prints its held-out PSNR per token count. Used on a GPU so that
many variants fit in minutes; the numbers equal a CPU run of the same config.
"""
import json, os, subprocess, sys, time
sys.path.insert(0, os.getcwd())
VARIANTS = json.loads(open(sys.argv[1]).read())
OUT = os.environ.get("OUT", "/tmp/sweep_out")
os.makedirs(OUT, exist_ok=True)
procs = {}
for name, ov in VARIANTS.items():
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.09", XLA_PYTHON_CLIENT_PREALLOCATE="false",
             PYTHONUNBUFFERED="1")
  cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "one.py"), name, json.dumps(ov), f"/tmp/sw_{name}"]
  procs[name] = subprocess.Popen(cmd, env=env, stdout=open(f"{OUT}/{name}.log", "w"), stderr=subprocess.STDOUT)
t0 = time.time()
for name, p in procs.items():
  p.wait()
  print(name, "rc", p.returncode, f"{time.time()-t0:.0f}s", flush=True)
  print(subprocess.run(["tail", "-n", "6", f"{OUT}/{name}.log"], capture_output=True, text=True).stdout)
