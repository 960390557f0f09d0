"""A few CPU training steps: the loss falls, the exported model loads, a crash resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dicomnode.train.loop as loop
from dicomnode.segmentation.inference import Segmenter
from dicomnode.segmentation.modelcard import load_card
from tests.train_studies import write_labelled_studies
from dicomnode.train.config import TrainConfig
from dicomnode.train.loop import TrainingError, run_training, semisupervised_labels
from dicomnode.train.datasets import load_studies

torch.set_num_threads(1)


def tiny(name: str = "tiny", network: str = "unet", epochs: int = 3, **sections: dict) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": name,
        "model": {"network": network, "width": 4},
        "preprocessing": {"window": 64, "stride": 32},
        "data": {"patch_rows": 64, "patch_columns": 64, "patches_per_view": 2},
        "optim": {"batch_size": 4, "epochs": epochs, "lr": 3e-3, "lr_schedule": "constant"},
        **sections,
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    write_labelled_studies(root, 8, seed=3)
    return root


def test_training_lowers_the_loss_and_exports_a_loadable_model(data: Path, tmp_path: Path) -> None:
    result = run_training(tiny(epochs=4), data, tmp_path, progress=False)
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(0 <= record["val_dsc"] <= 1 for record in result.history)
    card = load_card(result.card)
    assert card.network == "unet" and card.training["epochs"] == 4 and card.training["device"] == "cpu"
    assert card.training["patients"] == {"train": 6, "val": 1, "test": 1}
    assert card.metrics["validation_dsc"] == pytest.approx(result.history[result.best_epoch - 1]["val_dsc"])
    segmenter = Segmenter.from_weights(result.weights)
    study = load_studies(data)[0]
    segmentation = segmenter.segment(study.scan)
    assert segmentation.views.keys() == study.scan.views.keys()
    for name in ("checkpoint.pt", "history.csv", "curves.png", "split.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "last.json").exists()


def test_crash_and_resume_gives_the_uninterrupted_run(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = run_training(tiny(epochs=3), data, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real_plot = loop.plot_curves

    def crash_after_second_epoch(*args, **kwargs):  # the checkpoint of that epoch is already written
        real_plot(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "plot_curves", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny(epochs=3), data, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(loop, "plot_curves", real_plot)
    resumed = run_training(tiny(epochs=3), data, tmp_path / "resumed", progress=False, resume=True)

    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.history, resumed.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["val_dsc"] == pytest.approx(b["val_dsc"], rel=1e-5)

    with pytest.raises(TrainingError, match="different preset"):
        run_training(tiny(epochs=5), data, tmp_path / "resumed", progress=False, resume=True)
    with pytest.raises(TrainingError, match="no checkpoint"):
        run_training(tiny(), data, tmp_path / "empty", progress=False, resume=True)


def test_adversarial_and_semisupervised_steps_run_their_losses(data: Path, tmp_path: Path) -> None:
    adversarial = run_training(tiny("adv", "msanet", epochs=1, adversarial={"enabled": True}), data,
                               tmp_path / "adv", progress=False)
    record = adversarial.history[0]
    assert record["adversarial"] > 0 and record["critic"] == pytest.approx(-record["adversarial"], rel=0.5)
    semisup = run_training(tiny("semi", "semisup", epochs=1, semisup={"enabled": True}), data,
                           tmp_path / "semi", progress=False)
    assert semisup.history[0]["unsupervised"] > 0
    split = (tmp_path / "semi" / "split.json").read_text()
    assert '"labelled_training_patients"' in split


def test_semisupervised_labels_keep_the_fraction_by_patient(data: Path) -> None:
    studies = load_studies(data)
    kept_studies, kept = semisupervised_labels(studies, 0.37, seed=42)
    assert len(kept) == round(0.37 * 8)
    for study in kept_studies:
        assert study.labelled == (study.patient_id in kept)
    assert semisupervised_labels(studies, 0.37, seed=42)[1] == kept


def test_bad_runs_are_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="multiple"):
        run_training(tiny().model_copy(update={"data": tiny().data.model_copy(update={"patch_rows": 40})}),
                     data, tmp_path, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA"):
            run_training(tiny(), data, tmp_path, device="cuda", progress=False)
    with pytest.raises(FileNotFoundError):
        run_training(tiny(), tmp_path / "nothing", tmp_path, progress=False)


@pytest.mark.parametrize(
    ("network", "heads"),
    [("unet", ["head"]), ("msanet", ["head", "side_heads.0", "side_heads.1", "side_heads.2"]),
     ("semisup", ["head"]), ("mams", ["head"])],
)
def test_output_prior_sets_only_the_logit_heads(network: str, heads: list[str]) -> None:
    from dicomnode.segmentation.networks import build
    from dicomnode.train.loop import init_output_prior

    torch.manual_seed(0)
    net = build(network, in_channels=2, width=4)  # mams at width 4 has inner 1-channel biased convs
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert sorted(init_output_prior(net, 0.01)) == heads
    changed = sorted(k for k, v in net.state_dict().items() if not torch.equal(v, before[k]))
    assert changed == sorted(f"{h}.bias" for h in heads)  # nothing else, BN statistics included
    net.eval()
    with torch.no_grad():
        size = net.window or 64
        probability = torch.sigmoid(net(torch.zeros(1, 2, size, size)))
    # an input of zeros reaches the head as (BatchNorm-shifted) constants; the prior dominates
    assert float(probability.mean()) < 0.1


def test_worker_processes_draw_the_same_patches(data: Path, tmp_path: Path) -> None:
    config = tiny(epochs=2)
    inline = run_training(config, data, tmp_path / "inline", progress=False)
    forked = run_training(config.model_copy(update={"data": config.data.model_copy(update={"workers": 2})}),
                          data, tmp_path / "forked", progress=False)
    for a, b in zip(inline.history, forked.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
