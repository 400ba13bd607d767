"""jaxreprog: adapt frozen pretrained models by reprogramming their interfaces.

Every method is ``y = O ∘ f ∘ I(x, c)`` (Neural Network Reprogrammability, 2025):
a frozen model ``f``, an input-side manipulation ``I`` and an output alignment
``O``, all pure functions over pytrees. See :mod:`jaxreprog.taxonomy`.
"""

from jaxreprog import candidates, hooks, taxonomy
from jaxreprog.core import (
    Alignment,
    FrozenModel,
    Hook,
    ImageSpec,
    InputTransform,
    Refit,
    Reprogrammed,
    SequenceSpec,
    Site,
    SiteHook,
    Spec,
    TokenSpec,
    chain,
    fixed,
    from_linen,
    from_nnx,
    intercept,
    reprogram,
    trainable_mask,
)
from jaxreprog.hooks import Selector, select, sites
from jaxreprog.checking import checked
from jaxreprog.artifact import load, save
from jaxreprog.peft_io import from_peft, to_peft
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment, Tags

# The subpackages follow the taxonomy; importing them registers their methods.
from jaxreprog import input, output, embedding, hidden, context  # noqa: A004
from jaxreprog import models, data, train
from jaxreprog.train.sharding import shard

__version__ = "0.1.0"

__all__ = [
    "Alignment",
    "Format",
    "FrozenModel",
    "Hook",
    "ImageSpec",
    "InputTransform",
    "Location",
    "Operator",
    "OutputAlignment",
    "Refit",
    "Reprogrammed",
    "Selector",
    "SequenceSpec",
    "Site",
    "SiteHook",
    "Spec",
    "Tags",
    "TokenSpec",
    "candidates",
    "chain",
    "checked",
    "context",
    "data",
    "embedding",
    "fixed",
    "from_linen",
    "from_nnx",
    "from_peft",
    "hidden",
    "hooks",
    "input",
    "intercept",
    "load",
    "models",
    "output",
    "reprogram",
    "save",
    "select",
    "shard",
    "sites",
    "taxonomy",
    "to_peft",
    "train",
    "trainable_mask",
]
