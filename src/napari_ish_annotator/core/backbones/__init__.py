"""The pretrained networks: specs, weights, builders, the truncated inference trunk, devices."""
