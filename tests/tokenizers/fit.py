"""A shared check of the tokenizer tests: fitting one fixed batch with the train step's loss."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def fixed_batch_losses(tok, params, images, steps, lr=3e-3, tx=None):
  """Adam (or the optax `tx` given) on one batch with one rng (same noise and timesteps every step),
  the train step's loss (l1 on recon + the model's losses; model state carried): (loss per step
  float [steps], the final parameters)."""
  import optax
  from jaxtok.train import state as state_lib
  graphdef = tok.graphdef
  p, rest = state_lib.split_params(params)
  tx = optax.adam(lr) if tx is None else tx
  rng = jax.random.key(11)

  def loss_fn(p, rest):
    m = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))  # fresh Variables, as the step
    out = m.train_forward(images, rng=rng)
    total = jnp.mean(jnp.abs(out.recon - images)) + sum(out.losses.values())
    return total, nnx.state(m, nnx.Not(nnx.Param))

  @jax.jit
  def step(p, rest, opt):
    (loss, rest), g = jax.value_and_grad(loss_fn, has_aux=True)(p, rest)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), rest, opt, loss

  opt, losses = tx.init(p), []
  for _ in range(steps):
    p, rest, opt, loss = step(p, rest, opt)
    losses.append(float(loss))
  return np.array(losses), p
