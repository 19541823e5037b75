"""The demo, the synthetic ground-truth scene and the evaluation against ground truth."""
