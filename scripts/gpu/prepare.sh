# Sourced by fullstack.sh and multigpu.sh, from the repo root: the machine made ready
# and the models named. On the GPU machine: the random-weight checkpoints of
# TOOL_SHAPE, CHAT_SHAPE and EXTRA_CHAT_SHAPE are generated in the background while
# env.sh installs the vLLM bundle (the generator needs only torch and the project),
# then nvidia-smi samples memory and load every 5 s into $OUT/smi.csv. With
# DRY_RUN=1, on the CPU: the tiny local models, small texts, no GPU.
# Sets: backend, config, tool, chat, extra (model names), sizes (workload flags),
# gpus (GPUS, else what nvidia-smi -L lists; 1 in a dry run), smi (its pid), WORK.
# A device call brings back at most 8 files from $OUT, so the many small ones (each
# slot's log and config, py-spy's output) are written under WORK (/tmp/yap-gpu) and
# packed into $OUT/system.tar.gz by pack_work at the end.
stamp() { echo "=== $(date +%T) $*"; }
pack_work() {
    tar -czf "$OUT/system.tar.gz" -C "$WORK" --exclude system/nats --exclude system/edge-slots \
        $(cd "$WORK" && ls -d system profile device.txt 2>/dev/null)
}
export WORK=${WORK:-/tmp/yap-gpu}
# Only what the scripts write there: logs are appended to across runs otherwise.
rm -rf "$WORK/system" "$WORK/profile"
mkdir -p "$WORK"
if [[ ${DRY_RUN:-0} == 1 ]]; then
    export OUT=${OUT:-$PWD/gpu-out}
    mkdir -p "$OUT"
    backend=transformers config=configs/cpu.toml
    tool=tiny-qwen2 chat=tiny-qwen2 extra=${EXTRA_CHAT_SHAPE:+tiny-llama3}
    sizes=(--persona-tokens 100 --history-tokens 200 --chat-out 8)
    gpus=${GPUS:-1}
    smi=
else
    cache=${YAP_MODEL_CACHE:-$HOME/.cache/yap-bus}
    stamp "models (background) and install"
    gens=()
    for shape in "$TOOL_SHAPE" "$CHAT_SHAPE" ${EXTRA_CHAT_SHAPE:-}; do
        PYTHONPATH=$PWD "$PYTHON" -m actors.models.gpu --shape "$shape" --cache-dir "$cache" &
        gens+=($!)
    done
    source scripts/gpu/env.sh || return 1
    for pid in "${gens[@]}"; do wait "$pid" || { echo "model generation failed" >&2; return 1; }; done
    df -h "$cache" | tail -1
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
        | tee "$WORK/device.txt"
    gpus=${GPUS:-$(nvidia-smi -L | grep -c '^GPU ')}
    nvidia-smi --query-gpu=timestamp,index,memory.used,utilization.gpu --format=csv -l 5 \
        >"$OUT/smi.csv" 2>&1 &
    smi=$!
    backend=vllm config=configs/gpu.toml
    tool=random:$TOOL_SHAPE chat=random:$CHAT_SHAPE extra=${EXTRA_CHAT_SHAPE:+random:$EXTRA_CHAT_SHAPE}
    sizes=()
fi
