"""Running and watching the node (docs/architecture.md, "Operations").

- :mod:`.service`: ``dicomnode serve`` and ``dicomnode worker``: the pipeline's parts as threads of
  one process, started and stopped together;
- :mod:`.status`: ``dicomnode status`` and ``dicomnode retry``;
- :mod:`.http`: ``/healthz`` and Prometheus ``/metrics``;
- :mod:`.logs`: the node's log handler (text or JSON lines, patient data only when configured).
"""
