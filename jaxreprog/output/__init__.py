"""Output alignment O_ω: map the frozen model's outputs onto the target task.

Every factory returns a :class:`jaxreprog.Alignment`; the calling shape is::

    align = jr.output.ilm(num_source=1000, num_target=10)
    state = align.init(key)
    state = align.refit(state, source_logits, labels)  # (N, num_source) float, (N,) int
    target_logits = align.apply(state, source_logits)  # (N, num_target)

A trainer refits statistical maps from its own training pass, with no extra pass
over the data: ``stats = align.stats_init()``, ``stats = align.stats_update(stats,
logits, labels)`` per batch, then ``state = align.refit_from_stats(state, stats)``
when ``align.schedule`` (a :class:`jaxreprog.Refit`) says so. All of them run
under ``jax.jit``, and ``jax.vmap(align.apply, in_axes=(0, None))`` applies K
candidate maps to the same logits.

========================  ==============  ===========  ===========================
factory                   alignment       schedule     paper
========================  ==============  ===========  ===========================
:func:`identity`          identity        never        —
:func:`rlm`               rule-based      never        Elsayed et al. 2019
:func:`verbalizer`        rule-based      never        Schick & Schütze 2021
:func:`flm`               statistical     once         Tsai et al. 2020
:func:`ilm`               statistical     every epoch  Chen et al. 2023
:func:`blm`               statistical     every epoch  Cai et al. 2024
:func:`blm_plus`          statistical     every epoch  Cai et al. 2024
:func:`freqmap`           statistical     once         Tsao et al. 2024 (AutoVP)
:func:`linear`            linear          never        Tsao et al. 2024 (FullyMap)
:func:`logit_prompt`      (its inner's)   (inner's)    cf. Zhao et al. 2021
========================  ==============  ===========  ===========================

Checks name the argument and the expected value: shapes and dtypes at trace
time; label range and NaN/inf logits only on concrete arrays (in ``refit`` and
``stats_update``). Under ``jit`` a NaN logit propagates (its top-1 is then the
first NaN's index) and labels outside ``[0, num_target)`` are dropped from the
statistics.

Tags: alignments carry the output-alignment axis (the format λ, location and
operator of the survey's ``I_{λ,τ,ℓ}`` describe the input side), except
:func:`logit_prompt`, a learned shift ``δ`` of the source logits before another
alignment: learnable · output · additive, plus its inner map's alignment. Only
``linear`` and ``logit_prompt``'s ``δ`` are learned by gradient; statistical maps
are estimated by ``refit`` (inside ``logit_prompt``: on the shifted logits).
"""

from jaxreprog.output.bayesian import bayesian_weights, blm, blm_plus, top_k_probabilities
from jaxreprog.output.dense import linear
from jaxreprog.output.frequency import frequency_matrix, greedy_assignment, map_indices
from jaxreprog.output.logit_prompt import logit_prompt
from jaxreprog.output.many_to_one import freqmap
from jaxreprog.output.one_to_one import flm, identity, ilm, rlm
from jaxreprog.output.per_candidate import per_candidate
from jaxreprog.output.verbalizers import verbalizer

__all__ = [
    "bayesian_weights",
    "blm",
    "blm_plus",
    "flm",
    "freqmap",
    "frequency_matrix",
    "greedy_assignment",
    "identity",
    "ilm",
    "linear",
    "logit_prompt",
    "map_indices",
    "per_candidate",
    "rlm",
    "top_k_probabilities",
    "verbalizer",
]
