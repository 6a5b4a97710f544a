#!/usr/bin/env bash
# Every GPU timing issue 5 still lacks, in one run that fits a 10-minute call on an H100:
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# Needs the requirements installed; a lent machine lacks only jsonargparse, whose wheels this installs from .whl/
# (fill it here with `bash benchmarks/gpu_wheels.sh`, and carry [".whl"] with the device call). PYTHON picks the
# interpreter (default python3); BATCHES/WARMUP shrink the timing for a smoke test.
#
# RUN_GROUPS (default "capture fused", at most 8.5 minutes; "layout compiled vmap" in a second call, at most 8.7
# minutes by its time limits; "budget" alone, at most BUDGET_MINUTES + 1.5) picks what runs. Not
# GROUPS: bash keeps that name for the user's group ids and silently drops an assignment to it.
# 0. always but in a budget call: the gpu-marked tests (a regression check: they passed on an H100, RESULTS.md section 14);
# capture: capture_step's gpu-marked tests (captured inference, the whole step's CUDA graph), throughput eager against
#    captured (backprop, NoProp-DT; captured = the step replayed from its CUDA graph), and step_overhead.py's host cost
#    of a batch on the GPU (its last line: captured/eager: R);
# 2. throughput.py, MNIST-shaped synthetic data, bf16-mixed, in three groups, the most wanted first:
# fused: backprop against NoProp-DT (loop joint/per_block, vmap), and the same with fused AdamW;
# layout: channels_last on backprop and DT; CT/FM with and without the CUDA-graph sampler at the configs' eval batch;
# compiled: compile_blocks on backprop and DT;
# vmap: NoProp-DT's blocks as one vmapped call, eager and captured, against the loop.
# throughput.py writes each case's line to OUT_DIR/throughput.jsonl as soon as it is measured, so a group cut by
# its time limit keeps what it measured. Record the tables in RESULTS.md.
#
# budget (issue 15's full budget, in a call of its own): NoProp-DT one-hot at Table 3's settings, seed 0, up to 100
#    epochs, as many whole epochs as BUDGET_MINUTES (default 6; at most 7.5 in a 10-minute call) of training allow,
#    then 5 inference runs on the full test set (the MNIST copy in data/), without checkpoints. BUDGET_ARGS are its
#    CLI options: the fastest mode the capture and vmap groups measured (default: --model.capture_step true; eager is
#    BUDGET_ARGS="--model.capture_step false", as an empty value means the default; the modes give the same
#    updates). Its epoch lines (budget.txt, with accuracy.py's exit status) give the epoch time;
#    OUT_DIR/accuracy/results.jsonl the accuracy, written only once the test runs end (the call's time limit is
#    BUDGET_MINUTES + 1.5 minutes). A 100-epoch checkpoint (229 MiB with AdamW's state) cannot be carried back, so
#    the run must fit one call: 100 epochs in 6 minutes is 3.6 s an epoch. BUDGET_EPOCHS and BUDGET_EXTRA
#    (accuracy.py options, e.g. "--train-size 256 --test-size 256 --inference-runs 1") shrink it for a smoke test.
set -u
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
out=$(realpath "$out")
py=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 1

groups=" ${RUN_GROUPS:-capture fused} "  # a second call can take the rest: RUN_GROUPS="layout compiled vmap"
echo "gpu_session.sh groups:$groups" | tee "$out/groups.txt"
has() { [[ $groups == *" $1 "* ]]; }
tp() {  # each group gets its own time limit; its rows are on disk as they are measured
    timeout "$1" "$py" benchmarks/throughput.py --batches "${BATCHES:-30}" --warmup "${WARMUP:-10}" --inference-batch 1000 \
        --out "$out/throughput.jsonl" --cases "${@:2}" 2>&1 | grep --line-buffered -E '^\||^round|synthetic|Error|failed' | tee -a "$out/throughput.txt"
}
# A lent machine has no jsonargparse: install the wheels carried in .whl/ (benchmarks/gpu_wheels.sh; carry [".whl"]).
# --no-deps: its one other dependency, PyYAML, comes with lightning.
if ! "$py" -c "import jsonargparse" 2>/dev/null; then
    "$py" -m pip install --quiet --no-index --no-deps .whl/jsonargparse-*.whl .whl/docstring_parser-*.whl \
        .whl/typeshed_client-*.whl 2>&1 | tail -3 | tee "$out/install.txt"
    for module in importlib_resources typing_extensions; do
        "$py" -c "import $module" 2>/dev/null || "$py" -m pip install --quiet --no-index --no-deps .whl/$module-*.whl
    done
    "$py" -c "import jsonargparse, lightning_noprop.cli" 2>&1 | tail -3 | tee -a "$out/install.txt"
fi
[[ $groups == " budget " ]] ||  # a budget call spends its time on the run
    timeout 60 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
if has capture; then  # issue 15: capture_step's tests, eager against captured, the host cost on a compute-free model
    # Only the gpu-marked ones: the equality tests train on the CPU (tests/helpers.py) and ran in CI.
    timeout 90 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/execution/test_capture.py 2>&1 | tail -5 | tee -a "$out/gpu_tests.txt"
    # The whole step as one CUDA graph (StepGraph): equal to eager in float64 (DT first), bf16-mixed to its tolerance.
    timeout 150 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/execution/test_step_graph.py \
        2>&1 | tail -25 | tee -a "$out/gpu_tests.txt"
    # backprop's captured chain compiles for minutes (one graph of 10 blocks): last, so the DT rows come first.
    tp 150 backprop "noprop_dt joint" "noprop_dt joint captured" "backprop captured"
    timeout 60 "$py" benchmarks/step_overhead.py --rounds 1 --batches 60 --accelerator "${ACCELERATOR:-gpu}" \
        --cases "NoProp-DT eager" "NoProp-DT captured" "backprop eager" "backprop captured" "kernel floor" \
        --out "$out/step_overhead.jsonl" 2>&1 | tail -7 | tee "$out/step_overhead.txt"
fi
has fused && tp 150 backprop "noprop_dt joint" "noprop_dt per_block" "noprop_dt vmap" "backprop fused" \
    "noprop_dt joint fused" "noprop_dt vmap fused"
has layout && tp 180 backprop "backprop channels_last" "noprop_dt joint channels_last" "noprop_dt per_block channels_last" \
    noprop_ct noprop_fm "noprop_ct eager sampler" "noprop_fm eager sampler"
has compiled && tp 130 backprop "backprop compiled" "noprop_dt joint compiled"
# The blocks as one vmapped call, captured: on an H100 the grouped convolutions take 0.33-0.55x of the ten (section 14).
has vmap && tp 150 "noprop_dt joint" "noprop_dt vmap" "noprop_dt vmap captured"
if has budget; then
    minutes=${BUDGET_MINUTES:-6}
    # EpochBudget stops at an epoch boundary within the minutes (compilation included); then the 5 test runs and the
    # anytime curve, which results.jsonl waits for. No checkpoints: 229 MiB each, which cannot come back anyway.
    limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 90 }')
    # shellcheck disable=SC2086  # BUDGET_EXTRA and BUDGET_ARGS are lists of words
    timeout "$limit" "$py" benchmarks/accuracy.py --rows dt-onehot --seeds 0 --epochs "${BUDGET_EPOCHS:-100}" \
        --max-minutes "$minutes" --data-root data --out-dir "$out/accuracy" ${BUDGET_EXTRA:-} \
        -- --trainer.enable_checkpointing false ${BUDGET_ARGS:---model.capture_step true} 2>&1 \
        | grep --line-buffered -E '^epoch|^\||resuming|[Ee]rror' | tee "$out/budget.txt"
    echo "accuracy.py exit status: ${PIPESTATUS[0]}" | tee -a "$out/budget.txt"
fi
exit 0
