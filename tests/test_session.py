"""The Qt-free session: imports without Qt/napari, steps in threads, results applied once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from _gui_helpers import TERMS, make_dataset


def test_session_imports_without_qt_or_napari():
    code = ("import sys\n"
            "for name in ('qtpy', 'napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6'):\n"
            "    sys.modules[name] = None\n"
            "import napari_ish_annotator.session as s\n"
            "s.AnnotatorSession()\n"
            "assert not any(m.split('.')[0] in ('qtpy', 'napari') and sys.modules[m] is not None\n"
            "               for m in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _in_thread(func):
    box = {}

    def run():
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def session(tmp_path):
    from napari_ish_annotator.session import AnnotatorSession

    s = AnnotatorSession(cache_dir=tmp_path / "cache")
    s.open([make_dataset(tmp_path / "data", n=8)])
    s.update_settings(weights="random", input_size=64, layer="21", device="cpu", n_members=3)
    return s


def test_state_written_from_another_thread_raises(session):
    from napari_ish_annotator.session import WrongThreadError

    with pytest.raises(WrongThreadError, match="index"):
        _in_thread(lambda: session.set_index(3))
    with pytest.raises(WrongThreadError, match="SessionModel.bundle"):  # the parts too
        _in_thread(lambda: setattr(session.model, "bundle", None))
    with pytest.raises(WrongThreadError, match="SessionLabels"):
        _in_thread(lambda: session.labels.forget())
    assert session.index == 0 and session.labels.label_matrix().shape[0] == 8
    with pytest.raises(FrozenInstanceError):  # settings are replaced, never edited in place
        session.settings.weights = "imagenet"


def test_steps_run_in_a_worker_thread_and_only_the_owner_applies(session):
    """Train, predict and Grad-CAM run in another thread without touching the session."""
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import GradcamMaps, TrainedModel, steps

    labels_before = session.labels.label_matrix().copy()
    request = session.model.train_request(cross_validate=True)
    trained = _in_thread(lambda: drive(steps.iter_train(request)))  # a write would raise
    assert isinstance(trained, TrainedModel)
    assert session.model.bundle is None and session.model.probabilities is None  # nothing applied yet
    with pytest.raises(FrozenInstanceError):
        trained.report = None
    session.model.apply_trained(trained)
    assert session.model.terms == list(TERMS)
    assert session.model.probabilities.shape == (8, 3) and session.model.features.shape[0] == 8
    assert session.model.features.dtype == np.float16  # half the RAM of float32 (issue 11)
    np.testing.assert_array_equal(session.labels.label_matrix(), labels_before)  # no label lost

    predicted = _in_thread(lambda: drive(steps.iter_predict(session.model.predict_request())))
    np.testing.assert_allclose(predicted.probabilities, session.model.probabilities, atol=1e-6)

    maps = _in_thread(lambda: drive(steps.iter_gradcam(session.model.gradcam_request([TERMS[0]], 2))))
    assert isinstance(maps, GradcamMaps) and maps.index == 2
    assert maps.maps.shape == (1, *session.image(2).shape[:2])


def test_results_for_a_replaced_dataset_are_dropped(session, tmp_path):
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import steps

    request = session.model.train_request(cross_validate=False)
    session.open([make_dataset(tmp_path / "other", n=4, seed=1)])
    session.model.apply_trained(drive(steps.iter_train(request)))
    assert session.model.bundle is None and session.model.probabilities is None


def test_bad_input_gives_one_message_and_changes_nothing(session, tmp_path):
    from napari_ish_annotator.core.utils.errors import InputError

    with pytest.raises(InputError, match="no such file"):
        session.open([tmp_path / "missing"])
    assert session.n_images == 8
    with pytest.raises(InputError, match="Grad-CAM needs a model"):
        session.model.gradcam_request([TERMS[0]])
    with pytest.raises(InputError, match="no fine-tuned model"):
        session.model.bundle = object()  # any model: the check is about the fine-tuned one
        session.model.gradcam_request([TERMS[0]], finetuned=True)


def test_throttled_reports_at_most_ten_steps_a_second_and_keeps_records():
    from napari_ish_annotator.core.utils.progress import Progress, throttled

    class Epoch(Progress):
        record = {"epoch": 1}

    def work():
        for i in range(2000):
            yield Progress(i, 2000, "fit")
        yield Epoch(1, 1, "epoch")
        time.sleep(0.12)
        yield Progress(1, 1, "done")
        return "result"

    gen = throttled(work())
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        assert stop.value == "result"
    assert len(seen) <= 4  # first, the epoch record, the step after a pause
    assert any(isinstance(s, Epoch) for s in seen)
    assert seen[0].done == 0 and seen[-1].message == "done"


def test_fine_tune_outcome_switches_model_and_back(session):
    """apply_finetuned / switch_model swap settings, model and predictions on the owner."""
    from dataclasses import replace

    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import FinetuneOutcome, steps

    session.model.apply_trained(drive(steps.iter_train(session.model.train_request(False))))
    first = session.model.bundle
    tuned_settings = replace(session.settings, C=0.01)  # stands in for weights=<checkpoint>
    session.update_settings(C=0.01)
    other = drive(steps.iter_train(session.model.train_request(False)))
    session.update_settings(C=10.0)
    session.model.apply_finetuned(FinetuneOutcome(None, other, tuned_settings))
    assert session.model.bundle is other.bundle and session.settings.C == 0.01
    assert session.model.previous_model.bundle is first
    assert session.model.switch_model()
    assert session.model.bundle is first and session.settings.C == 10.0
    assert session.model.switch_model() and session.model.bundle is other.bundle


@pytest.mark.slow
def test_fine_tuned_model_explains_with_its_own_head(session, tmp_path):
    """After fine-tuning, Grad-CAM can come from the network's MTL head as well."""
    from napari_ish_annotator.core.finetune import FinetuneConfig
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import steps

    config = FinetuneConfig(backbone="vgg16", weights="random", input_size=64, epochs=1,
                            batch_size=4, frozen="all", augment=False, device="cpu", seed=0)
    request = session.model.finetune_request(config, tmp_path / "ft.pt")
    outcome = _in_thread(lambda: drive(steps.iter_finetune(request)))
    session.model.apply_finetuned(outcome)
    assert session.model.finetuned == tmp_path / "ft.pt" and session.settings.weights == str(
        tmp_path / "ft.pt")
    for tuned in (False, True):
        maps = drive(steps.iter_gradcam(session.model.gradcam_request([TERMS[1]], 3, finetuned=tuned)))
        assert maps.source == ("finetuned" if tuned else "ensemble")
        assert maps.maps.shape == (1, *session.image(3).shape[:2])
        assert float(maps.maps.min()) >= 0.0 and float(maps.maps.max()) <= 1.0
        assert 0.0 <= float(maps.probabilities[0]) <= 1.0


def test_gradcam_maps_of_a_large_image_stay_small_and_carry_their_scale(session):
    """A large image's maps are built at most DISPLAY_MAX_SIDE on the longer side (the stack of
    T maps would otherwise be T x H x W float32), with the factor napari scales them up by."""
    from PIL import Image

    from napari_ish_annotator.core.explain.gradcam import DISPLAY_MAX_SIDE
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import steps

    session.model.apply_trained(drive(steps.iter_train(session.model.train_request(cross_validate=False))))
    request = session.model.gradcam_request(list(TERMS), 2)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 2400, 3), dtype=np.uint8)).save(request.path)
    maps = drive(steps.iter_gradcam(request))
    assert maps.maps.shape == (len(TERMS), 256, DISPLAY_MAX_SIDE)
    assert maps.scale == pytest.approx((600 / 256, 2400 / DISPLAY_MAX_SIDE))
    assert maps.maps.min() >= 0.0 and maps.maps.max() <= 1.0

    small = drive(steps.iter_gradcam(session.model.gradcam_request([TERMS[0]], 3)))
    assert small.scale == (1.0, 1.0)
    assert small.maps.shape == (1, *session.image(3).shape[:2])
