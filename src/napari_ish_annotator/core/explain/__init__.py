"""Grad-CAM: where in the embryo each term's evidence lies (logistic head and fine-tuned head)."""
