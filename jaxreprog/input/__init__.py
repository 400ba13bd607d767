"""Location = input: manipulations of the target input before the frozen model."""
