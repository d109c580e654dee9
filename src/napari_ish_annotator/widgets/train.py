"""Train panel: fit the per-term ensembles from the current labels, then re-predict."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.utils.errors import InputError
from ..session import MIN_CV_PER_CLASS, TrainedModel, annotators, model_outputs, needs_network
from ._base import Collapsible, SessionDock
from ._errors import report_error, shows_input_error
from ._worker import TaskRunner
from .cv_chart import CvChart, train_in_worker
from .finetune_section import FinetuneSection


class TrainWidget(SessionDock):
    """Counts per term, Train (background, cancellable), cross-validated AUC, Save model."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        s = self.session

        self.members_spin = QSpinBox()
        self.members_spin.setRange(1, 101)
        self.members_spin.setSingleStep(2)
        self.members_spin.setValue(s.settings.n_members)
        self.members_spin.setToolTip("logistic regressions per term, each on all positives + "
                                     "an equal random undersample of negatives")
        self.c_spin = QDoubleSpinBox()
        self.c_spin.setDecimals(3)
        self.c_spin.setRange(0.001, 1000.0)
        self.c_spin.setValue(s.settings.C)
        self.c_spin.setToolTip("inverse L2 regularisation strength")
        self.cv_check = QCheckBox("cross-validated AUC (folds by gene)")
        self.cv_check.setToolTip(f"needs ≥ {MIN_CV_PER_CLASS} present and ≥ {MIN_CV_PER_CLASS} "
                                 "absent labels per term; images of one gene stay in one fold")
        self.cv_check.setChecked(True)
        form = QFormLayout()
        form.addRow("Ensemble members", self.members_spin)
        form.addRow("C", self.c_spin)
        self.source_combo = QComboBox()
        self.source_combo.addItems(list(annotators.TRAIN_SOURCES))
        self.source_combo.setToolTip("train on your own labels (the manifest fills the rest) or "
                                     "on the consensus of every annotator in the label file "
                                     "(Dawid-Skene: careful annotators weigh more)")
        form.addRow("Train on", self.source_combo)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["term", "present", "absent", "CV AUC"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(150)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

        self.train_button = QPushButton("Train from labels")
        self.train_button.setToolTip("uses the Annotate panel's backbone, weights, layer and size")
        self.train_button.clicked.connect(self.train)
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._choose_save)
        self.agreement_button = QPushButton("Annotator agreement")
        self.agreement_button.setToolTip("agreement per term (observed share, Cohen's/Fleiss' "
                                         "kappa) and each annotator's estimated accuracy")
        self.agreement_button.clicked.connect(self.show_agreement)
        self.export_button = QPushButton("Export to bioimage.io…")
        self.export_button.setToolTip("write the model in use as a bioimage.io package (.zip) "
                                      "that other tools (ilastik, deepImageJ, BiaPy) can run")
        self.export_button.clicked.connect(self._choose_export)
        self.spread_button = QPushButton("Ensemble spread")
        self.spread_button.setToolTip("with a fine-tuned ensemble (several networks, made by "
                                      "the ish-annotator finetune command) as Weights: show each probability ± the std over its members")
        self.spread_button.clicked.connect(self.show_spread)
        # two buttons a row at most: three cut the third one's label off in a 440 px dock
        brow = QHBoxLayout()
        brow.addWidget(self.save_button)
        brow.addWidget(self.export_button)
        erow = QHBoxLayout()
        erow.addWidget(self.agreement_button)
        erow.addWidget(self.spread_button)
        self.agreement_text = QPlainTextEdit()
        self.agreement_text.setReadOnly(True)
        self.agreement_text.setVisible(False)
        self.agreement_text.setMinimumHeight(120)
        font = self.agreement_text.font()
        font.setFamily("monospace")
        self.agreement_text.setFont(font)
        self.runner = TaskRunner()
        self.runner.started.connect(lambda: self._busy(True))
        self.runner.finished.connect(lambda *_: self._busy(False))
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        # the main action and its result first; options and rarer tools fold (1366x768)
        options = QWidget()
        olay = QVBoxLayout(options)
        olay.setContentsMargins(0, 0, 0, 0)
        olay.addLayout(form)
        olay.addWidget(self.cv_check)
        self.options_section = Collapsible("Training options", options)
        tools = QWidget()
        tlay = QVBoxLayout(tools)
        tlay.setContentsMargins(0, 0, 0, 0)
        tlay.addLayout(erow)
        tlay.addWidget(self.agreement_text)
        self.tools_section = Collapsible("Annotator agreement, ensemble spread", tools)
        self.table.setMinimumHeight(100)  # preferred height ignored: see EmbryosWidget
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        layout = QVBoxLayout(self.body)
        layout.addWidget(self.train_button)
        layout.addLayout(brow)
        layout.addWidget(self.runner)
        layout.addWidget(self.summary)
        layout.addWidget(self.options_section)
        layout.addWidget(self.table, 1)
        self.cv_chart = CvChart(self)  # AUC per term after a CV run (issue 27)
        layout.addWidget(self.cv_chart)
        layout.addWidget(self.tools_section)

        self.finetune_box = QWidget()

        self.finetune = FinetuneSection(self)
        flay = QVBoxLayout(self.finetune_box)
        flay.setContentsMargins(0, 0, 0, 0)
        flay.addWidget(self.finetune)
        self.finetune_section = Collapsible("Fine-tune backbone (multi-task)", self.finetune_box)
        layout.addWidget(self.finetune_section)

        for signal in (s.labels_changed, s.vocabulary_changed, s.dataset_changed,
                       s.train_report_changed):
            self.listen(signal, self._refresh)
        self._refresh()

    def _refresh(self, *_: Any) -> None:
        s = self.session
        counts = s.model.training_counts() if s.n_images else {t: (0, 0) for t in s.vocabulary}
        auc = s.model.train_report.auc if s.model.train_report is not None else {}
        self.table.setRowCount(len(counts))
        for r, (term, (pos, neg)) in enumerate(counts.items()):
            self.table.setItem(r, 0, QTableWidgetItem(term))
            for c, v in ((1, pos), (2, neg)):
                item = QTableWidgetItem(str(v))
                if v == 0:
                    item.setToolTip("label at least one image this way before training")
                    item.setForeground(self.palette().brightText())
                self.table.setItem(r, c, item)
            a = auc.get(term)
            self.table.setItem(r, 3, QTableWidgetItem(
                "–" if a is None or (isinstance(a, float) and math.isnan(a)) else f"{a:.2f}"))

    def train(self) -> Any:
        """Fit the per-term ensembles from the current labels in the background."""
        s = self.session
        s.update_settings(n_members=int(self.members_spin.value()), C=float(self.c_spin.value()))
        try:
            if self.source_combo.currentIndex() == 1:
                request = annotators.consensus_train_request(s, self.cv_check.isChecked())
            else:
                request = s.model.train_request(self.cv_check.isChecked())
        except InputError as exc:
            self.summary.setText(report_error(exc))
            return None
        return self.runner.start(  # torch only if some features are not cached yet
            train_in_worker, request, on_done=self._trained, message="training…",
            done_message="trained; predictions updated",
            needs_torch=lambda: needs_network(request.features, request.extract))

    def _trained(self, out: tuple[TrainedModel, Any]) -> None:
        result, self.cv_chart.pending = out  # the chart was drawn in the worker
        self.session.model.apply_trained(result)
        report = result.report
        auc = report.auc
        note = report.cv_note or "too few labels for cross-validation"
        self.summary.setText(
            f"trained {len(report.counts)} terms on {report.n_labelled_images} labelled "
            f"images" + (f"; mean CV AUC {report.mean_auc:.2f} over {len(auc)} terms" if auc
                         else f"; {note}" if self.cv_check.isChecked() else ""))

    @shows_input_error
    def _choose_save(self) -> None:
        path = QFileDialog.getSaveFileName(self, "Save model bundle (a folder)", "model")[0]
        if path:
            self.session.model.save_bundle(path)

    def _busy(self, busy: bool) -> None:
        for b in (self.train_button, self.agreement_button, self.spread_button,
                  self.export_button):
            b.setEnabled(not busy)

    def show_agreement(self) -> Any:
        """Compare the annotators in a worker; the table appears below the buttons."""
        return self.runner.start_request(lambda: annotators.annotator_labels(self.session),
                                         annotators.iter_agreement, on_done=self._agreement,
                                         message="comparing annotators…", done_message="",
                                         needs_torch=False)

    def _agreement(self, table: Any) -> None:
        self.agreement_text.setPlainText(table.format_table())
        self.agreement_text.setVisible(True)

    def show_spread(self) -> Any:
        """Every open image through each ensemble member in a worker; Annotate shows ± std."""
        return self.runner.start_request(lambda: model_outputs.spread_request(self.session),
                                         model_outputs.iter_member_spread,
                                         on_done=self.session.model.apply_member_spread,
                                         message="running the ensemble's members…",
                                         done_message="")

    def _choose_export(self) -> None:
        path = QFileDialog.getSaveFileName(self, "Export to bioimage.io", "model.bioimageio.zip",
                                           "bioimage.io package (*.zip)")[0]
        if path:
            self.export(path)

    def export(self, path: str, test: bool = True) -> Any:
        """Write the model in use as a bioimage.io .zip in a worker (progress, Cancel)."""
        return self.runner.start_request(lambda: model_outputs.export_request(self.session, path, test),
                                         model_outputs.iter_export, on_done=self._exported,
                                         message="exporting to bioimage.io…")

    def _exported(self, result: Any) -> None:
        self.summary.setText(f"wrote {result.path} (bioimage.io test: {result.test_status})")
