"""The journey of a study, step by step (docs/architecture.md, "The journey of a study").

- :mod:`.receiver`: receive — the Storage SCP: validate, spool, index, then answer;
- :mod:`.assembly`: assemble — decide when a study is ready and queue its job;
- :mod:`.queue`: queue — jobs leased to workers; the only writer of job states;
- :mod:`.worker`: worker — claim a job, process it, store its results, complete it;
- :mod:`.processing`: views → segmentation → result objects for one study (worker and
  ``dicomnode segment``);
- :mod:`.results`: the DICOM result objects (SEG, GSPS, SR, SC);
- :mod:`.export`: export — the outbox delivered by C-STORE; the only writer of export states.
"""
