"""Where site hooks act, and what they find there.

A frozen model calls a :class:`~jaxreprog.SiteHook`'s ``apply(theta, site, value, spec)``
at each of its *sites*: the ``"/"``-joined module path of every linen submodule's
output (``"embeddings"``, ``"layer_3/kv"``, ``"encoder/layer_0/input"``), in call
order.

* :func:`select` — the one way to name sites: a glob over the path
  (:func:`fnmatch.fnmatchcase`; ``*`` also crosses ``/``), a sequence of globs, or a
  predicate ``path -> bool``, as a :class:`Selector`. Every embedding- and
  hidden-location method takes one (a string or a list is converted by
  :func:`select`) and records it as its :attr:`~jaxreprog.SiteHook.sites`, so
  :func:`jaxreprog.reprogram` can tell a selector that matches none of the model's
  sites (an error that lists them).
* A method that needs a layer index (prefix tuning, P-tuning v2, VPT-deep) reads it
  off the glob: :meth:`Selector.layer` is the first ``*`` whose match is a decimal
  integer (``"*/layer_*/kv"`` at ``"encoder/layer_3/kv"``: layer 3). A predicate
  names no layer number, so those methods take globs only.
* :func:`sites` — a model's sites, in call order (under :func:`jax.eval_shape`:
  nothing runs). The context in which a linen model's submodules pass their outputs
  through a hook is :func:`jaxreprog.intercept`.
* The values the zoo's sites carry: :class:`Lookup` (a text model's ``"lookup"``: the
  token ids and the embedding table they are about to be looked up in),
  :class:`Embedded` (``"embeddings"``), :class:`KeyValues` (``"layer_{i}/kv"``),
  :class:`PromptEmbeddings` (CLIP's ``"text/embeddings"``), and the operations prompts
  use on them, :func:`insert` and :func:`prepend_kv`.

Example::

    >>> jr.sites(model)[:4]
    ('lookup', 'embeddings', 'position_embeddings', 'embeddings_norm')
    >>> jr.select("*/layer_*/kv").layer("text/layer_4/kv")
    4
    >>> program = jr.reprogram(model, hidden=jr.hidden.p_tuning_v2(8, layers=[4, 5]))
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from jaxreprog.core import FrozenModel

__all__ = [
    "Embedded",
    "KeyValues",
    "Lookup",
    "PromptEmbeddings",
    "Selector",
    "Where",
    "insert",
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
    say whether ``path`` is selected; ``""`` (the root module's output) never is.
    :meth:`layer` reads a layer number off a glob's ``*``.
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

    def layer(self, path: str) -> int | None:
        """The layer number the glob names at ``path``: the first ``*`` whose match is a decimal integer.

        Each glob reads as a regular expression in which every ``*`` is a capture group;
        the first glob that selects ``path`` with such a number gives it
        (``"*/layer_*/kv"`` at ``"encoder/layer_3/kv"``: 3; ``"layer_*/kv"`` at
        ``"layer_11/kv"``: 11). ``None`` where no glob selects ``path``, or no ``*`` of
        one that does matches a number there. A predicate names no layer: a ``TypeError``.
        """
        if self.predicate is not None:
            raise TypeError(f"{self} is a predicate: it names no layer number (use a glob like 'layer_*/kv')")
        if not path:
            return None
        for pattern in self.patterns:
            found = re.fullmatch(_glob_regex(pattern), path, re.DOTALL)
            for group in found.groups() if found else ():
                if group.isascii() and group.isdecimal():
                    return int(group)
        return None

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


def _glob_regex(pattern: str) -> str:
    """``pattern`` (:mod:`fnmatch` syntax) as a regular expression in which each ``*`` is a group."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c, i = pattern[i], i + 1
        if c == "*":
            out.append("(.*)")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + (i < n and pattern[i] == "!")
            j += j < n and pattern[j] == "]"
            j = pattern.find("]", j)
            if j < 0:  # no closing bracket: a literal "["
                out.append(re.escape(c))
                continue
            body, i = pattern[i:j].replace("\\", "\\\\"), j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def per_layer(where: SiteSelection, who: str) -> Selector:
    """``where`` as the selector of a per-layer method: globs, each with a ``*`` for the layer number.

    A predicate (or a glob without ``*``) names no layer number: an error here, when
    the method is built.
    """
    selector = select(where)
    if selector.predicate is not None:
        raise ValueError(
            f"{who}: sites must be globs whose '*' stands for the layer number (e.g. 'layer_*/kv'); "
            f"the predicate {selector} names no layer number"
        )
    flat = [p for p in selector.patterns if "*" not in p]
    if flat:
        raise ValueError(
            f"{who}: every glob of sites needs a '*' where the layer number is (e.g. 'layer_*/kv'), "
            f"got {flat}"
        )
    return selector


def site_layer(selector: Selector, site: str, who: str) -> int | None:
    """The layer number of ``site`` if ``selector`` selects it (:meth:`Selector.layer`), else ``None``.

    A selected site at which no ``*`` of the glob matches a number is an error naming the site.
    """
    if not selector.matches(site):
        return None
    layer = selector.layer(site)
    if layer is None:
        raise ValueError(
            f"{who}: site {site!r} is selected by {selector}, but no '*' of its glob matches a layer "
            "number there; write the glob so that a '*' stands for the number (e.g. 'layer_*/kv')"
        )
    return layer


# ------------------------------------------------------------------- listing sites


def _example_input(spec: Any) -> Any:
    from jaxreprog import core  # core builds on this module (SiteHook.sites is a Selector)

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


def sites(model: FrozenModel, x: Any = None) -> tuple[str, ...]:
    """``model``'s sites, in the order a forward pass reaches them.

    Traced with :func:`jax.eval_shape` (nothing is computed) on ``x``, by default one
    input of the shape ``model.spec`` describes (one image, one sequence, four tokens).
    ``""`` (the root module's own output) is left out: no selector selects it.

    Example::

        >>> [s for s in jr.sites(vit) if s.endswith("/input")]
        ['encoder/layer_0/input', 'encoder/layer_1/input', ...]
    """
    from jaxreprog.core import FrozenModel  # core builds on this module

    if not isinstance(model, FrozenModel):
        raise TypeError(f"sites: model must be a jr.FrozenModel, got {type(model).__name__}")
    x = _example_input(model.spec) if x is None else x
    seen: dict[str, None] = {}

    def record(site, value):
        seen[site] = None
        return value

    jax.eval_shape(lambda params, x: model.apply(params, x, record), model.params, x)
    return tuple(s for s in seen if s)


# ------------------------------------------------------------- what the sites carry


class Lookup(NamedTuple):
    """The value at a text model's ``"lookup"`` site: the input's token ids, and the table the
    model is about to look them up in (the ``"embeddings"`` site gets the result).

    What the embedding lookup *reads* (the target vocabulary's ids, the frozen table passed as
    an argument of ``apply``), so a hook here can swap the table (token replacement,
    :func:`jaxreprog.embedding.token_replacement`) or insert ids (a template,
    :func:`jaxreprog.embedding.prompt_template`). GPT-2's tied output head keeps the frozen table.

    Attributes:
      ids: ``(B, L)`` int token ids, looked up as ``table[ids]`` (checked to lie in ``[0, V)``).
      mask, positions, prompt: as for :class:`Embedded`, which they become.
      table: ``(V, D)`` the token-embedding table.
    """

    ids: Array
    mask: Array
    positions: Array
    prompt: Array
    table: Array


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


def insert(e: Embedded | Lookup, tokens: Array, where: Where = "prefix") -> Embedded | Lookup:
    """Insert ``P`` prompt vectors into every sequence and renumber the positions.

    ``tokens`` is ``(P, D)`` (shared) or ``(B, P, D)``; into a :class:`Lookup`, ``P`` token
    ids ``(P,)`` or ``(B, P)`` (looked up in its table like the others). ``where``:

    * ``"prefix"``: prompt positions ``0..P-1``; every token moves up by ``P``.
    * ``"after_first"``: after the first real token ([CLS] / BOS): the prompt takes
      ``1..P`` and tokens from position 1 on move up by ``P``.
    * ``"suffix"``: after the last real token: ``n..n+P-1`` with ``n`` real tokens.

    The prompt is stored at the front of the arrays (at the end for ``"suffix"``);
    storage order is irrelevant because attention reads positions and masks only.
    """
    if isinstance(e, Lookup):
        b = e.ids.shape[0]
        tokens = jnp.asarray(tokens)
        if tokens.ndim == 1:
            tokens = jnp.broadcast_to(tokens, (b, *tokens.shape))
        if tokens.ndim != 2 or tokens.shape[0] != b or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"insert: token ids must be int (P,) or ({b}, P), got {tokens.dtype} {tokens.shape}"
            )
        fields = _inserted(e.ids, e.mask, e.positions, e.prompt, tokens.astype(e.ids.dtype), where)
        return Lookup(*fields, e.table)
    b, _, d = e.h.shape
    if tokens.ndim == 2:
        tokens = jnp.broadcast_to(tokens, (b, *tokens.shape))
    if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[-1] != d:
        raise ValueError(f"insert: tokens must be (P, {d}) or ({b}, P, {d}), got {tokens.shape}")
    return Embedded(*_inserted(e.h, e.mask, e.positions, e.prompt, tokens.astype(e.h.dtype), where))


def _inserted(h: Array, mask: Array, positions: Array, prompt: Array, tokens: Array, where: Where):
    """:func:`insert` on the four per-token fields; ``tokens`` ``(B, P, ...)`` like ``h``."""
    b, p = tokens.shape[:2]
    ramp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    pos = positions
    if where == "prefix":
        new, pos = ramp, pos + p
    elif where == "after_first":
        new, pos = ramp + 1, jnp.where(pos >= 1, pos + p, pos)
    elif where == "suffix":
        new = ramp + mask.sum(-1, dtype=jnp.int32)[:, None]
    else:
        raise ValueError(f"insert: where must be 'prefix', 'after_first' or 'suffix', got {where!r}")
    ones = jnp.ones((b, p), bool)
    parts = [(tokens, h), (ones, mask), (new, pos), (ones, prompt)]
    if where == "suffix":
        parts = [(old, added) for added, old in parts]
    return tuple(jnp.concatenate(pair, axis=1) for pair in parts)


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
