"""Connect a session to its viewer: the one embryo layer, the canvas text overlay, the keys.

The napari boundary. File > Open and the sample data hand napari plain layer data
(:func:`._layer_data.embryo_layer_data`: the first image, tagged with the inputs to open) and
never touch the viewer; a :class:`ViewerBinding` finds such a layer through napari's public events
(``viewer.layers.events.inserted``, and the layers already there when it binds) and opens
its inputs in the session: a handful of files at once, more in the Embryos panel's worker
(progress, Cancel; the GUI thread only applies the result). The binding is the only code that
adds an embryo layer itself (:meth:`ViewerBinding.show_current`, or staged on timers for a
session's first image after a background open); its state lives on the binding, one per
viewer, not in module-level sets.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..core.utils.errors import InputError
from ..session import AnnotatorSession
from ._embryo_features import bind_table_layer
from ._errors import report_error, shows_input_error
from ._layer_data import BACKGROUND_KEY, EMBRYO_LAYER, META_KEY, OPEN_KEY, embryo_layer_data
from ._napari_private import route_csv_saves, window_closed

#: layer metadata: the session owning the embryo layer, a weak reference (deepcopy keeps it)
SESSION_KEY = "ish_session"


def embryo_layer(viewer: Any) -> Any | None:
    """The session's image layer (identified by its metadata, whatever its name)."""
    for layer in viewer.layers:
        if layer.metadata.get(META_KEY) == "embryo":
            return layer
    return None


def _add_embryo_layer(viewer: Any, session: AnnotatorSession, rgb: Any,
                      visible: bool = True) -> Any:
    data, kwargs, _ = embryo_layer_data(rgb, session.current_path, visible=visible)
    kwargs["metadata"][SESSION_KEY] = weakref.ref(session)
    layer = viewer.add_image(data, **kwargs)
    viewer.reset_view()
    return layer


def _current_rgb(session: AnnotatorSession) -> Any | None:
    """The current image, or None after telling the user why it cannot be read."""
    try:
        return session.image()
    except InputError as exc:
        report_error(exc)
        return None


#: ms between the stages of a session's first image. napari's first layer costs 0.3-0.5 s of
#: GUI time in one piece (layer controls, the image shaders, the overlay's glyphs and shaders);
#: staged on timers (a zero delay would run in the same batch of events) no piece blocks the
#: viewer for more than ~0.13 s here, and the opening's own work is not added to any of them
FIRST_SHOW_STAGE_MS = 40

#: the canvas text before any image is open: what to do first. napari's welcome screen hides
#: it while the viewer has no layer (it shows over other layers), but it is drawn either way,
#: which prepares the text shaders and most glyphs: opening's longest GUI stall 0.21 -> 0.13 s
OPEN_HINT = ("ISH Annotator: open embryo images in the Embryos tab\n"
             "(Images…, Folder… or Manifest…), or File > Open a manifest.csv")


def overlay_text(session: AnnotatorSession) -> str:
    """The terms called present (the one rule, :mod:`..core.learn.decision`) with their
    probabilities, highest first: the same answer as the Annotate list's pred. column."""
    if session.current_path is None:
        return OPEN_HINT if session.n_images == 0 else ""
    lines = [f"{session.index + 1}/{session.n_images}  {session.current_path.name}"]
    probs, called = session.model.probabilities_for(), session.model.called_for()
    if probs:
        shown = [(t, p) for t, p in sorted(probs.items(), key=lambda kv: -kv[1]) if called[t]]
        lines += [f"{p:.2f}  {t}" for t, p in shown] or ["(no term called present)"]
    return "\n".join(lines)


def text_overlay(viewer: Any) -> Any:
    """The canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return viewer.text_overlay


def hint(viewer: Any, text: str) -> None:
    """A key's "nothing to do" answer in the status bar: a toast would stay on the canvas
    after it stopped being true (and the term list already shows every label change)."""
    viewer.status = text


def key_name(event: Any) -> str:
    """napari's spelling of a Qt key press ("n", "Shift-N", "Control-Z", "PageDown"), or ""."""
    from qtpy.QtCore import Qt

    key, mods = event.key(), event.modifiers()
    names = {Qt.Key.Key_PageDown: "PageDown", Qt.Key.Key_PageUp: "PageUp"}
    if key in names:
        return names[key]
    text = chr(key) if Qt.Key.Key_0 <= key <= Qt.Key.Key_9 or Qt.Key.Key_A <= key <= Qt.Key.Key_Z \
        else ""
    if not text:
        return ""
    if mods & Qt.KeyboardModifier.ControlModifier:
        return f"Control-{text.upper()}"
    if mods & Qt.KeyboardModifier.ShiftModifier and text.isalpha():
        return f"Shift-{text.upper()}"
    return text.lower()


#: the live bindings (one per viewer), found by identity; a binding leaves on close()
_BINDINGS: list[ViewerBinding] = []


def binding_of(viewer: Any = None, session: AnnotatorSession | None = None
               ) -> ViewerBinding | None:
    """The live binding of ``viewer`` or of ``session``, or None."""
    for binding in _BINDINGS:
        if binding.viewer is viewer or binding.session is session:
            return binding
    return None


def layer_session(metadata: dict) -> AnnotatorSession | None:
    """The bound session owning the embryo layer with ``metadata`` (File > Save's), or None."""
    ref = metadata.get(SESSION_KEY)
    session = ref() if isinstance(ref, weakref.ref) else None
    return session if binding_of(session=session) is not None else None


def bindings_alive() -> int:
    """How many viewers have a bound session."""
    return len(_BINDINGS)


class ViewerBinding:
    """Keeps one viewer and its session in step: the embryo layer, the canvas text, the keys
    (PageUp/PageDown, n/p, 1-9/0, u, Shift+N, Ctrl+Z) and the layers napari adds from our
    reader or sample data (their inputs are opened in the session)."""

    def __init__(self, viewer: Any, session: AnnotatorSession) -> None:
        self.viewer = viewer
        self.session = session
        self.keys: dict[str, Any] = {}
        self.first_show_pending = False  # a session's first image is being staged
        self.first_text_pending = False  # the canvas text's first write is being staged
        self._openers: list[weakref.ref] = []
        _BINDINGS.append(self)
        self._bind()
        self.adopt_pending()  # File > Open before any panel existed

    def close(self) -> None:
        """Forget this binding (its key handlers hold the viewer)."""
        if self in _BINDINGS:
            _BINDINGS.remove(self)

    # ------------------------------------------------------------------ the embryo layer
    def show_current(self) -> None:
        """Put the current image into the one reused RGB layer (created if missing)."""
        viewer, session = self.viewer, self.session
        if session.current_path is None:
            return
        layer = embryo_layer(viewer)
        if layer is None and self.first_show_pending:
            return  # the staged first show adds it
        rgb = _current_rgb(session)
        if rgb is None:
            return
        if layer is None:
            _add_embryo_layer(viewer, session, rgb)
            return
        old_shape = layer.data.shape
        layer.data = rgb
        layer.metadata["path"] = str(session.current_path)
        if old_shape != rgb.shape:
            layer.reset_contrast_limits()
            viewer.reset_view()

    def stage_first_show(self) -> None:
        """Leave the first embryo layer to :meth:`first_show_soon`: from now on a session
        change that would add it (the background Open's result, applied next) leaves it be."""
        if embryo_layer(self.viewer) is None:
            self.first_show_soon()

    def first_show_soon(self) -> None:
        """Show the session's first embryo in timer events of their own: add the layer hidden
        (layer controls), show it (image shaders), write the first word of the canvas text
        (text shaders, a few glyphs), then all of it (the other glyphs)."""
        from qtpy.QtCore import QTimer

        if self.first_show_pending:
            return
        self.first_show_pending = True
        viewer, session = self.viewer, self.session
        layer: list[Any] = []

        def add() -> bool:
            if embryo_layer(viewer) is not None or session.current_path is None:
                return False
            rgb = _current_rgb(session)
            if rgb is None:
                return False
            layer.append(_add_embryo_layer(viewer, session, rgb, visible=False))
            return True

        def show() -> bool:
            layer[0].visible = True
            return True

        def first_word() -> bool:
            overlay = text_overlay(viewer)
            overlay.text = overlay_text(session).split(" ", 1)[0]
            overlay.visible = bool(overlay.text)
            return True

        stages = [add, show, first_word]

        def run_next() -> None:
            stage = stages.pop(0)
            go_on = not window_closed(viewer) and stage()
            if go_on and stages:
                QTimer.singleShot(FIRST_SHOW_STAGE_MS, run_next)
                return
            self.first_show_pending = False
            if go_on:  # the whole text, the rest of its glyphs rendered in the next paint
                self.update_overlay()

        QTimer.singleShot(FIRST_SHOW_STAGE_MS, run_next)

    def first_text_soon(self) -> None:
        """Write the canvas text after the panel's first build and paint, in two timer events:
        its first word, then all. vispy draws new glyphs on the GUI thread (~3 ms each, ~45)."""
        from qtpy.QtCore import QTimer

        self.first_text_pending = True
        ref = weakref.ref(self)  # a timer must not keep a closed viewer's binding alive

        def stage(last: bool) -> None:
            binding = ref()
            if binding is None or window_closed(binding.viewer):
                return
            if last:
                binding.first_text_pending = False
                binding.update_overlay()
                return
            overlay = text_overlay(binding.viewer)
            if not (overlay.text or binding.first_show_pending):  # else written already
                overlay.text = overlay_text(binding.session).split(" ", 1)[0]
                overlay.visible = bool(overlay.text)
            QTimer.singleShot(FIRST_SHOW_STAGE_MS, lambda: stage(last=True))

        QTimer.singleShot(FIRST_SHOW_STAGE_MS, lambda: stage(last=False))

    def update_overlay(self) -> None:
        """Write the canvas text; it waits while it or the first image is being staged."""
        if self.first_show_pending or self.first_text_pending:
            return
        overlay = text_overlay(self.viewer)
        overlay.text = overlay_text(self.session)
        overlay.visible = bool(overlay.text)

    # ------------------------------------------------------------------ layers napari adds
    def add_opener(self, opener: Any) -> None:
        """An Embryos panel (``open_paths(paths, background=True)``) that reads large inputs
        in its worker; a reader's layer waiting for one is opened now."""
        self._openers.append(weakref.ref(opener))
        self.adopt_pending()

    def _opener(self) -> Any | None:
        for ref in self._openers:
            opener = ref()
            if opener is not None and not getattr(opener, "closed", False):
                return opener
        return None

    def adopt_pending(self) -> None:
        """Open the inputs of every reader layer that asks for it (see :data:`OPEN_KEY`)."""
        for layer in list(self.viewer.layers):
            if OPEN_KEY in layer.metadata:
                self._adopt(layer)

    def _adopt(self, layer: Any) -> None:
        """Make a reader's layer THE embryo layer and open its inputs: a handful at once,
        more in the Embryos panel's worker (left waiting until a panel exists)."""
        background = bool(layer.metadata.get(BACKGROUND_KEY))
        opener = self._opener() if background else None
        if background and opener is None:
            return
        inputs = layer.metadata.pop(OPEN_KEY)
        layer.metadata.pop(BACKGROUND_KEY, None)
        layer.metadata[SESSION_KEY] = weakref.ref(self.session)
        for old in [lay for lay in self.viewer.layers
                    if lay is not layer and lay.metadata.get(META_KEY) == "embryo"]:
            self.viewer.layers.remove(old)
        layer.name = EMBRYO_LAYER  # napari numbered it while the old one was there
        if opener is not None:
            try:
                opener.open_paths(list(inputs), background=True)
                return
            except RuntimeError:  # its Qt widget was deleted: open here
                pass
        self._open_now(list(inputs))

    def _open_now(self, inputs: list[str]) -> None:
        from napari.utils.notifications import show_warning

        try:
            self.session.open(inputs)
        except InputError as exc:
            report_error(exc)
            return
        err = self.session.take_pending_error()
        if err is not None:
            report_error(err)
        skipped = self.session.skipped
        if skipped:
            show_warning(f"{len(skipped)} file(s) skipped: " + "; ".join(skipped[:3]))

    def _layer_inserted(self, event: Any) -> None:
        layer = event.value
        if layer.metadata.get(META_KEY) in ("embryo", "gradcam"):
            self._bind_keys(layer)  # an active layer's own keys come before the viewer's
        if OPEN_KEY in layer.metadata:
            self._adopt(layer)

    # ------------------------------------------------------------------ signals and keys
    def _bind(self) -> None:
        viewer, session = self.viewer, self.session
        overlay = text_overlay(viewer)
        try:
            overlay.position = "top_left"
            overlay.font_size = 11
            overlay.color = "white"
        except Exception:  # older napari versions name these differently
            pass
        self.first_text_soon()  # the hint, until images are open
        session.current_changed.connect(lambda *_: (self.show_current(), self.update_overlay()))

        def drop_stale_gradcam() -> None:
            for layer in list(viewer.layers):
                if layer.metadata.get(META_KEY) == "gradcam":
                    viewer.layers.remove(layer)
        session.dataset_changed.connect(drop_stale_gradcam)
        for sig in (session.predictions_changed, session.settings_changed,
                    session.dataset_changed):
            sig.connect(lambda *_: self.update_overlay())
        bind_table_layer(viewer, session)  # predictions as a layer's features table
        self.keys = _key_handlers(viewer, session)
        route_csv_saves(viewer, lambda layer: layer.metadata.get(META_KEY) == "embryo",
                        session.export_all)
        self._bind_keys(viewer)
        viewer.layers.events.inserted.connect(self._layer_inserted)
        for layer in viewer.layers:
            if layer.metadata.get(META_KEY) in ("embryo", "gradcam"):
                self._bind_keys(layer)

    def _bind_keys(self, provider: Any) -> None:
        for key, func in self.keys.items():
            provider.bind_key(key, func, overwrite=True)


def _key_handlers(viewer: Any, session: AnnotatorSession) -> dict[str, Any]:
    """napari key name -> handler: PageUp/PageDown, n/p, 1-9/0, u, Shift+N, Ctrl+Z."""
    def guarded(func: Any) -> Any:
        handler = shows_input_error(func)

        def bound(_viewer: Any = None) -> None:
            handler()
        bound.__name__ = getattr(func, "__name__", "handler")
        return bound

    def step(delta: int) -> Any:
        def go() -> None:
            session.step(delta)
        go.__name__ = f"ish_step_{'next' if delta > 0 else 'previous'}"
        return guarded(go)

    keys: dict[str, Any] = {}
    for key in ("PageDown", "n"):
        keys[key] = step(+1)
    for key in ("PageUp", "p"):
        keys[key] = step(-1)

    def toggle(k: int) -> Any:
        def go() -> None:
            if k < len(session.vocabulary) and session.current_path is not None:
                session.labels.cycle_label(session.vocabulary[k])  # the term list shows it
        go.__name__ = f"ish_toggle_term_{k + 1}"
        return guarded(go)

    for k in range(10):
        keys[str((k + 1) % 10)] = toggle(k)

    def undo() -> None:
        if not session.labels.undo():
            hint(viewer, "nothing to undo")
    keys["Control-Z"] = guarded(undo)

    def next_uncertain() -> None:
        if session.model.probabilities is None:
            hint(viewer, "no predictions yet: train a model or press Predict")
        elif session.next_uncertain() is None:
            hint(viewer, "no unlabelled uncertain term left")
    keys["u"] = guarded(next_uncertain)

    def next_to_label() -> None:
        if session.model.label_order is None:
            hint(viewer, "no 'next to label' order yet: press Next to label in the Embryos panel")
        elif session.model.next_to_label() is None:
            hint(viewer, "every ranked image is labelled: press Next to label to rank again")
    keys["Shift-N"] = guarded(next_to_label)
    return keys


def forward_annotation_keys(widget: Any, session: AnnotatorSession) -> None:
    """The annotation keys act while ``widget`` (a panel's table) has focus, as on the canvas:
    a table would otherwise swallow 1-0 and n/p for its own keyboard search."""
    from qtpy.QtCore import QEvent, QObject

    class _Forward(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt API
            if event.type() != QEvent.Type.KeyPress:
                return False
            binding = binding_of(session=session)
            handler = binding.keys.get(key_name(event)) if binding is not None else None
            if handler is None:
                return False
            handler()
            return True

    widget.installEventFilter(_Forward(widget))


def stage_first_show(viewer: Any, session: AnnotatorSession) -> None:
    """:meth:`ViewerBinding.stage_first_show` of the session's binding."""
    binding = binding_of(session=session)
    if binding is not None:
        binding.stage_first_show()


def add_opener(session: AnnotatorSession, opener: Any) -> None:
    """:meth:`ViewerBinding.add_opener` of the session's binding."""
    binding = binding_of(session=session)
    if binding is not None:
        binding.add_opener(opener)
