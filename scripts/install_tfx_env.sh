#!/usr/bin/env bash
# Builds the [tfx] environment: usage scripts/install_tfx_env.sh VENV_DIR PYTHON.
#
# `pip install tfx~=1.21.0` does not resolve from PyPI: tfx 1.21 requires ml-metadata 1.21 and
# tensorflow-data-validation 1.21, which are not published (the newest are ml-metadata 1.17.1 and
# tensorflow-data-validation 1.16.1). So TFX, ML Pipelines SDK, ML Metadata and TFDV are installed without
# dependency resolution, beside the dependencies that do resolve; TensorFlow stays 2.21, as in the main install.
# What this project uses of TFX (ImportExampleGen, Trainer, Pusher under LocalDagRunner) runs on it.
set -euo pipefail
venv="$1"
python="${2:-python3}"
cd "$(dirname "$0")/.."
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install --quiet --upgrade pip
$pip install --quiet -e '.[dev]'
$pip install --quiet "tfx-bsl==1.21.0" "tensorflow-transform==1.21.0" "tensorflow-model-analysis==0.52.0" \
  "tensorflow-serving-api<2.22,>=2.19.1" "apache-beam[gcp]<3,>=2.47" "scikit-learn==1.5.2" "keras-tuner<2,>=1.0.4" \
  "portpicker<2,>=1.3.1" "docker<8,>=7" "jinja2<4" "click<9" "pyyaml<7" "attrs<26" "grpcio<2" "packaging>=22" \
  "google-api-python-client<2,>=1.8" "google-apitools<1" "kubernetes<27" "orjson!=3.10.7" pyfarmhash six joblib
$pip install --quiet --no-deps "tfx==1.21.0" "ml-pipelines-sdk==1.21.0" "ml-metadata==1.17.1" \
  "tensorflow-data-validation==1.16.1"
"$venv/bin/python" -c "from tfx.orchestration.local.local_dag_runner import LocalDagRunner" 2>/dev/null
echo "TFX environment ready in $venv"
