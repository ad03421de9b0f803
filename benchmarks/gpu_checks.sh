#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (run from the repository
# root; results under $OUT, default ./gpu-out): the CUDA tests, then the worker's per-method
# throughput and the CAM, propagation and perturbation benchmarks against the reference
# libraries on CUDA. Each step has its own time limit, so a slow one cannot starve the rest.
#
# STEPS="tests throughput" runs only those steps.
# The machine's Python must have torch + torchvision; the project's other dependencies can
# travel as wheels in .whl/ (installed into /tmp/site when present).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

STEPS=${STEPS:-tests throughput cam propagation perturbation}
step() {  # step NAME SECONDS COMMAND...: run with a limit, output to $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  echo "== $name (limit ${limit}s)"
  local started=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   exit $? after $((SECONDS - started)) s"
  tail -n 4 "$OUT/$name.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step tests 90 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" \
  tests/worker/test_scheduler_cuda.py tests/explainers/perturbation/test_perturbation_gpu.py \
  tests/explainers/metrics/test_metric_cuda.py tests/zoo/test_demo.py \
  tests/explainers/perturbation/test_perturbation_engine.py tests/zoo/test_cuda_models.py \
  tests/explainers/cam/test_layouts.py tests/explainers/propagation/test_lrp.py
step throughput 130 python3 -m benchmarks.throughput --model resnet50 --device cuda \
  --jobs 16 --budget-s 6 --json "$OUT/throughput.json"
step cam 75 python3 -m benchmarks.cam --models resnet50 --batches 1 32 --device cuda
step propagation 50 python3 -m benchmarks.propagation --models resnet50 --device cuda
step perturbation 90 python3 -m benchmarks.perturbation --models resnet50 --device cuda \
  --skip fmo --demo-scenes 0 --repeats 2
