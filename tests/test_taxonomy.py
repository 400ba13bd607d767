"""The executable taxonomy: tags, registry and the generated table."""

import importlib

import pytest

import jaxreprog as jr
from jaxreprog import taxonomy
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


def test_every_registered_method_builds_with_its_tags():
    for method in taxonomy.table():
        assert method.paper, method.name
        assert any(t is not None for t in method.tags)


# Each family's test module and its table of methods, keyed by factory name (``pad`` for
# ``jr.input.pad``), that the module's jit / grad / vmap test is parametrized over.
TRANSFORM_TABLES = {
    "test_input": "METHODS",  # test_jit_grad_vmap
    "test_soft_prompt": "METHODS",  # test_grad_reaches_prompt_only_and_vmap_over_candidates
    "test_coop": "METHODS",  # test_vmapped_grad_over_candidates
    "test_vpt": "METHODS",  # test_jit_grad_vmap_over_candidate_prompts
    "test_prefix": "METHODS",  # test_grad_reaches_prefix_only_and_vmap_over_candidates
    "test_intercept": "METHODS",  # test_grad_and_vmap (all chained, jit and eager)
    "test_context": "METHODS",  # test_fixed_context_jit_vmap_and_grad
    "test_output": "FACTORIES",  # TransformsTest: jit_equals_nojit, vmap_over_candidate_states, grad_flows
}


def test_every_registered_method_has_a_jit_grad_vmap_test():
    """The project's standard, "every public transform must work under jax.jit, jax.grad and
    jax.vmap, and a test proves each", made checkable: every registered method is in a family's
    table (keys that are not factory names are variants, e.g. ilm_guarded)."""
    covered = set()
    for module, table in TRANSFORM_TABLES.items():
        covered |= set(getattr(importlib.import_module(module), table))
    methods = {m.factory.rsplit(".", 1)[-1]: m.name for m in taxonomy.table()}
    assert len(methods) == len(taxonomy.table()), "two registered methods share a factory name"
    missing = sorted(f"{name} ({factory})" for factory, name in methods.items() if factory not in covered)
    assert not missing, (
        f"registered without a jit / grad / vmap test: {missing}; add each to its family's table in "
        f"{sorted(TRANSFORM_TABLES)}"
    )
    stale = sorted(k for k in covered if k not in methods and k.rsplit("_", 1)[0] not in methods)
    assert not stale, f"tables name no registered method (nor a variant of one): {stale}"


def test_cli_taxonomy(capsys):
    assert main(["taxonomy"]) == 0
    out = capsys.readouterr().out
    assert "methods registered" in out and "location" in out
    assert main(["taxonomy", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| method |")
