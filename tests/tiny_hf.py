"""Tiny random Hugging Face GPT-2 / BERT / Llama models saved to a folder and loaded by the zoo, for the
parity tests against transformers and PEFT (test_prefix_peft.py, test_peft_io.py)."""

import numpy as np

import jaxreprog as jr
from jaxreprog.models import bert

VOCAB, LAYERS, HEADS, WIDTH = 40, 2, 2, 16
LENGTHS = [7, 4, 6]  # row 0 is the longest: it has no padding


def batch(side, seed=0):
    """Random ``(ids, mask)`` rows of :data:`LENGTHS` real tokens, padded on ``side`` ("left"/"right")."""
    rng = np.random.default_rng(seed)
    width = max(LENGTHS)
    ids, mask = np.zeros((len(LENGTHS), width), np.int64), np.zeros((len(LENGTHS), width), np.int64)
    for i, n in enumerate(LENGTHS):
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl], mask[i, sl] = rng.integers(1, VOCAB, n), 1
    return ids, mask


def gpt2(folder, torch, transformers):
    """``(GPT2LMHeadModel, the zoo's GPT-2 of the same weights)``."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=LAYERS,
        n_embd=WIDTH,
        n_head=HEADS,
        vocab_size=VOCAB,
        n_positions=24,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(folder)
    return reference, jr.models.load("gpt2", weights=str(folder))


def bert_encoder(folder, torch, transformers):
    """``(BertModel without pooler, the zoo's BERT of the same weights returning token states)``."""
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=32,
        max_position_embeddings=24,
        initializer_range=0.2,
    )
    reference = transformers.BertModel(config, add_pooling_layer=False).eval()
    reference.save_pretrained(folder)
    return reference, bert.load("tiny_bert", weights=str(folder), pooling="none", normalize=False)


def llama(folder, torch, transformers):
    """``(LlamaForCausalLM with grouped-query attention, the zoo's Llama of the same weights)``."""
    torch.manual_seed(2)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=24,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=24,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(folder)
    return reference, jr.models.load("llama", weights=str(folder))
