"""Autoregressive token sampling with a preallocated cache carried through one lax.while_loop.

B: batch, P: prompt length, N: generated tokens (static maximum), V: vocabulary.
Contract (``jaxtok.generators.gpt.GPT.prefill`` / ``.step`` satisfy it):
  ``prefill_fn(tokens int32 [B', P], cache) -> (logits [B', V] for sequence index P, cache)``
  ``step_fn(token int32 [B'], position int32 scalar, cache) -> (logits [B', V] for position+1, cache)``
  where ``position`` is the sequence index of ``token`` (prompt first) and B' is B, or 2B with
  guidance.
Token groups: when the callables return logits [B', G, V], each step draws G tokens at once
(independently given the prefix, one noise draw of shape [B, G, V]) and feeds the group int32
[B', G] back; the output is then [B, N, G] (``jaxtok.generators.token_shuffle``: G = s^2 tokens of a
merged window). ``sample_recompute`` takes single tokens only.

Guidance: pass ``uncond_prompt_tokens`` [B, P] (e.g. the null class id); the prompt and it run as
one batch of 2B through the callables ([cond; uncond], so the cache must be made for 2B), each
drawn token is fed to both halves, and the logits are combined with ``guidance.cfg_uncond_base`` at
the scale ``guidance.scale_at(cfg_schedule, cfg_scale, i / N, cfg_power)`` for token i (RAR's
progress convention). Filters apply after guidance: logits / temperature -> top-k -> top-p.

Variable length (FlexTok / One-D-Piece ordered tokens, any prefix is decodable): ``lengths`` int32
[B] gives each sample's number of tokens; the loop stops after max(lengths) tokens (later steps are
never computed) and positions >= lengths[b] hold ``pad_id``. Since token i always uses the noise
``fold_in(rng, i)``, a sample of length L is the first L tokens of the full-length sample: decode
``tokens[:, :L]`` or pass the lengths as the decoder's keep count.

Teacher forcing (RobusTok's generator-sampled post-training, qiuk2/RobusTok `RAR/rar.py generate(prob=)`):
``forced=(tokens int32 [B, N], keep bool [B, N])`` replaces drawn token i by ``tokens[:, i]`` where
``keep[:, i]``, and the replaced token is what the next steps condition on, so the result is a
sequence sampled from the model along a partly ground-truth prefix. The noise of token i stays
``fold_in(rng, i)``, so positions that are not kept draw exactly what an unforced run would draw
from the same logits.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.nn import block
from jaxtok.samplers import _checks, categorical, guidance


def _check(num_tokens, lengths, uncond, prompt, cfg_schedule, forced=None):
  _checks.positive_int("num_tokens", num_tokens)
  if forced is not None:
    if not isinstance(forced, (tuple, list)) or len(forced) != 2:
      raise TypeError(f"forced must be a pair (tokens int32 [B, N], keep bool [B, N]), got "
                      f"{type(forced).__name__}")
    want = (prompt.shape[0], num_tokens)
    for name, a in zip(("forced tokens", "forced keep"), forced):
      if tuple(jnp.shape(a)) != want:
        raise ValueError(f"{name} must have shape {want} (batch, num_tokens), got {tuple(jnp.shape(a))}")
    if jnp.asarray(forced[1]).dtype != jnp.bool_:
      raise TypeError(f"forced keep must be bool, got {jnp.asarray(forced[1]).dtype}")
  guidance.check_schedule(cfg_schedule)
  if uncond is not None and tuple(uncond.shape) != tuple(prompt.shape):
    raise ValueError(f"uncond_prompt_tokens must have the prompt's shape {tuple(prompt.shape)}, "
                     f"got {tuple(uncond.shape)}")
  if lengths is not None:
    if tuple(jnp.shape(lengths)) != (prompt.shape[0],):
      raise ValueError(f"lengths must have shape ({prompt.shape[0]},), got {tuple(jnp.shape(lengths))}")
    if _checks.is_concrete(lengths):
      lo, hi = int(np.min(np.asarray(lengths))), int(np.max(np.asarray(lengths)))
      if lo < 1 or hi > num_tokens:
        raise ValueError(f"lengths must be in [1, num_tokens={num_tokens}], got min {lo}, max {hi}")


def length_mask(lengths, num_tokens):
  """bool [B, N]: True where position < lengths[b] (the generated part of each sample)."""
  return jnp.arange(num_tokens)[None, :] < jnp.asarray(lengths)[:, None]


def make_drawer(rng, b, num_tokens, guided, *, temperature, top_k, top_p, cfg_scale, cfg_schedule,
                cfg_power):
  """draw(logits [B', ..., V], i) -> tokens int32 [B, ...] of step i of num_tokens: guidance
  (``guidance.cfg_uncond_base`` of the [cond; uncond] halves at the schedule's scale for i /
  num_tokens), then temperature, top-k, top-p and the noise fold_in(rng, i). Shared with the
  samplers that decode a fixed number of steps (``samplers.neighbor``)."""
  def draw(logits, i):
    if guided:
      s = guidance.scale_at(cfg_schedule, cfg_scale, i / num_tokens, cfg_power)
      logits = guidance.cfg_uncond_base(logits[:b], logits[b:], s)
    return categorical.sample(jax.random.fold_in(rng, i), logits, temperature=temperature,
                              top_k=top_k, top_p=top_p)
  return draw


def _finish(out, lengths, num_tokens, pad_id):
  if lengths is None:
    return out
  keep = length_mask(lengths, num_tokens).reshape(out.shape[:2] + (1,) * (out.ndim - 2))
  return jnp.where(keep, out, jnp.int32(pad_id))


def _setup(rng, prompt_tokens, uncond_prompt_tokens, num_tokens, lengths, *, cfg_scale,
           cfg_schedule, forced=None, **draw_opts):
  """Checks the arguments of both samplers; (B, P, guided, draw) for their loops (draw applies
  `forced`)."""
  _check(num_tokens, lengths, uncond_prompt_tokens, prompt_tokens, cfg_schedule, forced)
  guidance.check_scale(cfg_scale)
  b, p = prompt_tokens.shape
  guided = uncond_prompt_tokens is not None
  draw = make_drawer(rng, b, num_tokens, guided, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule,
                 **draw_opts)
  if forced is not None:
    tokens, keep = jnp.asarray(forced[0], jnp.int32), jnp.asarray(forced[1])
    plain = draw

    def draw(logits, i):  # pylint: disable=function-redefined
      return jnp.where(keep[:, i], tokens[:, i], plain(logits, i))
  return b, p, guided, draw


def sample(rng, prefill_fn, step_fn, cache, prompt_tokens, *, num_tokens, temperature=1.0,
           top_k=None, top_p=None, uncond_prompt_tokens=None, cfg_scale=1.0,
           cfg_schedule="constant", cfg_power=1.0, lengths=None, pad_id=0, forced=None,
           segment=None, segment_fn=None):
  """Returns generated tokens int32 [B, N] ([B, N, G] for token groups; see the module docstring).

  cache: the callables' cache for B rows (2B with ``uncond_prompt_tokens``), any pytree.
  temperature >= 0 (0 = greedy), top_k in [1, V], top_p in (0, 1].
  forced: optional (tokens int32 [B, N], keep bool [B, N]), teacher forcing (module docstring);
    single tokens only.
  segment: optional int >= 1: run the steps in segments of this many tokens, each its own loop
    over caches only as long as the segment needs: every self-attention `nn.attention.KVCache` in
    `cache` (S slots) is cut to S - (N - end of the segment) slots and zero-padded to the next
    segment's length between loops (`nn.block.with_cache_length`), so a step reads the filled part
    of the cache instead of the whole preallocation. Exact for any step that writes one slot per
    call at consecutive slots (each call one further; the last call fits in S, so the segment's
    calls fit in the cut cache); the later slots are masked either way, so the tokens are the
    same. Costs one compiled copy of the step per segment; a cache with no KVCache is left alone.
    At RAR's size on 2 CPU cores, attention over the whole 257-slot cache was a third of a step
    (benchmarks/RESULTS.md, "Against the originals").
  segment_fn: optional, with segment: ``segment_fn(cache, first, stop) -> cache`` is called
    before each segment's loop with the (static) positions [first, stop) its steps run at, for
    per-segment work that does not depend on the sampled tokens (``RAR.prepare_segment``: every
    AdaLN modulation of the segment in one product per block).
  """
  b, p, guided, draw = _setup(rng, prompt_tokens, uncond_prompt_tokens, num_tokens, lengths,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_power=cfg_power,
                              forced=forced)
  if segment is not None:
    _checks.positive_int("segment", segment)
  elif segment_fn is not None:
    raise ValueError("segment_fn needs segment (the number of tokens per segment)")
  feed = (lambda t: jnp.concatenate([t, t])) if guided else (lambda t: t)
  prompt = jnp.concatenate([prompt_tokens, uncond_prompt_tokens]) if guided else prompt_tokens
  logits, cache = prefill_fn(prompt.astype(jnp.int32), cache)
  first = draw(logits, 0)
  out = jnp.zeros((b, num_tokens) + first.shape[1:], jnp.int32).at[:, 0].set(first)
  stop = num_tokens if lengths is None else jnp.max(lengths)

  # Token i comes from the logits of step_fn(token i-1); no call is made after the last token.
  def body(carry):
    i, prev, cache, out = carry
    logits, cache = step_fn(feed(prev), p + i - 1, cache)
    tok = draw(logits, i)
    return i + 1, tok, cache, out.at[:, i].set(tok)

  carry = (jnp.int32(1), first, cache, out)
  if segment is None:
    return _finish(jax.lax.while_loop(lambda c: c[0] < stop, body, carry)[3], lengths, num_tokens,
                   pad_id)
  full = block.self_cache_length(cache)
  for s0 in range(1, num_tokens, segment):
    # Step i writes slot c + i (c: the model's offset); the last, i = N - 1, fits in the full
    # length S, so c + s1 - 1 < S - (N - s1) slots hold steps i < s1. (A window read of the full
    # cache instead made XLA fuse each step's cache write into that read and copy the whole cache
    # twice per step to keep the in-place write apart from it.)
    s1 = min(s0 + segment, num_tokens)
    i, prev, cache, out = carry
    if full is not None:
      cache = block.with_cache_length(cache, full - (num_tokens - s1))
    if segment_fn is not None:
      cache = segment_fn(cache, p + s0 - 1, p + s1 - 1)
    carry = (i, prev, cache, out)
    carry = jax.lax.while_loop(lambda c, s1=s1: c[0] < jnp.minimum(stop, s1), body, carry)
  return _finish(carry[3], lengths, num_tokens, pad_id)


def sample_recompute(rng, logits_fn, prompt_tokens, *, num_tokens, temperature=1.0, top_k=None,
                     top_p=None, uncond_prompt_tokens=None, cfg_scale=1.0, cfg_schedule="constant",
                     cfg_power=1.0, lengths=None, pad_id=0, forced=None):
  """Reference sampler without a cache, same options and same draws as `sample`.

  ``logits_fn(seq int32 [B', P+N], length) -> logits [B', V]`` for the token at sequence index
  ``length`` given ``seq[:, :length]`` (later entries are padding). All N steps run (a scan).
  """
  b, p, guided, draw = _setup(rng, prompt_tokens, uncond_prompt_tokens, num_tokens, lengths,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_power=cfg_power,
                              forced=forced)
  prompt = jnp.concatenate([prompt_tokens, uncond_prompt_tokens]) if guided else prompt_tokens
  seq = jnp.concatenate([prompt.astype(jnp.int32), jnp.zeros((prompt.shape[0], num_tokens), jnp.int32)], 1)

  def body(seq, i):
    tok = draw(logits_fn(seq, p + i), i)
    tok2 = jnp.concatenate([tok, tok]) if guided else tok
    return seq.at[:, p + i].set(tok2), None

  out = jax.lax.scan(body, seq, jnp.arange(num_tokens))[0][:b, p:]
  return _finish(out, lengths, num_tokens, pad_id)
