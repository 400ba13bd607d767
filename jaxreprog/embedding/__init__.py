"""Location = embedding: soft tokens in the frozen model's embedding space."""

from jaxreprog.embedding.coop import cocoop, coop
from jaxreprog.embedding.soft_prompt import p_tuning, soft_prompt
from jaxreprog.embedding.vpt import vpt_shallow

__all__ = ["cocoop", "coop", "p_tuning", "soft_prompt", "vpt_shallow"]
