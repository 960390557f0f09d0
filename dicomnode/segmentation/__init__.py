"""The model package: bone-scan views, preprocessing, the papers' networks, inference and metrics.

Imports neither :mod:`dicomnode` nor :mod:`train` (docs/architecture.md, "Layout").
"""
