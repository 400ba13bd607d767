"""Location = hidden: prompts and prefixes inside the frozen model's layers."""

from jaxreprog.hidden.cartridge import cartridge, kv_cache
from jaxreprog.hidden.intercept import additive, affine
from jaxreprog.hidden.maple import ivlp, maple
from jaxreprog.hidden.prefix import p_tuning_v2, prefix_tuning
from jaxreprog.hidden.vpt import vpt_deep

__all__ = [
    "additive",
    "affine",
    "cartridge",
    "ivlp",
    "kv_cache",
    "maple",
    "p_tuning_v2",
    "prefix_tuning",
    "vpt_deep",
]
