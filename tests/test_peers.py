"""The real peers the other tests rely on answer: dcmtk's echoscu reaches Orthanc and storescp, and a
fresh PostgreSQL database takes a query."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa

from tests.peers import dcmtk

pytestmark = pytest.mark.network


def test_orthanc_answers_echo_and_rest(orthanc):
    assert orthanc.rest("/system")["DicomAet"] == "ORTHANC"
    assert subprocess.run([dcmtk("echoscu"), "-aec", orthanc.aet, "127.0.0.1", str(orthanc.port)]).returncode == 0


def test_storescp_answers_echo(storescp):
    assert subprocess.run([dcmtk("echoscu"), "-aec", storescp.aet, "127.0.0.1", str(storescp.port)]).returncode == 0


@pytest.mark.postgres
def test_a_fresh_postgresql_database_answers(postgres_url):
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
