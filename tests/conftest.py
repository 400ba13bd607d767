"""Shared test fixtures: tiny frozen models (linen and NNX) and toy manipulations."""

import gc
import importlib.util
import os
import pathlib

# The suite compiles hundreds of small programs and runs most of them a few times: LLVM at -O0
# (XLA's own HLO optimisations still run) cuts its CPU time by a third to a half (measured:
# test_context_choose + test_ops 134 -> 88 CPU-s). Different codegen is also a robustness check:
# it exposed SMM's reshape-max pooling, whose gradient was NaN where XLA recomputed its input
# with other rounding (fixed: jaxreprog/input/smm.py). The notebooks run in kernels with the
# caller's flags in the slow run (USER_XLA_FLAGS, see test_notebooks.py): they train.
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in USER_XLA_FLAGS:
    os.environ["XLA_FLAGS"] = f"{USER_XLA_FLAGS} --xla_backend_optimization_level=0".strip()

# The CLI keeps compiled programs on disk by default; tests that call it must not (a cache hit
# skips a compilation that test_train counts, and the suite must not write to ~/.cache).
os.environ["JAXREPROG_NO_COMPILATION_CACHE"] = "1"

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import linen as nn  # noqa: E402

import jaxreprog as jr  # noqa: E402
from jaxreprog.taxonomy import Format, Location, Operator, Tags  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    """Collect once, then freeze what is left before pytest's own exit collections.

    pytest runs ``gc.collect()`` five times at exit to surface unraisable exceptions; each walks a
    heap of every test's traced and compiled programs (0.3 s per pass after 100 tests, growing with
    the run). Under xdist, execnet interrupts a worker still busy 5 s after the session ends with a
    SIGINT, which landed in hypothesis's gc callback (an unraisable KeyboardInterrupt) and made the
    controller wait. One pass here still surfaces the run's unraisables; the frozen heap makes the
    other passes cheap.
    """
    gc.collect()
    gc.freeze()


def host_devices_env(count: int) -> dict[str, str]:
    """The environment of a subprocess that sees ``count`` forced CPU devices, with the suite's own
    XLA flags (LLVM at -O0: these subprocesses compile as much as any test)."""
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def pack(rows, sides, width=None):
    """Token rows padded to one width (default the longest), row ``i`` on ``sides[i]`` ("left"/"right"):
    ``{"input_ids", "attention_mask"}``."""
    width = width or max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, (r, side) in enumerate(zip(rows, sides)):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = r, 1
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyCNN(nn.Module):
    """A 2-layer CNN with a named Site, enough to exercise every core path."""

    num_classes: int = 7

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = jr.Site(name="features")(nn.relu(x))
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


@pytest.fixture(scope="session")
def tiny_model() -> jr.FrozenModel:
    module = TinyCNN()
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    variables = module.init(jax.random.key(0), jnp.zeros((1, *spec.shape)))
    return jr.from_linen(module, variables, spec)


def additive(shape=(8, 8, 3)) -> jr.InputTransform:
    """Toy learnable additive input prompt: x -> normalize(x + delta)."""

    def init(key, spec):
        return {"delta": 0.1 * jax.random.normal(key, shape)}

    def apply(theta, x, spec, *, key=None):
        return spec.normalize(x + theta["delta"])

    tags = Tags(Format.LEARNABLE, Location.INPUT, Operator.ADDITIVE)
    return jr.InputTransform(init, apply, tags, penalty=lambda t: jnp.sum(t["delta"] ** 2))


def scale() -> jr.InputTransform:
    """Toy learnable parametric input manipulation: x -> x * (1 + s)."""

    def init(key, spec):
        return {"s": jax.random.uniform(key, ())}

    def apply(theta, x, spec, *, key=None):
        return x * (1 + theta["s"])

    return jr.InputTransform(init, apply, Tags(Format.LEARNABLE, Location.INPUT, Operator.PARAMETRIC))


def site_shift(site_name="features") -> jr.SiteHook:
    """Toy hidden-location hook: adds a learned bias at one named site."""

    def init(key, spec):
        return {"b": jax.random.normal(key, (4,))}

    def apply(theta, site, value, spec):
        return value + theta["b"] if site == site_name else value

    return jr.SiteHook(init, apply, Tags(Format.LEARNABLE, Location.HIDDEN, Operator.ADDITIVE))


def linear_alignment(num_source=7, num_target=3) -> jr.Alignment:
    def init(key):
        return {"w": 0.1 * jax.random.normal(key, (num_source, num_target))}

    return jr.Alignment(
        init=init,
        apply=lambda s, logits: logits @ s["w"],
        tags=Tags(format=Format.LEARNABLE, alignment=jr.OutputAlignment.LINEAR),
    )
