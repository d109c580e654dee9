"""Label store: durability, undo/history, consensus, manifest import/export, error cases."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.data.manifest import Dataset, Sample, read_manifest
from napari_ish_annotator.core.labels.consensus import annotator_labels, majority_vote
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.hashing import content_hash


def make_images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"emb{i}.png"
        Image.fromarray(np.full((4, 6, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def imgs(tmp_path: Path) -> list[Path]:
    return make_images(tmp_path / "imgs")


def test_labels_persist_across_reopen_and_follow_moved_images(tmp_path, imgs):
    db = tmp_path / "labels.sqlite"
    with LabelStore(db, annotator="alice") as store:
        ev = store.set_label(imgs[0], "brain", 1)
        store.set_label(imgs[0], "gut", 0)
        store.set_label(imgs[1], "brain", None)
        assert ev.value == 1 and ev.annotator == "alice" and ev.image_hash == content_hash(imgs[0])
    moved = tmp_path / "elsewhere" / "renamed.png"
    moved.parent.mkdir()
    shutil.move(imgs[0], moved)
    with LabelStore(db, annotator="alice") as store:
        assert store.labels_for(moved) == {"brain": 1, "gut": 0}
        assert store.labels_for(content_hash(moved)) == {"brain": 1, "gut": 0}
        assert store.labels_for(imgs[1]) == {"brain": None}
        store.set_label(moved, "gut", 1)  # path is updated to where the image is now
        assert store.history(moved)[-1].image_path == str(moved.resolve())
        assert store.terms() == ["brain", "gut"] and store.annotators() == ["alice"]
        m = store.label_matrix([moved, imgs[1], imgs[2]], ["brain", "gut", "eye"])
        np.testing.assert_array_equal(m, [[1, 1, -1], [-1, -1, -1], [-1, -1, -1]])
        assert m.dtype == np.int8


def test_label_survives_sigkill_right_after_set_label(tmp_path, imgs):
    db = tmp_path / "labels.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        from napari_ish_annotator.core.labels.store import LabelStore
        store = LabelStore({str(db)!r}, annotator="bob")
        store.set_label({str(imgs[2])!r}, "ventral nerve cord", 1)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert Path(f"{db}-wal").stat().st_size > 0  # the commit sits un-checkpointed in the WAL
    with LabelStore(db, annotator="bob", read_only=True) as store:
        assert store.labels_for(imgs[2]) == {"ventral nerve cord": 1}


def test_undo_single_repeated_and_per_annotator(tmp_path, imgs):
    with LabelStore(tmp_path / "l.sqlite", annotator="alice") as store:
        store.set_label(imgs[0], "brain", 1)
        store.set_label(imgs[1], "gut", 1)
        store.set_label(imgs[0], "brain", 0)
        store.set_label(imgs[0], "brain", 1, annotator="carol")
        assert store.set_label(imgs[0], "brain", 0).id == store.history()[2].id  # no-op change

        ev = store.undo()  # alice's latest change: brain 1 -> 0 is reverted to 1
        assert ev.undo_of == store.history()[2].id and ev.value == 1
        assert store.labels_for(imgs[0]) == {"brain": 1}
        assert store.labels_for(imgs[0], annotator="carol") == {"brain": 1}
        store.undo()  # then gut on image 1: alice has no label of it any more
        assert store.labels_for(imgs[1]) == {}
        store.undo()  # then the first brain label
        assert store.labels_for(imgs[0]) == {}
        assert store.undo() is None  # nothing left for alice
        assert store.labels_for(imgs[0], annotator="carol") == {"brain": 1}  # untouched
        assert store.undo("carol").value is None
        assert len(store.history()) == 8  # undo keeps the history


def test_undo_after_new_change_restores_previous_value(tmp_path, imgs):
    with LabelStore(tmp_path / "l.sqlite", annotator="a") as store:
        store.set_label(imgs[0], "t", 1)
        store.set_label(imgs[0], "t", 0)
        store.undo()  # -> 1
        store.set_label(imgs[0], "t", None)
        store.undo()  # -> 1 again (value before the last change)
        assert store.labels_for(imgs[0]) == {"t": 1}
        store.undo()  # the 1 -> 0 change is already undone, so the first label goes
        assert store.labels_for(imgs[0]) == {}


def test_undo_of_a_correction_lets_the_manifest_label_show_again(tmp_path, imgs):
    """A user corrects an imported (manifest) label and undoes it: the manifest value is back."""
    with LabelStore(tmp_path / "l.sqlite", annotator="alice") as store:
        store.set_label(imgs[0], "brain", 0, annotator="manifest")
        store.set_label(imgs[0], "brain", 1)
        assert store.labels_for(imgs[0]) == {"brain": 1}
        assert store.label_matrix([imgs[0]], ["brain"]).tolist() == [[1]]
        ev = store.undo()
        assert ev.value is None and ev.undo_of is not None
        assert store.labels_for(imgs[0]) == {"brain": 0}
        assert store.label_matrix([imgs[0]], ["brain"]).tolist() == [[0]]
        assert store.label_matrix([imgs[0]], ["brain"], fallback=()).tolist() == [[-1]]
        # an explicit "unknown" is still a label of the user's and hides the manifest value
        store.set_label(imgs[0], "brain", None)
        assert store.labels_for(imgs[0]) == {"brain": None}


def test_history_is_in_order_and_filtered(tmp_path, imgs):
    with LabelStore(tmp_path / "l.sqlite", annotator="a") as store:
        for value in (1, 0, None, 1):
            store.set_label(imgs[0], "brain", value)
        store.set_label(imgs[1], "brain", 0)
        store.set_label(imgs[0], "gut", 1)
        hist = store.history(imgs[0], "brain")
        assert [e.value for e in hist] == [1, 0, None, 1]
        assert [e.id for e in hist] == sorted(e.id for e in hist)
        assert all(a.time <= b.time for a, b in zip(hist, hist[1:], strict=False))
        assert len(store.history(term="brain")) == 5 and len(store.history(imgs[0])) == 5


def test_consensus_of_three_annotators(tmp_path, imgs):
    vocab = ["brain", "gut", "eye", "fat"]
    with LabelStore(tmp_path / "l.sqlite") as store:
        votes = {"a": (1, 1, 1, None), "b": (1, 0, 0, None), "c": (0, None, 1, 1)}
        for who, values in votes.items():
            for term, value in zip(vocab, values, strict=True):
                store.set_label(imgs[0], term, value, annotator=who)
        store.set_label(imgs[1], "brain", 1, annotator="a")
        store.set_label(imgs[1], "brain", 0, annotator="a")  # only the latest counts
        def consensus_matrix(images, vocab, min_agreement=0.5, annotators=None):
            labels = annotator_labels(store, images, vocab, annotators)
            return majority_vote(labels.labels, min_agreement)

        c = consensus_matrix([imgs[0], imgs[1], imgs[2]], vocab)
        # brain 2/3 present; gut 1 vs 1 tie; eye 2/3 present; fat only c says present
        np.testing.assert_array_equal(c, [[1, -1, 1, 1], [0, -1, -1, -1], [-1, -1, -1, -1]])
        strict = consensus_matrix([imgs[0]], vocab, min_agreement=0.75)
        np.testing.assert_array_equal(strict, [[-1, -1, -1, 1]])
        only_ab = consensus_matrix([imgs[0]], vocab, annotators=["a", "b"])
        np.testing.assert_array_equal(only_ab, [[1, -1, -1, -1]])


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("image,terms,gene,stage\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_import_is_idempotent_and_export_round_trips(tmp_path, imgs):
    csv_path = write_csv(tmp_path / "imgs" / "manifest.csv",
                         ["emb0.png,brain;gut,ftz,13-16", "emb1.png,gut,eve,13-16", "emb2.png,,h,"])
    ds = read_manifest(csv_path, vocabulary=["brain", "gut", "eye"], require_positives=False)
    with LabelStore(LabelStore.default_path_for(csv_path), annotator="alice") as store:
        assert store.import_dataset(ds) == 9
        assert store.import_dataset(ds) == 0  # nothing changed
        m = store.label_matrix(ds.paths, ds.vocabulary, annotator="manifest")
        np.testing.assert_array_equal(m, ds.labels())
        store.set_label(imgs[2], "eye", 1)  # alice's own edits override the manifest
        store.set_label(imgs[0], "gut", None)
        assert store.labels_for(imgs[0]) == {"brain": 1, "gut": None, "eye": 0}
        assert store.labels_for(imgs[0], fallback=()) == {"gut": None}
        np.testing.assert_array_equal(store.label_matrix(ds.paths, ds.vocabulary),
                                      [[1, -1, 0], [0, 1, 0], [0, 0, 1]])
        out = tmp_path / "imgs" / "edited.csv"
        store.export_manifest(out, ds.paths, ds.vocabulary)
    assert (tmp_path / "imgs" / "manifest.labels.sqlite").is_file()
    back = read_manifest(out, vocabulary=ds.vocabulary, require_positives=False)
    assert back.paths == [p.resolve() for p in ds.paths]
    assert [s.terms for s in back.samples] == [("brain",), ("gut",), ("eye",)]
    assert back.genes == ["ftz", "eve", "h"] and back.stages == ["13-16", "13-16", None]
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[-1] == "unknown_terms" and lines[1].startswith("emb0.png,")
    assert lines[1].endswith(",gut") and lines[2].endswith(",")
    assert not list(out.parent.glob("*.tmp-*"))


def test_import_is_all_or_nothing(tmp_path, imgs):
    """A manifest that fails part-way (its third row names a term holding a control
    character, refused after the first rows' labels were written) leaves nothing behind."""
    db = tmp_path / "l.sqlite"
    samples = [Sample(imgs[0], ("brain",)), Sample(imgs[1], ("gut",)),
               Sample(imgs[2], ("brain", "eye\x07"))]
    ds = Dataset(samples=samples, vocabulary=["brain", "gut"])
    with LabelStore(db) as store:
        store.add_terms(["brain", "gut"])
    with LabelStore(db) as store:
        with pytest.raises(InputError, match="control character"):
            store.import_dataset(ds)
        assert store.history() == [] and store.annotators() == []
        assert store.labels_for(imgs[0]) == {}
        missing = Dataset(samples=[Sample(imgs[0], ("brain",)), Sample(imgs[0].with_name("no.png"),
                                                                       ())], vocabulary=["brain"])
        with pytest.raises(InputError, match="no.png"):
            store.import_dataset(missing)
        assert store.history() == []


def test_read_only_open_refuses_writes(tmp_path, imgs):
    db = tmp_path / "l.sqlite"
    with LabelStore(db, annotator="a") as store:
        store.set_label(imgs[0], "brain", 1)
    db.chmod(0o444)
    with LabelStore(db, annotator="a", read_only=True) as store:
        assert store.labels_for(imgs[0]) == {"brain": 1}
        with pytest.raises(InputError, match="read-only"):
            store.set_label(imgs[0], "brain", 0)
        with pytest.raises(InputError, match="read-only"):
            store.undo()
    with pytest.raises(InputError, match="no label store"):
        LabelStore(tmp_path / "missing.sqlite", read_only=True)


def test_unwritable_location_and_bad_files(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(InputError, match="copy the file"):
        LabelStore(blocker / "labels.sqlite")
    for text in ("x", "image,terms\n" * 100):  # a CSV picked by mistake is never overwritten
        blocker.write_text(text)
        with pytest.raises(InputError, match="not a label store"):
            LabelStore(blocker)
        assert blocker.read_text() == text


def test_read_only_filesystem_gives_input_error(tmp_path, imgs):
    """A read-only bind mount (root ignores chmod 0o444) in a private mount namespace."""
    db = tmp_path / "ro" / "l.sqlite"
    db.parent.mkdir()
    with LabelStore(db, annotator="a") as store:
        store.set_label(imgs[0], "brain", 1)
    script = textwrap.dedent(f"""
        from napari_ish_annotator.core.utils.errors import InputError
        from napari_ish_annotator.core.labels.store import LabelStore
        try:
            LabelStore({str(db.parent / "new.sqlite")!r})
        except InputError as e:
            print("NEW:", e)
        try:
            LabelStore({str(db)!r}, annotator="a").set_label({str(imgs[0])!r}, "brain", 0)
        except InputError as e:
            print("WRITE:", e)
        try:
            print("READ:", LabelStore({str(db)!r}, "a", read_only=True).labels_for({str(imgs[0])!r}))
        except InputError as e:
            print("READ failed:", e)
    """)
    folder = str(db.parent)
    cmd = ["unshare", "-rm", "sh", "-c",
           f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" '
           f'&& exec "{sys.executable}" -c "$0"', script]
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot create a private mount namespace to simulate a read-only disk")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "NEW:" in out.stdout and "WRITE:" in out.stdout, out.stdout
    assert out.stdout.count("copy the file") == 2, out.stdout
    assert "READ: {'brain': 1}" in out.stdout, out.stdout  # read-only opening still reads
    with LabelStore(db, annotator="a") as store:
        assert store.labels_for(imgs[0]) == {"brain": 1}


def test_locked_database_fails_fast_with_input_error(tmp_path, imgs):
    db = tmp_path / "l.sqlite"
    LabelStore(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with LabelStore(db, annotator="a", busy_timeout=0.2) as store:
            start = time.monotonic()
            with pytest.raises(InputError, match="another program"):
                store.set_label(imgs[0], "brain", 1)
            assert time.monotonic() - start < 3
            other.execute("COMMIT")
            store.set_label(imgs[0], "brain", 1)  # works once the other program lets go
            assert store.labels_for(imgs[0]) == {"brain": 1}
    finally:
        other.close()


def test_schema_newer_than_code_is_refused(tmp_path):
    db = tmp_path / "l.sqlite"
    LabelStore(db).close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="schema version 99"):
        LabelStore(db)


def test_annotator_default_and_value_checks(tmp_path, imgs, monkeypatch):
    monkeypatch.setenv("ISH_ANNOTATOR_USER", "dr. fly")
    with LabelStore(tmp_path / "l.sqlite") as store:
        assert store.set_label(imgs[0], "brain", True).annotator == "dr. fly"
        with pytest.raises(InputError, match="label value"):
            store.set_label(imgs[0], "brain", 2)
        with pytest.raises(InputError, match="not found"):
            store.set_label(tmp_path / "nope.png", "brain", 1)
        store.add_images(imgs)
        assert store.labels_for(imgs[2]) == {}
        Image.fromarray(np.full((5, 6, 3), 7, np.uint8)).save(imgs[0])  # new content, same path
        assert store.labels_for(imgs[0]) == {}  # the path->hash cache notices the change
    assert LabelStore.default_path_for(tmp_path) == tmp_path / "ish-labels.sqlite"


def _matrix_as_before(store, images, vocabulary, annotator=None, fallback=("manifest",)):
    """label_matrix as it was before it was vectorised: one labels_for per image (a path or
    hash the store cannot find stays unknown)."""
    out = np.full((len(images), len(vocabulary)), -1, dtype=np.int8)
    for i, image in enumerate(images):
        try:
            labels = store.labels_for(image, annotator, fallback)
        except InputError:
            continue
        for j, term in enumerate(vocabulary):
            value = labels.get(term)
            out[i, j] = -1 if value is None else value
    return out


@pytest.mark.parametrize("n_extra", [0, 230])  # few images (SQL IN list) and many (all labels)
def test_label_matrix_matches_the_per_image_lookup(tmp_path, n_extra):
    rng = np.random.default_rng(1)
    imgs = make_images(tmp_path / "imgs", 6)
    for i in range(3 + n_extra):
        p = tmp_path / "imgs" / f"extra{i}.png"
        Image.fromarray(rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)).save(p)
        imgs.append(p)
    twin = tmp_path / "twin.png"  # same content as imgs[0] under another path
    shutil.copy(imgs[0], twin)
    unseen = tmp_path / "unseen.png"  # a real file the store never saw
    Image.fromarray(np.full((5, 5, 3), 7, np.uint8)).save(unseen)
    missing = tmp_path / "missing.png"
    vocab = ["brain", "gut", "eye", "never-labelled", "brain"]
    with LabelStore(tmp_path / "l.sqlite", annotator="alice") as store:
        store.import_dataset(Dataset(samples=[
            Sample(image=p, terms=(("brain",) if k % 2 else ("gut", "eye")))
            for k, p in enumerate(imgs)], vocabulary=["brain", "gut", "eye"]))
        store.set_label(imgs[1], "brain", 0)  # overrides the manifest's 1
        store.set_label(imgs[2], "gut", None)  # explicit unknown hides the manifest's 1
        store.set_label(imgs[3], "eye", 1)
        store.set_label(imgs[3], "eye", 0, annotator="bob")
        store.set_label(imgs[4], "gut", 1)
        store.undo()  # alice's only gut label of imgs[4] goes: the manifest shows again
        for k in range(5, len(imgs), 3):
            store.set_label(imgs[k], "gut", int(rng.integers(0, 2)))
        images = [*imgs, twin, unseen, missing, content_hash(imgs[5]), str(imgs[6]),
                  "0" * 64]
        for annotator, fallback in (("alice", ("manifest",)), ("alice", ()),
                                    ("bob", ("alice", "manifest")), ("manifest", ("manifest",)),
                                    ("nobody", ())):
            got = store.label_matrix(images, vocab, annotator, fallback)
            assert got.dtype == np.int8
            np.testing.assert_array_equal(
                got, _matrix_as_before(store, images, vocab, annotator, fallback))
            again = store.label_matrix(images, vocab, annotator, fallback)  # cached hashes
            np.testing.assert_array_equal(again, got)
        m = store.label_matrix(images, vocab)
        assert m[1].tolist() == [0, 0, 0, -1, 0] and m[2].tolist() == [0, -1, 1, -1, 0]
        assert m[3].tolist() == [1, 0, 1, -1, 1] and m[4].tolist() == [0, 1, 1, -1, 0]
        np.testing.assert_array_equal(m[len(imgs)], m[0])  # twin shares imgs[0]'s labels
        assert (m[len(imgs) + 1:len(imgs) + 3] == -1).all()  # unseen file, missing path
        assert (m[-1] == -1).all()  # a hash the store does not know
        np.testing.assert_array_equal(m[-3], m[5])  # imgs[5] by its content hash
        assert store.label_matrix([], vocab).shape == (0, 5)
        assert store.label_matrix(images, []).shape == (len(images), 0)


def test_label_matrix_rehashes_a_file_that_changed(tmp_path, imgs):
    """The path->hash cache must not return the old image's labels for a rewritten file."""
    with LabelStore(tmp_path / "l.sqlite", annotator="a") as store:
        store.set_label(imgs[0], "brain", 1)
        store.set_label(imgs[1], "brain", 0)
        assert store.label_matrix([imgs[0]], ["brain"]).tolist() == [[1]]
        old = imgs[0].stat()
        shutil.copy(imgs[1], imgs[0])  # new content at the same path
        os.utime(imgs[0], ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
        assert store.label_matrix([imgs[0]], ["brain"]).tolist() == [[0]]
        assert store.label_matrix([str(imgs[0])], ["brain"]).tolist() == [[0]]


def test_new_store_reuses_hashes_from_the_old_one(tmp_path, imgs):
    """Switching label files re-hashes nothing that the previous store already hashed (one
    process-wide hash cache); a file changed since is read again."""
    from napari_ish_annotator.core.utils.hashing import FILE_HASHES

    with LabelStore(tmp_path / "a.sqlite", annotator="a") as first:
        first.add_images(imgs)
        before = FILE_HASHES.hashed
        with LabelStore(tmp_path / "b.sqlite", annotator="a") as second:
            second.add_images(imgs)
            second.set_label(imgs[2], "gut", 1)
            assert FILE_HASHES.hashed == before
            assert second.label_matrix(imgs, ["gut"]).tolist() == [[-1], [-1], [1]]
            Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(imgs[1])  # changed file
            assert second.label_matrix(imgs, ["gut"]).tolist() == [[-1], [-1], [1]]
            assert FILE_HASHES.hashed == before + 1
