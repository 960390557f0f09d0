"""The result objects of a planar whole-body acquisition: SEG, GSPS, TID 1500 SR, Secondary Capture,
and the approximate Bone Scan Index they report (docs/architecture.md, "results")."""
