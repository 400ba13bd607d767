"""Output alignment O_ω: map the frozen model's outputs onto the target task."""
