"""The DICOM rules the node keeps, with no database and no configuration of its own.

- :mod:`.uids`: what a UID is (PS3.5 §9.1), the only check behind every path built from one;
- :mod:`.sop`: the SOP classes the node receives, and the families of result objects it writes;
- :mod:`.status`: the DIMSE statuses the receiver answers, and what a peer's answer means;
- :mod:`.peers`: AE titles (PS3.5 §6.2), TLS (PS3.15 Annex B.1) and the destinations we send to;
- :mod:`.validate`: the checks of an incoming C-STORE data set, each failure with its status;
- :mod:`.scu`: C-ECHO and C-STORE as a service user (``dicomnode echo``, ``send``, the exporter).

Every other part of the node imports these; they import nothing of the node (docs/architecture.md,
"Layout"; the rules themselves with their PS3 sections: docs/dicom.md).
"""
