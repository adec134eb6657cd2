#!/usr/bin/env bash
# Raw engines vs the full stack, ON the GPU machine from the repo root, in ONE device
# call, so that both sides share the machine and the ratio means something:
#   1. install the vLLM bundle (env.sh) while the random-weight checkpoints are
#      generated in the background (they need only torch and the project);
#   2. raw engines, bench/gpu_raw.py: sequential and concurrent, SESSIONS, the tool's
#      answer of 10 and of 2 tokens, TURNS turns; then EXTRA_CHAT_SHAPE (if set) at
#      EXTRA_SESSIONS on a restarted chat engine;
#   3. the full stack, bench/gpu_fullstack.py --start-system: nats-server, the tool
#      and chat actors (configs/gpu.toml, ignore_eos as raw), one edge per mode on the
#      same bus, so both modes share one engine start; the same workload; then the
#      chat actor alone restarted on EXTRA_CHAT_SHAPE;
#   4. bench/gpu_report.py: full / raw per mode, sessions and turn, and the targets.
# Results in $OUT: gpu_raw.json, gpu_fullstack.json, report.md, log, system/ (logs).
# Device call: carry [".kit", ".whl"]. Env: SESSIONS (1,16), EXTRA_CHAT_SHAPE (none,
# e.g. mistral-nemo-12b), EXTRA_SESSIONS (16), TOOL_SHAPE (qwen2.5-1.5b), CHAT_SHAPE
# (llama-3.1-8b), TURNS (3), THINK_S (0.5), RAW_TOOL_TOKENS (10,2), OUT; PROFILE=1
# samples the actors and edges with py-spy during the main full-stack runs
# ($OUT/profile: raw samples and a by-area summary per process).
# DRY_RUN=1 runs every step on the CPU with the tiny models (no bundle, no GPU, small
# texts): tests/integration/test_gpu_scripts.py does, so a device call cannot fail on
# a typo. PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SESSIONS=${SESSIONS:-1,16}
EXTRA_CHAT_SHAPE=${EXTRA_CHAT_SHAPE:-}
EXTRA_SESSIONS=${EXTRA_SESSIONS:-16}
TOOL_SHAPE=${TOOL_SHAPE:-qwen2.5-1.5b}
CHAT_SHAPE=${CHAT_SHAPE:-llama-3.1-8b}
TURNS=${TURNS:-3}
THINK_S=${THINK_S:-0.5}
RAW_TOOL_TOKENS=${RAW_TOOL_TOKENS:-10,2}
PYTHON=${PYTHON:-python3}
status=0
stamp() { echo "=== $(date +%T) $*"; }

if [[ ${DRY_RUN:-0} == 1 ]]; then
    export OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    backend=transformers config=configs/cpu.toml
    tool=tiny-qwen2 chat=tiny-qwen2 extra=${EXTRA_CHAT_SHAPE:+tiny-llama3}
    sizes=(--persona-tokens 100 --history-tokens 200 --chat-out 8)
else
    cache=${YAP_MODEL_CACHE:-$HOME/.cache/yap-bus}
    stamp "models (background) and install"
    gens=()
    for shape in "$TOOL_SHAPE" "$CHAT_SHAPE" $EXTRA_CHAT_SHAPE; do
        PYTHONPATH=$PWD "$PYTHON" -m actors.models.gpu --shape "$shape" --cache-dir "$cache" &
        gens+=($!)
    done
    source scripts/gpu/env.sh || exit 1
    for pid in "${gens[@]}"; do wait "$pid" || { echo "model generation failed" >&2; exit 1; }; done
    df -h "$cache" | tail -1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 5 >"$OUT/smi.csv" 2>&1 &
    smi=$!
    backend=vllm config=configs/gpu.toml
    tool=random:$TOOL_SHAPE chat=random:$CHAT_SHAPE extra=${EXTRA_CHAT_SHAPE:+random:$EXTRA_CHAT_SHAPE}
    sizes=()
fi
extra_args=()
[[ -n $extra ]] && extra_args=(--extra-chat-model "$extra" --extra-sessions "$EXTRA_SESSIONS")
common=(--sessions "$SESSIONS" --turns "$TURNS" --think-s "$THINK_S" "${sizes[@]}" "${extra_args[@]}")

stamp "raw engines"
"$PYTHON" -m bench.gpu_raw --backend "$backend" --tool-model "$tool" --chat-model "$chat" \
    --tool-tokens "$RAW_TOOL_TOKENS" "${common[@]}" --out "$OUT/gpu_raw.json" || status=1

stamp "full stack"
profile=()
[[ ${PROFILE:-0} == 1 ]] && profile=(--profile "$OUT/profile")
"$PYTHON" -m bench.gpu_fullstack --start-system "$config" --workdir "$OUT/system" \
    --tool-model "$tool" --chat-model "$chat" "${common[@]}" "${profile[@]}" \
    --out "$OUT/gpu_fullstack.json" || status=1

stamp report
"$PYTHON" -m bench.gpu_report "$OUT/gpu_raw.json" "$OUT/gpu_fullstack.json" \
    | tee "$OUT/report.md" || status=1
[[ -n ${smi:-} ]] && kill "$smi" 2>/dev/null
stamp "done (status $status)"
exit $status
