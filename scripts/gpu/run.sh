#!/usr/bin/env bash
# The raw-engine GPU run, ON the GPU machine from the repo root:
#   scripts/gpu/run.sh [setup] [models] [tests] [bench]     (no argument: all four)
# setup: install the vLLM bundle and wheels, print versions; models: generate the
# random-weight tool and chat checkpoints (skipped when built); tests: the GPU tests
# and the vLLM-backed unit tests; bench: bench/gpu_raw.py. Results go to $OUT.
# Env: TOOL_SHAPE (qwen2.5-1.5b), CHAT_SHAPE (llama-3.1-8b), BENCH_SESSIONS (1,16),
# BENCH_ARGS (extra bench/gpu_raw.py arguments), YAP_MODEL_CACHE, OUT.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/gpu/env.sh || exit 1
TOOL_SHAPE=${TOOL_SHAPE:-qwen2.5-1.5b}
CHAT_SHAPE=${CHAT_SHAPE:-llama-3.1-8b}
BENCH_SESSIONS=${BENCH_SESSIONS:-1,16}
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(setup models tests bench)
status=0
stamp() { echo "=== $(date +%T) $*"; }

for step in "${steps[@]}"; do
    stamp "$step"
    case $step in
    setup)
        nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
        python3 -c 'import sys, torch, transformers, vllm, pytest, pytest_asyncio, nats
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "vllm", vllm.__version__,
      "pytest", pytest.__version__, "pytest-asyncio", pytest_asyncio.__version__)' \
            | tee "$OUT/versions.txt" || status=1
        ;;
    models)
        for shape in "$TOOL_SHAPE" "$CHAT_SHAPE"; do
            python3 -m actors.models.gpu --shape "$shape" --cache-dir "$YAP_MODEL_CACHE" || status=1
        done
        df -h "$YAP_MODEL_CACHE" | tail -1
        ;;
    tests)
        nvidia-smi --query-gpu=timestamp,memory.used --format=csv -l 2 >"$OUT/smi.csv" 2>&1 &
        smi=$!
        YAP_GPU_TOOL_MODEL=random:$TOOL_SHAPE YAP_GPU_CHAT_MODEL=random:$CHAT_SHAPE \
            python3 -m pytest -p no:cacheprovider -v -rs --timeout 900 \
            tests/gpu tests/unit/engines/test_vllm_config.py || status=1
        kill "$smi" 2>/dev/null
        ;;
    bench)
        # shellcheck disable=SC2086
        python3 -m bench.gpu_raw --tool-model "random:$TOOL_SHAPE" \
            --chat-model "random:$CHAT_SHAPE" --cache-dir "$YAP_MODEL_CACHE" \
            --sessions "$BENCH_SESSIONS" --out "$OUT/gpu_raw.json" ${BENCH_ARGS:-} || status=1
        ;;
    *)
        echo "unknown step $step" >&2
        status=2
        ;;
    esac
done
stamp "done (status $status)"
exit $status
