"""Every registered method under jax.jit, jax.grad and jax.vmap: one table, generic tests.

The project's rule (DESIGN.md §1.3): every public manipulation and alignment works under ``jax.jit``,
``jax.grad`` w.r.t. theta only, and ``jax.vmap`` over a leading candidate axis of theta with the frozen
parameters and the batch shared (``in_axes=(0, None, None)``). :data:`EXAMPLES` gives each method in
``jr.taxonomy.registry`` a tiny example (the method built small, the slot it fills in ``jr.reprogram``, a
tiny random frozen model and a batch); the tests below run over the table, and
``test_the_table_covers_the_registry`` fails for a method registered without an example.

Models and batches are the smallest that exercise each method, built once (``functools.cache``) and shared.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import TinyCNN
from flax import linen as nn

import jaxreprog as jr
from jaxreprog.models import clip, gpt2
from jaxreprog.models.vit import ViT, ViTSpec

K = 2  # candidates on the vmapped axis


class Example(NamedTuple):
    """One method, built small, in the slot it fills, around a tiny frozen model, with a batch."""

    slot: str  # the jr.reprogram argument: input, embedding, hidden or output
    part: Any
    model: jr.FrozenModel
    x: Any


def _random_params(module: nn.Module, x: jax.Array, seed: int = 0) -> Any:
    """Parameters of ``module`` drawn with numpy from their shapes (no init to compile)."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


@functools.cache
def cnn() -> jr.FrozenModel:
    """conftest's TinyCNN (sites ``conv``, ``features``) on an 8 px canvas, 7 classes."""
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    return jr.from_linen(TinyCNN(), _random_params(TinyCNN(), jnp.zeros((1, *spec.shape))), spec)


class _Flat(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@functools.cache
def series() -> jr.FrozenModel:
    """A linear classifier of 10-step series (5 classes)."""
    spec = jr.SequenceSpec(length=10, mean=0.1, std=2.0, num_classes=5)
    return jr.from_linen(_Flat(5), _random_params(_Flat(5), jnp.zeros((1, 10))), spec)


@functools.cache
def source() -> jr.FrozenModel:
    """A linear 9-class "source model" of 2 px images: the alignments' source logits."""
    spec = jr.ImageSpec(size=2, num_classes=9)
    return jr.from_linen(_Flat(9), _random_params(_Flat(9), jnp.zeros((1, *spec.shape))), spec)


@functools.cache
def bag() -> jr.FrozenModel:
    """Mean of the real tokens' embeddings, then a linear head: the cheapest model of token batches."""
    spec = jr.TokenSpec(vocab_size=40, max_length=16, hidden_size=8, pad_id=0)
    rng = np.random.default_rng(0)
    params = {
        "table": jnp.asarray(rng.normal(size=(40, 8)), jnp.float32),
        "head": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
    }

    def apply(params, x, hook=None):
        mask = x["attention_mask"][..., None].astype(jnp.float32)
        h = (params["table"][x["input_ids"]] * mask).sum(1) / mask.sum(1)
        return h @ params["head"]

    return jr.FrozenModel(apply, params, spec)


@functools.cache
def lm() -> jr.FrozenModel:
    """A 2-layer, 16-wide GPT-2 over 32 tokens (sites ``embeddings``, ``layer_i/kv``)."""
    config = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, max_positions=32)
    return gpt2.from_config(config, jax.random.key(0))


@functools.cache
def vit() -> jr.FrozenModel:
    """A 2-layer, 16-wide ViT on 16 px images (16 patches of 4 px), 5 classes."""
    module = ViT(
        patch_size=4,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_size=32,
        image_size=(16, 16),
        num_classes=5,
    )
    spec = ViTSpec(
        size=16, mean=0.5, std=0.5, num_classes=5, hidden_size=16, num_layers=2, num_heads=2, patch_size=4
    )
    return jr.from_linen(module, _random_params(module, jnp.zeros((1, *spec.shape))), spec)


@functools.cache
def clip_classifier() -> jr.FrozenModel:
    """A 1-layer CLIP over 8 px images, zero-shot over 3 class names behind 4 placeholder tokens."""
    config = clip.Config(
        text=clip.TextConfig(
            vocab_size=30, width=16, mlp_dim=24, depth=1, num_heads=2, context_length=12, eos_token_id=29
        ),
        vision=clip.VisionConfig(image_size=8, patch_size=4, width=12, mlp_dim=20, depth=1, num_heads=2),
        embed_dim=32,
    )
    prompts = clip.class_prompts(
        [[4, 5], [6], [7, 8, 9]], prefix=[3] * 4, sos_id=28, eos_id=29, context_length=12
    )
    return clip.classifier(clip.CLIP(config), clip.init_params(config, jax.random.key(0)), *prompts)


def images(n: int, size: int | tuple[int, int], seed: int = 1) -> jax.Array:
    h, w = (size, size) if isinstance(size, int) else size
    return jax.random.uniform(jax.random.key(seed), (n, h, w, 3))


def tokens(*rows: list[int]) -> dict[str, jax.Array]:
    """Right-padded token ids and their attention mask."""
    ids = np.zeros((len(rows), max(map(len, rows))), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def _image_input(part: Callable[[], Any], size: int | tuple[int, int]) -> Callable[[], Example]:
    return lambda: Example("input", part(), cnn(), images(3, size))


def _text(
    slot: str, part: Callable[[], Any], model: Callable[[], jr.FrozenModel] = lm
) -> Callable[[], Example]:
    return lambda: Example(slot, part(), model(), tokens([1, 5, 6, 7], [1, 9], [1, 3, 4]))


def _alignment(part: Callable[[], Any]) -> Callable[[], Example]:
    return lambda: Example("output", part(), source(), images(4, 2))


# Every registered method, keyed by its registry name (= its factory's name), at the smallest size that
# exercises it. A method registered without an entry here fails test_the_table_covers_the_registry.
EXAMPLES: dict[str, Callable[[], Example]] = {
    # input: images into TinyCNN's 8 px canvas
    "pad": _image_input(lambda: jr.input.pad(6), 6),
    "elsayed": _image_input(lambda: jr.input.elsayed((5, 6), l2=0.01), (5, 6)),
    "watermark": _image_input(lambda: jr.input.watermark(2), 5),
    "full": _image_input(jr.input.full, 12),
    "pad_prompter": _image_input(lambda: jr.input.pad_prompter(2), 8),
    "patch": _image_input(lambda: jr.input.patch(3, position=(1, 4)), 8),
    "random_patch": _image_input(lambda: jr.input.random_patch(3), 8),
    "resize_pad": _image_input(lambda: jr.input.resize_pad(6, init_scale=0.9), 6),
    "smm": _image_input(lambda: jr.input.smm(patch_size=4), 8),
    "blackvip": _image_input(lambda: jr.input.blackvip(stages=2, features=8, channels=2, width=4), 6),
    "fixed": _image_input(lambda: jr.input.fixed(np.full((8, 8, 3), 0.1, np.float32)), 8),
    "sequence_pad": lambda: Example(
        "input", jr.input.sequence_pad(4, l2=0.05), series(), jax.random.uniform(jax.random.key(2), (3, 4))
    ),
    # input: fixed text contexts before the query
    "instruction": _text("input", lambda: jr.context.instruction([9, 9], suffix=[20]), bag),
    "demonstrations": _text(
        "input", lambda: jr.context.demonstrations([20, 21, 22], padding_side="left"), bag
    ),
    "chain_of_thought": _text(
        "input", lambda: jr.context.chain_of_thought([30, 31], suffix=[20], keep_first=0), bag
    ),
    # embedding
    "soft_prompt": _text("embedding", lambda: jr.embedding.soft_prompt(2, where="suffix")),
    "p_tuning": _text("embedding", lambda: jr.embedding.p_tuning(2, encoder="mlp")),
    "multitask_prompt": lambda: Example(  # a mixed-task batch: each row's x["task"] picks its prompt
        "embedding",
        jr.embedding.multitask_prompt(2, 3, rank=2),
        lm(),
        {**tokens([1, 5, 6, 7], [1, 9], [1, 3, 4]), "task": jnp.array([2, 0, 2], jnp.int32)},
    ),
    "token_replacement": _text("embedding", lambda: jr.embedding.token_replacement(12, temperature=0.5)),
    "prompt_template": _text(
        "embedding", lambda: jr.embedding.prompt_template([3, None], suffix=[None, 20], where="after_first")
    ),
    "vpt_shallow": lambda: Example("embedding", jr.embedding.vpt_shallow(2), vit(), images(2, 16)),
    "coop": lambda: Example(
        "embedding", jr.embedding.coop(4, class_specific=True), clip_classifier(), images(2, 8)
    ),
    "cocoop": lambda: Example("embedding", jr.embedding.cocoop(4), clip_classifier(), images(2, 8)),
    "time_llm": lambda: Example(
        "embedding",
        jr.embedding.time_llm(8, 2, patch_len=4, stride=4, d_model=4, heads=2, num_prototypes=6, d_ff=4),
        jr.embedding.time_llm_backbone(lm()),
        jax.random.normal(jax.random.key(2), (3, 8)),
    ),
    # hidden
    "prefix_tuning": _text("hidden", lambda: jr.hidden.prefix_tuning(2, reparameterize=8, std=0.5)),
    "p_tuning_v2": _text("hidden", lambda: jr.hidden.p_tuning_v2(2, std=0.5)),
    "cartridge": _text(
        "hidden", lambda: jr.hidden.cartridge(jr.hidden.kv_cache(lm(), lm().params, [3, 8, 5]))
    ),
    "vpt_deep": lambda: Example("hidden", jr.hidden.vpt_deep(2), vit(), images(2, 16)),
    "maple": lambda: Example("hidden", jr.hidden.maple(2, 1), clip_classifier(), images(2, 8)),
    "ivlp": lambda: Example("hidden", jr.hidden.ivlp(2, 1, vision_length=3), clip_classifier(), images(2, 8)),
    "additive": lambda: Example("hidden", jr.hidden.additive("features", 4, std=0.1), cnn(), images(3, 8)),
    "affine": lambda: Example("hidden", jr.hidden.affine("conv", 4), cnn(), images(3, 8)),
    # output: 9 source classes -> 3 targets
    "identity": _alignment(lambda: jr.output.identity(9)),
    "rlm": _alignment(lambda: jr.output.rlm(9, 3)),
    "flm": _alignment(lambda: jr.output.flm(9, 3)),
    "ilm": _alignment(lambda: jr.output.ilm(9, 3)),
    "blm": _alignment(lambda: jr.output.blm(9, 3)),
    "blm_plus": _alignment(lambda: jr.output.blm_plus(9, 3, k=2)),
    "freqmap": _alignment(lambda: jr.output.freqmap(9, 3, per_target=2)),
    "linear": _alignment(lambda: jr.output.linear(9, 3)),
    "verbalizer": _alignment(lambda: jr.output.verbalizer([[0, 4], [2], [5, 7, 8]], num_source=9)),
    "logit_prompt": _alignment(lambda: jr.output.logit_prompt(9, jr.output.blm(9, 3))),
}


def _ensemble(how: str) -> Callable[..., jax.Array]:
    return lambda program, thetas, params, x, key: jr.candidates.ensemble(
        program, thetas, params, x, key, how=how
    )


# Every registered combinator (kind="combinator": a function over a whole program and K stacked thetas,
# not a part), keyed by its registry name, as its variants ``fn(program, thetas, params, x, key)``. They
# run on the cases of COMBINED: a learned input prompt, and a learned alignment per candidate.
COMBINATORS: dict[str, dict[str, Callable[..., jax.Array]]] = {
    "ensemble": {how: _ensemble(how) for how in ("logits", "probs", "vote")},
}
COMBINED = ("pad", "linear")


class Case(NamedTuple):
    """An example made ready: its program, inputs and K candidate thetas."""

    program: jr.Reprogrammed
    params: Any
    x: Any
    key: jax.Array
    thetas: list[Any]  # K candidates; thetas[0] is "the" theta
    weights: jax.Array  # a random projection of the output: the loss differentiated below


def _moved(theta: Any, mask: Any, seed: int) -> Any:
    """``theta`` with its trainable leaves moved off their (often zero) initial values, so that
    gradients are generic and candidates differ."""
    leaves, tree = jax.tree.flatten(theta)
    flags = jax.tree.leaves(mask)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    moved = [
        a + 0.3 * jax.random.normal(k, a.shape, a.dtype) if f else a for a, f, k in zip(leaves, flags, keys)
    ]
    return jax.tree.unflatten(tree, moved)


@functools.cache
def case(name: str) -> Case:
    ex = EXAMPLES[name]()
    program = jr.reprogram(ex.model, **{ex.slot: ex.part})
    key = jax.random.key(3)
    thetas = []
    for k in range(K):
        theta = program.init(jax.random.key(10 + k))
        thetas.append(_moved(theta, program.trainable(theta), seed=20 + k))
    out = jax.eval_shape(program.apply, thetas[0], ex.model.params, ex.x, key)
    weights = jax.random.normal(jax.random.key(4), out.shape, out.dtype)
    return Case(program, ex.model.params, ex.x, key, thetas, weights)


@functools.cache
def eager(name: str) -> jax.Array:
    """The example's output for its first theta, run eagerly (op by op: the first run of a model
    compiles every operation, so this is computed only where a test compares with it)."""
    c = case(name)
    return c.program.apply(c.thetas[0], c.params, c.x, c.key)


def _has_state(theta: Any) -> bool:
    return bool(jax.tree.leaves(theta))


NAMES = list(EXAMPLES)  # grouped by model: neighbouring tests share its compiled operations
# Their op-by-op run takes 4-17 s each (compiling every operation of a transformer or an LSTM): compared
# with eager only in the slow run. Their jitted grad and vmap tests below run by default.
EAGER_SLOW = (
    *("p_tuning", "cocoop", "smm", "p_tuning_v2", "coop", "prefix_tuning", "vpt_deep", "cartridge"),
    *("maple", "ivlp"),
    "time_llm",
)


def _compare_with_eager(name: str, compile: Callable) -> None:
    c = case(name)
    got = compile(c.program.apply)(c.thetas[0], c.params, c.x, c.key)
    chex.assert_tree_all_finite(got)
    chex.assert_trees_all_close(got, eager(name), rtol=1e-5, atol=1e-5)


def test_the_table_covers_the_registry():
    """Every registered method has an example, every combinator its variants (and the tables name
    nothing else)."""
    kinds = {name: method.kind for name, method in jr.taxonomy.registry.items()}
    assert sorted(n for n, kind in kinds.items() if kind == "part") == sorted(NAMES)
    assert sorted(n for n, kind in kinds.items() if kind == "combinator") == sorted(COMBINATORS)


class TransformsTest(chex.TestCase):
    @chex.variants(with_jit=True)  # without_jit would rerun eager() itself: a test that cannot fail
    @parameterized.parameters(*(n for n in NAMES if n not in EAGER_SLOW))
    def test_apply_equals_eager(self, name):
        """The compiled program equals its op-by-op run (no trace-time branch on values)."""
        _compare_with_eager(name, self.variant)

    @parameterized.parameters(*NAMES)
    def test_grad_reaches_every_trainable_leaf_and_nothing_frozen(self, name):
        """W.r.t. theta: nonzero somewhere on every trainable leaf, zero on every fixed leaf and on
        everything once the part is wrapped in jr.fixed; w.r.t. the frozen parameters: zero."""
        c = case(name)
        ex = EXAMPLES[name]()
        frozen = jr.reprogram(ex.model, **{ex.slot: jr.fixed(ex.part)})

        def loss(program):
            return lambda theta, params: jnp.vdot(c.weights, program.apply(theta, params, c.x, c.key))

        def grads(theta, params):
            return jax.grad(loss(c.program), argnums=(0, 1))(theta, params), jax.grad(loss(frozen))(
                theta, params
            )

        (g_theta, g_params), g_fixed = jax.jit(grads)(c.thetas[0], c.params)
        chex.assert_trees_all_equal_shapes(g_theta, c.thetas[0])
        chex.assert_tree_all_finite(g_theta)
        mask = c.program.trainable(c.thetas[0])
        flags = jax.tree.leaves(mask)
        for path_leaf, learns in zip(jax.tree_util.tree_leaves_with_path(g_theta), flags):
            path, g = path_leaf
            if learns:
                assert bool(jnp.any(g != 0)), f"{name}: no gradient reaches {jax.tree_util.keystr(path)}"
            else:
                np.testing.assert_array_equal(
                    g, 0, err_msg=f"{name}: fixed leaf {jax.tree_util.keystr(path)}"
                )
        for g in jax.tree.leaves((g_params, g_fixed)):
            np.testing.assert_array_equal(g, 0)

    @parameterized.parameters(*NAMES)
    def test_vmap_over_candidates_equals_a_loop(self, name):
        """K thetas on a leading axis, frozen parameters and batch shared: candidate k of the vmapped
        call is candidate k alone. A method with no theta (a fixed context) vmaps over the batch."""
        c = case(name)
        single = jax.jit(c.program.apply)
        want = [single(theta, c.params, c.x, c.key) for theta in c.thetas]
        if not _has_state(c.thetas[0]):

            def one(row):
                return c.program.apply(c.thetas[0], c.params, jax.tree.map(lambda a: a[None], row), c.key)

            got = jax.jit(jax.vmap(one))(c.x)
            chex.assert_trees_all_close(got[:, 0], want[0], rtol=1e-5, atol=1e-5)
            return
        many = jax.vmap(c.program.apply, in_axes=(0, None, None, None))
        got = jax.jit(many)(jr.candidates.stack(c.thetas), c.params, c.x, c.key)
        chex.assert_shape(got, (K, *want[0].shape))
        for k in range(K):
            chex.assert_trees_all_close(got[k], want[k], rtol=1e-5, atol=1e-5)
        if any(jax.tree.leaves(c.program.trainable(c.thetas[0]))):
            assert not np.allclose(got[0], got[1]), f"{name}: the candidates do not differ"


class SlowModelsEagerTest(parameterized.TestCase):
    pytestmark = pytest.mark.slow

    @parameterized.parameters(*EAGER_SLOW)
    def test_apply_equals_eager(self, name):
        _compare_with_eager(name, jax.jit)


COMBINATIONS = [(n, v, e) for n, variants in COMBINATORS.items() for v in variants for e in COMBINED]


class CombinatorsTest(parameterized.TestCase):
    """The same rule for combinators, over K stacked thetas of a registered part's case: jit equals the
    op-by-op run; the gradient reaches every trainable leaf of every candidate and never the frozen
    parameters; vmap over M stacks of K candidates equals a loop."""

    @parameterized.parameters(*COMBINATIONS)
    def test_jit_equals_eager(self, name, variant, example):
        c, fn = case(example), COMBINATORS[name][variant]
        thetas = jr.candidates.stack(c.thetas)
        got = jax.jit(lambda t, p, x, k: fn(c.program, t, p, x, k))(thetas, c.params, c.x, c.key)
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, fn(c.program, thetas, c.params, c.x, c.key), rtol=1e-5, atol=1e-5)

    @parameterized.parameters(*COMBINATIONS)
    def test_grad_reaches_every_candidate_and_nothing_frozen(self, name, variant, example):
        c, fn = case(example), COMBINATORS[name][variant]
        thetas = jr.candidates.stack(c.thetas)
        out = jax.eval_shape(lambda t: fn(c.program, t, c.params, c.x, c.key), thetas)
        weights = jax.random.normal(jax.random.key(5), out.shape, out.dtype)

        def loss(t, p):
            return jnp.vdot(weights, fn(c.program, t, p, c.x, c.key))

        g_theta, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(thetas, c.params)
        chex.assert_trees_all_equal_shapes(g_theta, thetas)
        mask = c.program.trainable(c.thetas[0])
        for (path, g), learns in zip(jax.tree_util.tree_leaves_with_path(g_theta), jax.tree.leaves(mask)):
            if learns:
                for k in range(K):
                    assert bool(jnp.any(g[k] != 0)), f"{name}: no gradient reaches candidate {k}'s {path}"
        for g in jax.tree.leaves(g_params):
            np.testing.assert_array_equal(g, 0)

    @parameterized.parameters(*COMBINATIONS)
    def test_vmap_over_stacks_equals_a_loop(self, name, variant, example):
        c, fn = case(example), COMBINATORS[name][variant]
        stacks = [jr.candidates.stack(c.thetas), jr.candidates.stack(c.thetas[::-1][:1] * K)]
        many = jax.jit(jax.vmap(lambda t: fn(c.program, t, c.params, c.x, c.key)))(
            jr.candidates.stack(stacks)
        )
        for m, thetas in enumerate(stacks):
            chex.assert_trees_all_close(
                many[m], fn(c.program, thetas, c.params, c.x, c.key), rtol=1e-5, atol=1e-5
            )
        assert not np.allclose(many[0], many[1]), f"{name}: the stacks do not differ"
