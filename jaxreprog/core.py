"""The survey's one equation as types: ``y_T = O_ω ∘ f ∘ I_{λ,τ,ℓ}(x_T, c)``.

* :class:`FrozenModel` — ``f``: a pure ``apply(params, x, hook=None)`` with its
  parameters *beside* it, never inside it, and an input :class:`ImageSpec` /
  :class:`TokenSpec` / :class:`SequenceSpec`.
* ``I`` — one small type per calling convention (the optax shape: a tuple of pure
  functions): :class:`InputTransform` ``apply(theta, x, spec, *, key=None) -> x'``
  on the target input, :class:`SiteHook` ``apply(theta, site, value, spec) -> value``
  at the frozen model's named sites (embedding and hidden locations).
* :class:`Alignment` — ``O_ω``: ``init``/``apply``, plus an optional streaming
  statistics protocol so statistical mappings refit from the training pass itself.
* :func:`reprogram` — composes them into a :class:`Reprogrammed` program whose
  ``apply(theta, frozen_params, x)`` takes the frozen weights as an argument and
  stops their gradient. :func:`chain` composes transforms of one type.

Every part's theta learns unless the part says otherwise (``trainable``;
:func:`fixed`). Taxonomy tags are metadata: they never decide how a part is called
or whether it learns, and a user's own part needs none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog import checking
from jaxreprog.hooks import Selector, no_match_message
from jaxreprog.taxonomy import Origin, OutputAlignment, Tags

__all__ = [
    "Alignment",
    "FrozenModel",
    "Hook",
    "ImageSpec",
    "InputTransform",
    "Refit",
    "Reprogrammed",
    "SequenceSpec",
    "Site",
    "SiteHook",
    "Spec",
    "TokenSpec",
    "chain",
    "fixed",
    "from_linen",
    "from_nnx",
    "intercept",
    "reprogram",
    "trainable_mask",
]

PyTree = Any
Array = jax.Array
PRNGKey = jax.Array
Hook = Callable[[str, Any], Any]
"""``hook(site, value) -> value``: called by a frozen model at each named site."""


# --------------------------------------------------------------------------- specs


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (size, size) if np.ndim(size) == 0 else size
        return (operator.index(h), operator.index(w))  # ints, NumPy ints; never a float
    except (TypeError, ValueError):
        raise TypeError(f"ImageSpec.size must be an int or a pair (h, w) of ints, got {size!r}") from None


def _per_channel(v: float | Sequence[float], channels: int, name: str) -> tuple[float, ...]:
    try:
        v = (float(v),) * channels if np.ndim(v) == 0 else tuple(float(a) for a in v)
    except (TypeError, ValueError):
        raise TypeError(f"ImageSpec.{name} must be a number or one per channel, got {v!r}") from None
    if len(v) != channels:
        raise ValueError(f"ImageSpec.{name} has {len(v)} values; expected one per channel ({channels})")
    return v


def _floating_images(x: Any, name: str, what: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating point {what}, got dtype {x.dtype}")
    return x


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What a frozen vision model expects: NHWC images of ``size`` in ``value_range``,
    then ``(x - mean) / std`` (mean/std in units of ``value_range``).

    Input manipulations work on images in [0, 1] and call :meth:`normalize` last,
    so the model's own preprocessing drives theirs.
    """

    size: int | tuple[int, int]
    channels: int = 3
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    value_range: tuple[float, float] = (0.0, 1.0)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    name: str = ""

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "size", _pair(self.size))
        if min(self.size) <= 0 or self.channels <= 0:
            raise ValueError(
                f"ImageSpec: size and channels must be positive, got {self.size}, {self.channels}"
            )
        set_(self, "mean", _per_channel(self.mean, self.channels, "mean"))
        set_(self, "std", _per_channel(self.std, self.channels, "std"))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"ImageSpec.std must be positive, got {self.std}")
        lo, hi = self.value_range
        if not hi > lo:
            raise ValueError(
                f"ImageSpec.value_range must be (low, high) with high > low, got {self.value_range}"
            )
        set_(self, "value_range", (float(lo), float(hi)))
        if self.class_names is not None:
            set_(self, "class_names", tuple(self.class_names))
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise ValueError(
                    f"ImageSpec: {len(self.class_names)} class_names for num_classes={self.num_classes}"
                )

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape, (H, W, C)."""
        return (*self.size, self.channels)

    def normalize(self, x01: Array) -> Array:
        """[0, 1] image(s) -> the model's input: ``(lo + x (hi - lo) - mean) / std``.

        Floating point only (as the zoo models): integer images are rejected, not
        computed with mean/std cast to integers.
        """
        x01 = _floating_images(
            x01, "ImageSpec.normalize: x01", "images in [0, 1] (e.g. x.astype(jnp.float32) / 255)"
        )
        lo, hi = self.value_range
        mean, std = jnp.asarray(self.mean, x01.dtype), jnp.asarray(self.std, x01.dtype)
        return (lo + x01 * (hi - lo) - mean) / std

    def denormalize(self, x: Array) -> Array:
        """Inverse of :meth:`normalize`: the model's input -> [0, 1] scale."""
        x = _floating_images(x, "ImageSpec.denormalize: x", "(the model's normalised input)")
        lo, hi = self.value_range
        mean, std = jnp.asarray(self.mean, x.dtype), jnp.asarray(self.std, x.dtype)
        return (x * std + mean - lo) / (hi - lo)


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """What a frozen token model expects: ``{"input_ids", "attention_mask"}`` of int
    arrays ``(B, L)`` with ``L <= max_length``; the sizes prompts need to be built.

    ``max_length`` counts inserted prompt tokens too (it is the number of position
    embeddings). ``bos_id`` is the first token a model's tokenizer emits ([CLS] for
    BERT), ``eos_id`` the last ([SEP]; ``<|endoftext|>`` for GPT-2), ``None`` where
    there is none; ``causal`` marks decoders (a query sees keys at positions <= its own).
    ``head_size`` is the width of one attention head where it is not ``hidden_size /
    num_heads`` (Qwen3, Gemma), ``num_kv_heads`` the number of key/value heads where
    grouped-query attention shares them among the query heads (the Llama family), so that
    K/V prefixes get the model's shape.
    """

    vocab_size: int
    max_length: int
    hidden_size: int
    num_layers: int = 0
    num_heads: int = 0
    pad_id: int = 0
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    name: str = ""
    bos_id: int | None = None
    eos_id: int | None = None
    causal: bool = False
    head_size: int | None = None
    num_kv_heads: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__
        for field, low in (
            ("vocab_size", 1),
            ("max_length", 1),
            ("hidden_size", 1),
            ("num_layers", 0),
            ("num_heads", 0),
            ("pad_id", None),
        ):
            set_(self, field, checking.integer(getattr(self, field), field, who="TokenSpec", minimum=low))
        for field in ("head_size", "num_kv_heads"):
            if getattr(self, field) is not None:
                set_(self, field, checking.integer(getattr(self, field), field, who="TokenSpec"))
        if self.num_kv_heads is not None and not (
            self.num_kv_heads <= self.num_heads and self.num_heads % self.num_kv_heads == 0
        ):
            raise ValueError(
                f"TokenSpec: num_kv_heads must divide num_heads={self.num_heads}, got {self.num_kv_heads}"
            )
        if self.num_heads and self.head_size is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"TokenSpec: hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads} "
                "(or give head_size)"
            )
        for field in ("pad_id", "bos_id", "eos_id"):
            v = getattr(self, field)
            if (
                v is not None
                and not 0 <= checking.integer(v, field, who="TokenSpec", minimum=None) < self.vocab_size
            ):
                raise ValueError(f"TokenSpec: {field} must be a token id in [0, {self.vocab_size}), got {v}")
        if self.class_names is not None:
            set_(self, "class_names", tuple(self.class_names))
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise ValueError(
                    f"TokenSpec: {len(self.class_names)} class_names for num_classes={self.num_classes}"
                )

    @property
    def head_dim(self) -> int:
        """The width of one attention head (0 for a model without heads)."""
        if self.head_size is not None:
            return self.head_size
        return self.hidden_size // self.num_heads if self.num_heads else 0


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """What a frozen 1-D model (audio, time series) expects: ``(B, length, channels)``
    in ``value_range``, then ``(x - mean) / std``."""

    length: int
    channels: int = 1
    mean: float = 0.0
    std: float = 1.0
    value_range: tuple[float, float] = (-1.0, 1.0)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    name: str = ""

    def __post_init__(self):
        for field in ("length", "channels"):
            object.__setattr__(self, field, checking.integer(getattr(self, field), field, who="SequenceSpec"))
        if not self.std > 0:
            raise ValueError(f"SequenceSpec.std must be positive, got {self.std}")
        lo, hi = self.value_range
        if not hi > lo:
            raise ValueError(
                f"SequenceSpec.value_range must be (low, high) with high > low, got {self.value_range}"
            )

    def normalize(self, x: Array) -> Array:
        return (x - self.mean) / self.std


Spec = ImageSpec | TokenSpec | SequenceSpec


# --------------------------------------------------------------- the three parts

Trainable = bool | Callable[[PyTree], PyTree]
"""Which leaves of a part's theta learn: a bool for all of them, or ``theta -> pytree of bools``."""


def _short(v: Any) -> str:
    """An argument as a reader wants it on one line: arrays by dtype and shape, parts by factory."""
    if isinstance(v, np.ndarray | jax.Array):
        return f"{np.dtype(v.dtype).name}{list(np.shape(v))}"
    if isinstance(v, InputTransform | SiteHook | Alignment):
        return _part_repr(v)
    if isinstance(v, list | tuple):
        inner = ", ".join(map(_short, v))
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _part_repr(part: Any) -> str:
    """``jr.input.pad(target_size=6, init='zero')``: how the part was built (a user's own: its type)."""
    if part.origin is None:
        text = f"{type(part).__name__}(<own>)"
    else:
        args = ", ".join(f"{k}={_short(v)}" for k, v in part.origin.arguments.items())
        text = f"{part.origin.factory}({args})"
    refit = isinstance(part, Alignment) and part.schedule is not Refit.NEVER  # held by design, refit
    return f"jr.fixed({text})" if part.trainable is False and not refit else text


def _treescope(obj: Any, attributes: Sequence[str], path: Any, subtree_renderer: Any) -> Any:
    """Render ``obj`` in treescope as ``Type(attr=..., ...)`` over the attributes a reader needs
    (factories, arguments, tags, parameters), not the functions (``__treescope_repr__``)."""
    from treescope import repr_lib

    return repr_lib.render_object_constructor(
        type(obj), {a: getattr(obj, a) for a in attributes}, path, subtree_renderer
    )


class InputTransform(NamedTuple):
    """``I`` at the input location: ``x' = apply(theta, x, spec, key=key)``.

    The optax shape: two pure functions, and optional extras. A transform needs no
    tags and no registry entry to compose with :func:`reprogram`, :func:`chain` and
    the trainers.

    Attributes:
      init: ``init(key, spec) -> theta`` (a pytree; ``()`` when there is nothing to learn).
      apply: ``apply(theta, x, spec, *, key=None) -> x'``: the target input to the
        source model's input; ``key`` drives stochastic transforms (a random patch).
      tags: taxonomy metadata (:func:`jaxreprog.taxonomy.register` sets it); never
        read to decide how the transform is called or whether it learns.
      trainable: which leaves of ``theta`` learn (default all; see :func:`fixed`).
      visualize: optional ``visualize(theta, spec) -> image in [0, 1]``.
      penalty: optional ``penalty(theta) -> scalar`` added to the training loss.
      origin: the factory and arguments that built it (set by ``register``, :func:`chain`):
        what :func:`jaxreprog.save` records so :func:`jaxreprog.load` can rebuild it.
      project: optional ``project(theta) -> theta``, a projection onto the feasible set
        that :func:`jaxreprog.train.make_step` applies after every update (projected
        gradient descent, as ``optax.projections``; e.g. AutoVP's scale clamp).
    """

    init: Callable[[PRNGKey, Spec], PyTree]
    apply: Callable[..., Any]
    tags: Tags | None = None
    trainable: Trainable = True
    visualize: Callable[[PyTree, Spec], Array] | None = None
    penalty: Callable[[PyTree], Array] | None = None
    origin: Origin | None = None
    project: Callable[[PyTree], PyTree] | None = None

    __repr__ = _part_repr

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope(self, ("origin", "tags", "trainable"), path, subtree_renderer)


class SiteHook(NamedTuple):
    """``I`` inside the model (embedding or hidden location), at its named sites.

    The frozen model calls ``apply(theta, site, value, spec)`` with every site's path
    and value (see :class:`Site`); a hook returns ``value`` unchanged where it does
    not act. Select sites with :func:`jaxreprog.select`.

    Attributes:
      init: ``init(key, spec) -> theta``.
      apply: ``apply(theta, site, value, spec) -> value``.
      tags, trainable, penalty, origin, project: as for :class:`InputTransform`.
      sites: the sites the hook acts on, checked by :func:`reprogram`: a selector that
        matches none of the model's sites is an error naming them (``None``: unchecked).
      bind: optional ``bind(theta, x) -> theta``: the theta ``apply`` gets during one forward
        pass, given that pass's batch ``x`` (as passed to :attr:`Reprogrammed.apply`). For
        parameters chosen per example by an entry of the batch that the frozen model does not
        read: a mixed-task prompt gathers each example's prompt by ``x["task"]``
        (:func:`jaxreprog.embedding.multitask_prompt`). :func:`reprogram` calls it once per call,
        after the fixed leaves' gradient is stopped; ``None``: ``apply`` gets theta itself.
    """

    init: Callable[[PRNGKey, Spec], PyTree]
    apply: Callable[[PyTree, str, Any, Spec], Any]
    tags: Tags | None = None
    trainable: Trainable = True
    penalty: Callable[[PyTree], Array] | None = None
    sites: Selector | None = None
    origin: Origin | None = None
    project: Callable[[PyTree], PyTree] | None = None
    bind: Callable[[PyTree, Any], PyTree] | None = None

    __repr__ = _part_repr

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope(self, ("origin", "tags", "trainable"), path, subtree_renderer)


class Refit(enum.Enum):
    """When a trainer refits an alignment from the statistics of a training pass."""

    NEVER = "never"  # identity, rule-based, gradient-trained (linear)
    ONCE = "once"  # before training, from the initial prompt (FLM, frequency map)
    EVERY_EPOCH = "every_epoch"  # ILM, BLM, BLM+


def _no_stats() -> tuple:
    return ()


def _keep_stats(stats, logits, labels):
    del logits, labels
    return stats


def _keep_state(state, stats):
    del stats
    return state


class Alignment(NamedTuple):
    """``O_ω``: maps the source model's logits ``(N, num_source)`` to the target's.

    ``Alignment(init, apply)`` is a complete alignment (its state learns by gradient
    unless ``trainable=False``). Statistical alignments (FLM, ILM, BLM, BLM+,
    FreqMap) add the streaming statistics protocol, so a trainer refits them from its
    own training pass with no extra pass over the data.

    Attributes:
      init: ``init(key) -> state``.
      apply: ``apply(state, source_logits) -> target_logits``.
      tags: taxonomy metadata, as for :class:`InputTransform`.
      trainable: which state leaves learn by gradient (statistical maps: ``False``).
      stats_init: ``stats_init() -> stats``.
      stats_update: ``stats_update(stats, source_logits, labels) -> stats``.
      refit_from_stats: ``refit_from_stats(state, stats) -> state``.
      schedule: when a trainer calls ``refit_from_stats``.
      origin: as for :class:`InputTransform`.
      stats_logits: optional ``stats_logits(state, source_logits) -> what stats_update sees``;
        ``None`` (every statistical map): the source logits themselves. An alignment that
        transforms the logits before an inner map (:func:`jaxreprog.output.logit_prompt`)
        sets it, so the inner map refits on what it maps. Trainers call :meth:`collect`.
    """

    init: Callable[[PRNGKey], PyTree]
    apply: Callable[[PyTree, Array], Array]
    tags: Tags | None = None
    trainable: Trainable = True
    stats_init: Callable[[], PyTree] = _no_stats
    stats_update: Callable[[PyTree, Array, Array], PyTree] = _keep_stats
    refit_from_stats: Callable[[PyTree, PyTree], PyTree] = _keep_state
    schedule: Refit = Refit.NEVER
    origin: Origin | None = None
    stats_logits: Callable[[PyTree, Array], Any] | None = None

    __repr__ = _part_repr

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope(self, ("origin", "tags", "trainable"), path, subtree_renderer)

    def collect(self, stats: PyTree, state: PyTree, source_logits: Array, labels: Array) -> PyTree:
        """``stats_update(stats, stats_logits(state, source_logits), labels)``: one batch's statistics
        (of the source logits themselves where ``stats_logits`` is ``None``)."""
        seen = source_logits if self.stats_logits is None else self.stats_logits(state, source_logits)
        return self.stats_update(stats, seen, labels)

    def refit(self, state: PyTree, source_logits: Array, labels: Array) -> PyTree:
        """One-batch refit: ``refit_from_stats(state, collect(stats_init(), state, logits, labels))``."""
        return self.refit_from_stats(state, self.collect(self.stats_init(), state, source_logits, labels))


Part = InputTransform | SiteHook | Alignment


def fixed(part: Part) -> Part:
    """The same transform or alignment with nothing learned: its theta is held fixed
    (never updated by a trainer, its gradient stopped).

    Example::

        >>> frozen_pad = jr.fixed(jr.input.pad(target_size=28))   # e.g. a trained, saved prompt
    """
    if not isinstance(part, InputTransform | SiteHook | Alignment):
        raise TypeError(
            f"fixed: expected a jr.InputTransform, jr.SiteHook or jr.Alignment, got {type(part).__name__}"
        )
    if isinstance(part, Alignment):
        return part._replace(trainable=False)
    return part._replace(trainable=False, project=None)  # a held theta is never moved, nor projected


def trainable_mask(part: Part, theta: PyTree) -> PyTree:
    """``part``'s trainable flags for ``theta``: a pytree of bools shaped like it."""
    flags = part.trainable(theta) if callable(part.trainable) else part.trainable
    if isinstance(flags, bool | np.bool_):
        return jax.tree.map(lambda _: bool(flags), theta)
    if jax.tree.structure(flags) != jax.tree.structure(theta):
        raise ValueError(
            f"{type(part).__name__}.trainable must give one bool per leaf of theta "
            f"({jax.tree.structure(theta)}), got {jax.tree.structure(flags)}"
        )
    return flags


def _no_state(key: PRNGKey) -> tuple:
    del key
    return ()


def _logits(state: PyTree, logits: Array) -> Array:
    del state
    return logits


IDENTITY = Alignment(_no_state, _logits, Tags(alignment=OutputAlignment.IDENTITY))
"""The output alignment of a program given no ``output=``: the source model's outputs as they are."""


# ----------------------------------------------------------------- frozen models


class FrozenModel(NamedTuple):
    """``f``: a frozen model. ``apply(params, x, hook=None) -> source logits``.

    ``params`` travel beside ``apply`` and are passed to it explicitly, so a
    compiled program never bakes the weights in as constants.
    """

    apply: Callable[..., Array]
    params: PyTree
    spec: Spec

    def __repr__(self) -> str:
        """One line: name, input, parameter count and bytes (never the weights themselves)."""
        leaves = jax.tree.leaves(self.params)
        count = sum(int(np.prod(np.shape(a))) for a in leaves)
        nbytes = sum(int(np.prod(np.shape(a))) * np.dtype(jnp.result_type(a)).itemsize for a in leaves)
        spec = self.spec
        what = {
            ImageSpec: lambda: f"images {spec.size[0]}x{spec.size[1]}x{spec.channels}",
            TokenSpec: lambda: f"tokens <= {spec.max_length}, vocabulary {spec.vocab_size}",
            SequenceSpec: lambda: f"sequences {spec.length}x{spec.channels}",
        }.get(type(spec), lambda: type(spec).__name__)()
        classes = f" -> {spec.num_classes} classes" if getattr(spec, "num_classes", None) else ""
        return (
            f"FrozenModel({getattr(spec, 'name', '') or 'unnamed'!r}, {what}{classes}, "
            f"{count:,} parameters, {nbytes / 2**20:.1f} MiB)"
        )

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope(self, ("spec", "params"), path, subtree_renderer)


class Site(nn.Module):
    """A named identity: a place in a model where a site hook may act.

    Zoo models call ``Site(name="embeddings")(h)``; :func:`from_linen` routes the
    value through the hook under the site's module path (``"encoder/layer_0/..."``).
    """

    @nn.compact
    def __call__(self, value):
        return value


@contextlib.contextmanager
def intercept(hook: Hook | None) -> Iterator[None]:
    """Within this context, every linen submodule's ``__call__`` output passes
    through ``hook("/".join(module.path), output)`` (``nn.intercept_methods``, no
    monkey-patching); ``hook=None`` is a no-op. How :func:`from_linen` models expose
    their sites; model code that runs several ``module.apply`` calls (cached
    generation) uses it directly.

    Modules that run *inside* a hook call (a hook's own linen module, e.g. P-tuning's
    prompt encoder) are not sites: their outputs do not go back into the hook.
    """
    if hook is None:
        yield
        return
    in_hook = False  # local to this context: True while the hook runs

    def interceptor(next_fun, args, kwargs, context):
        nonlocal in_hook
        out = next_fun(*args, **kwargs)
        if in_hook or context.method_name != "__call__":
            return out
        in_hook = True
        try:
            return hook("/".join(context.module.path), out)
        finally:
            in_hook = False

    with nn.intercept_methods(interceptor):
        yield


def from_linen(
    module: nn.Module,
    variables: PyTree,
    spec: Spec,
    *,
    method: str | Callable[..., Any] | None = None,
    **apply_kwargs: Any,
) -> FrozenModel:
    """Wrap a Flax linen module and its variables as a :class:`FrozenModel`.

    Sites are module paths: with a hook, every submodule's ``__call__`` output is
    passed through ``hook("/".join(path), output)`` via ``nn.intercept_methods``
    (no monkey-patching), which is how embedding- and hidden-location methods reach
    any linen model.

    Example::

        >>> model = jr.from_linen(net, variables, jr.ImageSpec(size=32, num_classes=10))
        >>> logits = model.apply(model.params, x)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen: module must be a flax.linen.Module, got {type(module).__name__}")
    _check_spec(spec)

    def apply(params, x, hook: Hook | None = None):
        with intercept(hook):
            return module.apply(params, x, method=method, **apply_kwargs)

    return FrozenModel(apply, variables, spec)


def from_nnx(module: Any, spec: Spec) -> FrozenModel:
    """Wrap a Flax NNX module as a :class:`FrozenModel` through ``nnx.split``/``merge``.

    The module's state becomes the explicit ``params``; ``apply`` merges a fresh
    module from the graph definition and those params on every call (pure).
    NNX models have no named sites: they serve input-location methods.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx: module must be a flax.nnx.Module, got {type(module).__name__}")
    _check_spec(spec)
    graphdef, state = nnx.split(module)

    def apply(params, x, hook: Hook | None = None):
        if hook is not None:
            raise ValueError(
                "from_nnx models expose no sites for embedding/hidden manipulations; "
                "use a zoo model or jr.from_linen"
            )
        return nnx.merge(graphdef, params)(x)

    return FrozenModel(apply, state, spec)


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, ImageSpec | TokenSpec | SequenceSpec):
        raise TypeError(
            f"spec must be a jr.ImageSpec, jr.TokenSpec or jr.SequenceSpec, got {type(spec).__name__}"
        )


# -------------------------------------------------------------------- composition


def chain(*transforms: InputTransform | SiteHook) -> InputTransform | SiteHook:
    """Compose transforms of one type; the first listed acts first.

    All :class:`InputTransform` (``x -> t_n(... t_1(x))``, e.g. a fixed instruction
    then a learned padding) or all :class:`SiteHook` (every hook sees every site, in
    order; the chain's ``sites`` selects what any part's selects, ``None`` if a part's
    is ``None``; its ``bind`` binds each part's theta with the part's own). ``theta`` is the
    tuple of the parts' thetas; tags are the union of theirs.
    """
    if not transforms:
        raise ValueError("chain() needs at least one transform")
    kinds = {type(t) for t in transforms}
    if not kinds <= {InputTransform, SiteHook} or len(kinds) > 1:
        got = ", ".join(type(t).__name__ for t in transforms)
        raise TypeError(f"chain: all arguments must be jr.InputTransform or all jr.SiteHook, got ({got})")
    (kind,) = kinds

    def init(key, spec):
        keys = jax.random.split(key, len(transforms))
        return tuple(t.init(k, spec) for t, k in zip(transforms, keys))

    def apply_input(theta, x, spec, *, key=None):
        keys = (None,) * len(transforms) if key is None else jax.random.split(key, len(transforms))
        for t, th, k in zip(transforms, theta, keys):
            x = t.apply(th, x, spec, key=k)
        return x

    def apply_site(theta, site, value, spec):
        for t, th in zip(transforms, theta):
            value = t.apply(th, site, value, spec)
        return value

    def trainable(theta):
        return tuple(trainable_mask(t, th) for t, th in zip(transforms, theta))

    penalties = [(i, t.penalty) for i, t in enumerate(transforms) if t.penalty is not None]

    def penalty(theta):
        return sum(p(theta[i]) for i, p in penalties)

    projects = {i: t.project for i, t in enumerate(transforms) if t.project is not None}

    def project(theta):
        return tuple(projects[i](th) if i in projects else th for i, th in enumerate(theta))

    tags = functools.reduce(operator.or_, (t.tags or Tags() for t in transforms))
    origin = Origin("jr.chain", {"transforms": transforms})
    penalty_fn = penalty if penalties else None
    project_fn = project if projects else None
    if kind is InputTransform:
        return InputTransform(init, apply_input, tags, trainable, None, penalty_fn, origin, project_fn)
    binds = {i: t.bind for i, t in enumerate(transforms) if t.bind is not None}

    def bind(theta, x):
        return tuple(binds[i](th, x) if i in binds else th for i, th in enumerate(theta))

    sites = _any_of([t.sites for t in transforms])
    bind_fn = bind if binds else None
    return SiteHook(init, apply_site, tags, trainable, penalty_fn, sites, origin, project_fn, bind_fn)


def _any_of(selectors: Sequence[Selector | None]) -> Selector | None:
    """A selector of the paths any of ``selectors`` selects; ``None`` if one of them is ``None``."""
    if any(s is None for s in selectors):
        return None
    parts: tuple[Selector, ...] = tuple(dict.fromkeys(selectors))  # type: ignore[arg-type]
    if len(parts) == 1:
        return parts[0]
    if all(s.predicate is None for s in parts):  # globs: their union is a glob selector
        return Selector(patterns=tuple(dict.fromkeys(p for s in parts for p in s.patterns)))

    def any_of(path: str) -> bool:
        return any(s.matches(path) for s in parts)

    any_of.__name__ = " | ".join(map(str, parts))
    return Selector(predicate=any_of)


class Reprogrammed(NamedTuple):
    """A reprogrammed model ``O ∘ f ∘ I``; all functions are pure.

    Attributes:
      init: ``init(key) -> theta``, a dict with one entry per part
        (``"input"``, ``"embedding"``, ``"hidden"``, ``"output"``).
      apply: ``apply(theta, frozen_params, x, key=None) -> target logits``. ``x`` may carry
        entries the frozen model does not read (``x["task"]`` of a mixed-task batch), which
        the site hooks' :attr:`SiteHook.bind` see.
      refit: ``refit(theta, source_logits, labels) -> theta`` (statistical alignments).
      source_logits: ``source_logits(theta, frozen_params, x, key=None)``, ``f ∘ I``.
      align: ``align(theta, source_logits) -> target logits``, ``O``.
      trainable: ``trainable(theta) -> pytree of bools``, True on learnable leaves.
      penalty: ``penalty(theta) -> scalar`` regulariser (0 when none).
      project: ``project(theta) -> theta``, each part's projection (identity when none);
        :func:`jaxreprog.train.make_step` applies it after every update.
      parts: the transforms by slot, and the alignment under ``"output"``.
      tags: union of the parts' tags.
      spec: the frozen model's input spec.
    """

    init: Callable[[PRNGKey], dict[str, PyTree]]
    apply: Callable[..., Array]
    refit: Callable[[dict[str, PyTree], Array, Array], dict[str, PyTree]]
    source_logits: Callable[..., Array]
    align: Callable[[dict[str, PyTree], Array], Array]
    trainable: Callable[[dict[str, PyTree]], PyTree]
    penalty: Callable[[dict[str, PyTree]], Array]
    project: Callable[[dict[str, PyTree]], dict[str, PyTree]]
    parts: Mapping[str, Part]
    tags: Tags
    spec: Spec

    @property
    def alignment(self) -> Alignment:
        return self.parts["output"]  # type: ignore[return-value]

    def __repr__(self) -> str:
        """``Reprogrammed(input=jr.input.pad(...), output=jr.output.ilm(...))``: the parts as built."""
        parts = ", ".join(f"{slot}={part!r}" for slot, part in self.parts.items())
        return f"Reprogrammed({parts})"

    def __treescope_repr__(self, path, subtree_renderer):
        return _treescope(self, ("parts", "tags", "spec"), path, subtree_renderer)


_SLOT_TYPES = {"input": InputTransform, "embedding": SiteHook, "hidden": SiteHook, "output": Alignment}


def reprogram(
    frozen_model: FrozenModel,
    *,
    input: InputTransform | None = None,
    embedding: SiteHook | None = None,
    hidden: SiteHook | None = None,
    output: Alignment | None = None,
) -> Reprogrammed:
    """Compose ``y = O ∘ f ∘ I(x, c)`` around a frozen model.

    Order of application: ``input`` on ``x`` (a fixed context ``c`` is an input
    transform: :func:`chain` it before a learned one); ``embedding`` then ``hidden``
    as site hooks inside ``f``; ``output`` on the logits. Only ``frozen_model.apply``
    and ``frozen_model.spec`` are used: the parameters are passed to
    :attr:`Reprogrammed.apply` on every call and their gradient stopped.

    Example::

        >>> program = jr.reprogram(model, input=jr.input.pad(target_size=28),
        ...                        output=jr.output.ilm(num_source=1000, num_target=10))
        >>> theta = program.init(jax.random.key(0))
        >>> logits = program.apply(theta, model.params, x)
    """
    if not isinstance(frozen_model, FrozenModel):
        raise TypeError(
            f"reprogram: frozen_model must be a jr.FrozenModel, got {type(frozen_model).__name__}"
        )
    spec, model_apply = frozen_model.spec, frozen_model.apply
    given = {"input": input, "embedding": embedding, "hidden": hidden, "output": output}
    for slot, part in given.items():
        if part is not None and not isinstance(part, _SLOT_TYPES[slot]):
            raise TypeError(
                f"reprogram: {slot}= must be a jr.{_SLOT_TYPES[slot].__name__}, got {type(part).__name__}"
            )
    parts: dict[str, Part] = {s: p for s, p in given.items() if p is not None}
    alignment = parts.setdefault("output", IDENTITY)
    slots = [s for s in ("input", "embedding", "hidden") if s in parts]
    hooks = [s for s in ("embedding", "hidden") if s in parts]

    def init(key):
        keys = jax.random.split(key, len(slots) + 1)
        theta = {s: parts[s].init(k, spec) for s, k in zip(slots, keys)}
        theta["output"] = alignment.init(keys[-1])
        return theta

    def check_theta(theta):
        if not isinstance(theta, Mapping) or set(theta) != {*slots, "output"}:
            got = sorted(theta) if isinstance(theta, Mapping) else type(theta).__name__
            raise ValueError(f"theta must be a dict with keys {sorted({*slots, 'output'})}, got {got}")

    def source_logits(theta, frozen_params, x, key=None):
        check_theta(theta)
        batch = x  # what the hooks' bind sees: the batch as given, before the input part
        frozen_params = jax.lax.stop_gradient(frozen_params)
        if "input" in parts:
            x = parts["input"].apply(_learning(parts["input"], theta["input"]), x, spec, key=key)
        if not hooks:
            return model_apply(frozen_params, x)
        learning = {s: _bound(parts[s], _learning(parts[s], theta[s]), batch) for s in hooks}
        seen: list[str] = []  # the sites this call's forward pass reached (local to the call)

        def hook(site, value):
            seen.append(site)
            for s in hooks:
                value = parts[s].apply(learning[s], site, value, spec)
            return value

        logits = model_apply(frozen_params, x, hook=hook)
        for s in hooks:
            selector = parts[s].sites
            if selector is not None and not any(map(selector.matches, seen)):
                raise ValueError(no_match_message(selector, seen, f"reprogram({s}=...)"))
        return logits

    def align(theta, logits):
        return alignment.apply(_learning(alignment, theta["output"]), logits)

    def apply(theta, frozen_params, x, key=None):
        return align(theta, source_logits(theta, frozen_params, x, key))

    def refit(theta, logits, labels):
        check_theta(theta)
        return {**theta, "output": alignment.refit(theta["output"], logits, labels)}

    def trainable(theta):
        check_theta(theta)
        return {s: trainable_mask(parts[s], t) for s, t in theta.items()}

    penalized = [s for s in slots if parts[s].penalty is not None]

    def penalty(theta):
        return sum((parts[s].penalty(theta[s]) for s in penalized), jnp.zeros((), jnp.float32))

    projected = [s for s in slots if getattr(parts[s], "project", None) is not None]

    def project(theta):
        return {**theta, **{s: parts[s].project(theta[s]) for s in projected}}

    tags = functools.reduce(operator.or_, (p.tags or Tags() for p in parts.values()))
    return Reprogrammed(
        init, apply, refit, source_logits, align, trainable, penalty, project, parts, tags, spec
    )


def _bound(part: SiteHook, theta: PyTree, x: Any) -> PyTree:
    """``theta`` as ``part.apply`` sees it in a forward pass over ``x`` (:attr:`SiteHook.bind`)."""
    return theta if part.bind is None else part.bind(theta, x)


def _learning(part: Part, theta: PyTree) -> PyTree:
    """``theta`` with the gradient of its fixed leaves stopped."""
    mask = trainable_mask(part, theta)
    return jax.tree.map(lambda leaf, learn: leaf if learn else jax.lax.stop_gradient(leaf), theta, mask)
