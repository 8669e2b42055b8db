"""tools/benchmark.py: paired timing, streamed rows, and the quantizer suite end to end at a small size."""
import time

import pytest

from tests.tools.conftest import load_tool


def test_time_pair_measures_each_side_and_skips_burst_starts():
  bench = load_tool("benchmark")
  calls = {"a": 0, "b": 0}

  def slow():
    calls["a"] += 1
    time.sleep(0.004)

  def fast():
    calls["b"] += 1

  t_a, t_b = bench.time_pair(slow, lambda o: o, fast, lambda o: o, repeats=2, burst=3, settle_s=0.0)
  # One warm-up each, then per round one untimed lead-in call (settle_s=0) and 3 timed calls.
  assert calls == {"a": 9, "b": 9}
  assert 0.004 <= t_a < 0.5 and t_b < 0.004


def test_rows_print_as_they_arrive(capsys):
  bench = load_tool("benchmark")
  rows = bench.Rows()
  rows.append(("case", "impl", 1.5, "note"))
  rows += [("case2", "impl2", 2.0, "")]
  err = capsys.readouterr().err
  assert "[row] case | impl | 1.500 ms | note" in err and "[row] case2 | impl2 | 2.000 ms" in err
  assert len(rows) == 2


def test_quantizer_suite_small(tmp_path, capsys):
  bench = load_tool("benchmark")
  out = tmp_path / "r.md"
  assert bench.main(["--suite", "quantizers", "--vq-vectors", "512", "--repeats", "1",
                     "--out", str(out)]) == 0
  table = out.read_text()
  assert "| VQ lookup 512x16 vs 4096 codes | jaxtok search.nearest |" in table
  assert "FSQ (8, 5, 5, 5) on 8192 vectors" in table and "LFQ 16 bits on 512 vectors" in table


def test_data_suite_small(tmp_path):
  bench = load_tool("benchmark")
  out = tmp_path / "r.md"
  assert bench.main(["--suite", "data", "--data-sizes", "40x30", "--repeats", "1", "--batch", "2",
                     "--out", str(out)]) == 0
  table = out.read_text()
  assert "| resize_short + center_crop 40x30 uint8 -> 256 | preprocess.resize |" in table
  assert "| resize 40x30 uint8 -> 341x256 | np.einsum(optimize=True), dense |" in table
  assert "| main job input: PhotoCrops " in table and "px, batch 2 | photos.PhotoCrops |" in table
  assert f"the train step takes {bench.MAIN_TRAIN_STEP_MS} ms" in table
  for augment in ("random_resized_crop", "random_crop"):
    for threads in (0, 2):
      assert (f"| grain pipeline, JPEG 500x375 -> {augment} 256, batch 2 | pipeline.Pipeline, "
              f"{threads} threads |") in table


def test_time_rounds_interleaves_and_warms_up():
  bench = load_tool("benchmark")
  order = []
  fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
  times = bench.time_rounds(fns, repeats=2)
  assert order == ["a", "b"] * 3 and set(times) == {"a", "b"}  # one warm-up round, then 2 rounds
  order.clear()
  bench.time_rounds(fns, repeats=1, warmup=False)
  assert order == ["a", "b"]


def test_import_official_refuses_a_path_without_the_model_files(tmp_path):
  bench = load_tool("benchmark")
  with pytest.raises(FileNotFoundError, match="modeling/titok.py"):
    bench.import_official(str(tmp_path))
