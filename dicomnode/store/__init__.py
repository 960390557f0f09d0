"""Where a study lives: the spool (files) and the index (the database), and their one writer on receive.

- :mod:`.spool`: durable files at paths built only from validated UIDs, quarantine of refused input;
- :mod:`.models`: the tables (studies, instances, jobs, result objects, exports, attempts,
  quarantine) and their state enums; :mod:`.migrations` (Alembic) shapes the schema;
- :mod:`.db`: engine, sessions and transactions on SQLite or PostgreSQL, migrations at start;
- :mod:`.ingest`: the one transaction behind every 0x0000 the receiver answers.

The state machines of jobs and exports are written only by :mod:`dicomnode.pipeline.queue` and
:mod:`dicomnode.pipeline.export`. See docs/architecture.md, "Data model".
"""
