"""dicomnode: a DICOM-native AI node for whole-body bone scintigraphy.

The rooms, in the order the imports run (each imports only the ones above it; docs/architecture.md,
"Layout"):

- :mod:`dicomnode.dicom`: the DICOM rules (UIDs, SOP classes, statuses, peers, validation, SCU);
- :mod:`dicomnode.config`: the configuration every part reads;
- :mod:`dicomnode.store`: the spool and the database, and the receive transaction;
- :mod:`dicomnode.pipeline`: the journey of a study (receive, assemble, queue, worker, results, export);
- :mod:`dicomnode.ops`: running and watching the node (serve, status, retry, health, metrics, logs);
- :mod:`dicomnode.cli`: the ``dicomnode`` command.

Outside the runtime path: :mod:`dicomnode.synth` (simulated studies) and :mod:`dicomnode.tools`
(demo, node-and-PACS harness, offline segmentation). The model package
:mod:`dicomnode.segmentation` (arrays, networks, model cards) imports no other room, and training
(:mod:`dicomnode.train`) builds on it and on the simulator.
"""

__version__ = "0.1.0"
