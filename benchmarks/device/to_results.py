"""Turns the log of `benchmarks/device/run.sh` into markdown for benchmarks/RESULTS.md.

  python benchmarks/device/to_results.py /work/.device/.../device.log [--machine H200] > /tmp/rows.md

One block per step of the run, in the order run: the command, how the step ended (ok, its time limit
with the last progress line before it, an error code, or skipped), and a table of its `[row]` lines
(every row measured, also those of a step killed by its limit). Rows of failed cases (ms nan) keep
their error in the note. The machine line comes from `nvidia-smi -L` and the `[env]` lines.
"""
from __future__ import annotations

import argparse
import re
import sys

ROW = re.compile(r"^\[row\] (?P<case>.*?) \| (?P<impl>.*?) \| (?P<ms>\S+) ms \| ?(?P<note>.*)$")
START = re.compile(r"^\[step\] (?P<name>\S+) start \+(?P<t>\d+)s limit (?P<limit>\d+)s: (?P<cmd>.*)$")
END = re.compile(r"^\[step\] (?P<name>\S+) end (?P<how>.*?) \+(?P<t>\d+)s$")
SKIP = re.compile(r"^\[step\] (?P<name>\S+) skipped: (?P<why>.*)$")


def parse(lines):
  """-> (header lines, steps); each step a dict(name, cmd, limit, t0, t1, how, rows, last_stage)."""
  header, steps, cur = [], [], None
  for raw in lines:
    line = raw.rstrip("\n")
    if m := START.match(line):
      cur = dict(name=m["name"], cmd=m["cmd"], limit=int(m["limit"]), t0=int(m["t"]), t1=None,
                 how="cut off (log ends)", rows=[], last_stage="")
      steps.append(cur)
    elif m := END.match(line):
      if cur is not None and cur["name"] == m["name"]:
        cur["how"], cur["t1"] = m["how"], int(m["t"])
      cur = None
    elif m := SKIP.match(line):
      steps.append(dict(name=m["name"], cmd="", limit=0, t0=None, t1=None, how=f"skipped ({m['why']})",
                        rows=[], last_stage=""))
    elif m := ROW.match(line):
      if cur is None:  # a row outside any step: keep it under an anonymous one
        cur = dict(name="(no step)", cmd="", limit=0, t0=None, t1=None, how="", rows=[], last_stage="")
        steps.append(cur)
      cur["rows"].append((m["case"], m["impl"], m["ms"], m["note"].strip()))
    elif line.startswith("[stage]") and cur is not None:
      cur["last_stage"] = line[len("[stage] "):]
    elif line.startswith("GPU ") or line.startswith("[env]") or line.startswith("[run] start"):
      header.append(line)
  return header, steps


def render(header, steps, machine: str) -> str:
  out = [f"### {machine} (device run, `benchmarks/device/run.sh`)", ""]
  out += [f"    {h}" for h in header] + [""]
  for s in steps:
    took = f", {s['t1'] - s['t0']} s" if s["t0"] is not None and s["t1"] is not None else ""
    status = s["how"]
    if "TIMEOUT" in status and s["last_stage"]:
      status += f"; last progress: {s['last_stage']}"
    out.append(f"**{s['name']}** — {status}{took}" + (f" (limit {s['limit']} s)" if s["limit"] else ""))
    out.append("")
    if s["cmd"]:
      out += [f"Command: `{s['cmd']}`", ""]
    if s["rows"]:
      out += ["| case | implementation | ms (median) | note |", "|---|---|---|---|"]
      out += [f"| {c} | {i} | {ms} | {n} |" for c, i, ms, n in s["rows"]]
      out.append("")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("log")
  p.add_argument("--machine", default="H200", help="heading, e.g. 'H200, 2026-11-30'")
  a = p.parse_args(argv)
  with open(a.log, errors="replace") as f:
    header, steps = parse(f)
  sys.stdout.write(render(header, steps, a.machine) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
