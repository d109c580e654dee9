"""Fine-tune section of the Train panel (issue 4): multi-task fine-tuning from the user's labels.

Trains the backbone + multi-task head on the images labelled in the label store (unknown
labels masked), in a worker with a live plot of training loss and validation AUC per epoch and
an estimate of the time left. When it finishes, the session switches to the fine-tuned
backbone: features are re-extracted, the per-term classifiers refitted and the images
re-predicted. One button switches back to the previous model (and forth again).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.features.cache import default_cache_dir
from ..core.finetune import FinetuneConfig
from ..core.utils.errors import InputError
from ..session import FinetuneOutcome, steps
from ._base import SessionDock
from ._errors import report_error
from ._worker import TaskRunner

FROZEN_CHOICES = [
    ("auto", "backbone default (VGG16: up to pool3, layer 17) - practical on CPU"),
    ("17", "up to pool3 (VGG16 layer 17)"),
    ("24", "up to pool4 (VGG16 layer 24) - fastest, layer-21 features stay fixed"),
    ("none", "nothing - train the whole trunk (GPU)"),
    ("all", "whole trunk - train only the head"),
]
VGG_ONLY = ("17", "24")  # VGG16 layer numbers: other backbones name their own stages


def frozen_choices(backbone: str) -> list[tuple[str, str]]:
    """The Frozen choices for ``backbone``: its own default named, VGG16's layers for it only."""
    if backbone == "vgg16":
        return list(FROZEN_CHOICES)
    try:
        from ..core.backbones.specs import get_spec

        default = get_spec(backbone).frozen_default
    except Exception:  # noqa: BLE001 - an unknown name: the generic wording
        default = None
    auto = f"backbone default ({backbone}: up to {default})" if default else "backbone default"
    return [("auto", auto)] + [c for c in FROZEN_CHOICES[1:] if c[0] not in VGG_ONLY]


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def _finetune_in_worker(request: Any) -> Any:
    """Fine-tuning, after importing what the panel's plot needs (off the GUI thread)."""
    import matplotlib.backends.backend_qtagg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    return (yield from steps.iter_finetune(request))


class _Runner(TaskRunner):
    """A TaskRunner that also hands every progress step to the section (plot, ETA)."""

    def __init__(self, on_step: Any) -> None:
        super().__init__()
        self._on_step = on_step

    def _progress(self, step: Any) -> None:
        super()._progress(step)
        self._on_step(step)


class FinetuneSection(QWidget):
    """Epochs, learning rate, frozen depth, device, Start/Stop, live plot, model switch."""

    def __init__(self, dock: SessionDock, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = dock.session
        self.history: list[dict] = []
        self.checkpoint: Path | None = None
        self._continuing: Path | None = None
        self._t0 = 0.0
        self._first_batch_done = 0

        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(5)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-3)
        self.lr_spin.setToolTip("head learning rate; trainable backbone layers use a tenth of it")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(16)
        self.frozen_combo = QComboBox()
        self._fill_frozen()
        dock.listen(self.session.settings_changed, self._fill_frozen)
        self.frozen_combo.setToolTip("layers before this stay at their pretrained weights")
        self.frozen_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.frozen_combo.setMinimumContentsLength(14)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.augment_check = QCheckBox("augment images")
        self.augment_check.setChecked(True)
        self.augment_check.setToolTip("rotation, scale, brightness/contrast, stain hue. Off: on CPU the frozen layers are computed once and each "
                                      "epoch only runs the trainable part (much faster)")
        self.continue_check = QCheckBox("Continue from the current network")
        self.continue_check.toggled.connect(self._continue_toggled)
        form = QFormLayout()
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Frozen", self.frozen_combo)
        form.addRow("Device", self.device_combo)

        self.start_button = QPushButton("Start fine-tuning")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.switch_button = QPushButton("Switch to previous model")
        self.switch_button.setEnabled(False)
        self.switch_button.clicked.connect(self.switch_model)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.switch_button)

        self.runner = _Runner(self._on_step)
        self.runner.cancel_button.setVisible(False)  # Stop is the cancel button here
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.finished.connect(lambda *_: self._busy(False))
        self.eta_label = QLabel("")
        self.summary = QLabel("Trains on the images you labelled; unknown labels are ignored.")
        self.summary.setWordWrap(True)

        # the loss/AUC plot is built on first use: importing matplotlib cost 0.4-0.55 s of
        # GUI time when the dock opened; the fine-tuning worker imports it instead
        self.canvas: Any = None
        self.plot_placeholder = QLabel("Loss and validation AUC per epoch appear here.")
        self.plot_placeholder.setStyleSheet("color: gray;")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.augment_check)
        layout.addWidget(self.continue_check)
        layout.addLayout(buttons)
        layout.addWidget(self.runner)
        layout.addWidget(self.eta_label)
        layout.addWidget(self.plot_placeholder)
        layout.addWidget(self.summary)
        self._layout = layout
        for signal in (self.session.model_changed, self.session.settings_changed):
            dock.listen(signal, self._update_continue)
        self._update_continue()

    def _fill_frozen(self, *_: Any) -> None:
        """Name the selected backbone's own default (it said VGG16 for EfficientNet-Lite0)."""
        choices = frozen_choices(self.session.settings.backbone)
        combo = self.frozen_combo
        if [combo.itemData(i) for i in range(combo.count())] == [k for k, _ in choices] \
                and combo.itemText(0) == choices[0][1]:
            return
        keep = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for key, text in choices:
            combo.addItem(text, key)
        index = combo.findData(keep)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    # ------------------------------------------------------------------ config
    def config(self) -> Any:
        st = self.session.settings
        return FinetuneConfig(
            backbone=st.backbone, weights=st.weights, input_size=int(st.input_size),
            epochs=int(self.epochs_spin.value()), batch_size=int(self.batch_spin.value()),
            lr=float(self.lr_spin.value()), frozen=str(self.frozen_combo.currentData()),
            augment=self.augment_check.isChecked(), device=self.device_combo.currentText(),
            seed=int(st.seed))

    def _output_path(self) -> Path:
        root = self.session.cache_dir if self.session.cache_dir is not None else default_cache_dir()
        folder = Path(root) / "finetuned"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
        path, n = folder / f"{stem}.pt", 1
        while path.exists():  # two runs in one second must not write over (or continue) one file
            n += 1
            path = folder / f"{stem}-{n}.pt"
        return path

    def continued(self) -> Path | None:
        """The checkpoint a run continues, when asked for: the fine-tuned network in use (this
        session's fine-tune, or a checkpoint chosen as Weights and trained on)."""
        ok = self.continue_check.isChecked() and self.continue_check.isEnabled()
        return self.session.model.network_checkpoint() if ok else None

    def _update_continue(self, *_: Any) -> None:
        current = self.session.model.network_checkpoint()
        self.continue_check.setEnabled(current is not None and not self.runner.running)
        self.continue_check.setToolTip(
            f"start from the fine-tuned network in use ({current.name}) instead of the base "
            "weights and train it on the current labels: every labelled image, new terms get "
            "new outputs, terms no longer labelled are dropped" if current is not None else
            "no fine-tuned network is loaded: fine-tune once first (or choose a fine-tuned "
            "checkpoint with Weights file… and Train), then continue it after labelling more")

    def _continue_toggled(self, checked: bool) -> None:
        self.start_button.setText("Continue fine-tuning" if checked else "Start fine-tuning")

    # ------------------------------------------------------------------ run
    def start(self) -> Any:
        """Fine-tune on the labelled images in a worker, then switch to the new backbone."""
        s = self.session
        init = self.continued()
        try:
            out = self._output_path()
            request = s.model.finetune_request(self.config(), out, init=init)
        except InputError as exc:
            self.summary.setText(report_error(exc))
            return None
        self.history = []
        self._redraw()
        self.checkpoint = out
        self._continuing = init
        self._t0 = time.perf_counter()
        self._first_batch_done = 0
        self.summary.setText((f"continuing {init.name}" if init else "fine-tuning")
                             + f" on {len(request.images)} labelled images…")
        return self.runner.start(_finetune_in_worker, request, on_done=self._finished,
                                 message="loading images…",
                                 done_message="fine-tuned; using the new backbone")

    def stop(self) -> None:
        """Stop at the next batch; the last complete epoch's checkpoint stays usable."""
        self.runner.cancel()

    def _busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self.switch_button.setEnabled(not busy and self.session.model.previous_model is not None)
        if not busy and self.runner.last_outcome == "cancelled" and self.checkpoint is not None \
                and self.checkpoint.exists():
            self.summary.setText(f"stopped; the last complete epoch is saved in {self.checkpoint} "
                                 "(usable as weights file)")
        if not busy:
            self.eta_label.setText("")
        self._update_continue()

    def _on_step(self, step: Any) -> None:
        kind = getattr(step, "kind", None)
        if kind == "batch":
            done, total = int(step.done), int(step.total)
            if not self._first_batch_done:
                self._first_batch_done = done
                self._t0 = time.perf_counter()
            elif done > self._first_batch_done:
                rate = (time.perf_counter() - self._t0) / (done - self._first_batch_done)
                self.eta_label.setText(
                    f"epoch {step.epoch} · batch {step.batch} · loss {step.loss:.3f} · "
                    f"about {_format_seconds(rate * (total - done))} left")
        elif kind == "epoch" and step.record is not None:
            self.history.append(dict(step.record))
            self._redraw()

    def _ensure_plot(self) -> None:
        """Build the loss/AUC plot where the placeholder is (matplotlib imported by then)."""
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.8), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(140)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_auc = self.ax_loss.twinx()
        self.loss_line, = self.ax_loss.plot([], [], "o-", color="tab:blue", label="train loss")
        self.auc_line, = self.ax_auc.plot([], [], "s-", color="tab:orange", label="val AUC")
        self.ax_loss.set_xlabel("epoch")
        self.ax_loss.set_ylabel("loss", color="tab:blue")
        self.ax_auc.set_ylabel("val AUC", color="tab:orange")
        self.ax_auc.set_ylim(0.0, 1.0)
        self._layout.replaceWidget(self.plot_placeholder, self.canvas)
        self.plot_placeholder.hide()

    def _redraw(self) -> None:
        if self.canvas is None and not self.history:
            return  # nothing to plot yet: matplotlib is imported by the worker first
        self._ensure_plot()
        epochs = [h["epoch"] for h in self.history]
        self.loss_line.set_data(epochs, [h["train_loss"] for h in self.history])
        auc = [(e, h["val_auc"]) for e, h in zip(epochs, self.history, strict=True)
               if h.get("val_auc") is not None]
        self.auc_line.set_data([a[0] for a in auc], [a[1] for a in auc])
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        if epochs:
            self.ax_loss.set_xlim(0.5, max(epochs) + 0.5)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ model switching
    def _finished(self, outcome: FinetuneOutcome) -> None:
        self.session.model.apply_finetuned(outcome)
        self._show_switch()
        ft = outcome.finetune
        auc = ft.best_score if ft.selection == "val_auc" else None
        self.summary.setText(
            (f"continued {self._continuing.name}: " if self._continuing is not None else "")
            + f"fine-tuned {len(ft.history)} epochs"
            + (" (stopped early)" if ft.stopped_early else "")
            + f"; best epoch {ft.best_epoch}"
            + (f", validation AUC {auc:.2f}" if auc is not None else "")
            + f". Now using {ft.checkpoint.name}; features, classifiers and predictions updated."
            + "".join(f" {note}" for note in getattr(ft, "notes", ()) or ()))

    def _show_switch(self) -> None:
        self.switch_button.setEnabled(self.session.model.previous_model is not None
                                      and not self.runner.running)
        tuned = self.session.model.finetuned is not None
        self.switch_button.setText("Switch to previous model" if tuned
                                   else "Switch to fine-tuned model")

    def switch_model(self) -> None:
        """Swap between the fine-tuned model and the one before it."""
        if self.runner.running:
            return
        self.session.model.switch_model()
        self._show_switch()
