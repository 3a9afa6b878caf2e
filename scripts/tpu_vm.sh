#!/usr/bin/env bash
# Prints (and with --run, runs) the gcloud commands that train a recipe on a Cloud TPU VM:
#   1. create the TPU VM, 2. copy this checkout to it and install the package, 3. fetch the ImageNet weights
#   from gs:// to the VM's disk, 4. launch training in the background (data and --model_dir on gs://),
#   then how to follow it and delete the VM.
#
#   scripts/tpu_vm.sh --bucket=gs://my-bucket                 # print the commands
#   scripts/tpu_vm.sh --bucket=gs://my-bucket --project=my-project --run
#
# Expects in the bucket: pascal_voc_seg/tfrecord/{train_aug,val}-* (TFRecords in the TF segmentation schema)
# and pretrained/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5 (the recipe's ImageNet weights).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/tpu_vm.sh --bucket=gs://BUCKET [options] [--run]
  --bucket=gs://BUCKET      where the data, the ImageNet weights and the model dir are (required)
  --name=NAME               TPU VM name (default: deeplab-tpu)
  --zone=ZONE               zone (default: us-central2-b, where v4 TPUs are)
  --project=PROJECT         project (default: gcloud's configured project)
  --accelerator=TYPE        accelerator type (default: v4-8)
  --version=RUNTIME         TPU software version (default: tpu-vm-tf-2.21.0-pjrt, TensorFlow 2.21 with PJRT;
                            `gcloud compute tpus tpu-vm versions list --zone=ZONE` lists what exists)
  --config=FILE             gin config (default: configs/cloud_tpu.gin)
  --data=gs://...           TFRecord directory (default: BUCKET/pascal_voc_seg/tfrecord)
  --model_dir=gs://...      model directory (default: BUCKET/runs/<config name>)
  --run                     run the commands instead of printing them
EOF
}

name=deeplab-tpu
zone=us-central2-b
project=""
accelerator=v4-8
version=tpu-vm-tf-2.21.0-pjrt
config=configs/cloud_tpu.gin
bucket=""
data=""
model_dir=""
run=0
for arg in "$@"; do
  case "$arg" in
    --bucket=*) bucket="${arg#*=}" ;;
    --name=*) name="${arg#*=}" ;;
    --zone=*) zone="${arg#*=}" ;;
    --project=*) project="${arg#*=}" ;;
    --accelerator=*) accelerator="${arg#*=}" ;;
    --version=*) version="${arg#*=}" ;;
    --config=*) config="${arg#*=}" ;;
    --data=*) data="${arg#*=}" ;;
    --model_dir=*) model_dir="${arg#*=}" ;;
    --run) run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument $arg; expected one of the options below." >&2; usage >&2; exit 2 ;;
  esac
done

if [[ "$bucket" != gs://?* ]]; then
  echo "error: --bucket: expected a gs:// bucket (e.g. --bucket=gs://my-bucket), received '${bucket}'." \
    "A TPU VM job keeps its data and model dir on Cloud Storage." >&2
  exit 2
fi
bucket="${bucket%/}"
data="${data:-$bucket/pascal_voc_seg/tfrecord}"
run_name="$(basename "$config" .gin)"
model_dir="${model_dir:-$bucket/runs/$run_name}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -f "$repo_root/$config" ]]; then
  echo "error: --config: expected a gin file of this checkout, received '$config' (no $repo_root/$config)." >&2
  exit 2
fi
if [[ "$run" == 1 ]] && ! command -v gcloud >/dev/null; then
  echo "error: --run needs the gcloud CLI (https://cloud.google.com/sdk/docs/install); it is not on PATH." >&2
  exit 2
fi

location=(--zone="$zone")
if [[ -n "$project" ]]; then
  location+=(--project="$project")
fi
archive="/tmp/deeplab-trainer-$name.tar.gz"

# One argument as a shell reads it back: as it is when plain, else single-quoted (after `--flag=`).
quote() {
  local arg="$1" squote="'\\''"
  if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+~-]+$ ]]; then
    printf '%s' "$arg"
  elif [[ "$arg" =~ ^(--[a-z_-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/$squote}"
  else
    printf "'%s'" "${arg//\'/$squote}"
  fi
}

# Prints a command so that it can be pasted into a shell; with --run, runs it and stops on the first failure.
step() {
  local title="$1" line=""
  shift
  echo "# $title"
  for arg in "$@"; do
    line+="$(quote "$arg") "
  done
  echo "${line% }"
  if [[ "$run" == 1 ]]; then
    "$@"
  fi
}

# What runs on the VM. The runtime brings TensorFlow for TPUs, so the package and tf-keras are installed
# without pulling the CPU wheel of TensorFlow in over it.
install_on_vm="mkdir -p deeplab-trainer && tar -xzf $(basename "$archive") -C deeplab-trainer && cd deeplab-trainer \
&& pip install --no-deps tf-keras~=2.21.0 && pip install gin-config absl-py tensorboard tensorflow-datasets \
cloud-tpu-client && pip install --no-deps -e . && python3 -c \"import tensorflow as tf; print(tf.__version__)\""
fetch_weights="mkdir -p deeplab-trainer/pretrained && gcloud storage cp \
$bucket/pretrained/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5 deeplab-trainer/pretrained/"
train="cd deeplab-trainer && nohup python3 -m trainer --gin_file=$config --strategy=tpu --tpu=local \
--model_dir=$model_dir --mode=train_and_eval \
--gin_bindings=\"tfrecord_dataset.train_pattern='$data/train_aug-*'\" \
--gin_bindings=\"tfrecord_dataset.eval_pattern='$data/val-*'\" > train.log 2>&1 &"

step "1. Create the TPU VM ($accelerator, $version)" \
  gcloud compute tpus tpu-vm create "$name" "${location[@]}" --accelerator-type="$accelerator" --version="$version"
step "2a. Pack this checkout (committed files at HEAD)" \
  git -C "$repo_root" archive --format=tar.gz --output="$archive" HEAD
step "2b. Copy it to the VM" \
  gcloud compute tpus tpu-vm scp "$archive" "$name:" "${location[@]}"
step "2c. Install the package on the VM" \
  gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --command="$install_on_vm"
step "3. Fetch the ImageNet weights to the VM's disk (h5py reads local files)" \
  gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --command="$fetch_weights"
step "4. Train $config in the background; logs in ~/deeplab-trainer/train.log on the VM" \
  gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --command="$train"

cat <<EOF
# Then:
#   follow the log:  gcloud compute tpus tpu-vm ssh $name ${location[*]} --command='tail -f deeplab-trainer/train.log'
#   TensorBoard:     tensorboard --logdir $model_dir
#   when done:       gcloud compute tpus tpu-vm delete $name ${location[*]} --quiet
# The log shows "Strategy tpu (TPUStrategy) with N replicas" first (N = TPU cores: 8 on a v3-8, 4 on a v4-8),
# then one line every train.steps_per_loop steps. A run restarted with the same --model_dir resumes.
EOF
