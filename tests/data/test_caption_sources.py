"""Captions of folder and tfds sources (`data.caption_sources`): the captions.jsonl sidecar, the
tfds caption-feature rule, TexTok's captioned tfds training batches, and tools/pretokenize.py on a
captioned folder and a captioned tfds split (a TexTok run whose captions are SentencePiece ids of
tests/fixtures/sentencepiece/tiny_unigram.model)."""
import functools
import json
import os

import numpy as np
import pytest

from jaxtok.data import caption_sources as C
from tests.tools.conftest import ROOT, load_tool, random_like, save_train_checkpoint

SPIECE = os.path.join(ROOT, "tests", "fixtures", "sentencepiece", "tiny_unigram.model")
FOLDER = {"b.png": "a photo of a red car", "a.png": "a photo of a cat",
          "cats/c.png": "a photo of a cat", "cats/d.png": "two dogs walking near the river"}


def _png_folder(root, lines=None):
  from PIL import Image
  for i, name in enumerate(sorted(FOLDER)):
    os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
    Image.fromarray(np.full((20, 18, 3), 40 * i + 10, np.uint8)).save(os.path.join(root, name))
  if lines is None:  # shuffled, with a blank line and a redundant "./"
    lines = [json.dumps({"file": "./" + n if n == "a.png" else n, "caption": FOLDER[n]})
             for n in ("cats/d.png", "a.png", "b.png", "cats/c.png")]
    lines.insert(2, "")
  with open(os.path.join(root, C.FOLDER_CAPTIONS), "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(root)


def test_folder_captions_follow_the_image_order(tmp_path):
  from jaxtok.eval import images
  folder = _png_folder(tmp_path / "imgs")
  paths = images.list_images(folder)
  assert [p.replace(os.sep, "/") for p in paths] == ["a.png", "b.png", "cats/c.png", "cats/d.png"]
  assert C.folder_captions(folder, paths) == [FOLDER[p.replace(os.sep, "/")] for p in paths]
  texts, ids = C.caption_table(C.folder_captions(folder, paths))
  assert texts == ["a photo of a cat", "a photo of a red car", "two dogs walking near the river"]
  np.testing.assert_array_equal(ids, [0, 1, 0, 2])


@pytest.mark.parametrize("lines,error", [
    (None, "expected .*captions.jsonl.* not found"),
    (['{"file": "a.png", "caption": "x"}'], r"no caption for 3 of the 4 images, e.g. \['b.png'"),
    (['{"file": "a.png", "caption": "x"}', '{"file": "a.png", "caption": "y"}'],
     "line 2: a second caption for 'a.png'"),
    (['{"file": "a.png", "caption": 3}'], "line 1: file and caption must be strings, got str and int"),
    (['{"file": "a.png"'], "line 1: not JSON"),
    (['{"image": "a.png", "caption": "x"}'], 'line 1: expected {"file": ..., "caption": ...}'),
])
def test_folder_captions_refuse_bad_sidecars(tmp_path, lines, error):
  from jaxtok.eval import images
  folder = _png_folder(tmp_path / "imgs", lines=lines or [""])
  if lines is None:
    os.remove(os.path.join(folder, C.FOLDER_CAPTIONS))
  with pytest.raises(ValueError, match=error):
    C.folder_captions(folder, images.list_images(folder))


def test_record_caption_rule():
  texts = np.array([b"first caption", b"second"], object)
  assert C.record_caption({"captions": {"text": texts, "id": np.arange(2)}}, "captions/text") == (
      "first caption")  # coco_captions' layout: the first of several
  assert C.record_caption({"caption": "plain"}, "caption") == "plain"
  assert C.record_caption({"caption": np.array("caf\u00e9".encode())}, "caption") == "caf\u00e9"
  assert C.record_caption({"caption": ["a", "b"]}, "caption") == "a"
  with pytest.raises(ValueError, match=r"no feature 'captions' in the record \(found \['image'\]\)"):
    C.record_caption({"image": 0}, "captions/text")
  with pytest.raises(ValueError, match="caption list is empty"):
    C.record_caption({"c": np.array([], object)}, "c")
  with pytest.raises(ValueError, match="expected text .* got int"):
    C.record_caption({"c": 4}, "c")
  with pytest.raises(ValueError, match="the caption key must be a feature name"):
    C.record_caption({"c": "x"}, "")


# ---------------------------------------------------------------- a tiny captioned tfds dataset

N_RECORDS = 12


def _record(i):
  """Record i of the mock dataset: a flat image of grey level 20 i (so a crop tells its record) and
  coco_captions' caption layout with "photo number i" first."""
  words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven"]
  return {"image": np.full((24, 20, 3), 20 * i, np.uint8),
          "captions": {"text": np.array([f"a photo number {words[i]}".encode(), b"ignored"], object),
                       "id": np.array([2 * i, 2 * i + 1])}}


@functools.lru_cache(maxsize=None)
def _builder():
  """Registers `tiny_captions` (a tfds builder whose records are `_record`) once per process."""
  import tensorflow_datasets as tfds

  class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "captions": tfds.features.Sequence({"text": tfds.features.Text(),
                                              "id": tfds.features.Scalar(np.int64)})}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
      for i in range(N_RECORDS):
        yield i, _record(i)

  return TinyCaptions


def mock_captions():
  """tfds.data_source("tiny_captions", split=...) -> the N_RECORDS records (offline mock)."""
  import tensorflow_datasets as tfds
  _builder()
  return tfds.testing.mock_data(
      as_data_source_fn=lambda builder, split=None, **kw: [_record(i) for i in range(N_RECORDS)])


def _textok_config():
  from jaxtok.configs import textok
  c = textok.get_config(f"tiny,spiece={SPIECE}")
  c.data.update(source="tfds", name="tiny_captions", split="train", heldout_split="test", heldout=3,
                caption_key="captions/text", augment="random_crop")
  c.data.batch_size = 4
  return c


def test_tfds_training_batches_carry_each_records_caption_ids_and_resume():
  from jaxtok.data import photo_captions
  from jaxtok.text import sentencepiece
  c = _textok_config()
  sp = sentencepiece.load(SPIECE)
  with mock_captions():
    data, heldout, held_text = photo_captions.from_config(c, seed=0)
    batch = next(data)
    assert sorted(batch) == ["image", "text_ids", "text_mask"]
    assert batch["image"].shape == (4, 16, 16, 3) and batch["text_ids"].shape == (4, 24)
    # Each crop is flat grey 20 i / 255: its record i, whose first caption must give the ids.
    rec = np.rint(batch["image"].mean(axis=(1, 2, 3)) * 255 / 20).astype(int)
    texts = [_record(i)["captions"]["text"][0].decode() for i in rec]
    ids, mask = sp.ids(texts, 24)
    np.testing.assert_array_equal(batch["text_ids"], ids)
    np.testing.assert_array_equal(batch["text_mask"], mask)
    assert batch["text_ids"].dtype == np.int32 and batch["text_mask"].dtype == bool
    # held-out: the first 3 test records with their captions
    assert heldout.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(held_text["text_ids"], sp.ids(
        [_record(i)["captions"]["text"][0].decode() for i in range(3)], 24)[0])
    state = data.get_state()
    nxt = next(data)
    again, _, _ = photo_captions.from_config(c, seed=0)
    again.set_state(state)
    for k, v in next(again).items():
      np.testing.assert_array_equal(v, nxt[k])
    c.data.caption_key = ""
    with pytest.raises(ValueError, match="config.data.caption_key must name the caption feature"):
      photo_captions.from_config(c, seed=0)


# ---------------------------------------------------------------- tools/pretokenize.py


@pytest.fixture(scope="module")
def textok_run(tmp_path_factory):
  """A training-run checkpoint of configs/textok.py:tiny,spiece=<fixture> (random weights)."""
  import jax.numpy as jnp
  from jaxtok.tokenizers import api
  c = _textok_config()
  tokenizer = api.build(c.model)
  params = random_like(tokenizer.abstract_params(), seed=0, scale=0.2)
  workdir = str(tmp_path_factory.mktemp("textok_run"))
  save_train_checkpoint(workdir, {"step": jnp.int32(1), "params": params}, c)
  return workdir, c, tokenizer, params


def _direct_tokens(tokenizer, params, images, texts):
  """TexTok's tokens of `images` read with `texts` (what pretokenize must write)."""
  import jax.numpy as jnp
  from jaxtok.text import sentencepiece
  ids, mask = sentencepiece.load(SPIECE).ids(texts, 24)
  model = tokenizer.model(params)
  return np.asarray(model.encode(jnp.asarray(images), jnp.asarray(ids), jnp.asarray(mask)).tokens)


@pytest.mark.slow
def test_pretokenize_reads_a_captioned_folder_and_a_captioned_tfds_split(textok_run, tmp_path):
  from jaxtok.data import image_sets
  from jaxtok.data import tokens as token_data
  workdir, _, tokenizer, params = textok_run
  tool = load_tool("pretokenize")
  folder = _png_folder(tmp_path / "imgs")
  out = str(tmp_path / "folder_tokens")
  tool.main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}", "--source=folder",
             f"--folder={folder}", "--batch_size=4"])
  table = token_data.read_captions(out)
  assert table["captions"] == ["a photo of a cat", "a photo of a red car",
                               "two dogs walking near the river"]
  assert table["text"]["vocab"] == "spiece" and table["text"]["spiece"] == SPIECE
  np.testing.assert_array_equal(np.load(os.path.join(out, "caption_ids.npy")), [0, 1, 0, 2])
  images, _, _ = image_sets.folder_images(folder, 16, None, tool.FLAGS.fit)
  texts = [table["captions"][i] for i in (0, 1, 0, 2)]
  np.testing.assert_allclose(np.load(os.path.join(out, "tokens.npy")),
                             _direct_tokens(tokenizer, params, images, texts), atol=1e-5)

  out = str(tmp_path / "tfds_tokens")
  with mock_captions():
    tool.main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}", "--source=tfds",
               "--tfds_name=tiny_captions", "--split=train", "--num_examples=6", "--batch_size=4"])
    images, _, _ = image_sets.tfds_images("tiny_captions", "train", None, 16, 6)
  table = token_data.read_captions(out)  # the run config's data.caption_key: "captions/text"
  assert table["captions"] == [_record(i)["captions"]["text"][0].decode() for i in range(6)]
  np.testing.assert_array_equal(np.load(os.path.join(out, "caption_ids.npy")), np.arange(6))
  np.testing.assert_allclose(np.load(os.path.join(out, "tokens.npy")),
                             _direct_tokens(tokenizer, params, images, table["captions"]), atol=1e-5)
  with mock_captions(), pytest.raises(ValueError, match="no feature 'caption' in the record"):
    tool.main(["pretokenize", f"--checkpoint={workdir}", f"--out={tmp_path / 'x'}",
               "--source=tfds", "--tfds_name=tiny_captions", "--caption_key=caption"])
  os.remove(os.path.join(folder, C.FOLDER_CAPTIONS))
  with pytest.raises(ValueError, match="captions.jsonl.* not found"):
    tool.main(["pretokenize", f"--checkpoint={workdir}", f"--out={tmp_path / 'y'}",
               "--source=folder", f"--folder={folder}"])



def test_tatitok_tfds_batches_carry_the_batch_captions_clip_features():
  """TA-TiTok's caption inputs (the tiny random CLIP tower's "tokens" features) are computed per
  batch from the batch's captions, with one text tower per process (`text.encoder.from_config`)."""
  from jaxtok.configs import tatitok as config_lib
  from jaxtok.data import photo_captions
  from jaxtok.text import encoder
  from jaxtok.tokenizers import tatitok
  c = config_lib.get_config("tiny")
  c.data.update(source="tfds", name="tiny_captions", split="train", heldout_split="test", heldout=2,
                caption_key="captions/text", batch_size=4)
  assert encoder.from_config(c.text) is encoder.from_config(c.text)
  with mock_captions():
    data, _, held = photo_captions.from_config(c, seed=0)
    batch = next(data)
  assert sorted(batch) == ["image", "text_features"]
  rec = np.rint(batch["image"].mean(axis=(1, 2, 3)) * 255 / 20).astype(int)
  want = tatitok.caption_inputs(c.text, [_record(i)["captions"]["text"][0].decode() for i in rec])
  np.testing.assert_allclose(batch["text_features"], want["text_features"], atol=1e-6)
  assert held["text_features"].shape[0] == 2
