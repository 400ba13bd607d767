"""Location = hidden: prompts and prefixes inside the frozen model's layers."""
