"""`import dac_tf`: light, without side effects, and every README name on it.

One real process stands for a user's own program: a package `userpkg` that imports
dac_tf, run as `python -m userpkg.tool`. With tensorflow_datasets, CleverHans and
matplotlib made unimportable, importing dac_tf and reaching the lazily loaded modules
must still work (dac_tf imports them only where used), and the user's stderr must be
left alone: dac_tf's TensorFlow log filter belongs to dac_tf's own programs
(`python -m dac_tf.X`, tested in test_cli_errors.py), not to a user's `python -m`.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import dac_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A TensorFlow C++ INFO record: the log filter drops such lines.
LOG_LINE = "I0000 00:00:1795621857.771353   22407 port.cc:153] a line the user's program wrote"


@pytest.mark.slow
def test_a_users_python_m_program_imports_dac_tf_lightly_and_keeps_its_stderr(tmp_path):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import sys

        class Unavailable:
            # The optional heavy packages dac_tf must not need at import.
            names = ("tensorflow_datasets", "cleverhans", "matplotlib")

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.names:
                    raise ImportError(f"{name} is not installed here")

        sys.meta_path.insert(0, Unavailable())
        import dac_tf   # while Python imports this package, sys.argv[0] is "-m"
    """))
    (package / "tool.py").write_text(textwrap.dedent(f"""
        import os, sys
        import dac_tf
        names = [dac_tf.callbacks.RobustValidation, dac_tf.callbacks.ordered,
                 dac_tf.serving.export_saved_model, dac_tf.evaluation.EvaluationError,
                 dac_tf.protocol.unit_value, dac_tf.errors.UserError, dac_tf.DACModel,
                 dac_tf.models.build, dac_tf.optimizers.TorchSGD, dac_tf.schedules.build,
                 dac_tf.evaluation.specs.parse_attacks, dac_tf.evaluation.table.markdown_table]
        print("loaded:", sorted(m for m in ("tensorflow_datasets", "cleverhans",
                                            "matplotlib") if m in sys.modules))
        sys.stdout.flush()
        os.write(2, {(LOG_LINE + chr(10)).encode()!r})
    """))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "DAC_TF_TF_LOGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), REPO])
    run = subprocess.run([sys.executable, "-m", "userpkg.tool"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded: []" in run.stdout
    assert LOG_LINE in run.stderr.splitlines()


def test_the_program_detection_reads_python_m_only():
    find = dac_tf._program_module   # pylint: disable=protected-access
    assert find(["python", "-m", "dac_tf.train", "--epochs=1"]) == "dac_tf.train"
    assert find(["python", "-X", "importtime", "-W", "error", "-m", "dac_tf.export"]) == \
        "dac_tf.export"
    assert find(["python", "-Bmdac_tf.evaluate"]) == "dac_tf.evaluate"
    assert find(["python", "-m", "userpkg.tool"]) == "userpkg.tool"
    assert find(["python", "script.py", "-m", "dac_tf.train"]) is None
    assert find(["python", "-c", "import dac_tf", "-m", "dac_tf.train"]) is None
    assert find(["python"]) is None


def test_the_evaluation_library_is_reachable_from_the_package():
    # README: dac_tf.evaluation.runner.evaluate_model(...), dac_tf.evaluation.loading...
    assert callable(dac_tf.evaluation.runner.evaluate_model)
    assert callable(dac_tf.evaluation.loading.load_logits_fn)
    assert callable(dac_tf.evaluation.table.markdown_table)


def test_dir_lists_the_lazy_modules():
    assert {"callbacks", "serving", "evaluation", "protocol", "DACModel"} <= set(dir(dac_tf))
    try:
        dac_tf.no_such_name   # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
