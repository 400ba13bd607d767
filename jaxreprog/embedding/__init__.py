"""Location = embedding: soft tokens in the frozen model's embedding space, and the
token-embedding table itself (token replacement, templates with learnable slots)."""

from jaxreprog.embedding.coop import cocoop, coop
from jaxreprog.embedding.replacement import token_replacement
from jaxreprog.embedding.soft_prompt import p_tuning, soft_prompt
from jaxreprog.embedding.template import prompt_template
from jaxreprog.embedding.time_llm import time_llm, time_llm_backbone
from jaxreprog.embedding.vpt import vpt_shallow

__all__ = [
    "cocoop",
    "coop",
    "p_tuning",
    "prompt_template",
    "soft_prompt",
    "time_llm",
    "time_llm_backbone",
    "token_replacement",
    "vpt_shallow",
]
