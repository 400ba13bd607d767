"""The executable taxonomy: tags, registry and the generated table."""

import jax
import pytest
from test_transforms import EXAMPLES

import jaxreprog as jr
from jaxreprog import taxonomy
from jaxreprog.artifact import ArtifactError
from jaxreprog.cli import main
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment, Tags


def test_tags_union():
    a = Tags(Format.LEARNABLE, Location.INPUT, Operator.ADDITIVE)
    b = Tags(Format.FIXED, None, Operator.CONCATENATIVE, OutputAlignment.STATISTICAL)
    u = a | b
    assert u.format == Format.LEARNABLE | Format.FIXED
    assert u.location == Location.INPUT
    assert u.operator.members() == (Operator.ADDITIVE, Operator.CONCATENATIVE)
    assert str(u.operator) == "additive+concatenative"
    assert str(OutputAlignment.RULE_BASED) == "rule-based"


def test_register_sets_tags_and_table_is_generated(monkeypatch):
    monkeypatch.setattr(taxonomy, "registry", dict(taxonomy.registry))

    @taxonomy.register(
        paper="Nobody 2099",
        modality="vision",
        format=Format.LEARNABLE,
        location=Location.HIDDEN,
        operator=Operator.PARAMETRIC,
    )
    def toy_prompt():
        return jr.SiteHook(lambda k, s: (), lambda t, site, v, s: v)

    m = toy_prompt()
    assert m.tags == Tags(Format.LEARNABLE, Location.HIDDEN, Operator.PARAMETRIC)
    assert toy_prompt.method is taxonomy.registry["toy_prompt"]  # the name is the factory's own
    rows = {r["method"]: r for r in taxonomy.table().rows()}
    assert rows["toy_prompt"]["location"] == "hidden"
    assert rows["toy_prompt"]["api"].endswith(".toy_prompt")
    assert "toy_prompt" in taxonomy.table(location=Location.HIDDEN).markdown()
    assert "toy_prompt" not in taxonomy.table(location=Location.INPUT).markdown()
    assert "toy_prompt" in str(taxonomy.table(modality="vision"))
    assert "toy_prompt" not in str(taxonomy.table(modality="text"))


def test_register_rejects_untagged_and_duplicates(monkeypatch):
    monkeypatch.setattr(taxonomy, "registry", dict(taxonomy.registry))

    def make():
        return jr.InputTransform(lambda k, s: (), lambda t, x, s, key=None: x)

    with pytest.raises(ValueError, match=r"register\(make\): give at least one taxonomy tag"):
        taxonomy.register(paper="p")(make)
    taxonomy.register(paper="p", location=Location.INPUT)(make)

    def other():
        return make()

    other.__name__ = "make"  # a second factory of the same name, elsewhere
    with pytest.raises(ValueError, match="already registered"):
        taxonomy.register(paper="p", location=Location.INPUT)(other)

    def empty():
        return make()

    for axis, flag in [("location", Location(0)), ("format", Format(0)), ("alignment", OutputAlignment(0))]:
        with pytest.raises(ValueError, match=rf"register\(empty\): {axis} is an empty flag"):
            taxonomy.register(paper="p", **{axis: flag})(empty)  # table() raised IndexError on it
    assert "empty" not in taxonomy.registry
    taxonomy.table()


def test_registry_names_are_the_api_names():
    """One naming style: each method is registered under its factory's name, and that name is
    what ``jr.<family>.<name>`` is."""
    for name, method in taxonomy.registry.items():
        _, family, attr = method.factory.split(".")
        assert attr == name and name.isidentifier() and name == name.lower(), method
        assert getattr(getattr(jr, family), name).method is method


WRAPPERS = {"logit_prompt"}  # methods around another part, whose tags they carry on the axes they leave open


def test_every_registered_method_builds_with_its_tags():
    """Each record's factory builds (from its tiny example in tests/test_transforms.py) a part of
    the type its slot takes, carrying the record's tags (exactly, on every axis the record sets;
    a wrapper adds its inner part's on the others), with an init that runs."""
    types = {
        "input": jr.InputTransform,
        "embedding": jr.SiteHook,
        "hidden": jr.SiteHook,
        "output": jr.Alignment,
    }
    for name, method in taxonomy.registry.items():
        assert method.paper and any(t is not None for t in method.tags), name
        if method.kind == "combinator":  # not a part: tests/test_transforms.py's COMBINATORS run it
            continue
        example = EXAMPLES[name]()
        assert isinstance(example.part, types[example.slot]), name
        got = example.part.tags
        assert all(want is None or have == want for have, want in zip(got, method.tags)), name
        assert got == method.tags or name in WRAPPERS, name
        if example.slot == "output":
            jax.eval_shape(example.part.init, jax.random.key(0))
        else:
            jax.eval_shape(lambda key, e=example: e.part.init(key, e.model.spec), jax.random.key(0))


def test_a_combinator_is_recorded_and_returned_as_it_is(monkeypatch, tmp_path):
    """kind="combinator" records a function over whole programs (its result is outputs, not a part):
    in the table, not wrapped, and never a factory that jr.load would call."""
    monkeypatch.setattr(taxonomy, "registry", dict(taxonomy.registry))

    def toy_vote(program, theta, frozen_params, x):
        return x

    toy = taxonomy.register(paper="p", alignment=OutputAlignment.RULE_BASED, kind="combinator")(toy_vote)
    assert toy is toy_vote and toy(None, None, None, 3) == 3
    assert toy.method is taxonomy.registry["toy_vote"] and toy.method.kind == "combinator"
    assert "toy_vote" in taxonomy.table(alignment=OutputAlignment.RULE_BASED).markdown()
    with pytest.raises(
        ValueError, match=r"register\(toy_vote\): kind must be one of \('part', 'combinator'\)"
    ):
        taxonomy.register(paper="p", alignment=OutputAlignment.RULE_BASED, kind="program")(toy_vote)
    method = taxonomy.registry["ensemble"]
    assert (method.kind, method.factory) == ("combinator", "jr.candidates.ensemble")
    assert method.tags == Tags(alignment=OutputAlignment.RULE_BASED)
    assert jr.candidates.ensemble.method is method
    # an edited artifact naming it as a part's factory is refused by name (load calls parts' factories only)
    model = EXAMPLES["linear"]().model
    program = jr.reprogram(model, output=jr.output.linear(9, 3))
    folder = jr.save(tmp_path / "a", program, program.init(jax.random.key(0)))
    config = (folder / "config.json").read_text().replace('"jr.output.linear"', '"jr.candidates.ensemble"')
    (folder / "config.json").write_text(config)
    with pytest.raises(ArtifactError, match="unknown method 'jr.candidates.ensemble'"):
        jr.load(folder, model)


def test_cli_taxonomy(capsys):
    assert main(["taxonomy"]) == 0
    out = capsys.readouterr().out
    assert "methods registered" in out and "location" in out
    assert "jr.candidates.ensemble" in out  # a combinator is in the table too
    assert main(["taxonomy", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| method |")
