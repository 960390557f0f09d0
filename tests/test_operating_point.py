"""The node runs the model card's own operating point (issue "Every real exam handled right", item 3):
the configuration's default is the card's threshold, peak, minimum area and flip; a site's
``[model] threshold`` is an override, logged as one; and the node (``dicomnode serve`` fed by dcmtk
``storescu``), ``dicomnode segment`` and ``dicomnode evaluate``'s scoring path give identical masks
on the same synthetic study."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from dicomnode.config import NodeConfig
from dicomnode.pipeline.models import load_segmenter
from dicomnode.synth import write_studies
from dicomnode.segmentation.inference import DEFAULT_CARD, Segmenter
from tests.peers import free_port
from tests.processing_helpers import (
    NodeProcess,
    pacs_objects,
    status_report,
    storescu,
    wait_until,
    write_node_config,
)

SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def test_the_default_is_the_card_s_operating_point_and_an_override_is_logged(caplog):
    assert NodeConfig().model.threshold is None
    card = Segmenter.from_weights(DEFAULT_CARD, device="cpu").card  # what `dicomnode evaluate` runs
    with caplog.at_level(logging.INFO, logger="dicomnode.pipeline.models"):
        node = load_segmenter("default", "cpu", NodeConfig().model.threshold)
    assert node.card == card and node.card.threshold == 0.3
    assert node.card.operating_point == card.operating_point and card.operating_point.test_time_flip
    assert "threshold 0.3, peak 0.9765" in caplog.text and "(model card)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicomnode.pipeline.models"):
        site = load_segmenter("default", "cpu", 0.5)
    assert site.card.threshold == 0.5 and site.card.operating_point == card.operating_point
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "overrides the model card's 0.3" in warning.getMessage() and "(site override)" in caplog.text


@pytest.mark.network
@pytest.mark.slow
def test_node_segment_and_evaluate_give_identical_masks(tmp_path, storescp):
    from dicomnode.segmentation.reading import AnatomyReader
    from dicomnode.train.datasets import load_studies
    from dicomnode.train.evaluate import evaluate

    folder = tmp_path / "study"
    manifest = write_studies(folder, studies=1, seed=2035, layout="multiframe", png=False)
    (study,) = manifest["studies"]
    files = [folder / study["folder"] / f["file"] for f in study["files"]]
    (evaluated,) = evaluate([DEFAULT_CARD], load_studies(folder), runs=1, device="cpu",
                            reader=AnatomyReader.default()).outcomes
    expected = {view.value: outcome.prediction.astype(np.uint8) for view, outcome in evaluated.views.items()}
    assert all(mask.any() for mask in expected.values())  # lesions on both views: something to compare

    port = free_port()
    config = write_node_config(tmp_path / "node.toml", var_dir=tmp_path / "var", port=port, weights="default",
                               destinations=[("PACS", storescp.port, storescp.aet)])
    offline = subprocess.run([sys.executable, "-c", "from dicomnode.cli import main; main()", "segment",
                              *map(str, files), "--out", str(tmp_path / "offline"), "--config", str(config)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    with NodeProcess(config, tmp_path / "node.log", port=port) as node:
        sent = storescu(files, port)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: status_report(config)["jobs"].get("done") == 1 and
                   sum(ds.SOPClassUID == SEG for ds in pacs_objects(storescp)) == 2, 180, "two SEGs at the PACS")
    assert "threshold 0.3" in node.log() and "(model card)" in node.log()
    served = _masks(storescp.files())
    segmented = _masks(sorted((tmp_path / "offline").rglob("*.dcm")))
    for masks in (served, segmented):
        assert masks.keys() == expected.keys()
        for view, mask in expected.items():
            np.testing.assert_array_equal(masks[view], mask, err_msg=view)


def _masks(paths) -> dict[str, np.ndarray]:
    """Each SEG's one frame by the view its series names (ANT / POST)."""
    masks = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID != SEG:
            continue
        view = "posterior" if ds.SeriesDescription.endswith("POST") else "anterior"
        masks[view] = ds.pixel_array.astype(np.uint8).reshape(ds.Rows, ds.Columns)
    return masks
