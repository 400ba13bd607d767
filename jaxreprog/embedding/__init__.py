"""Location = embedding: soft tokens in the frozen model's embedding space."""
