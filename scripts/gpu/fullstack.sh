#!/usr/bin/env bash
# Raw engines vs the full stack, ON the GPU machine from the repo root, in ONE device
# call, so that both sides share the machine and the ratio means something:
#   1. prepare.sh: install the vLLM bundle (env.sh) while the random-weight
#      checkpoints are generated in the background;
#   2. raw engines, bench/gpu_raw.py: sequential and concurrent, SESSIONS, the tool's
#      answer of 10 and of 2 tokens, TURNS turns; then EXTRA_CHAT_SHAPE (if set) at
#      EXTRA_SESSIONS on a restarted chat engine;
#   3. the full stack, bench/gpu_fullstack.py --start-system, through the launcher
#      library: nats-server, the tool and chat actors (configs/gpu.toml, ignore_eos as
#      raw), edge-0 sequential and edge-1 concurrent on the same bus, so both modes
#      share one engine start; the same workload; then the chat actor alone restarted
#      on EXTRA_CHAT_SHAPE;
#   4. bench/gpu_report.py: full / raw per mode, sessions and turn, and the targets.
# MULTIGPU_SMOKE=1 adds issue 12's one-GPU smoke to step 3 at the cost of one more
# chat engine start: after the main runs, a second chat replica starts beside the
# first on the same GPU (layout c1, bench/gpu_layouts.py) and MULTIGPU_SESSIONS (16)
# run on it; the main runs at those sessions are layout (a). Chat then takes 0.35 of
# the GPU on both sides (CHAT_FRAC), so that the second replica fits beside it.
# Results in $OUT: gpu_raw.json, gpu_fullstack.json, report.md, smi.csv,
# gpu_multigpu.json (the smoke), system.tar.gz (device.txt; system/: each slot's log
# and config; profile/), and the log the device command tees.
# Device call: carry [".kit", ".whl"]. Env: SESSIONS (1,16), EXTRA_CHAT_SHAPE (none,
# e.g. mistral-nemo-12b), EXTRA_SESSIONS (16), TOOL_SHAPE (qwen2.5-1.5b), CHAT_SHAPE
# (llama-3.1-8b), TURNS (3), THINK_S (0.5), RAW_TOOL_TOKENS (10,2), FULL_TOOL_TOKENS (2), CHAT_FRAC (0.70;
# 0.35 with MULTIGPU_SMOKE), MULTIGPU_SMOKE (0), MULTIGPU_SESSIONS (16), MAX_BATCHED
# (unset: vLLM's default; else max_num_batched_tokens of every engine, both sides), OUT;
# PROFILE=1 samples the actors and edges with py-spy during the main full-stack runs
# (profile/ in system.tar.gz: raw samples and a by-area summary per slot).
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
# The full stack's tool answer cap, as raw's 2-token rows (0: the config's max_out).
FULL_TOOL_TOKENS=${FULL_TOOL_TOKENS:-2}
MULTIGPU_SMOKE=${MULTIGPU_SMOKE:-0}
MULTIGPU_SESSIONS=${MULTIGPU_SESSIONS:-16}
if [[ $MULTIGPU_SMOKE == 1 ]]; then CHAT_FRAC=${CHAT_FRAC:-0.35}; else CHAT_FRAC=${CHAT_FRAC:-0.70}; fi
PYTHON=${PYTHON:-python3}
status=0
source scripts/gpu/prepare.sh || exit 1

extra_args=()
[[ -n $extra ]] && extra_args=(--extra-chat-model "$extra" --extra-sessions "$EXTRA_SESSIONS")
# Both sides' engines get the same step budget (vLLM's default for AsyncLLM: 2048).
[[ -n ${MAX_BATCHED:-} ]] && extra_args+=(--max-num-batched-tokens "$MAX_BATCHED")
common=(--sessions "$SESSIONS" --turns "$TURNS" --think-s "$THINK_S" "${sizes[@]}" "${extra_args[@]}")

stamp "raw engines"
"$PYTHON" -m bench.gpu_raw --backend "$backend" --tool-model "$tool" --chat-model "$chat" \
    --tool-tokens "$RAW_TOOL_TOKENS" --chat-frac "$CHAT_FRAC" "${common[@]}" \
    --out "$OUT/gpu_raw.json" || status=1

stamp "full stack"
more=()
[[ ${PROFILE:-0} == 1 ]] && more+=(--profile "$WORK/profile")
multigpu=()
if [[ $MULTIGPU_SMOKE == 1 ]]; then
    # Chat replicas by memory fraction (0.35 each); the smoke's (a) is the main runs.
    more+=(--layouts a,c1 --gpus 1 --layout-sessions "$MULTIGPU_SESSIONS"
        --layout-out "$OUT/gpu_multigpu.json")
    multigpu=(--multigpu "$OUT/gpu_multigpu.json")
else
    more+=(--chat-frac "$CHAT_FRAC")
fi
"$PYTHON" -m bench.gpu_fullstack --start-system "$config" --workdir "$WORK/system" \
    --tool-model "$tool" --chat-model "$chat" --tool-out "$FULL_TOOL_TOKENS" "${common[@]}" "${more[@]}" \
    --out "$OUT/gpu_fullstack.json" || status=1

stamp report
"$PYTHON" -m bench.gpu_report "$OUT/gpu_raw.json" "$OUT/gpu_fullstack.json" "${multigpu[@]}" \
    | tee "$OUT/report.md" || status=1
[[ -n ${smi:-} ]] && kill "$smi" 2>/dev/null
pack_work || status=1
stamp "done (status $status)"
exit $status
