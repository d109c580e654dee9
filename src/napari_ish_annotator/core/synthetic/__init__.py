"""Synthetic BDGP-like embryos with known ground truth, and simulated experiments on them."""
