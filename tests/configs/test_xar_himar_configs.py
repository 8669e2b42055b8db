"""The xAR and Hi-MAR generator configs: arguments (entity kind as a string), sizes, bad values."""
import pytest

from jaxtok.configs import himar_vae, xar_vae


def test_xar_config_arguments():
  c = xar_vae.get_config("tiny,entity=scale,entity_size=0")
  assert c.model.name == "xar" and c.model.entity == "scale" and c.model.entity_size == 0
  assert (c.model.seq_len, c.model.grid_width, c.model.token_dim) == (8, 4, 4)
  assert xar_vae.get_config("tiny").model.entity == "cell"
  full = xar_vae.get_config("size=B,classes=10")
  assert (full.model.width, full.model.depth, full.model.num_classes) == (768, 16, 10)
  assert full.model.seq_len == 256 and full.model.entity_size == 8 and full.sampling.num_steps == 40
  with pytest.raises(ValueError, match="unknown config argument 'entity_sz'"):
    xar_vae.get_config("tiny,entity_sz=2")
  with pytest.raises(ValueError, match="'entity_size' must be an int"):
    xar_vae.get_config("tiny,entity_size=two")


def test_himar_config_arguments():
  c = himar_vae.get_config("tiny,classes=3")
  assert c.model.name == "himar" and c.model.num_classes == 3 and c.model.pivot_factor == 2
  assert c.total_steps == 4 and c.data.batch_size == 8
  full = himar_vae.get_config("size=L")
  assert (full.model.width, full.model.seq_len, full.model.pivot_factor) == (1024, 256, 4)
  with pytest.raises(ValueError, match="unknown config argument 'pivots'"):
    himar_vae.get_config("pivots=4")
