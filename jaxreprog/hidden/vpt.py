"""VPT-deep: fresh learned prompt tokens at every Vision Transformer layer's input (Jia et al., ECCV 2022).

``[x_1, _, E_1] = L_1([x_0, P_0, E_0])``, ``[x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])``: layer 0 gets
``p`` prompt tokens inserted after [CLS]; every later layer ``i`` gets its own ``P_i`` in those ``p``
positions, replacing what layer ``i - 1`` made of the previous prompts.
"""

from __future__ import annotations

from jaxreprog import checking
from jaxreprog.core import SiteHook
from jaxreprog.embedding.vpt import init_prompts, insert_tokens, required_size
from jaxreprog.hooks import SiteSelection, per_layer, site_layer
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["vpt_deep"]


@register(
    paper="Jia et al. ECCV 2022",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.CONCATENATIVE,
)
def vpt_deep(
    length: int,
    *,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    patch_size: int | None = None,
    sites: SiteSelection = "encoder/layer_*/input",
) -> SiteHook:
    """VPT-deep (Jia et al. 2022, Eq. 6): prompts ``P_i ∈ R^{p×D}`` at the input of layers ``i < num_layers``.

    Layer ``i``'s input is the site at which the glob's ``*`` matches ``i`` (the zoo ViT's
    ``"encoder/layer_{i}/input"``). At layer 0 the ``p`` prompts are inserted after [CLS] (VPT-shallow's
    step); at layer ``i``, ``0 < i < num_layers``, tokens ``1 .. p`` are replaced by ``P_i``; later layers
    run unprompted (the authors' code allows this too). ``theta =
    {"prompts": (num_layers, p, D)}``, each ``U(-a, a)`` with ``a = sqrt(6 / (3·k² + D))``
    (:func:`jaxreprog.embedding.vpt.prompt_bound`). No dropout on the prompts (site hooks take no key).

    Args:
      length: the number of prompt tokens per layer ``p``.
      num_layers, hidden_size, patch_size: the frozen ViT's depth, width ``D`` and patch side ``k``; read
        from the spec (:class:`jaxreprog.models.vit.ViTSpec`) when not given. A smaller ``num_layers``
        prompts only the first layers.
      sites: globs of the layers' inputs with a ``*`` where the layer number is
        (:func:`jaxreprog.select`, :meth:`~jaxreprog.Selector.layer`); CLIP's vision tower:
        ``"vision/layer_*/input"``. A predicate names no layer number: an error.

    Example::

        >>> program = jr.reprogram(vit, hidden=jr.hidden.vpt_deep(10), output=jr.output.linear(...))
    """
    length = checking.integer(length, "length (number of prompt tokens per layer)", who="vpt_deep")
    selector = per_layer(sites, "vpt_deep")

    def init(key, spec):
        layers = required_size(num_layers, spec, "num_layers", "vpt_deep")
        d = required_size(hidden_size, spec, "hidden_size", "vpt_deep")
        k = required_size(patch_size, spec, "patch_size", "vpt_deep")
        return {"prompts": init_prompts(key, (layers, length, d), spec, k, d)}

    def apply(theta, site, value, spec):
        i = site_layer(selector, site, "vpt_deep")  # the number the glob's "*" matches
        if i is None:
            return value
        prompts = theta["prompts"]
        if prompts.ndim != 3 or prompts.shape[1] != length:
            raise ValueError(f"vpt_deep: theta['prompts'] must be (L, {length}, D), got {prompts.shape}")
        if i >= prompts.shape[0]:
            return value
        return insert_tokens(value, prompts[i], "vpt_deep", replace=i > 0)

    return SiteHook(init, apply, sites=selector)
