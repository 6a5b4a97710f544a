#!/usr/bin/env bash
# Does every config really compile? Each config through the CLI with capture_step, then with compile_blocks, under
# fullgraph (a graph break fails the run instead of running eagerly with a log line), on a few synthetic batches, at
# this machine's default precision. One line per run: its exit status, its time, and how many log lines mention a
# recompile or an unsupported construct (dynamo's recompile limit runs the rest eagerly with a warning only).
#
#   bash benchmarks/compile_audit.sh OUT_DIR [CONFIG...]     # default: configs/*.yaml configs/cifar10/*.yaml
#
# Not a timing: run it after a torch upgrade, or after changing a strategy's compiled units.
set -u
out=${1:?usage: compile_audit.sh OUT_DIR [CONFIG...]}
mkdir -p "$out"
out=$(realpath "$out")
shift
cd "$(dirname "$0")/.." || exit 1
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(configs/*.yaml configs/cifar10/*.yaml)
run() {  # NAME OPTION...
    local name=$1 start=$SECONDS
    shift
    timeout 900 python main.py fit "$@" --model.compile_options '{fullgraph: true}' \
        --data.synthetic true --data.synthetic_size 96 --data.batch_size 16 --data.val_size 16 \
        --trainer.max_epochs 1 --trainer.limit_train_batches 4 --trainer.limit_val_batches 1 \
        --trainer.logger false --trainer.enable_checkpointing false --trainer.enable_progress_bar false \
        --trainer.default_root_dir "$out/runs/$name" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s $(grep -ciE 'recompile|Unsupported|graph break' "$out/$name.log") suspicious lines" |
        tee -a "$out/summary.txt"
}
for config in "${configs[@]}"; do
    name=$(echo "${config%.yaml}" | tr / _)
    run "${name}_capture" --config "$config" --model.capture_step true
    run "${name}_compile_blocks" --config "$config" --model.compile_blocks true
done
run noprop_dt_vmap_capture --config configs/noprop_dt.yaml --model.capture_step true --model.block_execution vmap
run noprop_dt_per_block_capture --config configs/noprop_dt.yaml --model.capture_step true --model.backward_mode per_block
