#!/usr/bin/env bash
# CUDA check on a GPU machine: every training path with --device cuda, the suite with CUDA visible,
# and GPU throughput beside CPU in the same run. Each step is timed and logged; a failing step is
# recorded and the script goes on, so one run shows every broken path.
#   OUT=/tmp/out bash experiments/device_check.sh        (OUT: where logs and the summary go)
# Wheels for packages the machine lacks (gymnasium, mujoco, metaworld, sb3) may be put in .whl/.
set -u
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1   # no MUJOCO_GL: nothing renders, and EGL may be absent
LOG="$OUT/log.txt"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
R=/tmp/dc_runs
rm -rf "$R" && mkdir -p "$R"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The package without its dependencies (they are on the machine or in /tmp/site).
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || echo "pip install -e . failed" >>"$SUMMARY"
M="python3 -m metarl.app.cli"

step() {  # step NAME TIMEOUT_S CMD...   (ONLY="a b" runs just the steps named)
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local t0=$(date +%s.%N)
  echo "=== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >"$OUT/step_$name.txt" 2>&1
  local rc=$?
  local dt=$(python3 -c "import time; print(f'{time.time()-$t0:.1f}')")
  cat "$OUT/step_$name.txt" >>"$LOG"; echo >>"$LOG"; rm -f "$OUT/step_$name.txt"
  echo "$name rc=$rc ${dt}s" | tee -a "$SUMMARY"
}

runinfo() {  # last metrics and timing line of every run: env steps, seconds, throughput
  for d in "$R"/*/; do
    [ -f "$d/metrics.jsonl" ] || continue
    echo "run $(basename "$d"): $(tail -n1 "$d/metrics.jsonl" | cut -c1-400)" >>"$SUMMARY"
    [ -f "$d/timing.jsonl" ] && echo "  timing: $(tail -n1 "$d/timing.jsonl" | cut -c1-400)" >>"$SUMMARY"
  done
}

step gpu 30 python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
step bench_bandit_cuda 90 $M bench bandit --device cuda --json
step bench_bandit_cpu 90 $M bench bandit --device cpu --json
step bench_inner_loop_cuda 90 $M bench inner-loop --device cuda --json
step bench_maml_sinusoid_cuda 120 $M bench maml-sinusoid --device cuda --json
# RL² on bandits at the k5 n100 config's settings: 40 iterations of 256 trials x 100 pulls.
step rl2_bandit_cuda 120 $M train rl2 --env bandit --config experiments/configs/bandit_k5_n100.toml \
  --set agent.total_steps=1024000 --set agent.checkpoint_every=10 --device cuda --quiet --run-dir $R/rl2b
step rl2_bandit_eval_cuda 120 $M eval $R/rl2b --device cuda --baselines greedy,thompson --json
step rl2_mdp_cuda 120 $M train rl2 --env tabular-mdp --set env.n=10 --set agent.total_steps=400000 \
  --device cuda --quiet --run-dir $R/rl2m
step rl2_mdp_eval_cuda 120 $M eval $R/rl2m --device cuda --baselines psrl --tasks 1000 --json
step maml_trpo_nav_cuda 150 $M train maml-trpo --env navigation-2d --set agent.iterations=5 --device cuda \
  --quiet --run-dir $R/nav
step maml_trpo_nav_eval_cuda 120 $M eval $R/nav --device cuda --tasks 40 --json
step maml_ppo_nav_cuda 120 $M train maml-ppo --env navigation-2d --set agent.iterations=3 --device cuda \
  --quiet --run-dir $R/navppo
step maml_sinusoid_cuda 120 $M train maml --env sinusoid --set agent.iterations=2000 --device cuda --quiet \
  --run-dir $R/sin
step maml_sinusoid_eval_cuda 120 $M eval $R/sin --device cuda --tasks 1000 --json
step protonet_glyphs_cuda 240 $M train protonet --env glyphs --config experiments/configs/protonet_glyphs_5w1s.toml \
  --set agent.iterations=300 --device cuda --quiet --run-dir $R/proto
step protonet_glyphs_eval_cuda 120 $M eval $R/proto --device cuda --tasks 1000 --json
step cnp_cuda 120 $M train cnp --env gp-regression --set agent.iterations=500 --device cuda --quiet --run-dir $R/cnp
step cnp_eval_cuda 120 $M eval $R/cnp --device cuda --tasks 200 --json
# Learners that keep a random stream in a buffer (LEO's codes, two-stage independent inits)
step leo_cuda 120 $M train leo --env sinusoid --set agent.iterations=500 --device cuda --quiet --run-dir $R/leo
step leo_eval_cuda 120 $M eval $R/leo --device cuda --tasks 200 --json
step hypernet_two_stage_cuda 120 $M train hypernet --env sinusoid --set agent.mode=two-stage \
  --set agent.target_init=independent --set agent.iterations=100 --device cuda --quiet --run-dir $R/hn2
step learned_opt_cuda 120 $M train learned-opt --env sinusoid --set agent.iterations=200 --device cuda --quiet \
  --run-dir $R/lo
step learned_opt_eval_cuda 120 $M eval $R/lo --device cuda --tasks 200 --json
# Learner on the GPU, MuJoCo / Meta-World on CPU worker processes.
step rl2_halfcheetah_cuda 150 $M train rl2 --env halfcheetah-vel --set env.workers=4 --set agent.num_envs=16 \
  --set agent.total_steps=64000 --device cuda --quiet --run-dir $R/hc
step maml_trpo_halfcheetah_cuda 200 $M train maml-trpo --env halfcheetah-dir --set env.workers=8 \
  --set agent.iterations=1 --set agent.meta_batch=8 --set agent.rollouts=4 --device cuda --quiet --run-dir $R/hcd
step rl2_ml1_cuda 200 $M train rl2 --env ml1 --set env.task=reach-v3 --set env.workers=8 --set agent.num_envs=16 \
  --set agent.total_steps=80000 --device cuda --quiet --run-dir $R/ml1
step rl2_ml1_eval_cuda 200 $M eval $R/ml1 --device cuda --tasks 8 --json
step recurrent_ppo_cuda 120 $M train recurrent-ppo --env bandit --set env.n=10 --set agent.total_steps=20000 \
  --device cuda --quiet --run-dir $R/rppo
step recurrent_ppo_eval_cuda 120 $M eval $R/rppo --device cuda --tasks 200 --baselines greedy --json
step multitask_ppo_cuda 120 $M train multitask-ppo --env navigation-2d --set agent.total_steps=20000 \
  --device cuda --quiet --run-dir $R/mtppo
step multitask_ppo_eval_cuda 180 $M eval $R/mtppo --device cuda --tasks 50 --baselines ppo-scratch,sac-scratch --json
# RL² at GPU scale: 4096 parallel trials.
step rl2_bandit_4096_cuda 200 $M train rl2 --env bandit --config experiments/configs/bandit_k5_n100.toml \
  --set agent.num_envs=4096 --set agent.total_steps=8192000 --set agent.checkpoint_every=100 --device cuda --quiet \
  --run-dir $R/rl2b4096
runinfo
# The suite with CUDA visible (tests pick their own devices; this catches any that assume CPU).
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
step pytest 180 python3 -m pytest -q -x -p no:cacheprovider $XDIST tests
step bench_mujoco_cpu 120 $M bench mujoco --json
cp "$SUMMARY" "$OUT/summary_final.txt"
