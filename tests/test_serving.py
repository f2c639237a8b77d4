"""`dac_tf.serving` (and its program `dac_tf.export`): the round trip, checked outside
dac_tf.

The export of a fabricated training run (the layout `python -m dac_tf.train` writes) is
loaded by a fresh Python that imports only TensorFlow, by the real `saved_model_cli` and
by `keras.layers.TFSMLayer`, and attacked with CleverHans PGD; each is compared with the
in-memory Keras model. Versioning, atomicity and bad input are checked through the CLI.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

import clitools
from dac_tf import checkpoints
from dac_tf import fileio
from dac_tf import export
from dac_tf import models
from dac_tf import scratch
from dac_tf import serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
NUM_CLASSES = 10
EPSILON = 8 / 255
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
# Same ops, traced once more: differences are float rounding only.
ATOL = 1e-4


# ------------------------------------------------------------------------ fixtures
def _model(seed):
    """A small_cnn with non-trivial BatchNorm statistics (inference mode must use them).

    Larger kernels and smaller variances than at initialisation make the logits depend
    on the input enough for a small PGD to flip some predictions.
    """
    keras.utils.set_random_seed(seed)
    model = models.build("small_cnn", num_classes=NUM_CLASSES, input_shape=SHAPE,
                         normalization=None)
    rng = np.random.default_rng(seed)
    for v in model.variables:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.2, 0.5, v.shape).astype(np.float32))
        elif "moving_mean" in v.path:
            v.assign(rng.normal(0, 0.05, v.shape).astype(np.float32))
        elif "kernel" in v.path:
            v.assign(v * 2.0)
    return model


def _save_checkpoint(model, directory):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), directory,
                                         max_to_keep=1)
    manager.save()


def _config(**overrides):
    config = dict(arch="small_cnn", arch_kwargs={}, num_classes=NUM_CLASSES,
                  input_shape=list(SHAPE), normalization="none", dataset="digits",
                  class_names=[f"digit {i}" for i in range(NUM_CLASSES)], method="at",
                  use_dac=True, epsilon=EPSILON, step_size=2 / 255, num_steps=5,
                  norm="linf", lr=0.05, batch_size=64, epochs=3, seed=0)
    config.update(overrides)
    return config


def _make_run(path, best, last=None, **config):
    os.makedirs(path)
    fileio.write_json_atomic(checkpoints.config_path(str(path)), _config(**config))
    _save_checkpoint(best, os.path.join(path, checkpoints.BEST_DIR))
    _save_checkpoint(last or best, os.path.join(path, checkpoints.LAST_DIR))
    return str(path)


def _run_cli(*args):
    return subprocess.Popen([sys.executable, "-m", "dac_tf.export", *args], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run dir whose best and last checkpoints differ, with an evaluation JSON."""
    root = tmp_path_factory.mktemp("export")
    best, last = _model(1), _model(2)
    model_dir = _make_run(root / "run", best, last)
    evaluation = {"model": "run (best)", "accuracy": {"clean": 0.75, "pgd20": 0.5},
                  "epsilon": EPSILON, "epsilon_255": 8.0}
    fileio.write_json_atomic(os.path.join(model_dir, "eval_best.json"), evaluation)
    return dict(root=root, model_dir=model_dir, best=best, last=last, evaluation=evaluation)


@pytest.fixture(scope="module")
def exported(run):
    """The run exported through the program's `main`, in this process: export/NAME/1.
    (`python -m dac_tf.export` as a process: the versions test below and
    tests/test_paper_path.py, with --runslow.)"""
    base = str(run["root"] / "export" / "digits_at")
    result = clitools.run_main(export, [f"--model_dir={run['model_dir']}",
                                        f"--export_dir={base}"])
    code, out, err = result.code, result.stdout, result.stderr
    assert code == 0, err[-3000:]
    path = out.strip().splitlines()[-1]
    assert path == os.path.join(base, "1")
    return dict(run, base=base, path=path)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(16, *SHAPE), dtype=np.uint8)
    return pixels, pixels.astype(np.float32) / 255.0


def _expected(model, floats):
    logits = model(floats, training=False).numpy()
    return dict(logits=logits, probabilities=tf.nn.softmax(logits).numpy(),
                classes=logits.argmax(-1))


def _assert_outputs_match(got, expected):
    np.testing.assert_allclose(got["logits"], expected["logits"], atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=ATOL)
    assert got["classes"].dtype == np.int64
    np.testing.assert_array_equal(got["classes"], expected["classes"])


def _tree_snapshot(path):
    snap = {}
    for root, _, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            with open(file, "rb") as f:
                snap[os.path.relpath(file, path)] = (os.stat(file).st_mtime_ns,
                                                     hashlib.sha256(f.read()).hexdigest())
    return snap


# ------------------------------------------------------------------------ round trip
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    sys.modules["dac_tf"] = None  # any `import dac_tf` now raises ImportError
    import numpy as np
    import tensorflow as tf

    path, pixels_file, out_file = sys.argv[1:]
    pixels = np.load(pixels_file)
    loaded = tf.saved_model.load(path)
    encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
    feeds = {"serving_default": tf.constant(pixels.astype(np.float32) / 255.0),
             "serving_uint8": tf.constant(pixels), "serving_bytes": encoded}
    arrays = {}
    for name, images in feeds.items():
        for key, value in loaded.signatures[name](images=images).items():
            arrays[f"{name}/{key}"] = value.numpy()
    arrays["metadata"] = np.array(loaded.metadata().numpy().decode("utf-8"))
    arrays["dac_tf_imported"] = np.array(
        any(m == "dac_tf" or m.startswith("dac_tf.") for m in sys.modules
            if sys.modules[m] is not None))
    np.savez(out_file, **arrays)
""")


@pytest.mark.slow
def test_fresh_tensorflow_process_serves_every_signature(exported, inputs, tmp_path):
    pixels, floats = inputs
    np.save(tmp_path / "pixels.npy", pixels)
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, exported["path"],
                           str(tmp_path / "pixels.npy"), str(tmp_path / "out.npz")],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert not out["dac_tf_imported"]
    expected = _expected(exported["best"], floats)
    for name in serving.SIGNATURES:
        _assert_outputs_match({k: out[f"{name}/{k}"] for k in serving.OUTPUT_NAMES}, expected)
    assert json.loads(str(out["metadata"]))["checkpoint"] == "best"


@pytest.mark.slow
def test_saved_model_cli_shows_and_runs_the_signatures(exported, inputs, tmp_path):
    cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable),
                                                          "saved_model_cli")
    assert os.path.isfile(cli), "saved_model_cli not found"
    np.save(tmp_path / "images.npy", inputs[1])
    show = subprocess.Popen([cli, "show", "--all", "--dir", exported["path"]], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen([cli, "run", "--dir", exported["path"], "--tag_set", "serve",
                            "--signature_def", "serving_default", "--inputs",
                            f"images={tmp_path / 'images.npy'}", "--outdir",
                            str(tmp_path / "out")], env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    shown, err = show.communicate(timeout=240)
    assert show.returncode == 0, err[-3000:]
    sections = {block.split("']", 1)[0]: block for block in shown.split("signature_def['")[1:]}
    for name, dtype, shape in [("serving_default", "DT_FLOAT", "(-1, 8, 8, 1)"),
                               ("serving_uint8", "DT_UINT8", "(-1, 8, 8, 1)"),
                               ("serving_bytes", "DT_STRING", "(-1)")]:
        block = sections[name]
        inputs_part, outputs_part = block.split("output(s):", 1)
        assert "inputs['images']" in inputs_part and f"dtype: {dtype}" in inputs_part
        assert f"shape: {shape}" in inputs_part
        for output, out_dtype in [("logits", "DT_FLOAT"), ("probabilities", "DT_FLOAT"),
                                  ("classes", "DT_INT64")]:
            part = outputs_part.split(f"outputs['{output}']", 1)[1]
            assert part.split("dtype: ", 1)[1].startswith(out_dtype), (name, output)
    _, err = run.communicate(timeout=240)
    assert run.returncode == 0, err[-3000:]
    got = {k: np.load(tmp_path / "out" / f"{k}.npy") for k in serving.OUTPUT_NAMES}
    _assert_outputs_match(got, _expected(exported["best"], inputs[1]))


def test_pgd_on_the_loaded_model_equals_pgd_on_the_keras_model(exported, inputs):
    loaded = tf.saved_model.load(exported["path"])
    serve = loaded.signatures["serving_default"]
    model = exported["best"]
    x = tf.constant(inputs[1])
    y = tf.constant(model(x, training=False).numpy().argmax(-1))   # clean accuracy 1

    def attack(model_fn):
        adv = projected_gradient_descent(model_fn, x, eps=0.1, eps_iter=0.02, nb_iter=5,
                                         norm=np.inf, clip_min=0.0, clip_max=1.0, y=y,
                                         rand_init=False, sanity_checks=False)
        correct = model_fn(adv).numpy().argmax(-1) == y.numpy()
        return adv.numpy(), correct

    adv_keras, correct_keras = attack(lambda images: model(images, training=False))
    adv_loaded, correct_loaded = attack(lambda images: serve(images=images)["logits"])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(serve(images=x)["logits"][:, 0])
    assert np.abs(tape.gradient(loss, x).numpy()).sum() > 0
    assert np.abs(adv_keras - inputs[1]).max() > 0.05        # the attack moved the images
    assert correct_keras.mean() < 1.0                        # ... and flipped some
    np.testing.assert_array_equal(correct_loaded, correct_keras)
    # A gradient component within rounding of 0 may take the other sign: allow a few.
    differing = np.abs(adv_loaded - adv_keras) > 1e-5
    assert differing.mean() < 0.01, differing.mean()


def test_tfsm_layer_wraps_the_export_in_a_keras_model(exported, inputs):
    layer = keras.layers.TFSMLayer(exported["path"], call_endpoint="serving_default")
    images = keras.Input(SHAPE)
    wrapped = keras.Model(images, layer(images)["logits"])
    got = wrapped.predict(inputs[1], verbose=0)
    np.testing.assert_allclose(got, _expected(exported["best"], inputs[1])["logits"],
                               atol=ATOL, rtol=ATOL)
    assert len(layer.weights) == len(exported["best"].variables)


def test_metadata_file_and_function_agree(exported):
    with open(os.path.join(exported["path"], "assets.extra", "dac_tf_metadata.json"),
              encoding="utf-8") as f:
        meta = json.load(f)
    loaded = tf.saved_model.load(exported["path"])
    assert json.loads(loaded.metadata().numpy().decode("utf-8")) == meta
    assert serving.read_metadata(exported["base"]) == meta          # base -> highest version
    with open(checkpoints.config_path(exported["model_dir"]), encoding="utf-8") as f:
        config = json.load(f)
    assert meta["training_config"] == config
    assert meta["dataset"] == "digits" and meta["class_names"] == config["class_names"]
    assert meta["input_shape"] == list(SHAPE) and meta["num_classes"] == NUM_CLASSES
    assert meta["method"] == "at" and meta["use_dac"] is True and meta["norm"] == "linf"
    assert meta["epsilon"] == pytest.approx(8 / 255)
    assert meta["epsilon_255"] == pytest.approx(8.0)
    assert meta["checkpoint"] == "best"
    assert meta["checkpoint_path"] == os.path.abspath(
        checkpoints.checkpoint_path(exported["model_dir"], "best"))
    assert meta["evaluation"] == exported["evaluation"]
    assert meta["dac_tf_version"] and meta["export_time"].endswith("Z")
    assert sorted(meta["signatures"]) == sorted(serving.SIGNATURES)


def test_wrong_dtype_shape_and_image_size_are_tensorflow_errors(exported):
    serve = tf.saved_model.load(exported["path"]).signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float"):
        serve["serving_default"](images=tf.zeros((2, *SHAPE), tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8"):
        serve["serving_uint8"](images=tf.zeros((2, *SHAPE), tf.float32))
    with pytest.raises(TypeError, match="Can not cast"):      # numpy, checked on binding
        serve["serving_default"](images=np.zeros((2, 9, 9, 1), np.float32))
    # A tensor is not checked on binding: it reaches the graph, whose first op checks it
    # (what TF Serving requests meet too).
    for name, dtype in [("serving_default", tf.float32), ("serving_uint8", tf.uint8)]:
        for shape in [(2, 8, 8, 3), (2, 12, 12, 1), (8, 8, 1)]:
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"is not compatible with expected shape \[\?,8,8,1\]"):
                serve[name](images=tf.zeros(shape, dtype))
    png = tf.io.encode_png(tf.zeros((9, 8, 1), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be 8x8 pixels"):
        serve["serving_bytes"](images=tf.stack([png]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        serve["serving_bytes"](images=tf.constant([b"not an image"]))


def test_serving_default_refuses_floats_outside_0_1_as_a_client_sees_it(exported, inputs):
    # x*255, negative values and NaN would otherwise get a confident answer for an input
    # the model never saw. The refusal is an op error in the graph: what TF Serving
    # returns to a REST or gRPC client (HTTP 400 / INVALID_ARGUMENT, with the message).
    _, floats = inputs
    serve = tf.saved_model.load(exported["path"]).signatures["serving_default"]
    message = r"serving_default takes float32 images in \[0, 1\]: divide 0..255 pixels"
    nan = floats.copy()
    nan[3, 2, 2, 0] = np.nan
    for bad in (floats * 255, floats - 0.25, floats + 1e-5 * (floats == 1), nan):
        bad = bad.astype(np.float32)
        if not np.any((bad < 0) | (bad > 1) | np.isnan(bad)):
            continue    # (no pixel was exactly 1)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(images=tf.constant(bad))
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serving.roundtrip.run_like_tf_serving(exported["path"], {"serving_default": bad})
    # The box itself is valid, through both loaders: 0 and 1 exactly, and a float32
    # rounding step beyond them (an attack's interpolation between [0, 1] images).
    edges = np.stack([np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32),
                      np.full(SHAPE, np.nextafter(np.float32(1), np.float32(2))),
                      np.full(SHAPE, -np.float32(1e-7))])
    expected = _expected(exported["best"], edges)
    _assert_outputs_match({k: v.numpy() for k, v in serve(images=tf.constant(edges)).items()},
                          expected)
    _assert_outputs_match(serving.roundtrip.run_like_tf_serving(
        exported["path"], {"serving_default": edges})["serving_default"], expected)
    assert "outside [0, 1]" in serving.read_metadata(exported["path"])["signatures"][
        "serving_default"]


def test_export_readme_claims_hold_for_empty_batches_and_numpy_casts(exported):
    # export/README.md: an empty batch returns empty outputs (it once said it fails on
    # CPU); numpy arrays are cast to the signature's dtype silently (0.7 -> 0, 300 -> 44).
    loaded = tf.saved_model.load(exported["path"])
    empties = {"serving_default": tf.zeros((0, *SHAPE), tf.float32),
               "serving_uint8": tf.zeros((0, *SHAPE), tf.uint8),
               "serving_bytes": tf.zeros((0,), tf.string)}
    for name, empty in empties.items():
        out = loaded.signatures[name](images=empty)
        assert out["logits"].shape == (0, NUM_CLASSES) and out["classes"].shape == (0,)
        assert out["probabilities"].shape == (0, NUM_CLASSES)
    out = serving.roundtrip.run_like_tf_serving(exported["path"], {
        "serving_default": np.zeros((0, *SHAPE), np.float32)})["serving_default"]
    assert out["logits"].shape == (0, NUM_CLASSES)
    uint8 = loaded.signatures["serving_uint8"]
    logits = lambda images: uint8(images=images)["logits"].numpy()   # noqa: E731
    np.testing.assert_array_equal(logits(np.full((1, *SHAPE), 0.7, np.float32)),
                                  logits(tf.zeros((1, *SHAPE), tf.uint8)))
    np.testing.assert_array_equal(logits(np.full((1, *SHAPE), 300, np.int64)),
                                  logits(tf.fill((1, *SHAPE), tf.constant(44, tf.uint8))))
    with open(os.path.join(REPO, "export", "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert "An empty batch fails" not in text
    assert "serving_default takes float32 images in [0, 1]" in text


# ------------------------------------------------------------------------ versions
@pytest.mark.slow
def test_versions_never_overwrite_silently_and_are_replaced_atomically(exported, inputs,
                                                                       tmp_path, monkeypatch):
    base = str(tmp_path / "digits_at")
    shutil.copytree(exported["base"], base)
    v1 = os.path.join(base, "1")
    before = _tree_snapshot(v1)
    # The CLI refuses an existing version before loading anything.
    refused = _run_cli(f"--model_dir={exported['model_dir']}", f"--export_dir={base}",
                       "--version=1", "--checkpoint=last")
    v2 = serving.export_run(exported["model_dir"], base, checkpoint="last")
    assert v2 == os.path.join(base, "2")
    code, _, err = _finish(refused)
    assert code != 0 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: version 1 already exists in {base}; pass --overwrite to replace it"), err
    assert _tree_snapshot(v1) == before
    with pytest.raises(serving.ExportError, match="already exists"):
        serving.export_saved_model(exported["last"], base, version=1)
    assert _tree_snapshot(v1) == before

    # A failure after the SavedModel is written (here: the round-trip check) leaves
    # neither a new version nor a temporary directory behind.
    def failing_verify(*args):
        raise serving.ExportError("boom")

    with monkeypatch.context() as m:
        m.setattr(serving.roundtrip, "verify", failing_verify)
        with pytest.raises(serving.ExportError, match="boom"):
            serving.export_saved_model(exported["last"], base, version=1, overwrite=True)
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert _tree_snapshot(v1) == before

    path = serving.export_saved_model(exported["last"], base, version=1, overwrite=True,
                                      metadata={"checkpoint": "last"})
    assert path == v1 and sorted(os.listdir(base)) == ["1", "2"]
    assert _tree_snapshot(v1) != before
    assert serving.read_metadata(v1)["checkpoint"] == "last"
    expected = _expected(exported["last"], inputs[1])
    for version in (v1, v2):
        got = tf.saved_model.load(version).signatures["serving_default"](
            images=tf.constant(inputs[1]))
        _assert_outputs_match({k: v.numpy() for k, v in got.items()}, expected)
    assert serving.read_metadata(v2)["checkpoint"] == "last"
    assert serving.next_version(base) == 3


def test_hidden_folders_of_gone_exports_are_cleaned_and_a_live_ones_kept(tmp_path):
    """The next export deletes the `.tmp-export-*` folder of an export that is gone and
    puts back the version a killed `--overwrite` moved aside (`.old-V-*`); the folders
    of a live export (this process) are left alone."""
    base = tmp_path / "export"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{dead.pid}-x-{scratch.host_id()}-{int(time.time())}-abcd1234"
    live_writing = base / scratch.scratch_name(".tmp-export")
    live_aside = base / scratch.scratch_name(".old-3")
    for folder in (base / "2", base / f".tmp-export-{owner}", base / f".old-1-{owner}" / "1",
                   base / f".old-2-{owner}" / "2", live_writing, live_aside / "3"):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"x")
    serving.versions.remove_dead_hidden_dirs(str(base))
    assert sorted(os.listdir(base)) == sorted(["1", "2", live_writing.name, live_aside.name])
    assert os.listdir(base / "1") == ["saved_model.pb"]          # version 1 moved back


@pytest.mark.parametrize("value,expected", [(None, None), ("", None), ("7", 7), (0, 0),
                                            ("003", 3)])
def test_parse_version_accepts_non_negative_integers(value, expected):
    assert serving.parse_version(value) == expected


@pytest.mark.parametrize("value", ["-1", -1, "1.5", 1.5, "v2", "two", True, "٣"])
def test_parse_version_rejects_anything_else(value):
    with pytest.raises(serving.ExportError, match="non-negative integer"):
        serving.parse_version(value)


# ------------------------------------------------------------------------ bad input
def test_bad_runs_are_one_line_cli_errors(run, tmp_path):
    no_checkpoint = str(tmp_path / "no_checkpoint")
    os.makedirs(no_checkpoint)
    fileio.write_json_atomic(checkpoints.config_path(no_checkpoint), _config())
    # config.json says 5 classes; the checkpoint holds a 10-class network.
    wrong_arch = _make_run(tmp_path / "wrong_arch", run["best"], num_classes=5,
                           class_names=list("abcde"))
    not_a_run = str(tmp_path / "not_a_run")
    os.makedirs(not_a_run)
    base = str(tmp_path / "export" / "bad")
    cases = {
        "no such checkpoint": (no_checkpoint, "no 'best' checkpoint"),
        "wrong architecture": (wrong_arch, "does not match the model"),
        "not a run": (not_a_run, "is not a dac_tf training run"),
        "negative version": (run["model_dir"], "--version='-1' must be a non-negative"),
    }
    for name, (model_dir, message) in cases.items():
        extra = ["--version=-1"] if name == "negative version" else []
        # In this process, as the `exported` fixture.
        result = clitools.run_main(export, [f"--model_dir={model_dir}",
                                            f"--export_dir={base}", *extra])
        code, out, err = result.code, result.stdout, result.stderr
        assert code == 2, (name, err[-2000:])
        assert "Traceback" not in err, name
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (name, err[-2000:])
        assert out == ""
    assert not os.path.exists(base)     # every error came before anything was written


def test_library_errors_are_one_line_export_errors(run, tmp_path):
    unknown_arch = _make_run(tmp_path / "unknown_arch", run["best"], arch="resnet9000")
    no_arch = _make_run(tmp_path / "no_arch", run["best"])
    config = _config()
    del config["arch"]
    fileio.write_json_atomic(checkpoints.config_path(no_arch), config)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    base = str(tmp_path / "export" / "x")
    cases = [
        (dict(model_dir=unknown_arch), "Unknown architecture 'resnet9000'"),
        (dict(model_dir=no_arch), "lacks the key 'arch'"),
        (dict(export_base=str(a_file)), "exists and is not a directory"),
        (dict(eval_json=str(tmp_path / "missing.json")), "no such file"),
        (dict(model_dir=str(tmp_path / "nowhere")), "no such directory"),
        (dict(checkpoint="final"), "is not valid; use one of best, last"),
    ]
    for kwargs, message in cases:
        kwargs = dict(dict(model_dir=run["model_dir"], export_base=base), **kwargs)
        with pytest.raises((serving.ExportError, checkpoints.CheckpointError)) as info:
            serving.export_run(kwargs.pop("model_dir"), kwargs.pop("export_base"), **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not os.path.exists(base)
    with pytest.raises(serving.ExportError, match="one image input|keras.Model"):
        serving.export_saved_model(lambda x: x, base)
