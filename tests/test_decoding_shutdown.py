"""Stopping decoding worker processes early (Cancel) never turns into an error.

A forked DataLoader worker can die while it is being stopped (seen once in CI: "terminate
called without an active exception", then torch's SIGCHLD handler raised "DataLoader worker
... is killed by signal: Aborted" out of the cancel). The batches it held are not wanted any
more, so closing the decoding must end quietly and leave no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import torch

from napari_ish_annotator.core.features.decoding import decoded_in_processes


class DiesWhenStopped:
    """A preprocessor whose first batch decodes at once and whose others take a while and
    then kill their worker, i.e. after the consumer has stopped waiting for them."""

    def batch(self, items: list[int]) -> tuple[torch.Tensor, dict[int, str]]:
        if items[0] != 0:
            time.sleep(2.0)
            os.abort()
        return torch.zeros(1, 3, 4, 4), {}


def test_closing_while_a_worker_dies_ends_quietly_with_no_process_left():
    batches = decoded_in_processes(DiesWhenStopped(), [[0], [1], [2], [3]], skip=True,
                                   workers=2, pin_memory=False)
    x, failed = next(batches)
    assert tuple(x.shape) == (1, 3, 4, 4) and failed == {}
    batches.close()  # the extraction is cancelled after its first batch
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
