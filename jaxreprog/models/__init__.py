"""The model zoo: Flax ports of pretrained models with converters and named sites."""
