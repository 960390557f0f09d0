"""Commands and helpers outside the runtime path: no part of the running node imports them.

- :mod:`.demo`: ``dicomnode demo``, the whole journey of a study on one machine;
- :mod:`.harness`: a node and a PACS on one machine, shared by the demo, tests and benchmarks;
- :mod:`.offline`: ``dicomnode segment``, the processing of :mod:`dicomnode.pipeline.processing` on
  files, with no network and no database.

The simulator is :mod:`dicomnode.synth` (docs/simulation.md). See docs/architecture.md, "Layout".
"""
