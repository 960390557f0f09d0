"""The node learns from its site: corrections in, a candidate model, a gate, a model registry.

docs/training.md, "Site labels" and "The site's own model"; the tables in docs/architecture.md,
"Data model". Nothing here sends anything anywhere: models and labels stay on the node.
"""
