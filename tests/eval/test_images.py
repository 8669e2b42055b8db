"""eval.images.read_image: every PIL mode scaled to [0, 1] exactly, 16-bit PNGs (written here by hand
with every row filter), and the decompression-bomb limit named with the file."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxtok.eval import images


def _paeth(a, b, c):
  p = a + b - c
  pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
  return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _write_png16(path, values, colour_type):
  """A 16-bit PNG of uint16 [H, W, channels], row y filtered with filter y % 5 (all five kinds),
  following the PNG specification byte by byte (independent of the decoder under test)."""
  h, w, ch = values.shape
  bpp = 2 * ch
  rows = [np.frombuffer(values[y].astype(">u2").tobytes(), np.uint8).astype(int) for y in range(h)]
  out = bytearray()
  for y, row in enumerate(rows):
    kind = y % 5
    prev = rows[y - 1] if y else np.zeros_like(row)
    out.append(kind)
    for i, byte in enumerate(row):
      a = row[i - bpp] if i >= bpp else 0
      b = prev[i]
      c = prev[i - bpp] if i >= bpp else 0
      pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
      out.append((int(byte) - int(pred)) % 256)

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
            + chunk(b"IEND", b""))


def _exact(values):
  """What read_image must return for 16-bit samples: float32 v / 65535."""
  return values.astype(np.float32) / np.float32(65535)


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_exact(tmp_path, colour_type, channels):
  rng = np.random.default_rng(colour_type)
  values = rng.integers(0, 65536, (7, 9, channels)).astype(np.uint16)
  values[0, :3, 0] = [0, 1, 65535]  # the extremes and the smallest step
  # Bytes drawn from {10, 15, 20} make Paeth's ties (left and up equally close to the estimate,
  # up-left halfway between them) frequent: the tie order is part of the format.
  ties = (rng.choice([10, 15, 20], (7, 9, channels, 2)) * [256, 1]).sum(-1).astype(np.uint16)
  values = np.concatenate([values, ties])
  path = str(tmp_path / "c16.png")
  _write_png16(path, values, colour_type)
  # The file is valid: PIL reads it, keeping the high byte of every sample.
  with Image.open(path) as im:
    assert im.mode in ("RGB", "RGBA", "LA")
    np.testing.assert_array_equal(np.asarray(im)[..., 0], values[..., 0] >> 8)
  got = images.read_image(path)
  colour = values[..., :3] if channels >= 3 else np.repeat(values[..., :1], 3, axis=-1)  # alpha dropped
  assert got.dtype == np.float32 and got.shape == (14, 9, 3)
  np.testing.assert_array_equal(got, _exact(colour))


def test_16bit_grey_png_exact(tmp_path):
  values = np.cumsum(np.random.default_rng(1).integers(0, 9000, (40, 50)), axis=1).astype(np.uint16)
  values[0, :3] = [0, 1, 65535]
  path = str(tmp_path / "g16.png")
  Image.fromarray(values).save(path)  # PIL writes I;16 with its own adaptive row filters
  got = images.read_image(path)
  assert got.dtype == np.float32 and got.shape == (40, 50, 3)
  np.testing.assert_array_equal(got, np.repeat(_exact(values)[..., None], 3, axis=-1))
  # The 16-bit PNG decoder agrees with PIL's exact I;16 reading on PIL's filters (sub, up, Paeth).
  np.testing.assert_array_equal(images._decode_png16(path), got)
  # A mid-grey 16-bit image is mid-grey after fitting (the bug read every 16-bit PNG as white).
  path2 = str(tmp_path / "mid.png")
  Image.fromarray(np.full((8, 12), 32768, np.uint16)).save(path2)
  np.testing.assert_allclose(images.fit_image(images.read_image(path2), 4), 32768 / 65535, rtol=1e-6)
  np.testing.assert_allclose(images.load_images(str(tmp_path), ["mid.png"], 4)[0], 32768 / 65535,
                             rtol=1e-6)


def test_8bit_and_other_modes(tmp_path):
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (5, 6, 3), np.uint8)
  grey = rng.integers(0, 256, (5, 6), np.uint8)

  def roundtrip(im, name):
    path = str(tmp_path / name)
    im.save(path)
    return images.read_image(path)

  np.testing.assert_array_equal(roundtrip(Image.fromarray(rgb), "rgb.png"), rgb)
  np.testing.assert_array_equal(roundtrip(Image.fromarray(grey), "l.png"), np.repeat(grey[..., None], 3, -1))
  rgba = np.concatenate([rgb, rng.integers(0, 256, (5, 6, 1), np.uint8)], -1)
  np.testing.assert_array_equal(roundtrip(Image.fromarray(rgba, "RGBA"), "rgba.png"), rgb)
  la = np.stack([grey, 255 - grey], -1)
  np.testing.assert_array_equal(roundtrip(Image.fromarray(la, "LA"), "la.png"),
                                np.repeat(grey[..., None], 3, -1))
  pal = Image.fromarray(rgb).quantize(8)
  np.testing.assert_array_equal(roundtrip(pal, "p.png"), np.asarray(pal.convert("RGB")))
  bits = Image.fromarray(grey > 127)
  np.testing.assert_array_equal(roundtrip(bits, "one.png"), np.repeat(((grey > 127) * 255)[..., None], 3, -1))
  cmyk = Image.fromarray(rgb).convert("CMYK")
  np.testing.assert_array_equal(roundtrip(cmyk, "cmyk.tif"), np.asarray(cmyk.convert("RGB")))
  for out in (roundtrip(Image.fromarray(rgb), "x.png"), roundtrip(cmyk, "y.tif")):
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
  # I (32-bit integers holding 16-bit grey) and F (float intensities) keep their precision.
  ints = rng.integers(0, 65536, (5, 6)).astype(np.int32)
  np.testing.assert_array_equal(roundtrip(Image.fromarray(ints, "I"), "i.tif"),
                                np.repeat(_exact(ints)[..., None], 3, -1))
  floats = rng.random((5, 6)).astype(np.float32)
  got = roundtrip(Image.fromarray(floats, "F"), "f.tif")
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.repeat(floats[..., None], 3, -1))


def test_out_of_range_values_are_refused_by_name(tmp_path):
  path = str(tmp_path / "wide.tif")
  Image.fromarray(np.array([[0, 70000]], np.int32), "I").save(path)
  with pytest.raises(ValueError, match=r"wide\.tif.*mode I values must lie in \[0, 65535\].*70000"):
    images.read_image(path)
  path = str(tmp_path / "hdr.tif")
  Image.fromarray(np.array([[0.5, 2.0]], np.float32), "F").save(path)
  with pytest.raises(ValueError, match=r"hdr\.tif.*mode F values must lie in \[0, 1\]"):
    images.read_image(path)
  path = str(tmp_path / "nan.tif")
  Image.fromarray(np.array([[0.5, np.nan]], np.float32), "F").save(path)
  with pytest.raises(ValueError, match=r"nan\.tif.*mode F values"):
    images.read_image(path)
  (tmp_path / "junk.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match=r"cannot read image .*junk\.png"):
    images.read_image(str(tmp_path / "junk.png"))


def test_decompression_bomb_limit_names_the_file(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXTOK_MAX_PIXELS", raising=False)
  path = str(tmp_path / "big.png")
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
  # PIL's limit lowered so that 600 pixels are over twice of it (PIL itself would raise its
  # DecompressionBombError without the file name).
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
  with pytest.raises(ValueError, match=r"big\.png.* 30 x 20 = 600 pixels, over the limit of 100.*"
                                       r"max_pixels=600"):
    images.read_image(path)
  with pytest.raises(ValueError, match=r"big\.png.*over the limit of 599"):
    images.load_images(str(tmp_path), ["big.png"], 8, max_pixels=599)
  # An explicit limit allows it, beyond PIL's own; PIL's global limit is left as it was.
  assert images.read_image(path, max_pixels=600).shape == (20, 30, 3)
  assert images.read_image(path, max_pixels=float("inf")).shape == (20, 30, 3)
  assert next(images.batches(str(tmp_path), ["big.png"], 8, 1, max_pixels=600)).shape == (1, 8, 8, 3)
  assert Image.MAX_IMAGE_PIXELS == 100
  # The tools' way: JAXTOK_MAX_PIXELS, named in the message, overrides PIL's limit (not an explicit
  # argument); a malformed value is refused.
  with pytest.raises(ValueError, match="set JAXTOK_MAX_PIXELS=600 for the tools"):
    images.read_image(path)
  monkeypatch.setenv("JAXTOK_MAX_PIXELS", "600")
  assert images.read_image(path).shape == (20, 30, 3)
  with pytest.raises(ValueError, match="over the limit of 599"):
    images.read_image(path, max_pixels=599)
  monkeypatch.setenv("JAXTOK_MAX_PIXELS", "lots")
  with pytest.raises(ValueError, match="JAXTOK_MAX_PIXELS must be a number of pixels, got 'lots'"):
    images.read_image(path)
  monkeypatch.delenv("JAXTOK_MAX_PIXELS")
  # PIL's limit disabled (None) means no limit.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
  assert images.read_image(path).shape == (20, 30, 3)


def test_corrupt_16bit_png_is_refused_by_name(tmp_path):
  values = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3)
  path = tmp_path / "short.png"
  _write_png16(str(path), values, 2)
  data = path.read_bytes()
  ihdr = data.index(b"IHDR")

  def with_rows(rows):
    # The IHDR's height replaced (its CRC recomputed); the image data stays that of 2 rows.
    bad = data[:ihdr + 8] + rows.to_bytes(4, "big") + data[ihdr + 12:]
    return bad[:ihdr + 17] + struct.pack(">I", zlib.crc32(bad[ihdr:ihdr + 17])) + bad[ihdr + 21:]

  path.write_bytes(with_rows(4))
  with pytest.raises(ValueError, match=r"cannot read image .*short\.png.*PNG data holds 38 bytes, "
                                       r"expected 76"):
    images.read_image(str(path))
  # More data than the header promises: inflated only one byte past it, then refused.
  path.write_bytes(with_rows(1))
  with pytest.raises(ValueError, match=r"short\.png.*PNG data holds more than 20 bytes, expected 19"):
    images.read_image(str(path))
