"""Training and evaluation on top of :mod:`segmentation`; no network code of its own (DESIGN §2)."""
