"""jaxreprog.data.text: tokenization to fixed-length batches (more cases in test_data.py)."""

import pytest

import jaxreprog as jr


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return jr.data.load_tokenizer()


def test_max_length_below_the_special_tokens_says_so(minilm_tokenizer):
    # [CLS] and [SEP] alone exceed max_length=1: truncation is on, so "pass truncation=True" would mislead.
    with pytest.raises(ValueError, match="shorter than the special tokens") as info:
        jr.data.tokenize(["a cat"], minilm_tokenizer, max_length=1)
    assert "truncation=True" not in str(info.value)
