"""``--dask``: feature extraction on a dask.distributed cluster gives the local results.

A LocalCluster of 2 worker processes on 127.0.0.1 (tiny images, random weights, 64 px input),
and once a real ``dask scheduler`` + two ``dask worker`` subprocesses. Only 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _extras import require

distributed = require("distributed")

from napari_ish_annotator.cli import main  # noqa: E402
from napari_ish_annotator.core.features import distributed as ishd  # noqa: E402
from napari_ish_annotator.core.utils.errors import InputError  # noqa: E402

FAST = ["--weights", "random", "--input-size", "64", "--device", "cpu", "--quiet"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-1] == "calls"  # image, one probability per term, the calls
    return [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:-1]] for r in rows[1:]])


@pytest.fixture(scope="module")
def local_model(tiny_dataset, tmp_path_factory) -> Path:
    """A bundle trained without dask, and its predictions without dask (no cache)."""
    root = tmp_path_factory.mktemp("dask")
    assert main(["train", str(tiny_dataset), "--out", str(root / "model"), "--ensemble", "3",
                 "--no-cache", *FAST]) == 0
    assert main(["predict", str(root / "model"), str(tiny_dataset.parent / "images"),
                 "--out", str(root / "local.csv"), "--no-cache", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def client():
    # local:N secures its cluster with a temporary TLS certificate (docs/cluster.md)
    require("cryptography", reason="--dask local needs the [cluster] extra")
    with ishd.connect("local:2") as c:
        yield c


def test_local_cluster_predict_and_train_match_a_local_run(local_model, tiny_dataset, client,
                                                           tmp_path, monkeypatch):
    monkeypatch.setattr(ishd, "CHUNK", 5)  # several chunks over both workers
    with contextlib.nullcontext(ishd.DaskExecutor(client)) as dask:
        assert main(["predict", str(local_model / "model"), str(tiny_dataset.parent / "images"),
                     "--out", str(tmp_path / "dask.csv"), "--cache", str(tmp_path / "c"),
                     "--quiet"], executor=dask) == 0
        assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "model"),
                     "--ensemble", "3", "--cache", str(tmp_path / "c"), *FAST],
                    executor=dask) == 0
    names_local, p_local = _read(local_model / "local.csv")
    names_dask, p_dask = _read(tmp_path / "dask.csv")
    assert names_dask == names_local  # input order kept
    np.testing.assert_allclose(p_dask, p_local, atol=1e-5)
    with np.load(next((local_model / "model").glob("*.npz"))) as a, \
            np.load(next((tmp_path / "model").glob("*.npz"))) as b:
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    # the workers wrote the cache; each built its network once for all its chunks
    assert len(list((tmp_path / "c").rglob("*.npy"))) == len(names_local)
    loads = client.run(ishd.worker_loads)
    assert all(v <= 1 for v in loads.values()) and sum(loads.values()) >= 1


def test_skip_bad_and_a_bad_image_on_a_worker(local_model, tiny_dataset, client, tmp_path):
    images = sorted((tiny_dataset.parent / "images").glob("*.png"))[:4]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with contextlib.nullcontext(ishd.DaskExecutor(client)) as dask:
        code = main(["predict", str(local_model / "model"), *map(str, images), str(bad),
                     "--out", str(tmp_path / "p.csv"), "--no-cache", "--quiet", "--skip-bad"],
                    executor=dask)
        assert code == 0
        assert len(_read(tmp_path / "p.csv")[0]) == 4
        with pytest.raises(InputError, match="broken.png") as info:
            from napari_ish_annotator.core.features.extractor import ExtractorConfig
            from napari_ish_annotator.core.utils.progress import drive
            from napari_ish_annotator.core.workflow import iter_features, make_extractor

            fx = make_extractor(ExtractorConfig(weights="random", input_size=64), None,
                                executor=dask)
            drive(iter_features(fx, [*images, bad]))
        assert info.value.path == bad  # the worker's error keeps its file
    assert not (tmp_path / "q.csv").exists()


class _DieOnce(distributed.WorkerPlugin):
    """Kill the worker process when it starts its first task (once per marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and not os.path.exists(self.marker):
            Path(self.marker).write_text("died")
            os._exit(1)


def test_a_chunk_whose_worker_dies_is_recomputed(local_model, tiny_dataset, client, tmp_path,
                                                 monkeypatch):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ishd, "CHUNK", 8)
    marker = tmp_path / "died"
    client.register_plugin(_DieOnce(str(marker)), name="die-once")
    try:
        with contextlib.nullcontext(ishd.DaskExecutor(client)) as dask:
            assert main(["predict", str(local_model / "model"),
                         str(tiny_dataset.parent / "images"), "--out", str(tmp_path / "p.csv"),
                         "--no-cache", "--quiet"], executor=dask) == 0
    finally:
        client.unregister_worker_plugin("die-once")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists()  # a worker really died mid-run
    np.testing.assert_allclose(_read(tmp_path / "p.csv")[1], _read(local_model / "local.csv")[1],
                               atol=1e-5)


def test_closing_the_run_cancels_the_outstanding_chunks(tiny_dataset, client, monkeypatch):
    """Ctrl-C unwinds through the generator: its futures are cancelled, none keep running."""
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.workflow import iter_features, make_extractor

    monkeypatch.setattr(ishd, "CHUNK", 1)
    images = sorted((tiny_dataset.parent / "images").glob("*.png"))
    with contextlib.nullcontext(ishd.DaskExecutor(client)) as dask:
        fx = make_extractor(ExtractorConfig(weights="random:seed=9", input_size=64), None,
                            executor=dask)
        gen = iter_features(fx, images)
        next(gen)  # cache checked, every chunk submitted
        next(gen)  # the first chunk is back
        assert len(client.futures) > 0
        with pytest.raises(KeyboardInterrupt):
            gen.throw(KeyboardInterrupt)  # what Ctrl-C does to the running generator
    deadline = time.monotonic() + 10
    while client.futures and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.futures


@pytest.mark.slow
def test_a_cluster_lost_mid_run_is_one_input_error(tiny_dataset, monkeypatch):
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.workflow import iter_features, make_extractor

    monkeypatch.setattr(ishd, "CHUNK", 1)
    images = sorted((tiny_dataset.parent / "images").glob("*.png"))
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0")
    try:
        with distributed.Client(cluster) as c:
            dask = ishd.DaskExecutor(c)
            fx = make_extractor(ExtractorConfig(weights="random:seed=8", input_size=64), None,
                                executor=dask)
            gen = iter_features(fx, images)
            next(gen)
            next(gen)  # one chunk back, the rest queued
            cluster.close()
            with pytest.raises(InputError, match="lost the dask cluster"):
                for _ in gen:
                    pass
    finally:
        cluster.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_exit_2(local_model, tiny_dataset, tmp_path,
                                                      capsys, monkeypatch):
    monkeypatch.setattr(ishd, "CONNECT_TIMEOUT_S", 2.0)
    code = main(["predict", str(local_model / "model"), str(tiny_dataset), "--out",
                 str(tmp_path / "p.csv"), "--quiet", "--dask", f"tcp://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot reach the dask scheduler" in err and "\n" not in err
    assert not (tmp_path / "p.csv").exists()


def test_bad_dask_address_is_an_input_error():
    with pytest.raises(InputError, match="local:N"):
        ishd.ClusterAddress.parse("local:0")
    with pytest.raises(InputError, match="scheduler file"):
        ishd.ClusterAddress.parse("no-such-file.json")
    assert ishd.ClusterAddress.parse("local:3") == ishd.ClusterAddress("local", "", 3)


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_hand_started_scheduler_and_workers(local_model, tiny_dataset, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, joined by the
    scheduler file; then a worker that cannot import the package is reported clearly."""
    env = dict(os.environ, PYTHONPATH=SRC)
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([sys.executable, "-m", "distributed.cli.dask_scheduler",
                             "--host", "127.0.0.1", "--port", "0",
                             "--dashboard-address", "127.0.0.1:0",
                             "--scheduler-file", str(sched_file)], env, tmp_path / "s.log"))
        _wait_for(sched_file, 60)
        for i in range(2):
            procs.append(_start([sys.executable, "-m", "distributed.cli.dask_worker",
                                 "--scheduler-file", str(sched_file), "--nworkers", "1",
                                 "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                env, tmp_path / f"w{i}.log"))
        with distributed.Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "p.csv"
        assert main(["predict", str(local_model / "model"), str(tiny_dataset.parent / "images"),
                     "--out", str(out), "--no-cache", "--quiet",
                     "--dask", str(sched_file)]) == 0
        np.testing.assert_allclose(_read(out)[1], _read(local_model / "local.csv")[1],
                                   atol=1e-5)
        # a third worker whose Python cannot import the package
        blocked = ("import sys; sys.modules['napari_ish_annotator'] = None; "
                   "from distributed.cli.dask_worker import main; main()")
        procs.append(_start([sys.executable, "-c", blocked, "--scheduler-file", str(sched_file),
                             "--no-nanny", "--nthreads", "1", "--host", "127.0.0.1",
                             "--no-dashboard"], env, tmp_path / "w3.log"))
        with distributed.Client(scheduler_file=str(sched_file), timeout=30) as c:
            c.wait_for_workers(3, timeout=60)
        with pytest.raises(InputError, match="cannot run napari_ish_annotator"), \
                ishd.connect(str(sched_file)):
            pass
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait(timeout=5)


def test_slurm_config_object_builds_a_job_script():
    require("dask_jobqueue")
    from napari_ish_annotator.core.features.distributed import slurm_cluster

    cluster = slurm_cluster(queue="gpu", account="lab", cores=8, memory="32GB",
                            walltime="02:00:00", gpus=1,
                            scheduler_options={"host": "127.0.0.1",
                                               "dashboard_address": "127.0.0.1:0"})
    try:
        script = cluster.job_script()  # built, never submitted
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    finally:
        cluster.close()
    assert "#SBATCH -p gpu" in script and "#SBATCH -A lab" in script
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --gres=gpu:1" in script
    assert "export OMP_NUM_THREADS=8" in script
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in script and "--nthreads 1" in script
