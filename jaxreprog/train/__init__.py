"""Training: jit steps, candidate axis, alignment refits, black-box optimisation."""
