"""Feature extraction on a dask.distributed cluster (``--dask ADDRESS``).

The client (the ``ish-annotator`` process) keeps everything but the network: it reads the
feature cache, sends the misses out in chunks of :data:`CHUNK` images, and puts each result
into its rows as it comes back, so the outputs are those of a local run. A worker builds the
network once per settings (:func:`_worker_extractor`, kept on the worker object) and writes
what it computes into the feature cache (the same folder, if the cluster shares the disk).

* a chunk whose worker dies is recomputed elsewhere by the scheduler (up to
  ``distributed.scheduler.allowed-failures`` times), one that raises is retried
  :data:`RETRIES` times;
* Ctrl-C / SIGTERM cancel the outstanding futures (the caller writes nothing);
* an unreachable scheduler, a worker that cannot import this package and a cluster lost
  mid-run are each one :class:`InputError`.

Images are sent as paths: workers must see them (and the cache) at the same paths, as on a
cluster's shared file system. dask is imported only when ``--dask`` is given
(``pip install napari-ish-annotator[cluster]``).

Whoever can talk to a scheduler or worker can run any code in it, so ``local:N`` starts a
cluster only this process can join: every scheduler, nanny and worker listens on loopback
TLS with a throw-away certificate (``Security.temporary()``, kept in memory and handed to
the worker processes at start) and demands it of every peer; dask's HTTP servers serve no
pages (no dashboard). A ``tls://`` address is joined with the certificates given
(:class:`TLSFiles`, the CLI's ``--dask-ca/--dask-cert/--dask-key``) or those in dask's
configuration (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..utils.arrays import open_regular
from ..utils.errors import InputError
from ..utils.extras import install_hint, require_extra
from ..utils.progress import Progress, ProgressGen
from .extractor import ExtractorConfig, FeatureExtractor, _widen

CHUNK = 16  # images per task: small enough for a live progress bar and load balancing
RETRIES = 2  # per chunk, for exceptions raised by the task
#: seconds to reach a scheduler or see a worker; None: ``$ISH_ANNOTATOR_DASK_TIMEOUT`` (read
#: when connecting, not at import) or 20
CONNECT_TIMEOUT_S: float | None = None
TIMEOUT_ENV = "ISH_ANNOTATOR_DASK_TIMEOUT"
CLUSTER_EXTRA = install_hint("cluster")
DASK = ("distributed", "cluster", "--dask")  # require_extra: the package, its extra, the option
PACKAGE = "napari_ish_annotator"


def _connect_timeout() -> float:
    if CONNECT_TIMEOUT_S is not None:
        return CONNECT_TIMEOUT_S
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        return float(text) if text else 20.0
    except ValueError:
        raise InputError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds; set it to e.g. "
                         "20 or unset it") from None


@dataclass(frozen=True)
class ClusterAddress:
    """What ``--dask`` names: a local cluster to start, or a running one to join."""

    kind: str  # "local" | "address" | "file"
    target: str = ""  # scheduler address or scheduler-file path
    n_workers: int = 2

    @classmethod
    def parse(cls, text: str) -> ClusterAddress:
        """``local[:N]``, ``tcp://HOST:PORT`` (any dask protocol) or a scheduler-file path
        (read and checked here: a JSON object with the scheduler's ``address``)."""
        text = str(text).strip()
        if text == "local" or text.startswith("local:"):
            count = text[len("local:"):] if ":" in text else str(max(1, (os.cpu_count() or 2)))
            if not count.isdigit() or int(count) < 1:
                raise InputError(f"--dask {text!r}: write local or local:N with N >= 1 worker "
                                 "processes, e.g. local:4")
            if int(count) > max_local_workers():
                raise InputError(f"--dask {text}: at most {max_local_workers()} local worker "
                                 f"processes on this machine (4 per core, 64 at most); give "
                                 f"local:{max_local_workers()} or fewer, or join a cluster")
            return cls("local", "", int(count))
        if "://" in text:
            return cls("address", text)
        if Path(text).expanduser().is_file():
            return cls("file", _scheduler_file_address(Path(text).expanduser()))
        raise InputError("--dask: not local[:N], a scheduler address such as "
                         "tcp://127.0.0.1:8786, or an existing scheduler file", path=text)

    def scheduler_address(self) -> str:
        """The address joined (a scheduler file's ``address``); ``""`` for a local cluster."""
        return "" if self.kind == "local" else self.target


def max_local_workers() -> int:
    """Most worker processes ``--dask local:N`` starts: 4 per core, 64 at most."""
    return max(1, min(64, 4 * (os.cpu_count() or 1)))


#: a scheduler file is a few hundred bytes of JSON
_SCHEDULER_FILE_MAX = 1 << 20


def _scheduler_file_address(path: Path) -> str:
    """The ``address`` in a scheduler file (``dask scheduler --scheduler-file``), read once
    (without blocking) and checked; anything else is one InputError."""
    import json

    what = "is not a dask scheduler file"
    hint = ("give local[:N], tcp://HOST:PORT or the JSON file `dask scheduler "
            "--scheduler-file` writes")
    try:
        with open_regular(path, "dask scheduler file") as fh:
            data = json.loads(fh.read(_SCHEDULER_FILE_MAX + 1)[:_SCHEDULER_FILE_MAX])
    except ValueError as exc:
        raise InputError(f"{what} ({type(exc).__name__}); {hint}", path=path) from None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or "://" not in address or len(address) > 1000:
        raise InputError(f'{what}: it holds no scheduler "address"; {hint}', path=path)
    return address


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for joining a ``tls://`` scheduler (``--dask-ca/--dask-cert/--dask-key``)."""

    ca: str | None = None  # the cluster's certificate authority
    cert: str | None = None  # this client's certificate (may hold the key too)
    key: str | None = None  # this client's private key

    def given(self) -> bool:
        return any((self.ca, self.cert, self.key))


_TLS_HINT = ("give the cluster's certificates with --dask-ca CA.pem --dask-cert CERT.pem "
             "--dask-key KEY.pem, or name them in dask's configuration "
             "(distributed.comm.tls.ca-file, .client.cert, .client.key; see docs/cluster.md)")


def _local_security(distributed: Any) -> Any:
    """A throw-away TLS identity shared by this process and the cluster it starts."""
    try:
        return distributed.Security.temporary()
    except ImportError:
        raise InputError("--dask local:N secures its cluster with TLS, which needs the "
                         f"'cryptography' package; install it with: {CLUSTER_EXTRA}") from None


def _join_security(distributed: Any, address: ClusterAddress, tls: TLSFiles) -> Any:
    """The ``Security`` for joining ``address``: the files given, else dask's configuration.

    Every problem (a tls:// address without certificates, a missing or unreadable file,
    certificates with a tcp:// address) is one InputError here, before any connection.
    """
    import ssl

    target = address.scheduler_address()
    if tls.given():
        if not (tls.ca and tls.cert):
            raise InputError("--dask-ca and --dask-cert are both needed to join a tls:// "
                             "scheduler (and --dask-key unless CERT holds the key)")
        for flag, name in (("--dask-ca", tls.ca), ("--dask-cert", tls.cert),
                           ("--dask-key", tls.key)):
            if name is not None and not Path(name).expanduser().is_file():
                raise InputError(f"{flag}: file not found; give the PEM file", path=name)
        files = {k: str(Path(v).expanduser()) for k, v in asdict(tls).items() if v}
        security = distributed.Security(
            require_encryption=True, tls_ca_file=files["ca"], tls_client_cert=files["cert"],
            tls_client_key=files.get("key"))
        if target and not target.startswith("tls://"):
            raise InputError(f"--dask-ca/--dask-cert are for a tls:// scheduler, but the "
                             f"address is {target}; give tls://HOST:PORT", path=address.target)
    else:
        security = distributed.Security()  # what dask's configuration says, if anything
    if target.startswith("tls://") or security.require_encryption:
        if not (security.tls_ca_file and security.tls_client_cert):
            raise InputError(f"--dask {target or address.target}: a tls:// scheduler needs "
                             f"certificates; {_TLS_HINT}")
        try:
            security.get_connection_args("client")  # reads the files now, not mid-connect
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise InputError(f"cannot use the TLS certificates ({_one_line(exc)}); give the "
                             "cluster's CA and this client's certificate and key as PEM files",
                             path=tls.cert or security.tls_client_cert) from None
    return security


def _one_line(exc: BaseException) -> str:
    """A remote exception as ``Type: message`` on one line (CLI errors are one line)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _join(distributed: Any, target: str, security: Any) -> Any:
    """``distributed.Client(target)``, or one InputError for whatever the other end sent (no
    dask scheduler at all: AssertionError, MemoryError from a nonsense frame length...)."""
    try:
        return distributed.Client(target, security=security, timeout=_connect_timeout())
    except Exception as exc:  # noqa: BLE001 - whatever the other end sent
        failure = _one_line(exc)[:200]
    gc.collect()  # the half-made Client (in a reference cycle) must not be collected inside the
    # next Client's start: its __del__ waits there for dask's LoopRunner lock, a hang
    raise InputError(f"cannot reach the dask scheduler ({failure}); check the address, that "
                     "`dask scheduler` is running there and, for tls://, the certificates",
                     path=target)


@contextlib.contextmanager
def connect(address: ClusterAddress | str, tls: TLSFiles | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address``; a local cluster is started and stopped here.

    A local cluster speaks TLS with a throw-away certificate (module docstring); a running
    one is joined with ``tls`` or dask's configured certificates. Every worker is checked
    up front to import this package at the client's version (the feature cache key holds
    the version, so mixed versions would compute different features).
    """
    import logging

    distributed = require_extra(*DASK)
    if isinstance(address, str):
        address = ClusterAddress.parse(address)
    tls = tls or TLSFiles()
    if address.kind == "local" and tls.given():
        raise InputError("--dask-ca/--dask-cert/--dask-key are for joining a tls:// "
                         "scheduler; --dask local makes its own certificate")
    security = (_local_security(distributed) if address.kind == "local"
                else _join_security(distributed, address, tls))
    cluster = client = None
    # dask's own warnings (e.g. "worker still alive after 4 s, killing" at shutdown) would
    # break the CLI's one-line-per-problem stderr; problems reach the user as InputErrors
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        if address.kind == "local":
            # one thread per worker process: torch uses the cores, dask the processes
            threads = max(1, (os.cpu_count() or 1) // address.n_workers)
            import dask

            # dask's HTTP servers (plain HTTP even under TLS) serve no pages: no dashboard,
            # no task or worker listings, no proxy; they listen on a loopback ephemeral port
            with dask.config.set({"distributed.scheduler.http.routes": [],
                                  "distributed.worker.http.routes": []}):
                cluster = distributed.LocalCluster(
                    n_workers=address.n_workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", protocol="tls", security=security,
                    dashboard_address=None, silence_logs=logging.ERROR,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    env={"OMP_NUM_THREADS": str(threads)})
            client = distributed.Client(cluster, timeout=_connect_timeout())
        else:
            client = _join(distributed, address.target, security)
        check_workers(client)
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)
        log.setLevel(level)


def _package_version() -> str:
    return __version__


def check_workers(client: Any) -> None:
    """InputError unless every worker imports this package at the client's version."""
    if not client.scheduler_info().get("workers"):
        with contextlib.suppress(Exception):
            client.wait_for_workers(1, timeout=_connect_timeout())
    versions = client.run(_package_version, on_error="return")
    if not versions:
        raise InputError("the dask cluster has no workers; start some with `dask worker "
                         "SCHEDULER_ADDRESS`")
    for worker, version in sorted(versions.items()):
        if isinstance(version, BaseException):
            raise InputError(f"dask worker {worker} cannot run {PACKAGE} "
                             f"({_one_line(version)}); install the same version "
                             f"of napari-ish-annotator on every worker ({CLUSTER_EXTRA})")
        if version != __version__:
            raise InputError(f"dask worker {worker} runs napari-ish-annotator {version}, this "
                             f"client {__version__}; install the same version everywhere")


# ------------------------------------------------------------------------------ client side
class DistributedExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` whose cache misses are computed on a dask cluster.

    Identity, cache signature and cache reads are the local extractor's (no network is built
    here unless the identity needs it), so results and cache entries are the same as a local
    run's.
    """

    def __init__(self, client: Any, config: ExtractorConfig, cache_dir: str | Path | None = None):
        super().__init__(config, cache_dir=cache_dir)
        self.client = client
        self.cache_dir = None if cache_dir is None else str(Path(cache_dir).expanduser())

    def _iter_compute(self, images: list, todo: list[str], rows: dict[str, list[int]],
                      out: np.ndarray, done: int, failed: dict[int, str], skip: bool
                      ) -> ProgressGen[np.ndarray]:
        distributed = require_extra(*DASK)
        n = len(images)
        chunks = [todo[s:s + CHUNK] for s in range(0, len(todo), CHUNK)]
        config = asdict(self.config)
        futures = {}
        for i, keys in enumerate(chunks):
            items = [_portable(images[rows[k][0]]) for k in keys]
            future = self.client.submit(_worker_extract, config, self.cache_dir, items, skip,
                                        retries=RETRIES, pure=False)
            futures[future] = i
        try:
            for future in distributed.as_completed(list(futures)):
                feats, bad = _result(future)
                keys = chunks[futures.pop(future)]
                for pos, k in enumerate(keys):
                    idx = rows[k]
                    if pos in bad:
                        out[idx] = np.nan
                        failed.update((i, bad[pos]) for i in idx)
                    else:
                        if out.dtype == np.float16 and feats.dtype != np.float16 \
                                and not np.isfinite(feats[pos].astype(np.float16)).all():
                            out = _widen(out, images[idx[0]])
                        out[idx] = feats[pos].reshape(1, -1)
                    done += len(idx)
                del feats
                yield Progress(done, n, f"extracted {done}/{n} (layer {self.layer}, dask)")
        finally:  # Ctrl-C, an error or a closed generator: stop the cluster's work
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel(list(futures))
        return out


@dataclass(frozen=True)
class DaskExecutor:
    """Features computed on ``client``'s dask cluster: the explicit ``executor`` argument of
    :mod:`..workflow` (``None``: on this machine); the CLI makes one for ``--dask``."""

    client: Any

    def extractor(self, config: ExtractorConfig, cache_dir: str | Path | None = None,
                  loaded: Any = None) -> DistributedExtractor:
        """A :class:`DistributedExtractor` (``loaded`` unused: workers build their own)."""
        return DistributedExtractor(self.client, config, cache_dir)


def _portable(image: Any) -> Any:
    return str(Path(image).absolute()) if isinstance(image, (str, Path)) else image


def _result(future: Any) -> tuple[np.ndarray, dict[int, str]]:
    """The chunk's result; cluster failures become one InputError."""
    distributed = require_extra(*DASK)
    try:
        return future.result()
    except InputError:
        raise
    except ImportError as exc:
        raise InputError(f"a dask worker cannot import {PACKAGE} ({_one_line(exc)}); install "
                         f"napari-ish-annotator on every worker ({CLUSTER_EXTRA})") from None
    except distributed.KilledWorker as exc:
        raise InputError(f"dask workers kept dying while extracting features ({_one_line(exc)}); "
                         "see the "
                         "worker logs (out of memory?); nothing was written") from None
    except (OSError, TimeoutError, distributed.client.FutureCancelledError) as exc:
        raise InputError(f"lost the dask cluster during the run ({_one_line(exc)}); "
                         "nothing was written") from None


# ------------------------------------------------------------------------------ worker side
_EXTRACTORS: dict[str, FeatureExtractor] = {}
_LOCK = threading.Lock()
LOADS = {"count": 0}  # how often this worker process built an extractor (tests check it)


def _worker_extractor(config: dict, cache_dir: str | None) -> FeatureExtractor:
    """This worker process's extractor for ``config``: the network is built once, not once
    per chunk (the last two settings are kept)."""
    import json

    key = json.dumps([config, cache_dir], sort_keys=True)
    with _LOCK:
        fx = _EXTRACTORS.get(key)
        if fx is None:
            import multiprocessing

            # a nanny's worker is a daemon process, which may not start decoding processes
            daemon = multiprocessing.current_process().daemon
            fx = FeatureExtractor(ExtractorConfig(**config), cache_dir=cache_dir,
                                  decode_workers=0 if daemon else None)
            fx.loaded  # noqa: B018 - build the network now, inside the lock
            LOADS["count"] += 1
            while len(_EXTRACTORS) >= 2:
                _EXTRACTORS.pop(next(iter(_EXTRACTORS)))
            _EXTRACTORS[key] = fx
    return fx


def _worker_extract(config: dict, cache_dir: str | None, images: list, skip: bool
                    ) -> tuple[np.ndarray, dict[int, str]]:
    """One chunk on a worker: ``(features (k, d) float16 or float32, {position: reason})``."""
    fx = _worker_extractor(config, cache_dir)
    with _LOCK:  # one chunk at a time per process: the network uses all its threads
        out = np.empty((len(images), fx.dim), dtype=np.float16)
        out = fx.extract(images, out=out, on_error="skip" if skip else "raise")
        return out, dict(fx.last_failed)


def worker_loads() -> int:
    """Extractors built by this worker process so far (run on workers by the tests)."""
    return LOADS["count"]


# ------------------------------------------------------------------------------ SLURM
def slurm_cluster(queue: str | None = None, account: str | None = None, cores: int = 8,
                  memory: str = "32GB", walltime: str = "01:00:00", gpus: int = 0,
                  **kwargs: Any) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` whose jobs suit feature extraction (docs/cluster.md).

    One worker process per job with one dask thread (a worker runs one chunk at a time) and
    all the job's ``cores`` for torch's intra-op threads; ``gpus`` adds ``--gres=gpu:N``.
    Call ``.scale(jobs=N)`` and pass ``.scheduler_address`` to ``--dask``. Extra keyword
    arguments go to ``SLURMCluster`` (e.g. ``scheduler_options``, ``job_extra_directives``).
    """
    SLURMCluster = require_extra("dask_jobqueue", "cluster", "a SLURM cluster",  # noqa: N806
                                 distribution="dask-jobqueue").SLURMCluster
    extra = list(kwargs.pop("job_extra_directives", []))
    if gpus:
        extra.append(f"--gres=gpu:{int(gpus)}")
    prologue = [f"export OMP_NUM_THREADS={int(cores)}",
                *kwargs.pop("job_script_prologue", [])]
    return SLURMCluster(queue=queue, account=account, cores=1, processes=1,
                        job_cpu=int(cores), memory=memory, walltime=walltime,
                        job_extra_directives=extra, job_script_prologue=prologue, **kwargs)
