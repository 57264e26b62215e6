#!/usr/bin/env bash
# One prepared GPU check, sized for a 15-minute GPU lease (the machine's start-up counts too, so the steps below
# are capped at about 12 minutes in all by `timeout`, QUICK=1 at about 8; a step that fails or times out is
# reported and the next one still runs). Most important first. Run from the repository root on a machine with CUDA:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# It writes into benchmarks/results/ (and, when $OUT is set, copies each result there, with all logs in one
# $OUT/gpu_check.log), every file named DATE-WHAT-DEVICE.*, every JSON holding the device name:
#   1. DATE-decode_batching-DEVICE.json   decode-step variants (eager; CUDA graphs with SDPA, matmul or Triton
#                                         split-KV attention, with or without the fused element-wise kernels and
#                                         the packed q/k/v GEMV), GAR-1B size preset in bf16; the fastest graph
#                                         variant at batch 1 is the one the engine runs in the next steps
#   2. DATE-profile_request-DEVICE.json   where a 17-tile first question's time goes (the vision tower eager and
#                                         replayed from CUDA graphs, with the one-kernel q/k rotation and with
#                                         timm's); kernels of a decode step, graph step times
#   3. DATE-serving-DEVICE.json           benchmarks/serving.py with the fastest options of 1 and 2: old batch-1
#                                         generate vs the engine (bf16 batch-1 agreement of 32 tokens first,
#                                         throughput at 1/4/8/16 with the model thread's time per part of its
#                                         loop, time to first token with and without reading the image,
#                                         throughput with the requests of a level on one image; known-image
#                                         encode not with QUICK=1);
#                                         if it fails or times out,
#                                         DATE-serving-DEVICE.partial.json keeps the comparisons it finished
#   4. DATE-gpu_tests-DEVICE.txt          python -m pytest -q -m gpu tests/ (decoder CUDA graphs and attention
#                                         variants, split-KV kernels, scheduler, tile cache and vision graphs,
#                                         the vision q/k rotation kernel, prefix K/V reuse, RoI replay kernel)
#   5. describe_regions, followup_questions (prefix cache on/off), prefill_chunking, roi_replay JSONs (not with
#      QUICK=1)
# Then a summary of exit codes. Commit the result files (git add benchmarks/results/) and add README rows.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
QUICK="${QUICK:-0}"  # QUICK=1: fewer batch sizes and tests; no describe_regions (unless DESCRIBE=1), followup_questions,
                     # prefill_chunking, roi_replay
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" PYTHONUNBUFFERED=1
RESULTS=benchmarks/results
DATE="$(date -u +%Y-%m-%d)"
DEVICE_NAME="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
DEVICE="$(echo "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
DEVICE="$DEVICE${TAG:+-$TAG}"  # TAG=word: a second run of the same day keeps its own file names
echo "device: $DEVICE_NAME ($DEVICE), date: $DATE, python: $PYTHON"
if [ "$DEVICE_NAME" = "cpu" ]; then
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

# 1. Decode-step variants at batch 1 and 16 (QUICK) or 1, 8 and 32; the fastest graph variant at batch 1 is what
#    the serving steps run (their JSON names it). The JSON is rewritten after every row (kept if the step times out).
DECODE="$RESULTS/$DATE-decode_batching-$DEVICE.json"
if [ "$QUICK" = 1 ]; then
    DECODE_ARGS=(--batch 1 16 --new-tokens 64 --skip-generate --variants cuda_graphs cuda_graphs+matmul+fused)
else
    DECODE_ARGS=(--batch 1 8 32 --variants eager cuda_graphs cuda_graphs+matmul cuda_graphs+matmul+fused)
fi
step decode_batching 110 "$DECODE.stdout" "$PYTHON" benchmarks/decode_batching.py --preset gar-1b "${DECODE_ARGS[@]}" \
    cuda_graphs+triton cuda_graphs+triton+fused cuda_graphs+triton+fused+separate_qkv --out "$DECODE"
if [ -n "${OUT:-}" ] && [ -f "$DECODE" ]; then cp "$DECODE" "$OUT"/; fi
rm -f "$DECODE.stdout" "$OUT/$(basename "$DECODE").stdout" 2>/dev/null
BEST="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("fastest_graph_variant_at_smallest_batch") or "")' "$DECODE" 2>/dev/null)"
ATTENTION=sdpa
case "$BEST" in *matmul*) ATTENTION=matmul ;; *triton*) ATTENTION=triton ;; esac
FUSED_FLAG=--no-fused-ops  # said either way: the engine's default on CUDA is on
case "$BEST" in *fused*) FUSED_FLAG=--fused-ops ;; esac
echo "   fastest decode variant at batch 1: ${BEST:-none}: the serving steps run --decode-attention $ATTENTION $FUSED_FLAG"

# 2. Where a request's time goes; the vision tower eager vs replayed from CUDA graphs (checked equal): the serving
#    steps replay it when that was equal and faster.
PROFILE="$RESULTS/$DATE-profile_request-$DEVICE.json"
step profile_request 70 "$PROFILE" "$PYTHON" benchmarks/profile_request.py
VISION_FLAG="$("$PYTHON" -c '
import json, sys
q = json.load(open(sys.argv[1]))["first_question"]
ms = q["median_ms"]
ok = q.get("vision_cuda_graph_features_equal_eager") and q.get("vision_cuda_graphs_captured")
print("--vision-graphs" if ok and ms["vision_tower_cuda_graphs"] < ms["vision_tower_via_tile_cache"] else "")
' "$PROFILE" 2>/dev/null)"
VISION_FLAG="${VISION_FLAG:---no-vision-graphs}"
echo "   vision tower in the serving steps: $VISION_FLAG"

PARTIAL="$RESULTS/$DATE-serving-$DEVICE.partial.json"  # the comparisons finished so far, kept if the step fails
step serving 170 "$RESULTS/$DATE-serving-$DEVICE.json" \
    "$PYTHON" benchmarks/serving.py --only batch1_agreement --only engine_throughput --only time_to_first_token \
    --only engine_throughput_one_image $([ "$QUICK" = 1 ] || echo --only known_image_encode) \
    --old-requests "$([ "$QUICK" = 1 ] && echo 1 || echo 4)" --agreement-new-tokens 32 \
    --iters 3 --decode-attention "$ATTENTION" $FUSED_FLAG $VISION_FLAG --out "$PARTIAL"
case "${STATUS[serving]}" in "rc=0 "*) rm -f "$PARTIAL" ;; *) if [ -n "${OUT:-}" ] && [ -f "$PARTIAL" ]; then cp "$PARTIAL" "$OUT"/; fi ;; esac
if [ "$QUICK" = 1 ]; then  # the GPU tests of the decoder and the tile cache only
    step gpu_tests 60 "$RESULTS/$DATE-gpu_tests-$DEVICE.txt" \
        "$PYTHON" -m pytest -q -m gpu tests/test_decoder.py tests/test_decode_attention.py tests/test_decode_ops.py \
        tests/test_tile_cache.py tests/test_prefix_cache.py tests/test_vision_rope.py \
        -p no:cacheprovider -rA
else
    step gpu_tests 130 "$RESULTS/$DATE-gpu_tests-$DEVICE.txt" \
        "$PYTHON" -m pytest -q -m gpu tests/ -p no:cacheprovider -rA
fi
if [ "$QUICK" != 1 ] || [ "${DESCRIBE:-0}" = 1 ]; then  # DESCRIBE=1: also with QUICK=1
    step describe_regions 80 "$RESULTS/$DATE-describe_regions-$DEVICE.json" \
        "$PYTHON" benchmarks/serving.py --only describe_regions --max-new-tokens 32 --iters 2 \
        --decode-attention "$ATTENTION" $FUSED_FLAG $VISION_FLAG
fi
if [ "$QUICK" != 1 ]; then
    step followup_questions 50 "$RESULTS/$DATE-followup_questions-$DEVICE.json" \
        "$PYTHON" benchmarks/serving.py --only followup_questions --iters 3 \
        --decode-attention "$ATTENTION" $FUSED_FLAG $VISION_FLAG
    step prefill_chunking 40 "$RESULTS/$DATE-prefill_chunking-$DEVICE.json" \
        "$PYTHON" benchmarks/serving.py --only prefill_chunking --iters 3
    step roi_replay 40 "$RESULTS/$DATE-roi_replay-$DEVICE.json" "$PYTHON" benchmarks/roi_replay.py
fi

echo "== summary ($DEVICE_NAME)"
for name in "${STEPS[@]}"; do echo "   $name: ${STATUS[$name]}"; done
# The .log files hold stderr (warnings, tracebacks); keep them out of the commit unless a step failed.
