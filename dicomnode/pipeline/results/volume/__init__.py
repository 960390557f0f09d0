"""The result objects of a SPECT/CT or SPECT-only acquisition: SEG on the CT (or NM) grid,
Comprehensive 3D SR, Secondary Capture (docs/architecture.md, "results"; :mod:`.build`)."""
