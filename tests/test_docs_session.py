"""The user guide's scripting example runs as written (with random weights: ImageNet weights
cannot be downloaded here), so the documented session API cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "user-guide.md"


def _session_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if "AnnotatorSession()" in b]
    assert len(found) == 1, "the user guide should have one session scripting example"
    return found[0]


def test_user_guide_session_example_runs(tmp_path, monkeypatch, capsys):
    code = _session_example()
    assert 'weights="imagenet"' in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(code.replace('weights="imagenet"', 'weights="random"'), str(DOC), "exec"),
         namespace)
    session = namespace["session"]
    term = namespace["term"]
    assert session.labels.labels_for(0)[term] == 1  # the correction was stored
    assert session.model.bundle is not None and session.model.probabilities.shape == (24, len(
        session.model.terms))
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == session.model.probabilities_for(0)[term] and 0.0 <= printed <= 1.0
    session.close()
