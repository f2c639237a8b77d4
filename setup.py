"""dac_tf: DAC (Decrease Adversarial Certainty) adversarial training for TensorFlow/Keras."""

import setuptools

setuptools.setup(
    name="dac_tf",
    version="0.1.0",
    description=(
        "DAC (Decrease Adversarial Certainty) adversarial training for "
        "TensorFlow/Keras: AT, TRADES and MART with the DAC step, CLI, "
        "evaluation and SavedModel export."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["dac_tf", "dac_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        # GPU users: `pip install "tensorflow[and-cuda]>=2.16,<2.22"` first.
        "tensorflow>=2.16,<2.22",
        "keras>=3.5,<4",
        "tensorflow-datasets>=4.9",
        # tfds (4.9.10) imports `importlib_resources` on its download-and-prepare path
        # (DatasetBuilder.code_path) but declares it only for Python < 3.9, so without
        # this the first download of cifar10/cifar100/svhn dies with an ImportError.
        "importlib_resources>=5.0",
        # tfds' svhn_cropped builder reads the downloaded .mat files with scipy.io;
        # tfds lists scipy only under its optional "svhn" extra.
        "scipy>=1.9",
        "cleverhans>=4.0",
        "absl-py>=1.0",
        "tensorboard>=2.16",
        "numpy>=1.23",
        # digits dataset (ships with scikit-learn: no download) and plots.
        "scikit-learn>=1.2",
        "matplotlib>=3.6",
        "pillow>=9.0",
    ],
    extras_require={
        # pyyaml: tests/test_cluster_docs.py reads the launch examples' YAML.
        "test": ["pytest>=7", "hypothesis>=6", "pyyaml>=5"],
    },
)
