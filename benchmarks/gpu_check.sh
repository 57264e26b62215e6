#!/usr/bin/env bash
# One prepared GPU check, sized for a 15-minute GPU lease (the machine's start-up counts too, so the steps below
# are capped at about 9 minutes in all by `timeout`; a step that fails or times out is reported and the next one
# still runs). Most important first. Run from the repository root on a machine with CUDA:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# It writes into benchmarks/results/ (and, when $OUT is set, copies each result there, with all logs in one
# $OUT/gpu_check.log), every file named DATE-WHAT-DEVICE.*, every JSON holding the device name:
#   1. DATE-serving-DEVICE.json         python benchmarks/serving.py: old batch-1 generate vs the engine, GAR-1B
#                                       size preset in bf16 (throughput at 1/4/8/16, time to first token, known-image
#                                       encode, bf16 batch-1 agreement, whole vs chunked prefill). If it fails or
#                                       times out, DATE-serving-DEVICE.partial.json keeps the comparisons it finished
#   2. DATE-gpu_tests-DEVICE.txt        python -m pytest -q -m gpu tests/   (decoder CUDA graphs, scheduler, tile
#                                       cache, the RoI replay Triton kernel)
#   3. DATE-describe_regions-DEVICE.json  python benchmarks/serving.py --only describe_regions (GAR-1B preset, bf16)
#   4. DATE-decode_batching-DEVICE.json python benchmarks/decode_batching.py --preset gar-1b (eager vs CUDA graphs)
#   5. DATE-roi_replay-DEVICE.json      python benchmarks/roi_replay.py
# Then a summary of exit codes. Commit the result files (git add benchmarks/results/) and add README rows.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" PYTHONUNBUFFERED=1
RESULTS=benchmarks/results
DATE="$(date -u +%Y-%m-%d)"
DEVICE_NAME="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
DEVICE="$(echo "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
echo "device: $DEVICE_NAME ($DEVICE), date: $DATE, python: $PYTHON"
if [ "$DEVICE" = "cpu" ]; then
    echo "no CUDA device: the GPU tests would be skipped and the benchmarks measure the CPU; stopping" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
mkdir -p "$RESULTS"
declare -A STATUS
STEPS=()

step() {  # step NAME SECONDS OUTFILE COMMAND...: run with a time limit, stdout to OUTFILE, stderr to OUTFILE.log
    local name="$1" limit="$2" out="$3"
    shift 3
    local start=$SECONDS
    STEPS+=("$name")
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$out.log"
    local rc=$?
    STATUS[$name]="rc=$rc in $((SECONDS - start))s"
    echo "   $name: ${STATUS[$name]} -> $out"
    tail -n 8 "$out.log" | sed 's/^/   | /'
    if [ -n "${OUT:-}" ]; then
        cp "$out" "$OUT"/ 2>/dev/null || true
        { echo "===== $name: ${STATUS[$name]}: $*"; cat "$out.log"; } >>"$OUT/gpu_check.log"
    fi
}

PARTIAL="$RESULTS/$DATE-serving-$DEVICE.partial.json"  # the comparisons finished so far, kept if the step fails
step serving 230 "$RESULTS/$DATE-serving-$DEVICE.json" \
    "$PYTHON" benchmarks/serving.py --only engine_throughput --only time_to_first_token \
    --only known_image_encode --only batch1_agreement --only prefill_chunking --old-requests 4 --iters 3 \
    --out "$PARTIAL"
case "${STATUS[serving]}" in "rc=0 "*) rm -f "$PARTIAL" ;; *) if [ -n "${OUT:-}" ] && [ -f "$PARTIAL" ]; then cp "$PARTIAL" "$OUT"/; fi ;; esac
step gpu_tests 110 "$RESULTS/$DATE-gpu_tests-$DEVICE.txt" \
    "$PYTHON" -m pytest -q -m gpu tests/ -p no:cacheprovider -rA
step describe_regions 80 "$RESULTS/$DATE-describe_regions-$DEVICE.json" \
    "$PYTHON" benchmarks/serving.py --only describe_regions --max-new-tokens 32 --iters 2
step decode_batching 75 "$RESULTS/$DATE-decode_batching-$DEVICE.json" \
    "$PYTHON" benchmarks/decode_batching.py --preset gar-1b
step roi_replay 40 "$RESULTS/$DATE-roi_replay-$DEVICE.json" "$PYTHON" benchmarks/roi_replay.py

echo "== summary ($DEVICE_NAME)"
for name in "${STEPS[@]}"; do echo "   $name: ${STATUS[$name]}"; done
# The .log files hold stderr (warnings, tracebacks); keep them out of the commit unless a step failed.
