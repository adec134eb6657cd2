#!/usr/bin/env bash
# The full-stack GPU benchmark, ON the GPU machine from the repo root, in ONE device
# session so that raw and full-stack numbers share the machine:
#   1. install, generate the random-weight checkpoints (run.sh setup models);
#   2. raw AsyncLLM (bench/gpu_raw.py, sequential mode);
#   3. the whole system with the launcher (configs/gpu.toml + ignore_eos, same models), driven over
#      WebSockets by bench/gpu_fullstack.py with the same workload; then stop it.
# Device call: carry [".kit", ".whl"]. Env: SESSIONS (1,16), TOOL_SHAPE, CHAT_SHAPE, OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/gpu/env.sh || exit 1
TOOL_SHAPE=${TOOL_SHAPE:-qwen2.5-1.5b}
CHAT_SHAPE=${CHAT_SHAPE:-llama-3.1-8b}
SESSIONS=${SESSIONS:-1,16}
status=0
stamp() { echo "=== $(date +%T) $*"; }

scripts/gpu/run.sh setup models || exit 1

stamp raw
python3 -m bench.gpu_raw --tool-model "random:$TOOL_SHAPE" --chat-model "random:$CHAT_SHAPE" \
    --cache-dir "$YAP_MODEL_CACHE" --sessions "$SESSIONS" --modes sequential ${RAW_ARGS:-} \
    --out "$OUT/gpu_raw.json" || status=1

stamp fullstack
export TOOL_MODEL=random:$TOOL_SHAPE CHAT_MODEL=random:$CHAT_SHAPE DEPLOY_MODELS=both
# Like bench.gpu_raw, every reply runs its full 200 tokens whatever random weights
# sample. gpu.toml ends in [chat.sampling]; the strict loader fails if that changes.
config=$(mktemp --suffix .toml)
{ cat configs/gpu.toml; echo "ignore_eos = true"; } > "$config"
python3 -m launcher up --detach --config "$config" || { cp .yap/run/up.log "$OUT/"; exit 1; }
stamp "system up"
python3 -m launcher status --once | tee "$OUT/status.txt"
tokenizer=$(python3 -c "from actors.engines.vllm_engine import random_model_dir
print(random_model_dir('$CHAT_SHAPE', '$YAP_MODEL_CACHE'))")
python3 -m bench.gpu_fullstack --tokenizer "$tokenizer" --sessions "$SESSIONS" \
    --out "$OUT/gpu_fullstack.json" || status=1
python3 -m launcher status --once | tee -a "$OUT/status.txt"
python3 -m launcher down
cp .yap/run/up.log "$OUT/" 2>/dev/null
stamp "done (status $status)"
exit $status
