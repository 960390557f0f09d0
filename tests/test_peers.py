from tests.peers import Orthanc, StoreSCP, postgres_database, dcmtk
import subprocess
def test_real_peers_answer_echo_and_queries():
    with Orthanc() as o:
        assert o.rest("/system")["DicomAet"] == "ORTHANC"
        r = subprocess.run([dcmtk("echoscu"), "-aec", o.aet, "127.0.0.1", str(o.port)])
        assert r.returncode == 0
    with StoreSCP() as s:
        r = subprocess.run([dcmtk("echoscu"), "-aec", s.aet, "127.0.0.1", str(s.port)])
        assert r.returncode == 0
    with postgres_database() as url:
        import sqlalchemy as sa
        e = sa.create_engine(url)
        with e.connect() as c: assert c.execute(sa.text("select 1")).scalar() == 1
        e.dispose()
