"""Optimiser of LT-DPT: trainable/frozen partition, SGD + coupled weight decay + cosine, and GNM.

`param_labels`, `split_params` and `merge_params` partition the parameters; `make_optimizer`
builds the paper's optimiser from the config's optim section: `GNM` (Gaussian neighbourhood
minimisation) around SGD with coupled weight decay (`sgd_coupled`) and a cosine schedule
(`learning_rate`). Pretraining a backbone uses `make_pretrain_optimizer` (AdamW).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from ltdpt_jax import config_lib

TRAINABLE = 'trainable'
FROZEN = 'frozen'
# Folded into the seed so the GNM noise stream differs from streams made from the same seed.
_GNM_STREAM = 0x474E4D  # 'GNM'


# ----------------------------------------------------------------------------------------------
# Partition.


def _key_name(k) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_name(path) -> str:
  """'/'-joined name of a `jax.tree_util` key path, e.g. 'backbone/encoder/kernel'."""
  return '/'.join(_key_name(k) for k in path)


def _compile(patterns: str | Sequence[str]) -> list[re.Pattern]:
  if isinstance(patterns, str):
    patterns = (patterns,)
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f'Invalid regex {p!r} in config.optim.frozen_patterns: {e}') from e
  return out


def param_labels(params: Any,
                 frozen_patterns: str | Sequence[str] = config_lib.FROZEN_PATTERNS) -> Any:
  """A tree like `params` whose leaves are 'frozen' (path matches a pattern) or 'trainable'.

  `frozen_patterns` is config.optim.frozen_patterns (big_vision style regexes), so a config can
  move parts between partitions. Paths are '/'-joined keys
  ('backbone/Transformer/encoderblock_0/...'); a pattern matches with `re.search`, so anchor it
  with '^' to match from the root.
  """
  regexes = _compile(frozen_patterns)

  def label(path, _):
    name = path_name(path)
    return FROZEN if any(r.search(name) for r in regexes) else TRAINABLE

  return jax.tree_util.tree_map_with_path(label, params)


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), keep_empty_nodes=False)


def split_params(params: Any, labels: Any | Callable[[Any], Any]) -> tuple[dict, dict]:
  """Splits a nested params dict into (trainable, frozen) nested dicts by `labels`.

  labels: the tree from `param_labels` (or a callable params -> labels). Empty branches are
  dropped, so e.g. `frozen` is {} when nothing is frozen.
  """
  if callable(labels):
    labels = labels(params)
  flat_p, flat_l = _flat(params), _flat(labels)
  if flat_p.keys() != flat_l.keys():
    raise ValueError('labels must have the same structure as params (use param_labels(params)).')
  bad = {v for v in flat_l.values() if v not in (TRAINABLE, FROZEN)}
  if bad:
    raise ValueError(f"labels must be '{TRAINABLE}' or '{FROZEN}'; got {sorted(map(str, bad))}.")
  pick = lambda want: flax.traverse_util.unflatten_dict(
      {k: v for k, v in flat_p.items() if flat_l[k] == want})
  return pick(TRAINABLE), pick(FROZEN)


def merge_params(trainable: dict, frozen: dict) -> dict:
  """Inverse of `split_params`: one nested dict holding the leaves of both (disjoint) trees."""
  a, b = _flat(trainable), _flat(frozen)
  both = a.keys() & b.keys()
  if both:
    raise ValueError(f'Parameters in both partitions: {sorted("/".join(k) for k in both)[:5]}.')
  return flax.traverse_util.unflatten_dict({**b, **a})


# ----------------------------------------------------------------------------------------------
# GNM.


class GNMState(NamedTuple):
  """State of `GNM`: the raw uint32 key data of the noise stream and the wrapped state."""
  rng: jax.Array
  inner_state: Any


def clipped_normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """clip(N(0, 1) / 3, -1, 1): GNM-PT's `Normal(0, 1/3).sample().clamp(-1, 1)`."""
  return jnp.clip(jax.random.normal(key, shape, jnp.float32) / 3.0, -1.0, 1.0).astype(dtype)


@dataclasses.dataclass(frozen=True)
class GNM:
  """Gaussian neighbourhood minimisation around any optax optimiser (GNM-PT, NeurIPS 2024).

  Each step every trainable leaf is perturbed by eps = rho * dis_mul * c * clip(N(0, 1) / 3,
  -1, 1), the gradient is taken at theta + eps (one gradient evaluation), and the wrapped
  optimiser is updated with that gradient and the *unperturbed* theta. c = 1, halved to 0.5 once
  DRW is on (`gnm_scale`), is passed per step (it may be traced).

  Has optax's `init(params)` / `update(grads, state, params, **extra)`, plus
  `perturbation(state, params, scale)`, `perturb(params, state, scale)` and
  `value_and_grad(fun, has_aux)` for the train step (`make_optimizer` shows one). Use `update`
  with the *unperturbed* params: the wrapped optimiser (e.g. its weight decay) sees them. The
  state `GNMState(rng, inner_state)` holds the key as raw uint32 key data (Orbax saves it like
  any array); it advances on every `update`, and the same state gives the same eps. rho = 0
  turns GNM off (no random draws; the state keeps its structure, so checkpoints stay compatible).

  Attributes:
    inner: the wrapped optax transformation (SGD by default, any works).
    rho, dis_mul: eps = rho * dis_mul * scale * clip(N(0,1)/3, -1, 1); rho * dis_mul = 0 is off.
    seed: the noise stream's seed (folded with a constant, so it differs from other streams).
    mask: None (perturb every leaf), a bool tree, or a callable params -> bool tree; False
      leaves are not perturbed (used when the full params tree holds frozen leaves).
  """
  inner: optax.GradientTransformation
  rho: float = 0.05
  dis_mul: float = 0.1
  seed: int = 0
  mask: Any = None

  def __post_init__(self):
    if self.rho < 0 or self.dis_mul < 0:
      raise ValueError(f'GNM needs rho >= 0 and dis_mul >= 0; got rho={self.rho}, '
                       f'dis_mul={self.dis_mul} (set config.optim.gnm_rho=0 to turn GNM off).')

  def init(self, params: Any) -> GNMState:
    key = jax.random.fold_in(jax.random.key(self.seed), _GNM_STREAM)
    return GNMState(rng=jax.random.key_data(key), inner_state=self.inner.init(params))

  def update(self, updates: Any, state: GNMState, params: Any = None,
             **extra_args) -> tuple[Any, GNMState]:
    """The wrapped optimiser's update (pass unperturbed `params`); advances the noise key."""
    inner = optax.with_extra_args_support(self.inner)
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    _, next_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    return new_updates, GNMState(rng=jax.random.key_data(next_key), inner_state=inner_state)

  @property
  def enabled(self) -> bool:
    return self.rho * self.dis_mul > 0

  def perturbation(self, state: GNMState, params: Any, scale: jax.typing.ArrayLike = 1.0) -> Any:
    """eps, a tree like `params`: rho * dis_mul * scale * clip(N(0,1)/3, -1, 1) per element.

    Deterministic in `state.rng` (the key `update` will advance). scale = c: 1, or 0.5 once DRW
    is on. Masked-out leaves and rho * dis_mul = 0 give zeros.
    """
    leaves, treedef = jax.tree.flatten(params)
    if not self.enabled:
      return jax.tree.unflatten(treedef, [jnp.zeros_like(x) for x in leaves])
    mask = self.mask(params) if callable(self.mask) else self.mask
    mask_leaves = ([True] * len(leaves) if mask is None
                   else treedef.flatten_up_to(mask))
    noise_key, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    keys = jax.random.split(noise_key, max(len(leaves), 1))
    amp = self.rho * self.dis_mul * jnp.asarray(scale, jnp.float32)
    eps = [(amp * clipped_normal(k, jnp.shape(x))).astype(jnp.result_type(x)) if m
           else jnp.zeros_like(x)
           for k, x, m in zip(keys, leaves, mask_leaves)]
    return jax.tree.unflatten(treedef, eps)

  def perturb(self, params: Any, state: GNMState, scale: jax.typing.ArrayLike = 1.0) -> Any:
    """params + eps (params unchanged when GNM is off)."""
    if not self.enabled:
      return params
    return jax.tree.map(jnp.add, params, self.perturbation(state, params, scale))

  def value_and_grad(self, fun: Callable[..., Any], *, has_aux: bool = False) -> Callable:
    """`jax.value_and_grad(fun, has_aux)` evaluated at the GNM-perturbed first argument.

    Returns `g(params, state, *args, scale=1.0, **kwargs) -> (value, grads)` with `value =
    fun(params + eps, *args, **kwargs)` and grads its gradient there (one evaluation).
    """
    vg = jax.value_and_grad(fun, has_aux=has_aux)

    def wrapped(params, state, *args, scale=1.0, **kwargs):
      return vg(self.perturb(params, state, scale), *args, **kwargs)

    return wrapped


def gnm(inner: optax.GradientTransformation, *, rho: float = 0.05, dis_mul: float = 0.1,
        seed: int = 0, mask: Any = None) -> GNM:
  """Wraps `inner` with Gaussian neighbourhood minimisation (see `GNM`)."""
  return GNM(inner=inner, rho=float(rho), dis_mul=float(dis_mul), seed=int(seed), mask=mask)


def drw_active(step: jax.typing.ArrayLike, *, drw_start_step: int) -> jax.Array:
  """True from the first step of the DRW epochs on (e.g. epoch 60 of 70); works traced."""
  return jnp.asarray(step) >= drw_start_step


def gnm_scale(drw_on: jax.typing.ArrayLike) -> jax.Array:
  """GNM's c: 1.0, halved to 0.5 once DRW is on (GNM-PT `0.5**((epoch-1)//reweight_epoch)`)."""
  return jnp.where(drw_on, 0.5, 1.0).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# The optimiser of the paper.


def peak_learning_rate(optim_config, global_batch: int) -> float:
  """`optim.lr` scaled linearly: lr * global_batch / optim.lr_base_batch."""
  return float(optim_config.lr) * float(global_batch) / float(optim_config.lr_base_batch)


def learning_rate(optim_config, total_steps: int, global_batch: int) -> optax.Schedule:
  """Per-step cosine decay from the (batch-scaled) lr to 0 over `total_steps`, no warm-up."""
  if total_steps <= 0:
    raise ValueError(f'total_steps must be > 0; got {total_steps}.')
  return optax.cosine_decay_schedule(peak_learning_rate(optim_config, global_batch),
                                     decay_steps=int(total_steps), alpha=0.0)


def sgd_coupled(lr: optax.ScalarOrSchedule, *, momentum: float = 0.9,
                weight_decay: float = 0.01) -> optax.GradientTransformation:
  """PyTorch SGD(momentum, weight_decay): decay added to the gradient before the momentum.

  g' = g + wd * theta (coupled decay); buf = momentum * buf + g' (buf_1 = g'_1, no dampening,
  no Nesterov); theta -= lr_t * buf. The paper's (Section 5.3): momentum 0.9, weight decay 0.01.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(lr, momentum=momentum if momentum > 0 else None, nesterov=False))


def make_optimizer(optim_config, *, total_steps: int, global_batch: int, seed: int) -> GNM:
  """The paper's optimiser: GNM(multi_transform({'trainable': SGD, 'frozen': set_to_zero})).

  Reads the config's optim section: {lr, lr_base_batch, momentum, weight_decay, gnm_rho,
  gnm_dis_mul, frozen_patterns}; `global_batch` scales the lr, `seed` (config.train.seed) seeds
  GNM's noise. Init and update it on the trainable subtree: the train step keeps the frozen
  backbone as a separate, non-differentiated argument, so no backbone weight gradient is computed
  and the optimiser state covers only the trainable parameters. Given the full tree instead, the
  frozen leaves get zero updates and empty (`MaskedNode`) state, and GNM does not perturb them.

  A train step (loss and aux metrics come from the single gradient evaluation)::

    tx = optim.make_optimizer(config.optim, total_steps=total_steps,
                              global_batch=config.data.batch_size, seed=config.train.seed)
    trainable, frozen = optim.split_params(
        params, optim.param_labels(params, config.optim.frozen_patterns))
    opt_state = tx.init(trainable)

    def train_step(trainable, opt_state, frozen, batch, step):
      def loss_fn(tr):
        logits = model.apply({'params': optim.merge_params(tr, frozen)}, batch['image'], ...)
        loss = ...
        return loss, {'loss': loss}
      c = optim.gnm_scale(optim.drw_active(step, drw_start_step=drw_start))
      (loss, aux), grads = tx.value_and_grad(loss_fn, has_aux=True)(trainable, opt_state,
                                                                    scale=c)
      updates, opt_state = tx.update(grads, opt_state, trainable)   # unperturbed params
      return optax.apply_updates(trainable, updates), opt_state, aux
  """
  o = optim_config
  patterns = tuple(o.frozen_patterns)
  labels_fn = lambda tree: param_labels(tree, patterns)
  base = sgd_coupled(learning_rate(o, total_steps, global_batch),
                     momentum=float(o.momentum), weight_decay=float(o.weight_decay))
  tx = optax.multi_transform({TRAINABLE: base, FROZEN: optax.set_to_zero()}, labels_fn)
  trainable_mask = lambda tree: jax.tree.map(lambda l: l == TRAINABLE, labels_fn(tree))
  return gnm(tx, rho=o.gnm_rho, dis_mul=o.gnm_dis_mul, seed=seed, mask=trainable_mask)


# ----------------------------------------------------------------------------------------------
# Pretraining a backbone (config.model.method = 'pretrain'): AdamW, every weight trained.


def pretrain_learning_rate(optim_config, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 at `total_steps`."""
  warmup = int(round(float(optim_config.warmup_epochs) * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(optim_config.lr), warmup_steps=warmup,
      decay_steps=max(total_steps, 1), end_value=0.0)


def kernels_only(params: Any) -> Any:
  """The weight-decay mask of pretraining: the kernels, not biases, LayerNorm, CLS or position
  embedding."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def make_pretrain_optimizer(optim_config, *, total_steps: int,
                            steps_per_epoch: int) -> optax.GradientTransformation:
  """optax AdamW (`b1`, `b2`, decoupled `weight_decay` on the kernels) on the warm-up + cosine
  schedule, after clipping the gradients to global norm `grad_clip_norm` (0: no clipping)."""
  o = optim_config
  adamw = optax.adamw(pretrain_learning_rate(o, total_steps, steps_per_epoch), b1=float(o.b1),
                      b2=float(o.b2), weight_decay=float(o.weight_decay), mask=kernels_only)
  if float(o.grad_clip_norm) > 0:
    return optax.chain(optax.clip_by_global_norm(float(o.grad_clip_norm)), adamw)
  return adamw
