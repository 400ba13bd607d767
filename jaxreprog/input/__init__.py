"""Location = input: manipulations of the target input before the frozen model.

Visual prompts take ``[0, 1]`` NHWC images and end with the model's own
``spec.normalize``; sequence prompts take ``(N, T[, C])`` series.

==================  ==============================================  ==========================
factory             method                                          paper
==================  ==============================================  ==========================
``pad``             padding VR, ``normalize(pad(x) + σ(δ) ⊙ M)``      Elsayed 2019; ILM-VP 2023
``elsayed``         ``X̃ + tanh(W ⊙ M)`` with an L2 penalty           Elsayed 2019
``watermark``       ``normalize(resize(x)) + δ ⊙ M`` (border)         BLM / SMM 2024
``full``            ``normalize(resize(x)) + δ``                      BLM / SMM 2024
``pad_prompter``    four strips added after normalising              Bahng 2022
``patch``           a learned patch at a fixed location              Bahng 2022
``random_patch``    a learned patch at a random location (key)       Bahng 2022
``resize_pad``      trainable zoom, then padding VR                  AutoVP 2024
``smm``             ``x + δ ⊙ mask(x)``, a CNN's patch-wise mask       Cai et al. ICML 2024
``blackvip``        ``clip(x + ε g([f(x); φ]))``, a coordinator       BlackVIP, Oh et al. CVPR 2023
``fixed``           a hand-designed pattern, nothing learned         —
``sequence_pad``    1-D padding + masked program                     Voice2Series 2021
==================  ==============================================  ==========================
"""

from jaxreprog.input.autovp import resize_pad
from jaxreprog.input.blackvip import blackvip
from jaxreprog.input.sequence import sequence_pad
from jaxreprog.input.smm import smm
from jaxreprog.input.visual import elsayed, fixed, full, pad, pad_prompter, patch, random_patch, watermark

__all__ = [
    "blackvip",
    "elsayed",
    "fixed",
    "full",
    "pad",
    "pad_prompter",
    "patch",
    "random_patch",
    "resize_pad",
    "sequence_pad",
    "smm",
    "watermark",
]
