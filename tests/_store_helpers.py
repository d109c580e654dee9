"""Building received label stores the way a hostile sender would (shared by the hostile
label-store tests and the fuzzing): a real store, tampering with plain SQLite, a crafted
rollback journal, and a fingerprint of a folder to prove nothing else changed."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
from pathlib import Path

from PIL import Image

from napari_ish_annotator.core.labels.store import LabelStore

VOCAB = ["brain", "gut", "eye"]
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"emb{i:02d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (6, 4), (i, 2 * i, 3 * i)).save(p)
    return paths


def manifest(folder: Path, imgs: list[Path], terms: list[str], name: str) -> Path:
    path = folder / f"{name}.csv"
    lines = ["image,terms"] + [f"{p.name},{t}" for p, t in zip(imgs, terms, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_store(db: Path, imgs: list[Path], annotator: str = "carol") -> int:
    """A store with ``annotator``'s labels of ``imgs`` x VOCAB, folded into one file (no
    WAL); returns the number of events."""
    with LabelStore(db, annotator=annotator) as store:
        for i, img in enumerate(imgs):
            for j, term in enumerate(VOCAB):
                store.set_label(img, term, (i + j) % 2)
    fold(db)
    return len(imgs) * len(VOCAB)


def fold(db: Path) -> None:
    """Checkpoint and leave the file in rollback mode: one file, nothing beside it."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode = DELETE")
    con.close()


def tampered(db: Path, out: Path, *statements: str) -> bytes:
    """A copy of ``db`` at ``out`` changed by ``statements`` (plain SQLite); its bytes."""
    out.write_bytes(db.read_bytes())
    con = sqlite3.connect(out, isolation_level=None)
    con.execute("PRAGMA journal_mode = DELETE")
    for sql in statements:
        con.execute(sql)
    con.close()
    return out.read_bytes()


def hot_journal(current: bytes, wanted: bytes, super_journal: Path | None = None) -> bytes:
    """A rollback journal (SQLite's file format) whose replay turns ``current`` into
    ``wanted``; with ``super_journal`` its record names that file, which SQLite deletes
    after the replay."""
    page = int.from_bytes(wanted[16:18], "big")  # the page size of the file it restores
    sector, init = 512, 0x2545F491
    n_pages = len(wanted) // page
    records = []
    for i in range(n_pages):
        data = wanted[i * page:(i + 1) * page]
        if current[i * page:(i + 1) * page] != data:
            check, j = init, page - 200
            while j > 0:
                check += data[j]
                j -= 200
            records.append(struct.pack(">I", i + 1) + data + struct.pack(">I", check & 0xFFFFFFFF))
    head = JOURNAL_MAGIC + struct.pack(">IIIII", len(records), init, n_pages, sector, page)
    out = head.ljust(sector, b"\0") + b"".join(records)
    if super_journal is not None:
        name = str(super_journal).encode()
        out += (struct.pack(">I", 0x40000000 // page + 1) + name
                + struct.pack(">II", len(name), sum(name)) + JOURNAL_MAGIC)
    return out


def fingerprint(*folders: Path) -> dict[str, str]:
    """Every entry under ``folders``: file -> sha256, other entries -> their kind."""
    out = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                p = Path(root) / name
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[str(p)] = "other"
    return out


def count_events(db: Path) -> int:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM label_events").fetchone()[0]
    finally:
        con.close()
