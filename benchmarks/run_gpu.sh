#!/usr/bin/env bash
# The GPU benchmark suite in one go: model forward on VCM devices of 500 to ~5,500 atoms and
# one training step (bench_inference), the transport solver sweep (bench_transport), and the
# transport and model tests on the GPU backend. JSON lines and logs go to OUTDIR.
#
#     bash benchmarks/run_gpu.sh OUTDIR
#
# Each step has its own time limit (seconds, environment variables below) so that one slow
# step cannot use up a short GPU allocation; PYTHON names the interpreter.
set -uo pipefail
out=${1:-bench_gpu}
mkdir -p "$out"
: "${INFERENCE_LIMIT:=300}" "${TRANSPORT_LIMIT:=120}" "${TESTS_LIMIT:=90}" "${PYTHON:=python}"
export PYTHONUNBUFFERED=1

"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$out/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$out/env.txt" 2>&1

timeout "$INFERENCE_LIMIT" "$PYTHON" benchmarks/bench_inference.py --device gpu \
    --sizes 5300 2000 1000 500 --repeat 5 --out "$out/inference.jsonl" 2>&1 |
    tee "$out/inference.log" | grep -v '^{'
timeout "$TRANSPORT_LIMIT" "$PYTHON" benchmarks/bench_transport.py --full 2>&1 |
    tee "$out/transport.jsonl" | grep -v '^{'
timeout "$TESTS_LIMIT" "$PYTHON" -m pytest -q -x -p no:cacheprovider \
    tests/test_transport.py tests/test_transport_grad.py 2>&1 | tee "$out/tests.log" | tail -5
