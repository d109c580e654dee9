"""Sample data: a few synthetic ISH embryos with labels, opened in the session."""

from __future__ import annotations

from pathlib import Path

from .core.data.images import read_rgb
from .core.data.manifest import read_manifest
from .core.features.cache import default_cache_dir
from .core.synthetic.embryos import generate_dataset
from .widgets import open_in_viewer

N_SAMPLE_IMAGES = 12
SAMPLE_SIZE = (200, 400)


def sample_folder() -> Path:
    return default_cache_dir() / "sample-data" / f"synthetic-13-16-n{N_SAMPLE_IMAGES}-v1"


def ensure_sample_manifest(folder: Path | None = None) -> Path:
    """Generate the synthetic dataset once (reused afterwards) and return its manifest."""
    folder = sample_folder() if folder is None else Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        result = generate_dataset(folder, N_SAMPLE_IMAGES, stage="13-16", seed=0,
                                  size=SAMPLE_SIZE, n_genes=N_SAMPLE_IMAGES // 2)
        manifest = Path(result)
        if manifest.is_dir():
            manifest = manifest / "manifest.csv"
    return manifest


def make_sample_data() -> list[tuple]:
    """'Synthetic ISH embryos': fills the current viewer's session, returns the embryo layer."""
    import napari

    manifest = ensure_sample_manifest()
    viewer = napari.current_viewer()
    if viewer is None:
        first = read_manifest(manifest, require_positives=False).paths[0]
        return [(read_rgb(first), {"name": first.name, "rgb": True}, "image")]
    return open_in_viewer(viewer, [manifest])
