"""The TPU path: the same model and data pretrained with MaxText (JAX), in a venv of its own."""
