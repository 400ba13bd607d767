"""jr.save / jr.load: every registered method round-trips; bad artifacts are clear errors."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import additive, linear_alignment
from test_transforms import EXAMPLES, case

import jaxreprog as jr


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_registered_method_round_trips(name, tmp_path):
    c = case(name)
    model = EXAMPLES[name]().model
    jr.save(tmp_path / "a", c.program, c.thetas[0], frozen_model=model)
    program, theta = jr.load(tmp_path / "a", model)
    chex.assert_trees_all_equal(theta, c.thetas[0])
    jr.save(tmp_path / "b", program, theta, frozen_model=model)  # the rebuilt program saves the same
    assert (tmp_path / "b" / "config.json").read_text() == (tmp_path / "a" / "config.json").read_text()
    chex.assert_trees_all_close(
        program.apply(theta, c.params, c.x, c.key),
        c.program.apply(c.thetas[0], c.params, c.x, c.key),
        atol=1e-6,
    )


def test_candidates_chains_fixed_parts_and_the_base_model(tiny_model, tmp_path):
    program = jr.reprogram(
        tiny_model,
        input=jr.chain(jr.fixed(jr.input.pad(6)), jr.input.full()),
        output=jr.output.per_candidate([jr.output.ilm(7, 3), jr.output.linear(7, 3)]),
    )
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(0), 3))
    jr.save(tmp_path / "a", program, thetas, frozen_model=tiny_model, metadata={"epochs": 3})
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["candidates"] == 3 and config["metadata"] == {"epochs": 3}
    assert config["parts"]["input"]["factory"] == "jr.chain"
    loaded, stacked = jr.load(tmp_path / "a", tiny_model)
    chex.assert_trees_all_equal(stacked, thetas)
    assert jr.trainable_mask(loaded.parts["input"], stacked["input"])[0] == {"delta": False}  # jr.fixed kept
    _, one = jr.load(tmp_path / "a", tiny_model, candidate=2)
    chex.assert_trees_all_equal(one, jr.candidates.select(thetas, 2))
    with pytest.raises(IndexError, match="candidate 3 is out of range for the 3 saved"):
        jr.load(tmp_path / "a", tiny_model, candidate=3)
    other = tiny_model._replace(params=jax.tree.map(lambda a: a + 1, tiny_model.params))
    with pytest.raises(jr.artifact.ArtifactError, match="allow_other_model=True"):
        jr.load(tmp_path / "a", other)
    jr.load(tmp_path / "a", other, allow_other_model=True)


def test_what_cannot_be_saved_or_loaded_says_why(tiny_model, tmp_path):
    mine = jr.reprogram(tiny_model, input=additive(), output=linear_alignment())
    with pytest.raises(jr.artifact.ArtifactError, match="not built by a registered factory.*register"):
        jr.save(tmp_path / "mine", mine, mine.init(jax.random.key(0)))
    program = jr.reprogram(tiny_model, input=jr.input.pad(6), output=jr.output.ilm(7, 3))
    theta = program.init(jax.random.key(0))
    folder = jr.save(tmp_path / "ok", program, theta, frozen_model=tiny_model)
    config = json.loads((folder / "config.json").read_text())

    def edited(change):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "prompt.safetensors").write_bytes((folder / "prompt.safetensors").read_bytes())
        cfg = json.loads(json.dumps(config))
        change(cfg)
        (bad / "config.json").write_text(json.dumps(cfg))
        return bad

    with pytest.raises(
        jr.artifact.ArtifactError, match=r"parts.input.factory names an unknown method 'os.system'"
    ):
        jr.load(edited(lambda c: c["parts"]["input"].update(factory="os.system")), tiny_model)
    with pytest.raises(jr.artifact.ArtifactError, match=r"theta\['input'\]\['delta'\] has shape .* expects"):
        jr.load(edited(lambda c: c.update(candidates=2)), tiny_model)
    unfit = r"theta does not fit the program \(missing \[\], unexpected"
    with pytest.raises(jr.artifact.ArtifactError, match=unfit):
        jr.load(edited(lambda c: c["parts"].pop("input")), tiny_model)
    with pytest.raises(jr.artifact.ArtifactError, match="field 'format'"):
        jr.load(edited(lambda c: c.update(format="x")), tiny_model)
    (edited(lambda c: None) / "prompt.safetensors").write_bytes(b"\x00" * 10)  # a good config, cut tensors
    with pytest.raises(jr.artifact.ArtifactError, match=r"prompt\.safetensors: unreadable"):
        jr.load(tmp_path / "bad", tiny_model)
    with pytest.raises(FileNotFoundError, match="is not an artifact: config.json is missing"):
        jr.load(tmp_path / "nothing", tiny_model)
    x = jnp.ones((2, 6, 6, 3)) * 0.5
    loaded, back = jr.load(folder, tiny_model)
    np.testing.assert_allclose(
        loaded.apply(back, tiny_model.params, x), program.apply(theta, tiny_model.params, x)
    )


def test_a_theta_saved_in_an_older_layout_is_refused_by_name(tmp_path):
    c = case("p_tuning")  # layout 2: the LSTM encoder became PEFT's PromptEncoder
    model = EXAMPLES["p_tuning"]().model
    folder = jr.save(tmp_path / "a", c.program, c.thetas[0], frozen_model=model)
    config = json.loads((folder / "config.json").read_text())
    assert config["parts"]["embedding"]["layout"] == 2 == jr.taxonomy.registry["p_tuning"].layout
    del config["parts"]["embedding"]["layout"]  # as written before layouts were recorded
    (folder / "config.json").write_text(json.dumps(config))
    old = r"parts.embedding.layout: .*p_tuning's layout 1.*reads layout 2"
    with pytest.raises(jr.artifact.ArtifactError, match=old):
        jr.load(folder, model)
    with pytest.raises(ValueError, match="layout must be a positive int"):
        jr.taxonomy.register(paper="x", format=jr.taxonomy.Format.FIXED, layout=0)(lambda: None)


def test_a_trainable_function_of_the_users_own_is_refused(tiny_model, tmp_path):
    pad = jr.input.pad(6)
    mine = pad._replace(trainable=lambda theta: jax.tree.map(lambda _: False, theta))
    program = jr.reprogram(tiny_model, input=mine, output=jr.output.ilm(7, 3))
    with pytest.raises(jr.artifact.ArtifactError, match="input part's trainable flags.*jr.fixed"):
        jr.save(tmp_path / "a", program, program.init(jax.random.key(0)))
    held = jr.reprogram(tiny_model, input=jr.fixed(pad), output=jr.output.ilm(7, 3))
    jr.save(tmp_path / "b", held, held.init(jax.random.key(0)))  # the same flags, said with jr.fixed


def test_a_spec_field_added_since_saving_is_not_another_model(tiny_model, tmp_path):
    program = jr.reprogram(tiny_model, input=jr.input.pad(6), output=jr.output.ilm(7, 3))
    folder = jr.save(tmp_path / "a", program, program.init(jax.random.key(0)), frozen_model=tiny_model)
    config = json.loads((folder / "config.json").read_text())
    del config["base_model"]["spec"]["value_range"]  # as a version before the field would have written
    (folder / "config.json").write_text(json.dumps(config))
    jr.load(folder, tiny_model)
    config["base_model"]["spec"]["channels"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(jr.artifact.ArtifactError, match="spec"):
        jr.load(folder, tiny_model)
