"""Token inputs: bad ids and masks are a clear error eagerly and under jr.checked(jax.jit(...));
the one integer check of every factory's counts (lengths, depths, numbers of classes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxreprog as jr
from jaxreprog.checking import integer
from jaxreprog.models import bert, gpt2


@pytest.fixture(scope="module")
def models():
    small_bert = bert.from_config(
        bert.BertConfig(
            vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=24
        ),
        jax.random.key(0),
    )
    small_gpt2 = gpt2.from_config(
        gpt2.GPT2Config(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, max_positions=24),
        jax.random.key(1),
    )
    return {"bert": small_bert, "gpt2": small_gpt2}


def tokens(ids, mask=None):
    ids = jnp.asarray(ids, jnp.int32)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids) if mask is None else jnp.asarray(mask)}


BAD = [
    (tokens([[1, 2, 40]]), r"token ids in \[0, 40\) \(the vocabulary\): got 1 outside it, e.g. 40"),
    (tokens([[1, -1, 3]]), r"got 1 outside it, e.g. -1"),
    (tokens([[1, 2, 3], [4, 5, 6]], [[1, 1, 0], [0, 0, 0]]), r"1 all-zero row\(s\) \(first: row 1\)"),
    (tokens([[1, 2, 3]], [[1, 2, 1]]), r"must hold only 0 and 1 \(got values from 1 to 2\)"),
]


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize(("x", "match"), BAD, ids=["id=vocab", "id=-1", "empty row", "mask=2"])
def test_bad_tokens_are_clear_errors_eagerly_and_when_checked(models, name, x, match):
    model = models[name]
    with pytest.raises(ValueError, match=match):
        model.apply(model.params, x)
    apply = jax.jit(model.apply)
    apply(model.params, x)  # unchecked jit runs (NaN for an id >= vocab, the last row for -1: documented)
    with pytest.raises(Exception, match=match):
        jr.checked(apply)(model.params, x)


def test_checked_passes_good_tokens_and_shape_errors_stay_eager(models):
    model = models["bert"]
    x = tokens([[1, 2, 3], [4, 5, 0]], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(
        jr.checked(jax.jit(model.apply))(model.params, x), model.apply(model.params, x), atol=1e-6
    )
    with pytest.raises(ValueError, match=r"must both be \(B, L\), got \(1, 3\) and \(1, 2\)"):
        jax.jit(model.apply)(
            model.params, {"input_ids": jnp.ones((1, 3), int), "attention_mask": jnp.ones((1, 2))}
        )
    with pytest.raises(TypeError, match="attention_mask'\\] must be 0/1 integers or bools"):
        model.apply(model.params, {"input_ids": jnp.ones((1, 3), int), "attention_mask": jnp.ones((1, 3))})


@given(
    value=st.integers(-(2**40), 2**40),
    minimum=st.none() | st.integers(-5, 5),
    span=st.none() | st.integers(0, 10),
    numpy=st.booleans(),
)
def test_integer_accepts_exactly_the_ints_in_range(value, minimum, span, numpy):
    maximum = None if span is None else (minimum or 0) + span
    given_value = np.int64(value) if numpy else value
    if (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        out = integer(given_value, "n", who="f", minimum=minimum, maximum=maximum)
        assert out == value and type(out) is int
    else:
        with pytest.raises(ValueError, match=rf"^f: n must be an int .*, got {value}$"):
            integer(given_value, "n", who="f", minimum=minimum, maximum=maximum)


@pytest.mark.parametrize(
    "value, kind",
    [(True, "bool"), (np.bool_(True), "bool"), (2.0, "float"), (np.float32(2), "float32"), ("2", "str"),
     (None, "NoneType"), (np.array(2), "ndarray"), (jnp.int32(2), "ArrayImpl"), ([2], "list")],
)  # fmt: skip
def test_integer_refuses_what_is_not_an_int(value, kind):
    with pytest.raises(TypeError, match=rf"^soft_prompt: length must be an int >= 1, got .* \({kind}\)$"):
        integer(value, "length", who="soft_prompt")


@pytest.mark.parametrize(
    "minimum, maximum, want",
    [(1, None, "an int >= 1"), (0, None, "an int >= 0"), (None, None, "an int"),
     (1, 4, r"an int in \[1, 4\]"), (None, 4, "an int <= 4")],
)  # fmt: skip
def test_integer_message_names_the_function_argument_and_bounds(minimum, maximum, want):
    with pytest.raises(TypeError, match=rf"^cartridge: frozen must be {want}, got 1.5 \(float\)$"):
        integer(1.5, "frozen", who="cartridge", minimum=minimum, maximum=maximum)
    assert integer(np.uint8(4), "frozen", who="cartridge", minimum=minimum, maximum=maximum) == 4
