"""jr.train.memory_plan: per-device memory of a compiled training step, from shapes alone."""

import jax
import jax.numpy as jnp
import pytest

import jaxreprog as jr
from jaxreprog.models import gpt2

CONFIG = gpt2.GPT2Config(vocab_size=64, hidden_size=64, num_layers=4, num_heads=4, max_positions=260)


def _plan(remat=None, **kwargs):
    module = gpt2.GPT2(CONFIG, remat)
    x = {"input_ids": jnp.zeros((8, 256), jnp.int32), "attention_mask": jnp.ones((8, 256), jnp.int32)}
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)  # no parameter is materialised
    model = jr.FrozenModel(gpt2.CausalLM(module), shapes, gpt2._spec(CONFIG, "gpt2"))
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(4))
    return jr.train.memory_plan(program, model, x, **kwargs), shapes


def test_plan_counts_parameters_and_remat_shrinks_the_activations():
    plan, shapes = _plan(device_bytes=2**30)
    param_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes))
    assert plan.params == param_bytes and plan.arguments >= param_bytes
    assert plan.temporaries > 0 and plan.peak >= plan.arguments and plan.fits
    assert "fits" in str(plan) and "GiB" in str(plan)
    remat, _ = _plan("full", device_bytes=plan.peak - 1)
    assert remat.temporaries < plan.temporaries  # the backward pass recomputes instead of keeping
    tight, _ = _plan(device_bytes=plan.peak - 1)
    assert tight.fits is False and "does NOT fit" in str(tight)


def test_bad_arguments():
    with pytest.raises(TypeError, match="memory_plan"):
        jr.train.memory_plan("program", None, None)
    with pytest.raises(ValueError, match="device_bytes"):
        _plan(device_bytes=0)
