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


def test_left_truncation_keeps_the_end_and_the_special_tokens(minilm_tokenizer):
    # Decoders read the answer cue at the end of the prompt: cutting the end lost it.
    text = "one two three four five six seven eight"
    ids = minilm_tokenizer.encode(text).ids  # [CLS] 8 words [SEP]
    kwargs = dict(max_length=6, padding_side="left")
    right = jr.data.tokenize([text, "a cat"], minilm_tokenizer, **kwargs)
    left = jr.data.tokenize([text, "a cat"], minilm_tokenizer, truncation_side="left", **kwargs)
    assert right["input_ids"][0].tolist() == [ids[0], *ids[1:5], ids[-1]]  # the default: cut the end
    assert left["input_ids"][0].tolist() == [ids[0], *ids[-5:-1], ids[-1]]  # [CLS] ... last words [SEP]
    assert left["input_ids"][1].tolist() == right["input_ids"][1].tolist()  # short texts: untouched
    assert left["attention_mask"].tolist() == right["attention_mask"].tolist()
    with pytest.raises(ValueError, match="truncation_side must be 'right' or 'left'"):
        jr.data.tokenize([text], minilm_tokenizer, max_length=6, truncation_side="start")
