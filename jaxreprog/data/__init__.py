"""Datasets: TFDS pipelines without TensorFlow, packaged real data, preprocessing."""
