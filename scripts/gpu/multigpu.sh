#!/usr/bin/env bash
# Issue 12: actor replicas across the GPUs of one host, ON the GPU machine from the
# repo root, in one device call:
#   1. prepare.sh: install the vLLM bundle (env.sh) while the random-weight tool and
#      chat checkpoints are generated; count the GPUs (nvidia-smi -L);
#   2. the full stack, bench/gpu_fullstack.py --layouts, through the launcher library:
#      the workload of fullstack.sh (persona ~900 tokens, history ~1,500, 200 tokens
#      out, TURNS turns) at SESSIONS, both modes (one edge each), on every layout the
#      GPUs allow, in the order that starts each engine once (bench/gpu_layouts.py):
#        (a) tool and chat co-resident on GPU 0;
#        (c) tool on GPU 0 beside chat replica 1, chat replica 2 on GPU 1;
#        (b) tool on GPU 0, chat on GPU 1;
#        (d) 4 GPUs: 1 tool and 3 chat replicas;
#      on ONE GPU the smoke version: (a) and (c1), two chat replicas by memory
#      fraction, at small SESSIONS (8);
#   3. bench/gpu_report.py --multigpu: turns/s, tool decision and turn TTFT p50/p95
#      per turn, per-token latency, prefix-cache hit rate per chat replica, sessions
#      that changed replica, and each layout's ratio to (a).
# Results in $OUT: gpu_multigpu.json, report.md, smi.csv, system.tar.gz (device.txt,
# each slot's log and config), and the log the device command tees.
# Device call: carry [".kit", ".whl"]. Env: LAYOUTS (auto: all that fit; or a,c,...),
# SESSIONS (16,32,64; 8 on one GPU), MODES (sequential,concurrent), TURNS (3),
# THINK_S (0.5), TOOL_SHAPE (qwen2.5-1.5b), CHAT_SHAPE (llama-3.1-8b), GPUS (what
# nvidia-smi lists), OUT. NVLink multicast stays off (env.sh).
# DRY_RUN=1 runs it on the CPU with the tiny models; GPUS=N then plans for N fake GPUs
# (only CUDA_VISIBLE_DEVICES and the fractions in the plan): tests/integration/
# test_gpu_scripts.py runs it so. PYTHON picks the interpreter (python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TOOL_SHAPE=${TOOL_SHAPE:-qwen2.5-1.5b}
CHAT_SHAPE=${CHAT_SHAPE:-llama-3.1-8b}
EXTRA_CHAT_SHAPE=
LAYOUTS=${LAYOUTS:-auto}
MODES=${MODES:-sequential,concurrent}
TURNS=${TURNS:-3}
THINK_S=${THINK_S:-0.5}
PYTHON=${PYTHON:-python3}
status=0
source scripts/gpu/prepare.sh || exit 1
if (( gpus < 1 )); then
    echo "no GPU found (nvidia-smi -L); set GPUS to plan for some" >&2
    exit 1
fi
if (( gpus == 1 )); then SESSIONS=${SESSIONS:-8}; else SESSIONS=${SESSIONS:-16,32,64}; fi

stamp "full stack on the layouts for $gpus GPU(s): $LAYOUTS, sessions $SESSIONS"
"$PYTHON" -m bench.gpu_fullstack --start-system "$config" --workdir "$WORK/system" \
    --tool-model "$tool" --chat-model "$chat" --sessions '' --modes "$MODES" \
    --turns "$TURNS" --think-s "$THINK_S" "${sizes[@]}" --layouts "$LAYOUTS" \
    --gpus "$gpus" --layout-sessions "$SESSIONS" --layout-out "$OUT/gpu_multigpu.json" \
    || status=1

stamp report
"$PYTHON" -m bench.gpu_report --multigpu "$OUT/gpu_multigpu.json" | tee "$OUT/report.md" \
    || status=1
[[ -n ${smi:-} ]] && kill "$smi" 2>/dev/null
pack_work || status=1
stamp "done (status $status)"
exit $status
