"""Location = embedding: soft tokens in the frozen model's embedding space, and the
token-embedding table itself (token replacement, templates with learnable slots).

Mixed-task batches: a prompt of K tasks (:func:`multitask_prompt`, ``soft_prompt(tasks=K)``)
reads each example's task id from the batch, ``x["task"]`` (int ``(B,)``), beside
``input_ids`` and ``attention_mask``."""

from jaxreprog.embedding.coop import cocoop, coop
from jaxreprog.embedding.multitask import multitask_prompt, task_prompts
from jaxreprog.embedding.replacement import token_replacement
from jaxreprog.embedding.soft_prompt import p_tuning, soft_prompt
from jaxreprog.embedding.template import prompt_template
from jaxreprog.embedding.time_llm import time_llm, time_llm_backbone
from jaxreprog.embedding.vpt import vpt_shallow

__all__ = [
    "cocoop",
    "coop",
    "multitask_prompt",
    "p_tuning",
    "prompt_template",
    "soft_prompt",
    "task_prompts",
    "time_llm",
    "time_llm_backbone",
    "token_replacement",
    "vpt_shallow",
]
