"""Every ```python block of README.md and docs/*.md runs as written.

A block runs in a fresh namespace, in a temporary working directory (the files it
writes go there), with this prelude binding the data names the examples use to
digits-sized arrays (scikit-learn's 8x8 digits; no download):

- `x_train`, `y_train`: 256 images float32 [N, 8, 8, 1] in [0, 1] and int64 labels;
- `x_val`, `y_val`: 64 held-out ones;
- `train_ds`: `tf.data` batches of (x_train, y_train), 64 per batch;
- `x`, `y`: 16 images and labels.

Nothing else is defined: a name an example uses without defining it fails the test.
"""

import glob
import importlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks():
    found = []
    for document in DOCUMENTS:
        with open(os.path.join(REPO, document), encoding="utf-8") as f:
            text = f.read()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2   # the block's first code line
            found.append(pytest.param(document, line, match.group(1),
                                      id=f"{document}:{line}"))
    return found


BLOCKS = _blocks()


def _prelude():
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int64")
    x_train, y_train = images[:256], labels[:256]
    return dict(
        x_train=x_train, y_train=y_train, x_val=images[256:320], y_val=labels[256:320],
        train_ds=tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64),
        x=images[320:336], y=labels[320:336])


def test_the_readme_has_python_examples():
    assert sum(1 for b in BLOCKS if b.values[0] == "README.md") >= 2


@pytest.mark.parametrize("document,line,code", BLOCKS)
def test_the_example_runs_as_written(document, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _prelude()
    exec(compile(code, f"{document}:{line}", "exec"), namespace)   # noqa: S102
    if "best.weights.h5" in code:   # the Python API recipe: check what it left behind
        assert os.path.exists("best.weights.h5") and os.path.exists("robust.keras")
        assert os.path.isdir(os.path.join("export", "robust", "1"))
        with open("metrics.csv") as f:
            assert "val_robust_accuracy" in f.readline()
        assert np.isfinite(namespace["best"].predict(namespace["x_val"], verbose=0)).all()


@pytest.mark.slow
def test_every_dac_tf_name_the_documents_use_exists():
    # Prose names (`dac_tf.callbacks.RobustValidation`, ...) resolve: a module part is
    # importable, the rest are attributes. Library modules are also attributes of the
    # package after a plain `import dac_tf` (checked in a fresh process below).
    names = set()
    for document in DOCUMENTS + [os.path.join("export", "README.md")]:
        with open(os.path.join(REPO, document), encoding="utf-8") as f:
            text = f.read()
        names.update(m.group(2) for m in re.finditer(
            r"(?<![-\w/.])(-m )?(dac_tf(?:\.\w+)+)", text) if not m.group(1))
    assert "dac_tf.callbacks.RobustValidation" in names
    unresolved = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            unresolved.append(name)
    assert not unresolved
    programs = {"dac_tf.train", "dac_tf.evaluate", "dac_tf.export", "dac_tf.report",
                "dac_tf.bench"}
    library = sorted({".".join(n.split(".")[:2]) for n in names} - programs)
    code = ("import dac_tf\n" + "".join(
        f"dac_tf.{n.split('.', 1)[1]}\n" for n in library))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def _anchor(heading):
    # GitHub's heading anchors: lower case, punctuation dropped, spaces become hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_documents_resolves():
    broken = []
    for document in DOCUMENTS + [os.path.join("export", "README.md")]:
        with open(os.path.join(REPO, document), encoding="utf-8") as f:
            text = f.read()
        prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)   # not code blocks
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue   # https://..., mailto:
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(document), path))
            if path and not os.path.exists(resolved):
                broken.append(f"{document}: {target}")
                continue
            if anchor:
                with open(resolved if path else os.path.join(REPO, document),
                          encoding="utf-8") as f:
                    headings = re.findall(r"^#+ (.*)$", f.read(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{document}: {target}")
    assert not broken
