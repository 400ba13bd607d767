"""Where site hooks act, and what they find there.

A frozen model calls a :class:`~jaxreprog.SiteHook`'s ``apply(theta, site, value, spec)``
at each of its *sites*: the ``"/"``-joined module path of every linen submodule's
output (``"embeddings"``, ``"layer_3/kv"``, ``"encoder/layer_0/input"``), in call
order, and last at ``""``, the model's output (the end of the pass).

* :func:`select` — the one way to name sites: a glob over the path
  (:func:`fnmatch.fnmatchcase`; ``*`` also crosses ``/``), a sequence of globs, or a
  predicate ``path -> bool``, as a :class:`Selector`. Every embedding- and
  hidden-location method takes one (a string or a list is converted by
  :func:`select`). A method that needs a layer index reads it off the *ordered list
  of matched sites*: the ``i``-th site the selector matches in a forward pass is
  layer ``i``. A selector that matches none of a model's sites is an error at trace
  time that lists the model's sites.
* :func:`sites` — a model's sites, in call order (under :func:`jax.eval_shape`:
  nothing runs).
* :func:`intercept` — the context in which every linen submodule's output passes
  through a hook (``nn.intercept_methods``; how :func:`jaxreprog.from_linen` models
  expose their sites).
* The values the zoo's sites carry: :class:`Embedded` (a text model's
  ``"embeddings"``), :class:`KeyValues` (``"layer_{i}/kv"``), :class:`PromptEmbeddings`
  (CLIP's ``"text/embeddings"``), and the operations prompts use on them,
  :func:`insert` and :func:`prepend_kv`.

Example::

    >>> jr.sites(model)[:4]
    ('embeddings', 'position_embeddings', 'embeddings_norm', 'layer_0/query')
    >>> late = jr.select(lambda path: path.startswith(("layer_4/", "layer_5/")) and path.endswith("/kv"))
    >>> program = jr.reprogram(model, hidden=jr.hidden.p_tuning_v2(8, sites=late, layers=[0, 1]))
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import core

__all__ = [
    "Embedded",
    "KeyValues",
    "PromptEmbeddings",
    "Selector",
    "Where",
    "insert",
    "intercept",
    "prepend_kv",
    "select",
    "sites",
]

Array = jax.Array
Where = Literal["prefix", "after_first", "suffix"]


# ------------------------------------------------------------------ selecting sites


class Selector(NamedTuple):
    """Sites by module path: ``patterns`` (globs, any of which may match) or a ``predicate``.

    Build one with :func:`select`. ``selector(path)`` and ``selector.matches(path)``
    say whether ``path`` is selected; ``""`` (the model's output) never is.
    """

    patterns: tuple[str, ...] = ()
    predicate: Callable[[str], bool] | None = None

    def matches(self, path: str) -> bool:
        """Whether the module path ``path`` is selected."""
        if not path:
            return False
        if self.predicate is not None:
            return bool(self.predicate(path))
        return any(fnmatch.fnmatchcase(path, p) for p in self.patterns)

    def __call__(self, path: str) -> bool:
        return self.matches(path)

    @property
    def names(self) -> tuple[str, ...]:
        """One name per part: the globs, or the predicate's name."""
        if self.predicate is not None:
            return (getattr(self.predicate, "__name__", "predicate"),)
        return self.patterns

    def parts(self, path: str) -> tuple[int, ...]:
        """The indices (into :attr:`names`) of the parts that select ``path``."""
        if not path:
            return ()
        if self.predicate is not None:
            return (0,) if self.predicate(path) else ()
        return tuple(i for i, p in enumerate(self.patterns) if fnmatch.fnmatchcase(path, p))

    def resolve(self, paths: Sequence[str], who: str = "select") -> tuple[str, ...]:
        """The selected paths among ``paths`` (e.g. :func:`sites`), in order, or a clear error."""
        chosen = tuple(dict.fromkeys(p for p in paths if self.matches(p)))
        if not chosen:
            raise ValueError(no_match_message(self, paths, who))
        return chosen

    def __str__(self) -> str:
        if self.predicate is not None:
            return f"jr.select({self.names[0]})"
        return (
            f"jr.select({self.patterns[0]!r})" if len(self.patterns) == 1 else f"jr.select({self.patterns})"
        )


SiteSelection = str | Sequence[str] | Callable[[str], bool] | Selector
"""What a method's ``sites=`` accepts: anything :func:`select` takes."""


def select(where: SiteSelection) -> Selector:
    """The one way to name sites: ``where`` as a :class:`Selector`.

    Args:
      where: a glob over the ``"/"``-joined module path (``"layer_*/kv"``;
        :func:`fnmatch.fnmatchcase`, so ``*`` also crosses ``/`` and an exact path
        selects itself), a sequence of globs (any may match), a predicate
        ``path -> bool``, or a :class:`Selector` (returned as is).

    Example::

        >>> jr.select("encoder/layer_*/input").matches("encoder/layer_3/input")
        True
        >>> jr.select(lambda p: p.endswith("/kv") and p != "layer_0/kv")("layer_1/kv")
        True
    """
    if isinstance(where, Selector):
        return where
    if isinstance(where, str):
        patterns: tuple[Any, ...] = (where,)
    elif callable(where):
        return Selector(predicate=where)
    elif isinstance(where, Sequence):
        patterns = tuple(where)
    else:
        raise TypeError(
            "sites must be a glob over module paths (e.g. 'layer_*/kv'), a sequence of globs, "
            f"a predicate path -> bool or a jr.Selector, got {type(where).__name__}"
        )
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(
            f"sites must be a non-empty module-path glob or a non-empty sequence of them, got {where!r}"
        )
    return Selector(patterns=patterns)


def no_match_message(selector: Selector, paths: Sequence[str], who: str) -> str:
    listed = ", ".join(dict.fromkeys(p for p in paths if p)) or "(none)"
    return f"{who}: {selector} matches none of the model's sites; its sites are: {listed}"


class Pass:
    """A hook's trace-time view of one forward pass: which sites its selector matched, in order.

    ``visit(site)`` returns the rank of ``site`` among the sites the selector has matched
    so far in this pass (``0`` for the first), or ``None`` when it does not match. At
    ``""`` (the model's output, the end of a pass) it raises :func:`no_match_message` if
    nothing has matched, in this pass or an earlier one (a generation step's pass may
    skip the embedding site that the prompt's pass went through), and starts over; a
    site seen twice also starts a new pass (a pass cut short by an error, or a hook
    called site by site). This record lives only while
    JAX traces; the numbers it gives are static, so the hook stays a pure function of
    ``(theta, site, value, spec)`` within a pass. A hook that applies a linen module of
    its own (P-tuning's encoder) does so under :func:`quiet`, so that module's outputs
    are not taken for the frozen model's sites.
    """

    def __init__(self, selector: Selector, who: str):
        self.selector, self.who = selector, who
        self.seen: dict[str, None] = {}
        self.matched: list[str] = []
        self.ever_matched = False

    def visit(self, site: str) -> int | None:
        if getattr(_quiet, "depth", 0):
            return None
        if not site:
            seen, matched = list(self.seen), self.matched
            self.seen, self.matched = {}, []
            if seen and not matched and not self.ever_matched:
                raise ValueError(no_match_message(self.selector, seen, self.who))
            return None
        if site in self.seen:
            self.seen, self.matched = {}, []
        self.seen[site] = None
        if not self.selector.matches(site):
            return None
        self.matched.append(site)
        self.ever_matched = True
        return len(self.matched) - 1


_quiet = threading.local()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within this context, :class:`Pass` records no sites: for a hook's own linen module,
    whose submodules' outputs the model's interception also routes through the hooks."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


# ------------------------------------------------------------------- listing sites


def _example_input(spec: Any) -> Any:
    if isinstance(spec, core.ImageSpec):
        return jax.ShapeDtypeStruct((1, *spec.shape), jnp.float32)
    if isinstance(spec, core.SequenceSpec):
        return jax.ShapeDtypeStruct((1, spec.length, spec.channels), jnp.float32)
    if isinstance(spec, core.TokenSpec):
        length = min(4, spec.max_length)
        return {
            "input_ids": np.full((1, length), spec.pad_id, np.int32),
            "attention_mask": np.ones((1, length), np.int32),
        }
    raise TypeError(
        f"sites: pass x= (an example input); the spec {type(spec).__name__} does not say its shape"
    )


def sites(model: core.FrozenModel, x: Any = None) -> tuple[str, ...]:
    """``model``'s sites, in the order a forward pass reaches them.

    Traced with :func:`jax.eval_shape` (nothing is computed) on ``x``, by default one
    input of the shape ``model.spec`` describes (one image, one sequence, four tokens).
    ``""``, the model's output, is left out.

    Example::

        >>> [s for s in jr.sites(vit) if s.endswith("/input")]
        ['encoder/layer_0/input', 'encoder/layer_1/input', ...]
    """
    if not isinstance(model, core.FrozenModel):
        raise TypeError(f"sites: model must be a jr.FrozenModel, got {type(model).__name__}")
    x = _example_input(model.spec) if x is None else x
    seen: dict[str, None] = {}

    def record(site, value):
        seen[site] = None
        return value

    jax.eval_shape(lambda params, x: model.apply(params, x, record), model.params, x)
    return tuple(s for s in seen if s)


def intercept(hook: core.Hook | None) -> contextlib.AbstractContextManager[None]:
    """Within this context, every linen submodule's ``__call__`` output passes through
    ``hook("/".join(module.path), output)`` (``nn.intercept_methods``, no
    monkey-patching); ``hook=None`` is a no-op. How :func:`jaxreprog.from_linen` models
    expose their sites; model code that runs several ``module.apply`` calls (cached
    generation) uses it directly.
    """
    return core.sites(hook)


# ------------------------------------------------------------- what the sites carry


class Embedded(NamedTuple):
    """The value at a text model's ``"embeddings"`` site.

    Attributes:
      h: ``(B, L, D)`` token embeddings, *before* position embeddings are added.
      mask: ``(B, L)`` bool, True on real tokens (False on padding).
      positions: ``(B, L)`` int32 position ids (meaningless on padding).
      prompt: ``(B, L)`` bool, True on inserted prompt tokens (pooling skips them).
    """

    h: Array
    mask: Array
    positions: Array
    prompt: Array


class KeyValues(NamedTuple):
    """The value at a layer's ``"layer_{i}/kv"`` site: the keys a query may attend to.

    Attributes:
      k, v: ``(B, Lk, H, Dh)`` per-head keys and values.
      mask: ``(B, Lk)`` bool, True on keys that may be attended to.
      positions: ``(B, Lk)`` int32 position ids of the keys; ``-1`` for prefix keys,
        which every query sees (also under a causal mask).
    """

    k: Array
    v: Array
    mask: Array
    positions: Array


class PromptEmbeddings(NamedTuple):
    """The value at CLIP's site ``"text/embeddings"``.

    Attributes:
      embeds: token embeddings ``(N, L, D)`` (or ``(B, N, L, D)``: per-image
        prompts), before position embeddings.
      eot_index: ``(N,)`` int, the EOT position of each prompt (the pooled token).
        A numpy array while it is a constant of the model, so hooks can check it.
      image_features: ``(B, E)`` L2-normalised image features inside
        :func:`jaxreprog.models.clip.classifier` (what CoCoOp's meta-net reads);
        ``None`` otherwise.
    """

    embeds: Array
    eot_index: Array | np.ndarray
    image_features: Array | None = None


def insert(e: Embedded, tokens: Array, where: Where = "prefix") -> Embedded:
    """Insert ``P`` prompt vectors into every sequence and renumber the positions.

    ``tokens`` is ``(P, D)`` (shared) or ``(B, P, D)``. ``where``:

    * ``"prefix"``: prompt positions ``0..P-1``; every token moves up by ``P``.
    * ``"after_first"``: after the first real token ([CLS] / BOS): the prompt takes
      ``1..P`` and tokens from position 1 on move up by ``P``.
    * ``"suffix"``: after the last real token: ``n..n+P-1`` with ``n`` real tokens.

    The prompt is stored at the front of the arrays (at the end for ``"suffix"``);
    storage order is irrelevant because attention reads positions and masks only.
    """
    b, _, d = e.h.shape
    if tokens.ndim == 2:
        tokens = jnp.broadcast_to(tokens, (b, *tokens.shape))
    if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[-1] != d:
        raise ValueError(f"insert: tokens must be (P, {d}) or ({b}, P, {d}), got {tokens.shape}")
    p = tokens.shape[1]
    ramp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    pos = e.positions
    if where == "prefix":
        new, pos = ramp, pos + p
    elif where == "after_first":
        new, pos = ramp + 1, jnp.where(pos >= 1, pos + p, pos)
    elif where == "suffix":
        new = ramp + e.mask.sum(-1, dtype=jnp.int32)[:, None]
    else:
        raise ValueError(f"insert: where must be 'prefix', 'after_first' or 'suffix', got {where!r}")
    ones = jnp.ones((b, p), bool)
    parts = [
        (tokens.astype(e.h.dtype), e.h),
        (ones, e.mask),
        (new, pos),
        (ones, e.prompt),
    ]
    if where == "suffix":
        parts = [(old, added) for added, old in parts]
    return Embedded(*(jnp.concatenate(pair, axis=1) for pair in parts))


def prepend_kv(kv: KeyValues, k: Array, v: Array) -> KeyValues:
    """Prepend ``P`` prefix keys/values ``(P, H, Dh)`` or ``(B, P, H, Dh)``, visible to every query."""
    b, _, h, dh = kv.k.shape
    k = jnp.broadcast_to(k, (b, *k.shape[-3:])) if k.ndim == 3 else k
    v = jnp.broadcast_to(v, (b, *v.shape[-3:])) if v.ndim == 3 else v
    if k.shape[0] != b or k.shape[2:] != (h, dh) or v.shape != k.shape:
        raise ValueError(
            f"prepend_kv: prefix keys/values must be (P, {h}, {dh}) or ({b}, P, {h}, {dh}), "
            f"got {k.shape} and {v.shape}"
        )
    p = k.shape[1]
    return KeyValues(
        k=jnp.concatenate([k.astype(kv.k.dtype), kv.k], axis=1),
        v=jnp.concatenate([v.astype(kv.v.dtype), kv.v], axis=1),
        mask=jnp.concatenate([jnp.ones((b, p), bool), kv.mask], axis=1),
        positions=jnp.concatenate([jnp.full((b, p), -1, jnp.int32), kv.positions], axis=1),
    )
