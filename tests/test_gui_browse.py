"""Open a manifest / folder / sample data in a real viewer and browse it."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, dock, make_dataset, press

pytestmark = pytest.mark.gui


def test_reader_opens_manifest_into_embryos_widget(make_napari_viewer, tmp_path):
    from napari_ish_annotator.core.data.images import read_rgb
    from napari_ish_annotator.widgets import embryo_layer
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    viewer.open(str(manifest), plugin="napari-ish-annotator")
    session = get_session(viewer)
    assert session.n_images == 8
    assert session.vocabulary == list(TERMS)
    layers = [lay for lay in viewer.layers if lay.metadata.get("ish_annotator") == "embryo"]
    assert len(layers) == 1
    np.testing.assert_array_equal(layers[0].data, read_rgb(tmp_path / "data" / "embryo_00.png"))

    embryos = dock(viewer, "Embryos")
    assert embryos.row_count() == 8
    # the manifest's terms were imported into the label store: every image has 3/3 labelled
    assert {embryos.cell_text(r, 4) for r in range(8)} == {"3/3"}

    # step with the keyboard and the table: the ONE embryo layer shows the new image
    press(viewer, "n")
    press(viewer, "PageDown")
    assert session.index == 2
    assert embryo_layer(viewer) is layers[0]
    np.testing.assert_array_equal(layers[0].data, read_rgb(tmp_path / "data" / "embryo_02.png"))
    press(viewer, "p")
    assert session.index == 1
    embryos.table.selectRow(5)
    assert session.index == embryos.image_at(5)
    assert len([lay for lay in viewer.layers if lay.metadata.get("ish_annotator")]) == 1

    # the filter box hides rows not matching (gene3 = images 6, 7)
    embryos.filter_edit.setText("gene3")
    assert embryos.visible_rows() == 2
    embryos.filter_edit.setText("")
    assert embryos.visible_rows() == 8

    # sorting by name descending keeps the row -> image mapping right
    embryos.sort_by(1, descending=True)
    embryos.table.selectRow(0)
    assert session.current_path.name == "embryo_07.png"

    # a dataset folder (images + manifest.csv) opens through its manifest: genes come along
    viewer.open(str(tmp_path / "data"), plugin="napari-ish-annotator")
    assert list(session.genes[:2]) == ["gene0", "gene0"] and session.n_images == 8
    assert len([lay for lay in viewer.layers if lay.metadata.get("ish_annotator")]) == 1


def test_folder_with_bad_files_reports_and_skips(make_napari_viewer, tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    folder = tmp_path / "mixed"
    make_dataset(folder, n=4)
    (folder / "manifest.csv").unlink()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04")
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin="napari-ish-annotator")  # File > Open on a folder
    embryos = dock(viewer, "ISH Annotator").embryos  # the reader opened the annotator
    session = get_session(viewer)
    assert [p.name for p in session.paths] == [f"embryo_{i:02d}.png" for i in range(4)]
    skipped = "\n".join(session.skipped)
    for bad in ("broken.png", "empty.jpg", "notes.docx"):
        assert bad in skipped
    assert "3 file(s) skipped" in embryos.skipped_label.text()
    assert embryos.row_count() == 4
    # a folder without manifest gets the built-in vocabulary of the stage range
    from napari_ish_annotator.core.data.vocabulary import default_vocabulary

    assert session.vocabulary == default_vocabulary("13-16")


def test_sample_data_loads_labelled_embryos(make_napari_viewer):
    """Sample data fills the session with labelled embryos, shown in the annotator dock."""
    from napari_ish_annotator.widgets import open_demo
    from napari_ish_annotator.widgets import session_of as get_session

    viewer = make_napari_viewer()
    annotator = open_demo(viewer, weights="random", train=False)
    assert annotator.model.weights_combo.currentText() == "random"
    widgets = {"Embryos": annotator.embryos}
    session = get_session(viewer)
    assert widgets["Embryos"].row_count() == session.n_images
    assert session.n_images >= 6
    assert len(session.vocabulary) >= 3
    Y = session.labels.label_matrix()
    assert (Y == 1).any() and (Y == 0).any()
    layers = [lay for lay in viewer.layers if lay.metadata.get("ish_annotator") == "embryo"]
    assert len(layers) == 1 and layers[0].rgb
    assert layers[0].data.shape == session.image(0).shape
