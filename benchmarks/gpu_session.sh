#!/usr/bin/env bash
# Every GPU measurement issue 5 still lacks, in one run that fits a 10-minute call on an H100:
#
#   bash benchmarks/gpu_session.sh OUT_DIR [DATA_ROOT]      # DATA_ROOT holds MNIST/raw (default ../shared/datasets)
#
# Needs the requirements installed (on a lent machine without jsonargparse: the wheels and MNIST as the developers'
# guide says). PYTHON picks the interpreter (default python3); BATCHES/WARMUP shrink the timing for a smoke test.
#
# 1. the gpu-marked tests (the CUDA-graph sampler equals the eager one, also under bf16 autocast);
# 2. throughput.py, MNIST-shaped, bf16-mixed: backprop vs NoProp-DT (loop joint/per_block, vmap), each with
#    channels_last and compile_blocks, CT/FM with and without the CUDA-graph sampler at the configs' eval batch;
# 3. one real MNIST epoch of NoProp-FM and NoProp-CT with their configs (eval_batch_size 1000, CUDA graphs on): the
#    1000-step test over the 10,000 test images, in seconds;
# 4. grouped_conv.py: ten separate convolutions against the one grouped convolution the vmap mode runs.
# Each step writes its table to OUT_DIR and goes on if the one before failed; throughput.py writes each case's line
# as soon as it is measured, so a group cut by its time limit keeps what it measured. Record the tables in RESULTS.md.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR [DATA_ROOT]}
data=${2:-../shared/datasets}
mkdir -p "$out"
out=$(realpath "$out")
data=$(realpath -m "$data")
py=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1

timeout 90 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"

tp() {  # each group gets its own time limit; its rows are on disk as they are measured
    timeout "$1" "$py" benchmarks/throughput.py --batches "${BATCHES:-30}" --warmup "${WARMUP:-10}" --inference-batch 1000 \
        --out "$out/throughput.jsonl" --cases "${@:2}" 2>&1 | grep -E '^\||^round|synthetic|Error|failed' | tee -a "$out/throughput.txt"
}
tp 280 backprop "noprop_dt joint" "noprop_dt per_block" "noprop_dt vmap" "backprop channels_last" \
    "noprop_dt joint channels_last" "noprop_dt per_block channels_last" noprop_ct noprop_fm \
    "noprop_ct eager sampler" "noprop_fm eager sampler"
tp 130 backprop "backprop compiled" "noprop_dt joint compiled"

for config in noprop_fm noprop_ct; do
    timeout 75 "$py" benchmarks/epochs.py --config "configs/$config.yaml" --epochs 1 --data-root "$data" \
        --out "$out/epochs.jsonl" 2>&1 | grep -E '^\||Error' | tee -a "$out/epochs.txt"
done

timeout 60 "$py" benchmarks/grouped_conv.py --repeats 20 2>&1 | tee "$out/grouped_conv.txt"
