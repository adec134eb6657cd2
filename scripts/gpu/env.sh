# Sourced by the scripts in scripts/gpu/ ON the GPU machine, from the repo root:
# installs the vLLM bundle (.kit, from ../shared/tools/vllm-kit/build.sh) and the
# project's wheels the image lacks (.whl), once per machine, and sets the environment.
# A device call carries both: carry [".kit", ".whl"].
SITE=${SITE:-/tmp/site}
EXTRA=${EXTRA:-/tmp/site-extra}
if [[ ! -f $SITE/.yap-installed ]]; then
    source .kit/install.sh .kit "$SITE" || { echo "vllm-kit install failed" >&2; return 1; }
    touch "$SITE/.yap-installed"
else
    # What install.sh exports, for a machine where it already ran.
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" VLLM_USE_FLASHINFER_SAMPLER=0 \
        VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
fi
if compgen -G ".whl/*.whl" >/dev/null && [[ ! -f $EXTRA/.yap-installed ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$EXTRA" .whl/*.whl || { echo "wheel install failed" >&2; return 1; }
    touch "$EXTRA/.yap-installed"
fi
export PYTHONPATH="$PWD:$EXTRA:$PYTHONPATH" PATH="$EXTRA/bin:$PATH"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# NVLink multicast stays off (the device notes: it can take a shared host's GPUs out
# of service); the image sets these, and every process the launcher starts keeps them.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export YAP_MODEL_CACHE=${YAP_MODEL_CACHE:-$HOME/.cache/yap-bus}
export OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
