"""EfficientNet-Lite0 padding-VR training step: JAX (jit) against PyTorch eager, same run, same machine.

The step (Elsayed et al. 2019; ILM-VP, Chen et al. 2023): a 28 px image is zero-padded
into a 128 px canvas, ``sigmoid(δ) ⊙ M`` is added on the border, the result is
normalised (``(255 x - 127) / 128``), the frozen network runs, cross-entropy over 10
mapped ImageNet classes, gradient with respect to δ only. Batch 32.

The PyTorch model is plain ``torch.nn`` written here (TensorFlow "SAME" padding by
static ``F.pad``, like ``efficientnet_pytorch``) and loads the same weights, so the
two sides compute the same function (checked before timing). Repetitions alternate
between the variants so that load from other processes hits them alike; medians
are reported.

The last JAX row runs ``--steps-per-call`` steps (with the update ``δ ← δ - η g``)
in one compiled call, as ``jr.train.fit(steps_per_call=...)`` does, and reports the
time per step. Every call of a compiled function allocates its workspace afresh
(XLA:CPU: one ~400 MB buffer at 128 px, mapped and page-faulted in by the kernel
each time); a call of N steps pays that once per N steps.

    python benchmarks/efficientnet_step.py [--size 128] [--batch 32] [--reps 10] [--steps-per-call 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------ PyTorch model


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Conv (TF "SAME" padding) + BatchNorm, named like ``efficientnet_pytorch``'s state dict."""

    def __init__(self, c_in, c_out, kernel, stride=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        if self.kernel > 1:
            ph = _same_pad(x.shape[2], self.kernel, self.stride)
            pw = _same_pad(x.shape[3], self.kernel, self.stride)
            x = F.pad(x, (*pw, *ph))
        return self.bn(self.conv(x))


class TorchMBConv(nn.Module):
    def __init__(self, kernel, stride, expand, c_in, c_out):
        super().__init__()
        hidden = c_in * expand
        self.expand = ConvBN(c_in, hidden, 1) if expand != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.depthwise(h)))
        return h + x if self.residual else h


class TorchEfficientNetLite(nn.Module):
    """EfficientNet-Lite in plain torch.nn; ``blocks`` as in ``jaxreprog.models.efficientnet.blocks``."""

    def __init__(self, blocks, num_classes=1000):
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        self.blocks = nn.ModuleList(
            TorchMBConv(b.kernel, b.stride, b.expand, b.features_in, b.features_out) for b in blocks
        )
        self.head = ConvBN(blocks[-1].features_out, 1280, 1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = F.relu6(self.head(x))
        return self.fc(x.mean((2, 3)))

    def load_efficientnet_pytorch(self, state_dict):
        """Load a state dict in ``efficientnet_pytorch`` naming (the PyPI wheels' files)."""
        units = {
            "_expand_conv": "expand.conv",
            "_depthwise_conv": "depthwise.conv",
            "_project_conv": "project.conv",
        }
        bns = {"_bn0": "expand.bn", "_bn1": "depthwise.bn", "_bn2": "project.bn"}
        renamed = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[0] == "_blocks":
                table = units if parts[2] in units else bns
                new = f"blocks.{parts[1]}.{table[parts[2]]}.{parts[3]}"
            else:
                top = {
                    "_conv_stem": "stem.conv",
                    "_bn0": "stem.bn",
                    "_conv_head": "head.conv",
                    "_bn1": "head.bn",
                }
                new = f"{top.get(parts[0], parts[0].lstrip('_'))}.{parts[1]}"
            renamed[new] = torch.as_tensor(np.array(value))
        self.load_state_dict(renamed)
        return self


# -------------------------------------------------------------- the two steps

SOURCE_CLASSES = np.arange(10) * 100  # 10 mapped ImageNet classes


def _pad_offsets(canvas: int, image: int) -> tuple[int, int]:
    lo = (canvas - image + 1) // 2
    return lo, canvas - image - lo


def make_torch_step(model, canvas: int, image: int):
    lo, hi = _pad_offsets(canvas, image)
    mask = torch.ones(1, 3, canvas, canvas)
    mask[:, :, lo : lo + image, lo : lo + image] = 0
    classes = torch.as_tensor(SOURCE_CLASSES)

    def step(delta, x, y):
        delta = delta.detach().requires_grad_(True)
        canvas_x = F.pad(x.expand(-1, 3, -1, -1), (lo, hi, lo, hi)) + torch.sigmoid(delta) * mask
        logits = model((canvas_x * 255 - 127) / 128)[:, classes]
        loss = F.cross_entropy(logits, y)
        loss.backward()
        return loss.detach(), delta.grad

    return step


def _jax_value_and_grad(frozen, canvas: int, image: int):
    import jax
    import jax.numpy as jnp
    import optax

    lo, hi = _pad_offsets(canvas, image)
    mask = np.ones((canvas, canvas, 3), np.float32)
    mask[lo : lo + image, lo : lo + image] = 0
    classes = jnp.asarray(SOURCE_CLASSES)

    def loss_fn(delta, params, x, y):
        canvas_x = jnp.pad(jnp.repeat(x, 3, -1), ((0, 0), (lo, hi), (lo, hi), (0, 0)))
        canvas_x = canvas_x + jax.nn.sigmoid(delta) * mask
        logits = frozen.apply(jax.lax.stop_gradient(params), frozen.spec.normalize(canvas_x))[:, classes]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.value_and_grad(loss_fn)


def make_jax_step(frozen, canvas: int, image: int):
    """One step's loss and prompt gradient, one compiled call per step."""
    import jax

    step = jax.jit(_jax_value_and_grad(frozen, canvas, image))  # a new function object per variant
    return lambda delta, x, y: step(delta, frozen.params, x, y)


def make_jax_steps(frozen, canvas: int, image: int, learning_rate: float = 0.01):
    """N training steps (loss, gradient, ``δ ← δ - η g``) over a stack of N batches in one call."""
    import jax

    value_and_grad = _jax_value_and_grad(frozen, canvas, image)

    def steps(delta, params, xs, ys):
        def step(delta, batch):
            loss, grad = value_and_grad(delta, params, *batch)
            return delta - learning_rate * grad, loss

        return jax.lax.scan(step, delta, (xs, ys))

    compiled = jax.jit(steps)
    return lambda delta, xs, ys: compiled(delta, frozen.params, xs, ys)


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--image", type=int, default=28)
    parser.add_argument("--variants", default="shifted,grouped", help="JAX depthwise forms to time")
    parser.add_argument(
        "--steps-per-call", type=int, default=8, help="steps per call in the last JAX row (1: no such row)"
    )
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="one thread each (torch.set_num_threads(1), XLA's Eigen pool off): fairer on a loaded machine",
    )
    args = parser.parse_args()
    if args.single_thread:
        torch.set_num_threads(1)
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )

    import jax

    from jaxreprog.models import checkpoint, efficientnet

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, args.image, args.image, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=args.batch).astype(np.int32)
    delta = np.zeros((args.size, args.size, 3), np.float32)

    block_list = efficientnet.blocks(1.0, 1.0)
    state_dict = checkpoint.read_torch(efficientnet.default_weights("efficientnet_lite0"))
    torch_model = TorchEfficientNetLite(block_list).load_efficientnet_pytorch(state_dict).eval()
    for p in torch_model.parameters():
        p.requires_grad_(False)
    torch_step = make_torch_step(torch_model, args.size, args.image)
    tx, ty = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(y).long()
    tdelta = torch.as_tensor(delta).permute(2, 0, 1)[None].contiguous()

    steps = {"PyTorch eager": lambda: torch_step(tdelta, tx, ty)}
    jx, jy, jd = jax.device_put(x), jax.device_put(y), jax.device_put(delta)
    for impl in args.variants.split(","):
        frozen = efficientnet.load("efficientnet_lite0", size=args.size, depthwise_impl=impl)
        jax_step = make_jax_step(frozen, args.size, args.image)
        steps[f"JAX jit, {impl} depthwise"] = (lambda f: lambda: jax.block_until_ready(f(jd, jx, jy)))(
            jax_step
        )
    n, multi = args.steps_per_call, None
    if n > 1:  # the default depthwise form, n different batches per call
        frozen = efficientnet.load("efficientnet_lite0", size=args.size)
        jax_steps = make_jax_steps(frozen, args.size, args.image)
        xs = jax.device_put(rng.uniform(size=(n, *x.shape)).astype(np.float32))
        ys = jax.device_put(rng.integers(0, 10, size=(n, args.batch)).astype(np.int32))
        multi = f"JAX jit, {n} steps per call (time per step)"
        steps[multi] = lambda: jax.block_until_ready(jax_steps(jd, xs, ys))

    # Same function on both sides, before any timing.
    ref_loss, ref_grad = steps["PyTorch eager"]()
    ref_grad = ref_grad[0].permute(1, 2, 0).numpy()
    compile_s = {}
    for label, fn in steps.items():
        start = time.perf_counter()
        out = fn()
        compile_s[label] = time.perf_counter() - start
        if label == multi:  # each of the scan's steps is the single step (checked with η = 0: the
            # prompt's gradient is large, so float rounding in δ grows step by step)
            _, losses = make_jax_steps(frozen, args.size, args.image, learning_rate=0.0)(jd, xs, ys)
            one = make_jax_step(frozen, args.size, args.image)
            want = [float(one(jd, xs[i], ys[i])[0]) for i in range(n)]
            np.testing.assert_allclose(np.asarray(losses), want, rtol=1e-5)
        elif label != "PyTorch eager":
            loss, grad = out
            err = np.abs(np.asarray(grad) - ref_grad).max() / np.abs(ref_grad).max()
            # float32 through ~50 layers; in float64 the two agree to ~1e-6 (tests/test_efficientnet.py)
            if abs(float(loss) - float(ref_loss)) > 1e-3 or err > 2e-2:
                raise AssertionError(
                    f"{label} disagrees with PyTorch: loss {float(loss)} vs "
                    f"{float(ref_loss)}, gradient rel. error {err:.2e}"
                )

    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.reps):
        for label, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)

    base = statistics.median(times["PyTorch eager"])
    print(
        f"EfficientNet-Lite0 padding-VR step, {args.size} px canvas, batch {args.batch}, "
        f"grad w.r.t. the prompt only; median of {args.reps} interleaved reps"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), jax {jax.__version__}\n"
    )
    print("| implementation | step (s) | vs PyTorch eager | first call (s) |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        med = statistics.median(ts) / (n if label == multi else 1)
        print(f"| {label} | {med:.3f} | {base / med:.2f}× | {compile_s[label]:.2f} |")


if __name__ == "__main__":
    main()
