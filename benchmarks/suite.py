"""Benchmark suite: jaxreprog's training step (jitted) against a plain PyTorch eager step, per row.

Every row builds the same reprogramming step on both sides:

* JAX: ``init, step = jr.train.make_step(program, optimizer)``, compiled once with
  ``jax.jit(step).lower(state, frozen_params, batch, key).compile()``; the frozen
  parameters are an *argument* of the compiled call, never baked in as constants.
* PyTorch: the frozen network in eval mode (``requires_grad=False``), the same prompt as
  ``torch.nn.Parameter`` leaves, ``loss.backward()`` and ``torch.optim.SGD.step()``.

The optimizer is plain SGD on both sides (``optax.inject_hyperparams(optax.sgd)``), so
that before any timing the suite can read the prompt's gradient off one JAX step run
with the learning rate set to ``-1024`` (``θ₁ = θ₀ + 1024 g``; an exact power of two),
from the very executable it then times. That gradient and the loss must match the
PyTorch side (each row states its tolerance; the table prints the errors).

Rows (``--rows`` picks some, comma-separated):

* ``efficientnet`` — EfficientNet-Lite0 padding VR, real weights
  (``jr.models.load("efficientnet_lite0")``); the PyTorch model and step are
  ``benchmarks/efficientnet_step.py``'s.
* ``resnet18`` — ResNet-18 padding VR at 224 px; random weights (a Hugging Face
  ``ResNetConfig`` of ResNet-18's shape, converted by ``jaxreprog.models.resnet``);
  PyTorch runs the Hugging Face model.
* ``minilm`` — all-MiniLM-L6-v2 soft prompt (P = 20), real weights, a linear head
  (``jr.output.linear``) on the mean-pooled sentence embedding; PyTorch runs
  ``transformers.BertModel`` from the same safetensors folder wrapped by PEFT's
  ``PromptTuning`` (the prompt prepended to the input embeddings, the attention mask
  extended), or the same by hand without PEFT (``--torch-prompt plain``).
* ``gpt2`` — prefix tuning (Li & Liang 2021, MLP reparameterisation) on a random
  GPT-2-small-shaped model (``jaxreprog.models.gpt2.from_config``, 12 layers, width 768),
  a verbalizer over two label words; PyTorch runs ``GPT2LMHeadModel`` with the prefix as
  ``past_key_values``.
* ``mpt`` — multitask prompt tuning (P = 20, 3 tasks, rank 1) on all-MiniLM-L6-v2 with a
  mixed-task batch (``x["task"]``), the ``minilm`` head; PyTorch: PEFT's
  ``MultitaskPromptTuningConfig`` prompt encoder, the prompts prepended by hand (``row_mpt``: why).
* ``cartridge`` — a cartridge of 256 K/V tokens (first frozen) initialised from the model's
  cache of a text, on the ``gpt2`` row's random GPT-2-small-shaped model and verbalizer;
  PyTorch: PEFT's ``CartridgeConfig`` (``past_key_values``).
* ``time_llm`` — Time-LLM on a random 6-layer GPT-2-small-width LM (its 50257-token vocabulary
  under the 1000 text prototypes), series of 512 steps, horizon 96, MSE loss; PyTorch: the
  method written out in eager torch over ``GPT2Model`` (no PEFT or library equivalent).

* ``llama1b`` — soft prompt (P = 20) on a random Llama-3.2-1B-shaped decoder loaded through
  ``jr.models.load("llama", weights=)`` from the PyTorch model's ``save_pretrained``; PyTorch:
  ``LlamaForCausalLM`` + PEFT's ``PromptTuning``. A GPU row (issue #25's 1B step time and MFU):
  run only when named, ``--rows llama1b``.

``mpt`` and ``time_llm`` check the gradient of each learned piece separately (against its own
largest entry).

Each row prints seconds per step (median of ``--reps`` interleaved repetitions after
``--warmup`` calls each), the ratio PyTorch / JAX (> 1: jaxreprog is faster), the first
call's time (JAX: lowering + compilation + the call), the JAX step's achieved GFLOP/s
(XLA's ``cost_analysis()`` flops over the median time) and XLA's memory figure for it
(``memory_analysis()``: arguments + outputs + temporaries − aliased, MiB).

``--quick`` shrinks every row (small canvases, tiny GPT-2, short sequences, 2 timed
steps): a smoke run, not a measurement. ``--record`` appends the table, the date, the
machine and the exact command to ``benchmarks/README.md`` (or the file given).
``--device gpu`` runs JAX on the GPU and PyTorch on CUDA, the timed steps in bf16 (``--precision``:
JAX's frozen forward as ``fit(precision="bf16")`` runs it, PyTorch under bf16 autocast; the
equality check stays float32), and adds the JAX step's MFU against the device's dense bf16 peak
(``--peak-tflops``, or read off the device kind); not yet run on a GPU. ``--precision bf16`` on
the CPU runs the same bf16 path (slow there: a smoke test of it).

    python benchmarks/suite.py [--quick] [--rows efficientnet,resnet18,minilm,gpt2,...] [--reps 10] [--record]
"""

# No ``from __future__ import annotations``: the tests load this file without registering it in
# sys.modules, where dataclasses look string annotations up.
import argparse
import contextlib
import dataclasses
import datetime
import inspect
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
README = HERE / "README.md"
CHECK_LR = -1024.0  # θ₁ = θ₀ + 1024 g: the gradient, exactly scaled, from one step
LEARNING_RATE = 0.01


@dataclasses.dataclass(frozen=True)
class Context:
    quick: bool = False
    device: str = "cpu"  # "cpu" | "gpu"
    batch: int | None = None  # overrides every row's batch size
    torch_prompt: str = "auto"  # minilm, mpt, cartridge: "peft" | "plain" | "auto" (PEFT when importable)
    precision: str = "fp32"  # the timed steps: "fp32" | "bf16" (the check is always float32)
    peak_tflops: float | None = None  # the device's dense bf16 peak, for MFU

    @property
    def torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "gpu" else "cpu")

    def batch_size(self, default: int) -> int:
        return self.batch or default


@dataclasses.dataclass
class Row:
    """One benchmark row: the JAX program and its inputs, and the PyTorch side of the same step.

    ``torch_value_and_grad()`` returns the loss and ``{name: gradient}`` of the current
    ``torch_params``; ``jax_prompt(theta)`` and ``torch_prompt(grads)`` pick the prompt's
    gradient in the JAX layout from either side (the check compares those): one array, or a
    ``{name: array}`` of several learned pieces, each checked against its own largest entry.
    ``loss``: ``make_step``'s ``loss=`` (``None``: its default cross-entropy).
    """

    name: str
    shape: str
    program: Any
    frozen: Any
    theta: Any
    batch: Any
    torch_params: dict[str, torch.Tensor]
    torch_value_and_grad: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    jax_prompt: Callable[[Any], Any]
    torch_prompt: Callable[[dict[str, torch.Tensor]], np.ndarray]
    loss_tol: float = 1e-4  # |loss_jax - loss_torch| <= loss_tol * max(1, |loss_torch|)
    grad_tol: float = 1e-3  # max |g_jax - g_torch| <= grad_tol * max |g_torch| (per piece)
    loss: Any = None


def _jr():
    import jaxreprog as jr

    return jr


def _to_torch(a, ctx: Context, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(np.array(a))
    return (t if dtype is None else t.to(dtype)).to(ctx.torch_device)


def _freeze(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    model = model.eval().to(ctx.torch_device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _leaves(params: dict[str, np.ndarray], ctx: Context) -> dict[str, torch.Tensor]:
    return {k: torch.nn.Parameter(_to_torch(v, ctx)) for k, v in params.items()}


# ------------------------------------------------------------------ vision rows: padding VR

SOURCE_CLASSES = np.arange(10) * 100  # 10 mapped ImageNet classes (as in efficientnet_step.py)


def _efficientnet_step_module():
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import efficientnet_step

    return efficientnet_step


def _padding_program(frozen, image: int):
    """Padding VR with a fixed one-to-one map onto SOURCE_CLASSES."""
    import jax

    jr = _jr()
    program = jr.reprogram(frozen, input=jr.input.pad(target_size=image), output=jr.output.rlm(1000, 10))
    theta = program.init(jax.random.key(0))
    theta["output"]["omega"] = jax.nn.one_hot(SOURCE_CLASSES, 1000, dtype=np.float32).T
    return program, theta


def _images(batch: int, image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, image, image, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int32)
    return x, y


def _vision_row(name, shape, frozen, image, vg_factory, x, y, ctx, loss_tol, grad_tol) -> Row:
    program, theta = _padding_program(frozen, image)
    tx = _to_torch(x, ctx).permute(0, 3, 1, 2).contiguous()
    ty = _to_torch(y, ctx, torch.long)
    params = _leaves({"delta": np.asarray(theta["input"]["delta"]).transpose(2, 0, 1)[None]}, ctx)
    vg = vg_factory()

    def value_and_grad():
        loss, grad = vg(params["delta"], tx, ty)
        return loss, {"delta": grad}

    return Row(
        name=name,
        shape=shape,
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["input"]["delta"],
        torch_prompt=lambda g: g["delta"][0].permute(1, 2, 0).float().cpu().numpy(),
        loss_tol=loss_tol,
        grad_tol=grad_tol,
    )


def row_efficientnet(ctx: Context) -> Row:
    """EfficientNet-Lite0 padding VR on the real weights (PyTorch side: efficientnet_step.py)."""
    from jaxreprog.models import checkpoint, efficientnet

    if ctx.device == "gpu":  # efficientnet_step.make_torch_step builds its mask on the CPU
        raise NotImplementedError("the efficientnet row runs on CPU only (efficientnet_step.py's torch step)")
    es = _efficientnet_step_module()
    size, batch, image = (32, 2, 16) if ctx.quick else (128, 32, 28)
    batch = ctx.batch_size(batch)
    frozen = _jr().models.load("efficientnet_lite0", size=size)
    state = checkpoint.read_torch(efficientnet.default_weights("efficientnet_lite0"))
    model = es.TorchEfficientNetLite(efficientnet.blocks(1.0, 1.0)).load_efficientnet_pytorch(state)
    model = _freeze(model, ctx)
    x, y = _images(batch, image)
    # float32 through ~50 layers: efficientnet_step.py's tolerances
    return _vision_row(
        "efficientnet",
        f"EfficientNet-Lite0 pad VR, {image}→{size} px, batch {batch}",
        frozen,
        image,
        lambda: es.make_torch_step(model, size, image),
        x,
        y,
        ctx,
        loss_tol=1e-3,
        grad_tol=2e-2,
    )


def _torch_padding_vr(model_fn, canvas: int, image: int, mean, std, ctx: Context):
    """Padding VR's loss and prompt gradient in PyTorch (ImageSpec normalisation ``(x - mean) / std``)."""
    lo = (canvas - image + 1) // 2
    hi = canvas - image - lo
    mask = torch.ones(1, 3, canvas, canvas, device=ctx.torch_device)
    mask[:, :, lo : lo + image, lo : lo + image] = 0
    mean = torch.as_tensor(np.asarray(mean, np.float32), device=ctx.torch_device).reshape(1, -1, 1, 1)
    std = torch.as_tensor(np.asarray(std, np.float32), device=ctx.torch_device).reshape(1, -1, 1, 1)
    classes = torch.as_tensor(SOURCE_CLASSES, device=ctx.torch_device)

    def vg(delta, x, y):
        delta = delta.detach().requires_grad_(True)
        canvas_x = F.pad(x, (lo, hi, lo, hi)) + torch.sigmoid(delta) * mask
        logits = model_fn((canvas_x - mean) / std)[:, classes]
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        return loss.detach(), delta.grad

    return vg


def _resnet_row(ctx: Context, name: str, layer_type: str, widths, depths, batch: int, grad_tol: float) -> Row:
    """ResNet padding VR (random weights of the shape; PyTorch: the Hugging Face model), ILM-VP's setting."""
    import transformers

    from jaxreprog.models import resnet

    size, batch, image = (32, 2, 16) if ctx.quick else (224, batch, 128)
    batch = ctx.batch_size(batch)
    torch.manual_seed(0)
    config = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=widths, depths=depths, layer_type=layer_type, num_labels=1000
    )
    model = transformers.ResNetForImageClassification(config)
    frozen = resnet.from_checkpoint({k: v.numpy() for k, v in model.state_dict().items()}, size=size)
    model = _freeze(model, ctx)
    spec = frozen.spec
    x, y = _images(batch, image)
    return _vision_row(
        name,
        f"{name.replace('resnet', 'ResNet-')} pad VR, {image}→{size} px, batch {batch}",
        frozen,
        image,
        lambda: _torch_padding_vr(lambda z: model(z).logits, size, image, spec.mean, spec.std, ctx),
        x,
        y,
        ctx,
        loss_tol=1e-4,
        grad_tol=grad_tol,
    )


def row_resnet18(ctx: Context) -> Row:
    """ResNet-18 padding VR, 128 px images in a 224 px canvas, batch 16."""
    # Random weights make this net ill-conditioned: PyTorch's own float32 prompt gradient is
    # 1.3e-2 (max-relative) from its float64 one here, so two float32 sides differ as much.
    return _resnet_row(ctx, "resnet18", "basic", [64, 128, 256, 512], [2, 2, 2, 2], 16, grad_tol=3e-2)


def row_resnet50(ctx: Context) -> Row:
    """ResNet-50 padding VR, 128 px images in a 224 px canvas, batch 16."""
    return _resnet_row(ctx, "resnet50", "bottleneck", [256, 512, 1024, 2048], [3, 4, 6, 3], 16, grad_tol=5e-2)


def row_vit_vpt_deep(ctx: Context) -> Row:
    """VPT-deep on a random ViT-B/16-shaped model (P = 10 prompts at each of the 12 layers), 10 mapped
    classes; PyTorch: Hugging Face ViTForImageClassification run layer by layer with the prompts."""
    import jax
    import transformers

    from jaxreprog.models import vit

    jr = _jr()
    if ctx.quick:
        size, patch, width, layers, heads, batch = 32, 16, 64, 2, 4, 2
    else:
        size, patch, width, layers, heads, batch = 224, 16, 768, 12, 12, 8
    batch, prompt_len = ctx.batch_size(batch), 10
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        image_size=size,
        patch_size=patch,
        num_labels=1000,
    )
    model = transformers.ViTForImageClassification(config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    frozen = vit.from_checkpoint(state, num_heads=heads)
    model = _freeze(model, ctx)
    program = jr.reprogram(frozen, hidden=jr.hidden.vpt_deep(prompt_len), output=jr.output.rlm(1000, 10))
    theta = program.init(jax.random.key(0))
    theta["output"]["omega"] = jax.nn.one_hot(SOURCE_CLASSES, 1000, dtype=np.float32).T
    x, y = _images(batch, size)
    params = _leaves({"prompts": np.asarray(theta["hidden"]["prompts"])}, ctx)
    tx = _to_torch(x, ctx).permute(0, 3, 1, 2).contiguous()
    ty = _to_torch(y, ctx, torch.long)
    classes = torch.as_tensor(SOURCE_CLASSES, device=ctx.torch_device)
    vit_model = model.vit
    blocks = (
        vit_model.layers if hasattr(vit_model, "layers") else vit_model.encoder.layer
    )  # transformers 5 / 4

    def value_and_grad():
        prompts = params["prompts"]
        h = model.vit.embeddings(tx)
        for i, layer in enumerate(blocks):
            p = prompts[i].expand(h.shape[0], -1, -1)
            h = torch.cat([h[:, :1], p, h[:, 1 if i == 0 else 1 + prompt_len :]], 1)  # insert, then replace
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        logits = model.classifier(model.vit.layernorm(h)[:, 0])[:, classes]
        loss = F.cross_entropy(logits.float(), ty)
        (grad,) = torch.autograd.grad(loss, [prompts])
        return loss.detach(), {"prompts": grad}

    return Row(
        name="vit_vpt_deep",
        shape=f"ViT {layers}L/{width}/{patch} VPT-deep P={prompt_len}, {size} px, batch {batch}",
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["hidden"]["prompts"],
        torch_prompt=lambda g: g["prompts"].float().cpu().numpy(),
    )


# ------------------------------------------------------------------ text rows


def _tokens(batch: int, length: int, vocab: tuple[int, int], first=None, last=None, ragged=True, seed=0):
    """Random token rows, right-padded to ``length`` (row ``i`` shorter by ``i % 3`` when ragged)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(*vocab, size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for i in range(batch):
        n = length - (i % 3 if ragged else 0)
        if first is not None:
            ids[i, 0] = first
        if last is not None:
            ids[i, n - 1] = last
        ids[i, n:], mask[i, n:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def _sentence_head_step(h, mask, params, y):
    """MiniLM's sentence embedding (masked mean, L2-normalised), a linear head, cross-entropy, and the
    gradients of every leaf of ``params``: the PyTorch side of both MiniLM rows."""
    w = mask[..., None].float()
    pooled = F.normalize((h * w).sum(1) / w.sum(1).clamp_min(1e-9), dim=-1)
    loss = F.cross_entropy(F.linear(pooled, params["weight"], params["bias"]), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads))


def row_minilm(ctx: Context) -> Row:
    """all-MiniLM-L6-v2 soft prompt (P = 20) with a linear head; PyTorch: BertModel (+ PEFT PromptTuning)."""
    import jax
    import transformers

    from jaxreprog.models import bert

    jr = _jr()
    prompt_len, classes = 20, 4
    batch, length = (2, 8) if ctx.quick else (32, 64)
    batch = ctx.batch_size(batch)
    frozen = jr.models.load("all_minilm_l6_v2")
    d = frozen.spec.hidden_size
    program = jr.reprogram(
        frozen, embedding=jr.embedding.soft_prompt(prompt_len), output=jr.output.linear(d, classes)
    )
    theta = program.init(jax.random.key(0))
    x = _tokens(batch, length, (1000, 30000), first=101, last=102)
    y = np.random.default_rng(1).integers(0, classes, size=batch).astype(np.int32)

    use_peft = ctx.torch_prompt == "peft" or (ctx.torch_prompt == "auto" and _peft_available())
    base = transformers.BertModel.from_pretrained(bert._package_dir(), add_pooling_layer=False)
    base = _freeze(base, ctx)
    params = _leaves(
        {
            "prompt": np.asarray(theta["embedding"]["prompt"]),
            "weight": np.asarray(theta["output"]["kernel"]).T,
            "bias": np.asarray(theta["output"]["bias"]),
        },
        ctx,
    )
    if use_peft:
        import peft

        config = peft.PromptTuningConfig(
            task_type=peft.TaskType.FEATURE_EXTRACTION, num_virtual_tokens=prompt_len
        )
        with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            encoder = peft.get_peft_model(base, config).to(ctx.torch_device)
        # PEFT's prompt table is its own parameter: make it the leaf the optimizer updates
        embedding = encoder.prompt_encoder["default"].embedding
        embedding.weight = params["prompt"]

        def hidden(ids, mask):
            return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    else:

        def hidden(ids, mask):
            e = base.embeddings.word_embeddings(ids)
            e = torch.cat([params["prompt"].expand(e.shape[0], -1, -1).to(e.dtype), e], 1)
            ones = torch.ones(mask.shape[0], prompt_len, dtype=mask.dtype, device=mask.device)
            return base(inputs_embeds=e, attention_mask=torch.cat([ones, mask], 1)).last_hidden_state

    ids = _to_torch(x["input_ids"], ctx, torch.long)
    mask = _to_torch(x["attention_mask"], ctx, torch.long)
    ty = _to_torch(y, ctx, torch.long)

    def value_and_grad():
        h = hidden(ids, mask)[:, prompt_len:].float()  # sentence pooling skips the prompt
        return _sentence_head_step(h, mask, params, ty)

    return Row(
        name="minilm",
        shape=f"MiniLM-L6 soft prompt P={prompt_len}, {length} tokens, batch {batch}"
        + (" (PEFT)" if use_peft else " (plain torch)"),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["embedding"]["prompt"],
        torch_prompt=lambda g: g["prompt"].float().cpu().numpy(),
    )


def row_minilm_ptv2(ctx: Context) -> Row:
    """all-MiniLM-L6-v2 P-tuning v2 (P = 20 key/value prefixes at all 6 layers), linear head;
    PyTorch: BertModel + PEFT PREFIX_TUNING, loaded from the adapter jr.to_peft writes of theta."""
    import tempfile

    import jax
    import peft
    import transformers

    from jaxreprog import peft_io
    from jaxreprog.models import bert

    jr = _jr()
    prompt_len, classes = 20, 4
    batch, length = (2, 8) if ctx.quick else (32, 64)
    batch = ctx.batch_size(batch)
    frozen = jr.models.load("all_minilm_l6_v2")
    spec, d = frozen.spec, frozen.spec.hidden_size
    part = jr.hidden.p_tuning_v2(prompt_len, std=0.5)
    program = jr.reprogram(frozen, hidden=part, output=jr.output.linear(d, classes))
    theta = program.init(jax.random.key(0))
    x = _tokens(batch, length, (1000, 30000), first=101, last=102)
    y = np.random.default_rng(1).integers(0, classes, size=batch).astype(np.int32)

    def peft_layout(hidden_theta):  # (P, layers * 2 * D), PEFT's; linear in theta, so grads map too
        return peft_io._prefix(part, hidden_theta, spec, part.origin.factory, part.origin.arguments)

    base = _freeze(transformers.BertModel.from_pretrained(bert._package_dir(), add_pooling_layer=False), ctx)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a method transformers 5.x deprecates
        jr.to_peft(folder, program, theta, drop_output=True)
        encoder = peft.PeftModel.from_pretrained(base, folder).to(ctx.torch_device)
    params = _leaves(
        {
            "prefix": peft_layout(theta["hidden"]),
            "weight": np.asarray(theta["output"]["kernel"]).T,
            "bias": np.asarray(theta["output"]["bias"]),
        },
        ctx,
    )
    encoder.prompt_encoder["default"].embedding.weight = params["prefix"]
    ids = _to_torch(x["input_ids"], ctx, torch.long)
    mask = _to_torch(x["attention_mask"], ctx, torch.long)
    ty = _to_torch(y, ctx, torch.long)

    def value_and_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            h = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        return _sentence_head_step(h, mask, params, ty)

    return Row(
        name="minilm_ptv2",
        shape=f"MiniLM-L6 P-tuning v2 P={prompt_len}, {length} tokens, batch {batch} (PEFT)",
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: peft_layout(t["hidden"]),
        torch_prompt=lambda g: g["prefix"].float().cpu().numpy(),
    )


def _gpt2_state_dict(params, num_layers: int) -> dict[str, torch.Tensor]:
    """jaxreprog GPT-2 parameters -> a Hugging Face GPT2LMHeadModel state dict (Conv1D: (in, out))."""
    p = params["params"]
    t = lambda a: torch.as_tensor(np.array(a))  # noqa: E731
    sd = {
        "transformer.wte.weight": t(p["wte"]["embedding"]),
        "transformer.wpe.weight": t(p["wpe"]["embedding"]),
        "transformer.ln_f.weight": t(p["ln_f"]["scale"]),
        "transformer.ln_f.bias": t(p["ln_f"]["bias"]),
        "lm_head.weight": t(p["wte"]["embedding"]),
    }
    names = {
        "ln_1": "ln_1",
        "ln_2": "ln_2",
        "attn_qkv": "attn.c_attn",
        "attn_proj": "attn.c_proj",
        "mlp_fc": "mlp.c_fc",
        "mlp_proj": "mlp.c_proj",
    }
    for i in range(num_layers):
        for ours, theirs in names.items():
            leaf = p[f"layer_{i}"][ours]
            sd[f"transformer.h.{i}.{theirs}.weight"] = t(leaf["scale"] if "scale" in leaf else leaf["kernel"])
            sd[f"transformer.h.{i}.{theirs}.bias"] = t(leaf["bias"])
    return sd


def _hf_gpt2(params, config) -> torch.nn.Module:
    """A Hugging Face GPT2LMHeadModel holding jaxreprog GPT-2 ``params`` of ``config``."""
    import transformers

    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_positions,
        n_embd=config.hidden_size,
        n_layer=config.num_layers,
        n_head=config.num_heads,
        layer_norm_epsilon=config.layer_norm_eps,
    )
    model = transformers.GPT2LMHeadModel(hf_config)
    missing, unexpected = model.load_state_dict(_gpt2_state_dict(params, config.num_layers), strict=False)
    if unexpected or any(not k.endswith(("attn.bias", "attn.masked_bias")) for k in missing):
        raise RuntimeError(f"GPT-2 weights did not map: missing {missing}, unexpected {unexpected}")
    return model


def row_gpt2(ctx: Context) -> Row:
    """Prefix tuning on a random GPT-2-small-shaped model; PyTorch: GPT2LMHeadModel + past_key_values."""
    import jax
    import transformers

    from jaxreprog.models import gpt2

    jr = _jr()
    if ctx.quick:
        config = gpt2.GPT2Config(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, max_positions=64)
        batch, length, prefix, width = 2, 8, 10, 32
    else:
        config = gpt2.GPT2Config()  # 12 layers, width 768, 12 heads, 50257 tokens
        batch, length, prefix, width = 8, 64, 10, 512
    batch = ctx.batch_size(batch)
    frozen = gpt2.from_config(config, jax.random.key(0))
    words = [[11], [22]]  # one label word per class
    program = jr.reprogram(
        frozen,
        hidden=jr.hidden.prefix_tuning(prefix, reparameterize=width),
        output=jr.output.verbalizer(words, num_source=config.vocab_size),
    )
    theta = program.init(jax.random.key(1))
    x = _tokens(batch, length, (1, config.vocab_size), ragged=False)
    y = np.random.default_rng(1).integers(0, len(words), size=batch).astype(np.int32)

    model = _freeze(_hf_gpt2(frozen.params, config), ctx)
    params = _leaves({k: np.asarray(v) for k, v in theta["hidden"].items()}, ctx)
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    ids = _to_torch(x["input_ids"], ctx, torch.long)
    mask = torch.ones(batch, prefix + length, dtype=torch.long, device=ctx.torch_device)
    ty = _to_torch(y, ctx, torch.long)
    word_ids = torch.as_tensor([w[0] for w in words], device=ctx.torch_device)
    # transformers 5.x renamed past_key_values to cache (the old name warns)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def value_and_grad():
        p = params
        kv = torch.tanh(p["inputs"] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]  # (P, layers * 2 * D)
        kv = kv.reshape(prefix, config.num_layers, 2, heads, head_dim).permute(1, 2, 3, 0, 4)
        kv = kv[:, :, None].expand(-1, -1, batch, -1, -1, -1)  # (layers, 2, B, H, P, Dh)
        cache = transformers.DynamicCache([(kv[i, 0], kv[i, 1]) for i in range(config.num_layers)])
        logits = model(input_ids=ids, attention_mask=mask, **{cache_arg: cache}).logits
        loss = F.cross_entropy(logits[:, -1, word_ids].float(), ty)
        grads = torch.autograd.grad(loss, list(params.values()))
        return loss.detach(), dict(zip(params, grads))

    return Row(
        name="gpt2",
        shape=(
            f"GPT-2 {config.num_layers}L/{config.hidden_size} prefix P={prefix} (MLP {width}), "
            f"{length} tokens, batch {batch}"
        ),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["hidden"]["inputs"],
        torch_prompt=lambda g: g["inputs"].float().cpu().numpy(),
    )


def row_llama1b(ctx: Context) -> Row:
    """Soft prompt (P = 20) on a random Llama-3.2-1B-shaped decoder (16 layers, width 2048, GQA 32/8,
    SwiGLU 8192, llama3 RoPE scaling, tied 128256-token embeddings), a verbalizer over two label words.

    The PyTorch side is ``transformers.LlamaForCausalLM`` of that config (its random init) wrapped
    by PEFT's ``PromptTuning`` (causal LM: the prompt prepended to the input embeddings, the
    attention mask extended); the JAX side loads the same weights through the library's own
    converter (``save_pretrained`` to a temporary folder, then ``jr.models.load("llama", weights=)``).
    Only with ``--rows llama1b`` (a GPU row: a float32 step of this size takes minutes on a CPU).
    """
    import tempfile

    import jax
    import transformers

    jr = _jr()
    prompt_len, words = 20, [[11], [22]]
    if ctx.quick:
        sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512)  # fmt: skip
        batch, length = 2, 8
    else:
        sizes = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256)  # fmt: skip
        batch, length = 16, 512
    batch = ctx.batch_size(batch)
    config = transformers.LlamaConfig(
        **sizes,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(ctx.torch_device):  # a GPU initialises 1.2B weights in a moment, a CPU in ~20 s
        model = transformers.LlamaForCausalLM(config)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        frozen = jr.models.load("llama", weights=folder)
    program = jr.reprogram(
        frozen,
        embedding=jr.embedding.soft_prompt(prompt_len),
        output=jr.output.verbalizer(words, num_source=config.vocab_size),
    )
    theta = program.init(jax.random.key(1))
    x = _tokens(batch, length, (1, config.vocab_size), ragged=False)
    y = np.random.default_rng(1).integers(0, len(words), size=batch).astype(np.int32)

    import peft

    peft_config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=prompt_len)
    lm = peft.get_peft_model(_freeze(model, ctx), peft_config).to(ctx.torch_device)
    params = _leaves({"prompt": np.asarray(theta["embedding"]["prompt"])}, ctx)
    lm.prompt_encoder["default"].embedding.weight = params["prompt"]  # the leaf the optimizer updates
    ids = _to_torch(x["input_ids"], ctx, torch.long)
    mask = _to_torch(x["attention_mask"], ctx, torch.long)
    ty = _to_torch(y, ctx, torch.long)
    word_ids = torch.as_tensor([w[0] for w in words], device=ctx.torch_device)

    def value_and_grad():
        logits = lm(input_ids=ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits[:, -1, word_ids].float(), ty)
        return loss.detach(), {"prompt": torch.autograd.grad(loss, [params["prompt"]])[0]}

    return Row(
        name="llama1b",
        shape=(
            f"Llama {config.num_hidden_layers}L/{config.hidden_size} (GQA {config.num_attention_heads}/"
            f"{config.num_key_value_heads}) soft prompt P={prompt_len}, {length} tokens, batch {batch} (PEFT)"
        ),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["embedding"]["prompt"],
        torch_prompt=lambda g: g["prompt"].float().cpu().numpy(),
    )


# ------------------------------------------------------------------ multitask, cartridge, Time-LLM rows


def row_mpt(ctx: Context) -> Row:
    """all-MiniLM-L6-v2 multitask prompt tuning (P = 20, K = 3 tasks, rank 1) on a mixed-task batch.

    JAX: ``jr.embedding.multitask_prompt`` (``P_k = P* ∘ (u_k v_kᵀ)``, each example's ``P_k`` picked
    by ``x["task"]``) and a linear head on the mean-pooled sentence embedding, as ``minilm``.
    PyTorch: ``transformers.BertModel`` with PEFT 0.21.2's ``MultitaskPromptTuningConfig``
    prompt encoder, ``MultitaskPromptEmbedding``: its ``forward(indices, task_ids)`` is
    ``embedding(indices) * (prefix_task_cols[t] @ prefix_task_rows[t])``, the same math with
    ``P* = embedding.weight``, ``u = prefix_task_cols`` ``(K, l, r)``, ``vᵀ = prefix_task_rows``
    ``(K, r, D)``, so the row uses it. PEFT's ``FEATURE_EXTRACTION`` model (the one for a bare
    ``BertModel``) drops ``task_ids`` in its ``forward`` (it forwards them only for POLY, and MPT
    raises "task_ids cannot be None"), so the row asks PEFT for the prompts,
    ``get_prompt(batch_size, task_ids=...)``, and prepends them with the attention mask extended
    by hand, as that ``forward`` does for a soft prompt. ``--torch-prompt plain``: the same
    product written out in torch, without PEFT. Checked: the gradients of ``P*``, ``u`` and ``v``,
    each against its own largest entry.
    """
    import jax
    import transformers

    from jaxreprog.models import bert

    jr = _jr()
    prompt_len, tasks, rank, classes = 20, 3, 1, 4
    batch, length = (3, 8) if ctx.quick else (32, 64)
    batch = ctx.batch_size(batch)
    frozen = jr.models.load("all_minilm_l6_v2")
    d = frozen.spec.hidden_size
    program = jr.reprogram(
        frozen,
        embedding=jr.embedding.multitask_prompt(prompt_len, tasks, rank=rank),
        output=jr.output.linear(d, classes),
    )
    theta = program.init(jax.random.key(0))
    x = _tokens(batch, length, (1000, 30000), first=101, last=102)
    x["task"] = (np.arange(batch) % tasks).astype(np.int32)  # a mixed batch: every task present
    y = np.random.default_rng(1).integers(0, classes, size=batch).astype(np.int32)

    use_peft = ctx.torch_prompt == "peft" or (ctx.torch_prompt == "auto" and _peft_available())
    base = _freeze(transformers.BertModel.from_pretrained(bert._package_dir(), add_pooling_layer=False), ctx)
    mpt = theta["embedding"]
    params = _leaves(
        {
            "shared": np.asarray(mpt["shared"]),  # (l, D)
            "u": np.asarray(mpt["u"]),  # (K, l, r)
            "v": np.asarray(mpt["v"]).transpose(0, 2, 1),  # (K, r, D): PEFT's prefix_task_rows
            "weight": np.asarray(theta["output"]["kernel"]).T,
            "bias": np.asarray(theta["output"]["bias"]),
        },
        ctx,
    )
    if use_peft:
        import peft

        config = peft.MultitaskPromptTuningConfig(
            task_type=peft.TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=prompt_len,
            num_tasks=tasks,
            num_ranks=rank,
        )
        with warnings.catch_warnings():  # PEFT calls a transformers method deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            encoder = peft.get_peft_model(base, config).to(ctx.torch_device)
        # PEFT's three tables become the leaves the optimizer updates
        prompt_encoder = encoder.prompt_encoder["default"]
        prompt_encoder.embedding.weight = params["shared"]
        prompt_encoder.prefix_task_cols = params["u"]
        prompt_encoder.prefix_task_rows = params["v"]

        def prompts(task):
            return encoder.get_prompt(batch_size=task.shape[0], task_ids=task)
    else:

        def prompts(task):
            return params["shared"] * torch.matmul(params["u"][task], params["v"][task])

    ids = _to_torch(x["input_ids"], ctx, torch.long)
    mask = _to_torch(x["attention_mask"], ctx, torch.long)
    task = _to_torch(x["task"], ctx, torch.long)
    ty = _to_torch(y, ctx, torch.long)
    ones = torch.ones(batch, prompt_len, dtype=mask.dtype, device=ctx.torch_device)

    def value_and_grad():
        e = base.embeddings.word_embeddings(ids)
        e = torch.cat([prompts(task).to(e.dtype), e], 1)
        h = base(inputs_embeds=e, attention_mask=torch.cat([ones, mask], 1)).last_hidden_state
        return _sentence_head_step(h[:, prompt_len:].float(), mask, params, ty)

    pieces = ("shared", "u", "v")
    return Row(
        name="mpt",
        shape=f"MiniLM-L6 MPT P={prompt_len}, {tasks} tasks, rank {rank}, {length} tokens, mixed batch "
        f"{batch}" + (" (PEFT)" if use_peft else " (plain torch)"),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: {
            "shared": t["embedding"]["shared"],
            "u": t["embedding"]["u"],
            "v": np.asarray(t["embedding"]["v"]).transpose(0, 2, 1),
        },
        torch_prompt=lambda g: {k: g[k].float().cpu().numpy() for k in pieces},
    )


def row_cartridge(ctx: Context) -> Row:
    """Cartridge (Eyuboglu et al. 2025) on a random GPT-2-small-shaped model, initialised from the
    model's own KV cache of a random text (``jr.hidden.kv_cache``), its first token frozen, and
    the ``gpt2`` row's verbalizer over two label words.

    PyTorch: ``GPT2LMHeadModel`` wrapped by PEFT 0.21.2's ``CartridgeConfig`` (``CAUSAL_LM``,
    ``num_frozen_tokens=1``): the same method — the K/V prefix stored directly as parameters
    (``frozen_embedding`` + ``trainable_embedding``, flattened ``(P, layers·2·D)``), served as
    ``past_key_values``, with the input's positions after the prefix, as jaxreprog's default
    ``positions="after_prefix"``. ``--torch-prompt plain``: the same cache handed to
    ``GPT2LMHeadModel`` as a ``DynamicCache`` by hand.
    """
    import jax
    import transformers

    from jaxreprog.models import gpt2

    jr = _jr()
    if ctx.quick:
        config = gpt2.GPT2Config(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, max_positions=64)
        batch, length, tokens = 2, 8, 8
    else:
        config = gpt2.GPT2Config()  # 12 layers, width 768, 12 heads, 50257 tokens
        batch, length, tokens = 8, 64, 256
    batch = ctx.batch_size(batch)
    layers, heads = config.num_layers, config.num_heads
    head_dim = config.hidden_size // heads
    frozen = gpt2.from_config(config, jax.random.key(0))
    text = np.random.default_rng(2).integers(1, config.vocab_size, size=tokens).astype(np.int32)
    cache = jr.hidden.kv_cache(frozen, frozen.params, text)  # (layers, 2, P, H, Dh)
    words = [[11], [22]]  # one label word per class
    program = jr.reprogram(
        frozen,
        hidden=jr.hidden.cartridge(cache, frozen=1),
        output=jr.output.verbalizer(words, num_source=config.vocab_size),
    )
    theta = program.init(jax.random.key(1))
    x = _tokens(batch, length, (1, config.vocab_size), ragged=False)
    y = np.random.default_rng(1).integers(0, len(words), size=batch).astype(np.int32)

    def flat(kv):  # (layers, 2, P, H, Dh) -> PEFT's (P, layers * 2 * H * Dh)
        kv = np.asarray(kv)
        return kv.transpose(2, 0, 1, 3, 4).reshape(kv.shape[2], -1)

    def unflat(kv):  # the inverse, for the gradient
        return kv.reshape(kv.shape[0], layers, 2, heads, head_dim).transpose(1, 2, 0, 3, 4)

    model = _freeze(_hf_gpt2(frozen.params, config), ctx)
    params = _leaves({"kv": flat(theta["hidden"]["kv"])}, ctx)
    sink = _to_torch(flat(theta["hidden"]["frozen"]), ctx)  # the first token, not trained
    ids = _to_torch(x["input_ids"], ctx, torch.long)
    ty = _to_torch(y, ctx, torch.long)
    word_ids = torch.as_tensor([w[0] for w in words], device=ctx.torch_device)
    use_peft = ctx.torch_prompt == "peft" or (ctx.torch_prompt == "auto" and _peft_available())
    if use_peft:
        import peft

        peft_config = peft.CartridgeConfig(
            task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=tokens, num_frozen_tokens=1
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            lm = peft.get_peft_model(model, peft_config).to(ctx.torch_device)
        prompt_encoder = lm.prompt_encoder["default"]
        prompt_encoder.frozen_embedding = torch.nn.Parameter(sink, requires_grad=False)
        prompt_encoder.trainable_embedding = params["kv"]
        mask = _to_torch(x["attention_mask"], ctx, torch.long)  # PEFT prepends the prefix's ones

        def logits():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return lm(input_ids=ids, attention_mask=mask).logits
    else:
        mask = torch.ones(batch, tokens + length, dtype=torch.long, device=ctx.torch_device)
        # transformers 5.x renamed past_key_values to cache (the old name warns)
        cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

        def logits():
            kv = torch.cat([sink, params["kv"]]).reshape(tokens, layers, 2, heads, head_dim)
            kv = kv.permute(1, 2, 3, 0, 4)[:, :, None].expand(-1, -1, batch, -1, -1, -1)
            cache = transformers.DynamicCache([(kv[i, 0], kv[i, 1]) for i in range(layers)])
            return model(input_ids=ids, attention_mask=mask, **{cache_arg: cache}).logits

    def value_and_grad():
        loss = F.cross_entropy(logits()[:, -1, word_ids].float(), ty)
        (grad,) = torch.autograd.grad(loss, [params["kv"]])
        return loss.detach(), {"kv": grad}

    return Row(
        name="cartridge",
        shape=f"GPT-2 {layers}L/{config.hidden_size} cartridge P={tokens} (1 frozen), {length} tokens, "
        f"batch {batch}" + (" (PEFT)" if use_peft else " (plain torch)"),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: t["hidden"]["kv"],
        torch_prompt=lambda g: unflat(g["kv"].float().cpu().numpy()),
    )


def _torch_stats_prompt(prompt, z: torch.Tensor) -> torch.Tensor:
    """Time-LLM's prompt-as-prefix ids ``(B, length)`` of normalised series ``z`` ``(B, T)``, written
    in torch from ``StatsPrompt``'s description (its ids: description, then min, max, median, trend
    and the top autocorrelation lags, each after its label)."""
    b, t = z.shape
    dev = z.device
    digits = torch.as_tensor(prompt.digits, dtype=torch.long, device=dev)

    def const(ids) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=dev).reshape(1, -1).expand(b, -1)

    def number(v: torch.Tensor) -> torch.Tensor:  # sign, d, point, d, d of v clipped to ±9.99
        r = torch.round(v.abs().clamp(max=9.99) * 100).long()
        sign = torch.where(v < 0, prompt.minus, prompt.plus)
        point = torch.full((b,), prompt.point, dtype=torch.long, device=dev)
        return torch.stack([sign, digits[r // 100], point, digits[(r // 10) % 10], digits[r % 10]], 1)

    ordered = z.sort(1).values
    median = (ordered[:, (t - 1) // 2] + ordered[:, t // 2]) / 2
    trend = torch.where(z.diff(dim=1).sum(1) > 0, prompt.up, prompt.down)[:, None]
    stats = [number(z.min(1).values), number(z.max(1).values), number(median), trend]
    parts = [const(prompt.description)]
    for label, stat in zip(prompt.labels, stats):
        parts += [const(label), stat]
    parts.append(const(prompt.labels[4]))
    if prompt.top_lags:
        spectrum = torch.fft.rfft(z, n=2 * t, dim=1)  # zero-padded: linear autocorrelation
        corr = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * t, dim=1)[:, 1:t]  # lags 1 .. T-1
        lags = corr.topk(min(prompt.top_lags, t - 1), dim=1).indices + 1
        lags = F.pad(lags, (0, prompt.top_lags - lags.shape[1]))
        width = len(str(max(t - 1, 1)))
        tens = 10 ** torch.arange(width - 1, -1, -1, device=dev)
        parts.append(digits[(lags[..., None] // tens) % 10].reshape(b, -1))
    return torch.cat(parts, 1)


def row_time_llm(ctx: Context) -> Row:
    """Time-LLM (Jin et al. ICLR 2024) on a random GPT-2-shaped LM (GPT-2-small's width, heads and
    vocabulary, 6 of its 12 layers), univariate random-walk series, MSE loss.

    JAX: ``jr.embedding.time_llm`` on ``jr.embedding.time_llm_backbone`` (with a statistics
    prompt, ``StatsPrompt.from_chars``), trained through ``make_step(loss=jr.train.mse)``.
    PyTorch: PEFT has no Time-LLM, and the paper's reference code is PyTorch but a whole
    forecasting repository, so the row writes the method in plain eager torch from the paper and
    that code's layers: RevIN without affine, patching with end padding, the ``TokenEmbedding``
    (a width-3 circular ``Conv1d``, no bias), the prototype ``mapping_layer`` (a ``Linear`` over the
    vocabulary applied to the transposed word embeddings), the multi-head ``ReprogrammingLayer``
    (no key bias: a softmax ignores it), the statistics prompt's ids, a frozen Hugging Face
    ``GPT2Model`` over ``[wte(prompt); patches]``, the flatten head over the last ``N`` final
    hidden states' first ``d_ff`` features (flattened patch-major, as jaxreprog's head; the
    reference flattens feature-major, a permutation of the head's rows) and de-normalisation.
    Checked: the gradient of every learned piece, each against its own largest entry.
    """
    import importlib

    import jax

    from jaxreprog.models import gpt2

    jr = _jr()
    tl = importlib.import_module("jaxreprog.embedding.time_llm")  # jr.embedding.time_llm is the factory
    if ctx.quick:
        config = gpt2.GPT2Config(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, max_positions=128)
        batch, context, horizon, patch, stride = 2, 32, 8, 8, 4
        d_model, heads, prototypes, d_ff = 16, 4, 50, 16
    else:
        config = gpt2.GPT2Config(num_layers=6)
        batch, context, horizon, patch, stride = 8, 512, 96, 16, 8  # the paper's long-term setting
        d_model, heads, prototypes, d_ff = 32, 8, 1000, 128
    batch = ctx.batch_size(batch)
    lm = gpt2.from_config(config, jax.random.key(0))
    prompt = tl.StatsPrompt.from_chars(
        f"random walk: forecast {horizon} steps from {context}.", tl.gpt2_char_id
    ).checked(config.vocab_size)
    frozen = jr.embedding.time_llm_backbone(lm, prompt=prompt)
    program = jr.reprogram(
        frozen,
        embedding=jr.embedding.time_llm(
            context,
            horizon,
            patch_len=patch,
            stride=stride,
            d_model=d_model,
            heads=heads,
            num_prototypes=prototypes,
            d_ff=d_ff,
        ),
    )
    theta = program.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(batch, context + horizon)), axis=1) + rng.normal(0, 5, (batch, 1))
    x, y = walk[:, :context].astype(np.float32), walk[:, context:].astype(np.float32)
    n = tl.num_patches(context, patch, stride)

    params = _leaves({k: np.asarray(v) for k, v in theta["embedding"].items()}, ctx)
    transformer = _freeze(_hf_gpt2(lm.params, config), ctx).transformer  # GPT2Model, ln_f at the end
    tx, ty = _to_torch(x, ctx), _to_torch(y, ctx)
    d_keys = d_ff  # time_llm's default, as the reference's

    def forecast(p) -> torch.Tensor:
        mu = tx.mean(1, keepdim=True)
        sigma = torch.sqrt(tx.var(1, keepdim=True, unbiased=False) + tl.EPS)
        z = (tx - mu) / sigma
        ids = _torch_stats_prompt(prompt, z)
        patches = torch.cat([z, z[:, -1:].expand(-1, stride)], 1).unfold(1, patch, stride)  # (B, N, P)
        conv = p["patch"].permute(2, 1, 0)  # TokenEmbedding's Conv1d weight (d_model, P, 3)
        e = F.conv1d(F.pad(patches.transpose(1, 2), (1, 1), mode="circular"), conv).transpose(1, 2)
        table = transformer.wte.weight  # (V, D)
        source = F.linear(table.T, p["map"], p["map_bias"]).T  # mapping_layer: (S', D)
        q = (e @ p["query"] + p["query_bias"]).reshape(batch, n, heads, d_keys)
        k = (source @ p["key"]).reshape(prototypes, heads, d_keys)
        v = (source @ p["value"] + p["value_bias"]).reshape(prototypes, heads, d_keys)
        a = torch.softmax(torch.einsum("blhe,she->bhls", q, k) / d_keys**0.5, dim=-1)
        out = torch.einsum("bhls,she->blhe", a, v).reshape(batch, n, heads * d_keys)
        reprogrammed = out @ p["out"] + p["out_bias"]  # (B, N, D)
        h = transformer(inputs_embeds=torch.cat([transformer.wte(ids), reprogrammed], 1)).last_hidden_state
        y_hat = h[:, -n:, :d_ff].reshape(batch, n * d_ff) @ p["head"] + p["head_bias"]
        return y_hat * sigma + mu

    def value_and_grad():
        loss = F.mse_loss(forecast(params).float(), ty)
        grads = torch.autograd.grad(loss, list(params.values()))
        return loss.detach(), dict(zip(params, grads))

    return Row(
        name="time_llm",
        shape=(
            f"Time-LLM, GPT-2 {config.num_layers}L/{config.hidden_size} (V={config.vocab_size}), "
            f"T={context}→H={horizon}, {n} patches, S'={prototypes}, batch {batch} (plain torch)"
        ),
        program=program,
        frozen=frozen,
        theta=theta,
        batch=(x, y),
        torch_params=params,
        torch_value_and_grad=value_and_grad,
        jax_prompt=lambda t: dict(t["embedding"]),
        torch_prompt=lambda g: {k: v.float().cpu().numpy() for k, v in g.items()},
        loss=jr.train.mse,
    )


ROWS: dict[str, Callable[[Context], Row]] = {
    "efficientnet": row_efficientnet,
    "resnet18": row_resnet18,
    "resnet50": row_resnet50,
    "vit_vpt_deep": row_vit_vpt_deep,
    "minilm": row_minilm,
    "minilm_ptv2": row_minilm_ptv2,
    "gpt2": row_gpt2,
    "mpt": row_mpt,
    "cartridge": row_cartridge,
    "time_llm": row_time_llm,
    "llama1b": row_llama1b,
}
DEFAULT_ROWS = [name for name in ROWS if name != "llama1b"]  # llama1b: --rows llama1b (a GPU row)


# ------------------------------------------------------------------ the two steps and the check


def _with_learning_rate(state, lr: float):
    """``state`` with every injected ``learning_rate`` hyperparameter set to ``lr``."""
    import jax
    import jax.numpy as jnp

    def set_lr(path, leaf):
        last = path[-1] if path else None
        return (
            jnp.asarray(lr, jnp.asarray(leaf).dtype)
            if getattr(last, "key", None) == "learning_rate"
            else leaf
        )

    return jax.tree_util.tree_map_with_path(set_lr, state)


def _cost(compiled) -> tuple[float | None, float | None]:
    """(flops, bytes) of a compiled XLA executable, where XLA reports them."""
    flops = peak = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
        flops = float(cost["flops"]) if cost and cost.get("flops", -1) > 0 else None
    except Exception:
        pass
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            peak = getattr(mem, "peak_memory_in_bytes", 0) or (
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes
            )
    except Exception:
        pass
    return flops, peak


def _pieces(a, b, fn: Callable[[Any, Any], Any]):
    """``fn`` of two gradients: arrays, or ``{name: array}`` with the same names (then per name)."""
    if isinstance(a, dict):
        if set(a) != set(b):
            raise AssertionError(f"the two sides' learned pieces differ: {sorted(a)} / {sorted(b)}")
        return {k: fn(np.asarray(a[k]), np.asarray(b[k])) for k in a}
    return fn(np.asarray(a), np.asarray(b))


def _fmt(errors) -> str:
    if isinstance(errors, dict):
        return "{" + ", ".join(f"{k}: {v:.1e}" for k, v in errors.items()) + "}"
    return f"{errors:.1e}"


def _grad_err(jax_grad: np.ndarray, torch_grad: np.ndarray) -> float:
    """max |g_jax - g_torch| / max |g_torch| (inf when the shapes differ)."""
    if jax_grad.shape != torch_grad.shape:
        return float("inf")
    return float(np.abs(jax_grad - torch_grad).max() / max(np.abs(torch_grad).max(), 1e-30))


@dataclasses.dataclass
class Steps:
    """A row's two step callables, its check result and the JAX step's compile-time facts."""

    jax_step: Callable[[], Any]
    torch_step: Callable[[], Any]
    check: dict[str, float]
    first_call: dict[str, float]
    flops: float | None
    peak_bytes: float | None


def build(row: Row, ctx: Context) -> Steps:
    """Compile the JAX step, make the PyTorch step, and check both compute the same loss and gradient."""
    import jax
    import optax

    jr = _jr()
    device = jax.devices("gpu" if ctx.device == "gpu" else "cpu")[0]
    init, step = jr.train.make_step(
        row.program,
        optax.inject_hyperparams(optax.sgd)(learning_rate=LEARNING_RATE),
        **({} if row.loss is None else {"loss": row.loss}),
    )
    key = jax.random.key(0)
    params = jax.device_put(row.frozen.params, device)
    batch = jax.device_put(row.batch, device)
    theta = jax.device_put(row.theta, device)

    # One compiled executable; its first call is the check (learning rate -1024).
    start = time.perf_counter()
    check_state = _with_learning_rate(init(theta), CHECK_LR)
    compiled = jax.jit(step).lower(check_state, params, batch, key).compile()
    stepped, metrics = jax.block_until_ready(compiled(check_state, params, batch, key))
    jax_first = time.perf_counter() - start
    jax_loss = float(metrics["loss"])
    jax_grad = _pieces(row.jax_prompt(stepped.theta), row.jax_prompt(theta), lambda a, b: (a - b) / -CHECK_LR)
    flops, peak = _cost(compiled)
    timed = compiled
    if ctx.precision == "bf16":  # fit(precision="bf16")'s forward: inputs and weights bf16, logits fp32
        from jaxreprog.train import loop

        timed_params = jax.device_put(loop._cast_floats(row.frozen.params, jax.numpy.bfloat16), device)
        init, step = jr.train.make_step(
            loop._bf16_program(row.program, row.frozen),
            optax.inject_hyperparams(optax.sgd)(learning_rate=LEARNING_RATE),
            **({} if row.loss is None else {"loss": row.loss}),
        )
        start = time.perf_counter()
        timed = jax.jit(step).lower(init(theta), timed_params, batch, key).compile()
        jax.block_until_ready(timed(init(theta), timed_params, batch, key))
        jax_first = time.perf_counter() - start
        params = timed_params
        flops, peak = _cost(timed)

    optimizer = torch.optim.SGD(list(row.torch_params.values()), lr=LEARNING_RATE)
    start = time.perf_counter()
    torch_loss, torch_grads = row.torch_value_and_grad()  # float32, before any update
    torch_first = time.perf_counter() - start
    torch_loss = float(torch_loss)
    torch_grad = row.torch_prompt(torch_grads)
    loss_err = abs(jax_loss - torch_loss) / max(1.0, abs(torch_loss))
    shapes = _pieces(jax_grad, torch_grad, lambda a, b: (a.shape, b.shape))
    errors = _pieces(jax_grad, torch_grad, _grad_err)
    grad_err = max(errors.values()) if isinstance(errors, dict) else errors
    same_shapes = all(a == b for a, b in (shapes.values() if isinstance(shapes, dict) else [shapes]))
    if not same_shapes or loss_err > row.loss_tol or grad_err > row.grad_tol:
        raise AssertionError(
            f"{row.name}: JAX and PyTorch disagree: loss {jax_loss} vs {torch_loss} (rel. {loss_err:.1e}, "
            f"tolerance {row.loss_tol:.0e}), prompt gradient rel. error {_fmt(errors)} (tolerance "
            f"{row.grad_tol:.0e}; shapes JAX / PyTorch {shapes})"
        )

    holder = [init(theta)]

    def jax_step():
        holder[0], m = timed(holder[0], params, batch, key)
        return jax.block_until_ready((holder[0], m))

    amp = (
        torch.autocast(device_type=ctx.torch_device.type, dtype=torch.bfloat16)
        if ctx.precision == "bf16"
        else contextlib.nullcontext()
    )

    def torch_step():
        with amp:
            loss, grads = row.torch_value_and_grad()
        for name, p in row.torch_params.items():
            p.grad = grads[name]
        optimizer.step()
        if ctx.device == "gpu":
            torch.cuda.synchronize()
        return loss

    return Steps(
        jax_step=jax_step,
        torch_step=torch_step,
        check={
            "loss_jax": jax_loss,
            "loss_torch": torch_loss,
            "loss_err": loss_err,
            "grad_err": grad_err,
            "loss_tol": row.loss_tol,
            "grad_tol": row.grad_tol,
        },
        first_call={"jax": jax_first, "torch": torch_first},
        flops=flops,
        peak_bytes=peak,
    )


def time_steps(steps: Steps, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per step of each side: ``warmup`` calls each, then ``reps`` interleaved calls.

    PyTorch's first few calls after the check are slower (measured: ~1 s, then 0.03 s, for
    the quick MiniLM row), hence more than one warm-up call by default."""
    fns = {"jax": steps.jax_step, "torch": steps.torch_step}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------- output


HEADER = (
    "| row | shape | check: loss / grad rel. err (tol) | PyTorch eager (s/step) | JAX jit (s/step) "
    "| PyTorch / JAX | first call PyTorch / JAX (s) | JAX GFLOP/s | JAX MFU | JAX XLA memory (MiB) |"
)


def table(results: list[dict[str, Any]]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in results:
        c = r["check"]
        gflops = f"{r['flops'] / r['jax_s'] / 1e9:.1f}" if r["flops"] else "–"
        peak = r.get("peak_tflops")
        mfu = f"{r['flops'] / r['jax_s'] / (peak * 1e12):.1%}" if r["flops"] and peak else "–"
        mem = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] else "–"
        lines.append(
            f"| {r['row']} | {r['shape']} | {c['loss_err']:.0e} ({c['loss_tol']:.0e}) / {c['grad_err']:.0e} "
            f"({c['grad_tol']:.0e}) | {r['torch_s']:.4f} | {r['jax_s']:.4f} | **{r['ratio']:.2f}×** | "
            f"{r['first_call']['torch']:.2f} / {r['first_call']['jax']:.2f} | {gflops} | {mfu} | {mem} |"
        )
    return "\n".join(lines)


# Dense bf16 peaks (TFLOP/s) by device kind, from the vendors' data sheets (without sparsity).
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def peak_tflops() -> float | None:
    """The first GPU's dense bf16 peak, read off its device kind (``None`` when unknown)."""
    import jax

    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def machine() -> str:
    import jax

    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def record(path: pathlib.Path, text: str, argv: list[str]) -> None:
    command = " ".join(["python", "benchmarks/suite.py", *argv])
    entry = f"\n### {datetime.date.today().isoformat()}: `{command}`\n\nMachine: {machine()}.\n\n{text}\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(entry)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated subset of {', '.join(ROWS)} (default: all but llama1b)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 timed steps: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="timed steps per side (default 10; quick: 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per side (default 3; quick: 1)"
    )
    parser.add_argument("--batch", type=int, default=None, help="override every row's batch size")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="the timed steps' precision: JAX's frozen forward in bf16 as fit(precision='bf16'), PyTorch "
        "under bf16 autocast (default: bf16 on gpu, fp32 on cpu; the equality check is always fp32)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak for the MFU column (default on gpu: read off the device kind)",
    )
    parser.add_argument(
        "--torch-prompt",
        choices=("auto", "peft", "plain"),
        default="auto",
        help="the PyTorch side of minilm, mpt and cartridge: PEFT or by hand",
    )
    parser.add_argument(
        "--record",
        nargs="?",
        const=str(README),
        default=None,
        metavar="FILE",
        help="append the table, date, machine and command to FILE (default benchmarks/README.md)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        parser.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    precision = args.precision or ("bf16" if args.device == "gpu" else "fp32")
    peak = args.peak_tflops or (peak_tflops() if args.device == "gpu" else None)
    ctx = Context(
        quick=args.quick,
        device=args.device,
        batch=args.batch,
        torch_prompt=args.torch_prompt,
        precision=precision,
        peak_tflops=peak,
    )
    reps = args.reps or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # loading reports (MiniLM's unused pooler, ...)
    results = []
    for name in names:
        try:
            row = ROWS[name](ctx)
        finally:
            transformers.logging.set_verbosity(verbosity)
        steps = build(row, ctx)
        c = steps.check
        print(
            f"{name}: check passed (loss {c['loss_jax']:.6f} vs {c['loss_torch']:.6f}, rel. err "
            f"{c['loss_err']:.1e} ≤ {c['loss_tol']:.0e}; prompt gradient rel. err {c['grad_err']:.1e} "
            f"≤ {c['grad_tol']:.0e})",
            flush=True,
        )
        med = time_steps(steps, reps, warmup)
        results.append(
            {
                "row": name,
                "shape": row.shape,
                "check": steps.check,
                "jax_s": med["jax"],
                "torch_s": med["torch"],
                "ratio": med["torch"] / med["jax"],
                "first_call": steps.first_call,
                "flops": steps.flops,
                "peak_bytes": steps.peak_bytes,
                "peak_tflops": ctx.peak_tflops,
            }
        )
    text = table(results)
    note = " (--quick: a smoke run, not a measurement)" if args.quick else ""
    print(
        f"\n{machine()}\nmedian of {reps} interleaved steps after {warmup} warm-up each, {precision}"
        f"{f', MFU of {peak:g} TFLOP/s' if peak else ''}; >1×: jaxreprog faster{note}\n"
    )
    print(text)
    if args.record:
        record(pathlib.Path(args.record), text, argv)
    return results


if __name__ == "__main__":
    main()
