"""Prompts trained with Hugging Face PEFT: :func:`from_peft` reads an adapter, :func:`to_peft` writes one.

PEFT (Mangrulkar et al. 2022, ``huggingface/peft``) saves a prompt-learning adapter as a folder::

    adapter_config.json        peft_type, num_virtual_tokens, token_dim, num_layers,
                               num_attention_heads, the reparameterisation's settings
    adapter_model.safetensors  one tensor, "prompt_embeddings": the prompt the model sees

The file holds the *materialised* prompt: the output of P-tuning's encoder or of prefix
tuning's projection MLP, never the encoder itself (PEFT's ``get_prompt_embedding_to_save``).
So an adapter reads back as a free prompt, exactly what PEFT runs when it loads one
(``inference_mode=True``):

* ``PROMPT_TUNING`` — Lester et al. 2021: ``[e(x)] -> [P; e(x)]``, ``P ∈ R^{p×D}``;
  here :func:`~jaxreprog.embedding.soft_prompt`, ``theta = {"prompt": P}``.
* ``P_TUNING`` — Liu et al. 2021: the same with ``P = f(u)``, ``f`` an MLP or a bi-LSTM
  then an MLP (:func:`~jaxreprog.embedding.p_tuning`); the file holds ``P``, so it reads
  back as a :func:`~jaxreprog.embedding.soft_prompt`.
* ``PREFIX_TUNING`` — Li & Liang 2021 (and P-tuning v2, Liu et al. 2022): layer ``i``
  computes ``Attn(Q, [P_k^i; K], [P_v^i; V])``; with ``prefix_projection``, ``P =
  MLP(P')``. The file holds ``P`` as ``(p, L·2·D)``, row ``t`` being ``[K_t^0, V_t^0,
  K_t^1, V_t^1, ...]`` (heads major in each); here :func:`~jaxreprog.hidden.prefix_tuning`
  with ``reparameterize=None``, ``theta = {"kv": (L, 2, p, H, Dh)}``.

The program's output part is the identity (the frozen model's own outputs); add an
alignment after loading. :func:`to_peft` writes the other direction, from
:func:`~jaxreprog.embedding.soft_prompt`, :func:`~jaxreprog.embedding.p_tuning` (its
encoder's output) and :func:`~jaxreprog.hidden.prefix_tuning` /
:func:`~jaxreprog.hidden.p_tuning_v2` programs, and one task's prompt of a per-task program
(``soft_prompt(tasks=K)``, :func:`~jaxreprog.embedding.multitask_prompt`) with ``task=k``.

Positions. Here the prompt (or prefix) takes positions ``0..p-1`` and the input's real
tokens ``p..p+n-1`` whatever the padding side. PEFT agrees with right padding. With left
padding, PEFT's prompt tuning and P-tuning number positions over the padding (the
transformers default ``arange``; PEFT drops ``position_ids`` a caller passes), so its
outputs on padded rows are not the unpadded sequence's; its prefix tuning agrees when the
caller passes ``position_ids = cumsum(mask) - 1`` (PEFT adds ``p``).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.artifact import ArtifactError
from jaxreprog.core import FrozenModel, Reprogrammed, SiteHook, TokenSpec, reprogram
from jaxreprog.embedding._tasks import task_count
from jaxreprog.hooks import Embedded, KeyValues
from jaxreprog.taxonomy import OutputAlignment

__all__ = ["from_peft", "to_peft"]

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TENSOR = "prompt_embeddings"
PROMPTS = ("PROMPT_TUNING", "P_TUNING")
SUPPORTED = (*PROMPTS, "PREFIX_TUNING")
_EMBEDDING = ("jr.embedding.soft_prompt", "jr.embedding.p_tuning", "jr.embedding.multitask_prompt")
_HIDDEN = ("jr.hidden.prefix_tuning", "jr.hidden.p_tuning_v2")


def _token_spec(frozen_model: Any, who: str) -> TokenSpec:
    if not isinstance(frozen_model, FrozenModel) or not isinstance(frozen_model.spec, TokenSpec):
        got = type(frozen_model.spec if isinstance(frozen_model, FrozenModel) else frozen_model).__name__
        raise TypeError(f"{who}: PEFT prompts need a text FrozenModel (a jr.TokenSpec), got {got}")
    return frozen_model.spec


# ----------------------------------------------------------------------------- read


def from_peft(adapter_dir: str | os.PathLike, frozen_model: FrozenModel) -> tuple[Reprogrammed, Any]:
    """Read a PEFT prompt-learning adapter folder as ``(program, theta)`` around ``frozen_model``.

    ``PROMPT_TUNING`` and ``P_TUNING`` become ``jr.reprogram(frozen_model,
    embedding=jr.embedding.soft_prompt(p))`` with ``theta["embedding"] = {"prompt": P}``;
    ``PREFIX_TUNING`` becomes ``hidden=jr.hidden.prefix_tuning(p, reparameterize=None)``
    with ``theta["hidden"] = {"kv": (L, 2, p, H, Dh)}``. The file holds the prompt PEFT
    computed (P-tuning's encoder output, prefix tuning's projection), which is what these
    free prompts hold: the program's outputs are PEFT's (see the module's docstring for
    positions under left padding). No output part: add your alignment, e.g.
    ``jr.reprogram(frozen_model, embedding=program.parts["embedding"], output=...)``.

    Args:
      adapter_dir: the folder ``PeftModel.save_pretrained`` wrote (``adapter_config.json``
        and ``adapter_model.safetensors``; pickled ``adapter_model.bin`` files are not read).
      frozen_model: the base model (a GPT-2, BERT-family or Llama-family zoo model); its width,
        layer and head counts must be the adapter's ``token_dim``, ``num_layers``,
        ``num_attention_heads`` (for a prefix under grouped-query attention, as PEFT writes it:
        the key/value heads, ``token_dim`` = their count x head width; each is repeated for the
        query heads it serves).

    Raises:
      ArtifactError: a missing or unreadable file, an unsupported ``peft_type`` (LoRA and
        other weight adapters), a field that does not fit ``frozen_model``, a tensor of the
        wrong shape; the message names the file and the field.

    Example::

        >>> program, theta = jr.from_peft("gpt2-prompt", jr.models.load("gpt2", weights="gpt2-hf"))
        >>> logits = jr.models.gpt2.reprogrammed_logits(model, program, theta, model.params, x)
    """
    from jaxreprog.embedding.soft_prompt import soft_prompt
    from jaxreprog.hidden.prefix import prefix_tuning
    from jaxreprog.models.checkpoint import read_safetensors

    spec = _token_spec(frozen_model, "from_peft")
    folder = pathlib.Path(adapter_dir)
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not config_path.is_file():
        raise ArtifactError(f"from_peft: {folder} is not a PEFT adapter: {CONFIG} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{config_path}: not a JSON config ({err})") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path}: must hold a JSON object, got {type(config).__name__}")
    kind = config.get("peft_type")
    if kind not in SUPPORTED:
        raise ArtifactError(
            f"{config_path}: field 'peft_type' is {kind!r:.40}; jaxreprog reads the prompt-learning "
            f"adapters {', '.join(SUPPORTED)} (LoRA and other weight adapters change the frozen model)"
        )

    def field(name: str, want: int | None = None, default: Any = None) -> int:
        v = config.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ArtifactError(f"{config_path}: field {name!r} must be a positive int, got {v!r:.40}")
        if want is not None and v != want:
            raise ArtifactError(
                f"{config_path}: field {name!r} is {v}, but the base model {spec.name or 'given'!r} has "
                f"{want}: the adapter was trained on another model"
            )
        return v

    p = field("num_virtual_tokens")
    # A prefix holds the key/value heads (PEFT: token_dim = kv heads x head_dim under grouped-query
    # attention); a prompt is one embedding wide.
    kv_heads = spec.num_kv_heads or spec.num_heads
    prompt = kind in PROMPTS
    d = field("token_dim", spec.hidden_size if prompt else kv_heads * spec.head_dim)
    layers = field("num_layers", spec.num_layers or None)
    field("num_attention_heads", (spec.num_heads if prompt else kv_heads) or None)
    field("num_transformer_submodules", 1, default=1)  # 2: encoder-decoder models
    if not weights_path.is_file():
        other = " (the pickled adapter_model.bin is not read: save with safe_serialization=True)"
        raise ArtifactError(
            f"from_peft: {WEIGHTS} is missing in {folder}"
            + (other if (folder / "adapter_model.bin").is_file() else "")
        )
    tensors = read_safetensors(weights_path)  # a damaged file: CheckpointError (a ValueError) naming it
    if set(tensors) != {TENSOR}:
        extra = sorted(set(tensors) - {TENSOR})[:5]
        raise ArtifactError(
            f"{weights_path}: expected the one tensor {TENSOR!r}, got "
            + (f"also {extra} (a head saved with modules_to_save?)" if TENSOR in tensors else f"{extra}")
        )
    weight = np.asarray(tensors[TENSOR])
    want = (p, d) if kind in PROMPTS else (p, layers * 2 * d)
    if weight.shape != want or not np.issubdtype(weight.dtype, np.floating):
        raise ArtifactError(
            f"{weights_path}: tensor {TENSOR!r} has shape {weight.shape} {weight.dtype}; {CONFIG}'s "
            f"{kind} with num_virtual_tokens={p}, token_dim={d}"
            + ("" if kind in PROMPTS else f", num_layers={layers}")
            + f" needs {want} float"
        )
    weight = jnp.asarray(weight, jnp.float32)
    if kind in PROMPTS:
        program = reprogram(frozen_model, embedding=soft_prompt(p))
        return program, {"embedding": {"prompt": weight}, "output": ()}
    kv = weight.reshape(p, layers, 2, kv_heads, spec.head_dim).transpose(1, 2, 0, 3, 4)
    kv = jnp.repeat(kv, spec.num_heads // kv_heads, axis=3)  # each key/value head for the queries it serves
    program = reprogram(frozen_model, hidden=prefix_tuning(p, reparameterize=None))
    return program, {"hidden": {"kv": kv}, "output": ()}


# ---------------------------------------------------------------------------- write


def to_peft(
    path: str | os.PathLike,
    program: Reprogrammed,
    theta: Any,
    *,
    task_type: str | None = None,
    base_model: str | None = None,
    drop_output: bool = False,
    task: int | None = None,
) -> pathlib.Path:
    """Write ``program``'s prompt as a PEFT adapter folder ``PeftModel.from_pretrained`` loads.

    * ``jr.embedding.soft_prompt`` -> ``PROMPT_TUNING`` (``prompt_embeddings = P``);
    * ``jr.embedding.p_tuning`` -> ``P_TUNING`` with its encoder's settings and output
      ``P = f(u)`` (PEFT's adapter files hold ``P``, not ``f``; ``encoder="mlp1"``, which
      PEFT lacks, is written as ``PROMPT_TUNING``);
    * ``jr.hidden.prefix_tuning`` / ``p_tuning_v2`` -> ``PREFIX_TUNING``, the prefixes
      ``(p, L·2·D)`` in PEFT's order (with ``reparameterize``, the MLP's output and
      ``prefix_projection=True``; PEFT runs it as stored, but cannot resume training it);
    * a prompt per task (``jr.embedding.soft_prompt(tasks=K)``, ``jr.embedding.multitask_prompt``:
      ``P_k = P* ∘ (u_k v_kᵀ)``) -> with ``task=k``, task ``k``'s prompt as ``PROMPT_TUNING``,
      the adapter of the single-task program ``soft_prompt(length, init=P_k)`` (PEFT's adapters
      hold one prompt, and its multitask prompt tuning no mixed-task batches); refused without
      ``task=``.

    PEFT prepends one prompt at the embeddings or one prefix at every layer, with the real
    tokens after it, so anything else is refused with a ``ValueError`` naming the part: an
    input part (a visual prompt, a text template), both an embedding and a hidden part, a
    soft prompt with ``where`` other than ``"prefix"`` or at other sites, prefixes at some
    layers only or with ``positions="from_zero"``, a part of your own or another method.
    An output part other than the identity (a label mapping) is refused too, unless
    ``drop_output=True``: then the prompt is written without it, and PEFT returns the frozen
    model's own outputs.

    Args:
      path: the folder (created; ``adapter_config.json`` and ``adapter_model.safetensors`` in
        it are replaced).
      program: a :func:`jaxreprog.reprogram` program around a text model.
      theta: its theta (one prompt; pick a candidate out of K first).
      task_type: PEFT's ``task_type``; default ``"CAUSAL_LM"`` for causal models (GPT-2),
        ``"FEATURE_EXTRACTION"`` otherwise (BERT's hidden states).
      base_model: written as ``base_model_name_or_path`` (default: the model's name).
      drop_output: write the prompt of a program whose output part is not the identity.
      task: which task's prompt to write, ``k`` in ``[0, K)``, for a program with a prompt per
        task (only then).

    Returns:
      The folder's path.

    Example::

        >>> jr.to_peft("out/peft", program, theta)
        >>> peft_model = peft.PeftModel.from_pretrained(hf_gpt2, "out/peft")
    """
    from safetensors.numpy import save_file

    if not isinstance(program, Reprogrammed):
        raise TypeError(
            f"to_peft: program must be a jr.Reprogrammed (jr.reprogram), got {type(program).__name__}"
        )
    folder = pathlib.Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"to_peft: {folder} is a file, not a folder")
    parts = program.parts
    if "input" in parts:
        raise ValueError(
            f"to_peft: the input part ({_name(parts['input'])}) has no PEFT counterpart; PEFT adapters "
            "hold a prompt at the embeddings or K/V prefixes"
        )
    spec = program.spec
    if not isinstance(spec, TokenSpec) or not spec.num_layers or not spec.num_heads:
        raise ValueError(
            f"to_peft: PEFT prompts need a transformer text model, got a program for {type(spec).__name__}"
        )
    alignment = parts["output"]
    if not drop_output and (
        alignment.tags is None or alignment.tags.alignment is not OutputAlignment.IDENTITY
    ):
        raise ValueError(
            f"to_peft: the output part ({_name(alignment)}) has no PEFT counterpart (a PEFT adapter "
            "holds the prompt only); pass drop_output=True to write the prompt without it"
        )
    slots = [s for s in ("embedding", "hidden") if s in parts]
    if len(slots) != 1:
        raise ValueError(
            "to_peft: a PEFT adapter holds one prompt, at the embeddings or as prefixes; the program has "
            + (" and ".join(f"{s} ({_name(parts[s])})" for s in slots) if slots else "neither")
        )
    (slot,) = slots
    part = parts[slot]
    _check_theta(program, theta)
    factory = part.origin.factory if part.origin is not None else None
    allowed = _EMBEDDING if slot == "embedding" else _HIDDEN
    if factory not in allowed:
        raise ValueError(
            f"to_peft: the {slot} part ({_name(part)}) has no PEFT counterpart; PEFT's are "
            f"{', '.join(_EMBEDDING + _HIDDEN)}"
        )
    args = part.origin.arguments
    part_theta = _one_task(part, theta[slot], slot, task)
    common = {
        "task_type": task_type or ("CAUSAL_LM" if spec.causal else "FEATURE_EXTRACTION"),
        "token_dim": spec.hidden_size,
        "num_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,  # a prefix: the key/value heads (below)
        "num_transformer_submodules": 1,
        "inference_mode": True,
        "base_model_name_or_path": base_model if base_model is not None else (spec.name or None),
        "revision": None,
        "auto_mapping": None,
        "modules_to_save": None,
    }
    if slot == "embedding":
        weight = _prompt(part, part_theta, spec, factory, args)
        encoder = args.get("encoder") if factory == "jr.embedding.p_tuning" else None
        if encoder in ("mlp", "lstm"):
            config = {
                "peft_type": "P_TUNING",
                "encoder_reparameterization_type": encoder.upper(),
                "encoder_hidden_size": int(args.get("hidden") or spec.hidden_size),
                "encoder_num_layers": int(args.get("lstm_layers", 2)),
                "encoder_dropout": 0.0,
            }
        else:
            config = {
                "peft_type": "PROMPT_TUNING",
                "prompt_tuning_init": "RANDOM",
                "prompt_tuning_init_text": None,
                "tokenizer_name_or_path": None,
                "tokenizer_kwargs": None,
            }
    else:
        weight = _prefix(part, part_theta, spec, factory, args)
        reparameterize = args.get("reparameterize")
        kv_heads = spec.num_kv_heads or spec.num_heads
        config = {
            "peft_type": "PREFIX_TUNING",
            "prefix_projection": reparameterize is not None,
            "encoder_hidden_size": int(reparameterize or spec.hidden_size),
            "token_dim": kv_heads * spec.head_dim,
            "num_attention_heads": kv_heads,
        }
    config = {**common, **config, "num_virtual_tokens": int(weight.shape[0])}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {TENSOR: np.ascontiguousarray(weight, np.float32)}, str(folder / WEIGHTS), metadata={"format": "pt"}
    )
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def _name(part: Any) -> str:
    origin = getattr(part, "origin", None)
    return origin.factory if origin is not None else f"a {type(part).__name__} of your own"


def _one_task(part: SiteHook, theta: Any, slot: str, task: Any) -> Any:
    """The part's theta as it acts on an input of task ``task`` (bound by :attr:`SiteHook.bind` to a
    one-row batch ``{"task": [task]}``), for a prompt per task; the theta itself otherwise."""
    tasks = task_count(part)
    count, ids = (f"{tasks} tasks", f"[0, {tasks})") if tasks is not None else ("K tasks", "[0, K)")
    if part.bind is None:
        if task is not None:
            raise ValueError(
                f"to_peft: task= picks one task's prompt of a program with a prompt per task "
                f"(soft_prompt(tasks=K), multitask_prompt); the {slot} part ({_name(part)}) has one "
                "prompt for every input: drop task="
            )
        return theta
    if task is None:
        raise ValueError(
            f"to_peft: the {slot} part ({_name(part)}) holds one prompt per task ({count}) and a PEFT "
            f"adapter holds one prompt: pass task=k (k in {ids}) to write task k's"
        )
    last = None if tasks is None else tasks - 1
    task = checking.integer(task, "task", who="to_peft", minimum=0, maximum=last)
    return part.bind(theta, {"task": np.array([task], np.int32)})


def _check_theta(program: Reprogrammed, theta: Any) -> None:
    want = jax.eval_shape(program.init, jax.random.key(0))
    if not isinstance(theta, Mapping) or jax.tree.structure(theta) != jax.tree.structure(want):
        raise ValueError(f"to_peft: theta does not have the program's structure {jax.tree.structure(want)}")
    for (where, leaf), w in zip(jax.tree_util.tree_flatten_with_path(theta)[0], jax.tree.leaves(want)):
        if np.shape(leaf) != w.shape:
            extra = " (K candidates? write one: jax.tree.map(lambda a: a[i], theta))"
            raise ValueError(
                f"to_peft: theta{jax.tree_util.keystr(where)} has shape {np.shape(leaf)}; the program "
                f"expects {w.shape}" + (extra if np.ndim(leaf) == len(w.shape) + 1 else "")
            )


def _prompt(part: SiteHook, theta: Any, spec: TokenSpec, factory: str, args: Mapping[str, Any]) -> np.ndarray:
    """The ``(p, D)`` prompt the part inserts, read off its action on a one-token input."""
    if args.get("where", "prefix") != "prefix":
        raise ValueError(
            f"to_peft: the embedding part ({factory}) inserts with where={args['where']!r}; PEFT prepends "
            "its prompt (where='prefix')"
        )
    d = spec.hidden_size
    probe = Embedded(
        h=jnp.zeros((1, 1, d), jnp.float32),
        mask=jnp.ones((1, 1), bool),
        positions=jnp.zeros((1, 1), jnp.int32),
        prompt=jnp.zeros((1, 1), bool),
    )
    out = part.apply(theta, "embeddings", probe, spec)
    if not isinstance(out, Embedded) or out.h.shape[1] == 1:
        raise ValueError(
            f"to_peft: the embedding part ({factory}) does not act at the text model's 'embeddings' site "
            f"(its sites: {part.sites.names if part.sites else None}); PEFT prompts sit there"
        )
    flags = np.asarray(out.prompt[0])
    order = np.argsort(np.asarray(out.positions[0])[flags], kind="stable")
    return np.asarray(out.h[0])[flags][order]


def _prefix(part: SiteHook, theta: Any, spec: TokenSpec, factory: str, args: Mapping[str, Any]) -> np.ndarray:
    """PEFT's ``(p, L·2·D)`` prefix: the keys and values the part prepends at each layer."""
    if args.get("positions", "after_prefix") != "after_prefix":
        raise ValueError(
            f"to_peft: the hidden part ({factory}) has positions={args['positions']!r}; PEFT's prefix "
            "puts the real tokens after it (positions='after_prefix')"
        )
    h, dh = spec.num_heads, spec.head_dim
    empty = KeyValues(
        k=jnp.zeros((1, 0, h, dh), jnp.float32),
        v=jnp.zeros((1, 0, h, dh), jnp.float32),
        mask=jnp.zeros((1, 0), bool),
        positions=jnp.zeros((1, 0), jnp.int32),
    )
    kv, missing = [], []
    for i in range(spec.num_layers):
        out = part.apply(theta, f"layer_{i}/kv", empty, spec)
        if out is empty or out.k.shape[1] == 0:
            missing.append(i)
            continue
        kv.append(np.stack([np.asarray(out.k[0]), np.asarray(out.v[0])]))  # (2, p, H, Dh)
    if missing:
        raise ValueError(
            f"to_peft: the hidden part ({factory}) prefixes no keys at layers {missing} (layers="
            f"{args.get('layers')!r}, sites={part.sites.names if part.sites else None}); PEFT's "
            f"prefix covers all {spec.num_layers} layers"
        )
    stacked = np.stack(kv)  # (L, 2, p, H, Dh)
    kv_heads = spec.num_kv_heads or h
    if kv_heads != h:  # grouped-query attention: PEFT stores one key/value per group of query heads
        grouped = stacked.reshape(*stacked.shape[:3], kv_heads, h // kv_heads, dh)
        if not np.array_equal(grouped, np.broadcast_to(grouped[..., :1, :], grouped.shape)):
            raise ValueError(
                f"to_peft: the hidden part ({factory}) prefixes different keys or values for query heads "
                f"that share a key/value head ({h} query heads, {kv_heads} key/value heads); PEFT's prefix "
                "holds one per key/value head"
            )
        stacked = grouped[..., 0, :]
    p = stacked.shape[2]
    return stacked.transpose(2, 0, 1, 3, 4).reshape(p, spec.num_layers * 2 * kv_heads * dh)
