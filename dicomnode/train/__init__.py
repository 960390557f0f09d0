"""Training and evaluation on top of :mod:`segmentation`; no network code of its own.

See docs/architecture.md, "Layout", and docs/training.md.
"""
