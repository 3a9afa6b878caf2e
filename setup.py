"""Packaging for DeepLab Trainer."""

from setuptools import find_packages, setup

setup(
    name="deeplab-trainer",
    version="0.1.0",
    description="Distributed DeepLabV3+ semantic-segmentation trainer on TensorFlow 2 (tf_keras, gin, absl).",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*"]),
    install_requires=[
        "tensorflow~=2.21.0",
        "tf-keras~=2.21.0",
        "tensorflow-datasets",
        "absl-py",
        "gin-config",
        "tensorboard",
        "cloud-tpu-client",
        "numpy",
        "pillow",
        "psutil",
        "tqdm",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]~=2.21.0"],
        "vertex": ["cloudml-hypertune"],
        # kubernetes and pyyaml check the deploy/ manifests; cloudml-hypertune the hyperparameter-tuning report;
        # tifffile the TIFF tests.
        "dev": ["pytest", "pytest-xdist", "ruff", "kubernetes", "pyyaml", "cloudml-hypertune", "tifffile"],
        # TFLite parity on LiteRT; ONNX export and parity on ONNX Runtime.
        "export": ["ai-edge-litert", "tf2onnx", "onnxruntime"],
        # pip cannot resolve it from PyPI today (tfx 1.21 wants ml-metadata 1.21, unpublished):
        # `make tfx-env` (scripts/install_tfx_env.sh) installs it into its own environment.
        "tfx": ["tfx~=1.21.0"],
        # Multi-page and multi-band TIFF images in the converters.
        "tiff": ["tifffile"],
    },
    entry_points={
        "console_scripts": [
            "deeplab-train=trainer.cli:main",
            "deeplab-predict=trainer.serving.predict:main",
        ]
    },
)
