#!/usr/bin/env bash
# Every GPU figure of artray side by side with its bare baseline, in one run, one table.
#
#   bash bench/gpu.sh                      # on one H100/H200: full-size random-weight models, ~10 min
#   bash bench/gpu.sh --cpu --tiny         # anywhere: tiny checkpoints on the CPU, a smoke run (~4 min on 2 cores)
#   bash bench/gpu.sh --out /tmp/gpu-run   # where the JSON, logs and gpu_table.md go (default: a temp dir)
#   bash bench/gpu.sh --only embed,serve   # a subset of the parts
#   bash bench/gpu.sh --only augment-compile   # the augment fast path with torch.compile (not in the default run)
#
# Parts (each `python bench/<x>.py ... --json OUT/<part>.json` under its own time budget, so one part
# that fails or runs long loses only its own figures): augment (steady img/s and image-steps/s, start-up
# apart; the published recipe, batch 4), augment-fast (the GPU fast path: batch 8, fp16, SDPA, channels_last,
# plus 8 images per pipeline call vs one per call), augment-compile (the same with torch.compile of the
# UNet; only with --only, its compiles take minutes), train-longclip and train-cnclip (samples/s and MFU vs a
# plain loop, DDP and DeepSpeed), caption (captions/s and
# tokens/s vs a bare generate loop, transformers backend), embed (img/s vs a bare encoder loop), serve
# (/search p50 over HTTP vs the same encoder + index in-process). Then bench/gpu_table.py prints one
# Markdown table (artray, bare, ratio, unit, device, load before → after, date) and writes
# OUT/gpu_table.md. See bench/README.md, section "gpu.sh".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
cpu=0 tiny=0 out="" only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --tiny) tiny=1 ;;
    --out) out="$2"; shift ;;
    --only) only="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (use --cpu, --tiny, --out DIR, --only a,b)" >&2; exit 2 ;;
  esac
  shift
done
out="${out:-$(mktemp -d /tmp/artray-gpu-bench.XXXXXX)}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d /tmp/artray-gpu-bench-work.XXXXXX)"  # models, corpora, indexes: big, kept out of --out
trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_DATA_DISABLE_PROGRESS_BARS=1

has_gpu="$("$python" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)"
if [[ $cpu -eq 0 && $has_gpu -eq 0 ]]; then
  echo "gpu.sh: no CUDA GPU here; run it on a GPU machine, or 'bash bench/gpu.sh --cpu --tiny' for the CPU smoke run" >&2
  exit 2
fi
if [[ $cpu -eq 1 && $tiny -eq 0 ]]; then
  echo "gpu.sh: the full-size models take hours on a CPU; add --tiny" >&2
  exit 2
fi
if [[ $cpu -eq 1 ]]; then export CUDA_VISIBLE_DEVICES=""; fi
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# part name → time budget (s) and arguments. GPU budgets of the default parts add up to under 10 minutes
# (580 s; the train parts time both strategies, DDP and DeepSpeed; parts end well inside them); sizes are set so
# each part should end well inside its budget on one H100/H200 (model building included).
declare -A budget args
if [[ $tiny -eq 1 ]]; then
  flag=""; [[ $cpu -eq 1 ]] && flag="--cpu"
  budget=([augment]=150 [augment-fast]=150 [augment-compile]=300 [train-longclip]=150 [train-cnclip]=150 [caption]=150
          [embed]=120 [serve]=180)
  args=(
    [augment]="augment.py --workdir $work/augment $flag --n 8 --startup-n 3 --variants 2 --steps 6 --long-side 64"
    [augment-fast]="augment.py --workdir $work/augment-fast $flag --n 8 --startup-n 3 --variants 2 --steps 6 --long-side 64 --batch-size 4 --batching 4"
    [augment-compile]="augment.py --workdir $work/augment-compile $flag --n 8 --variants 2 --steps 6 --long-side 64 --batch-size 4 --compile"
    [train-longclip]="train.py --family longclip --strategy ddp,deepspeed --epochs 2 --batch-size 4 --n 12 --workers 1"
    [train-cnclip]="train.py --family cnclip --strategy ddp,deepspeed --epochs 2 --batch-size 4 --n 12 --workers 1"
    [caption]="caption.py --workdir $work/caption --n 4 --presets caption --rounds 1 --max-new-tokens 8 --batch-size 2"
    [embed]="embed.py --workdir $work/embed $flag --n 12 --startup-n 3 --batch-size 4"
    [serve]="serve.py --n 12 --duration-s 3 --requests 60 --concurrency 1 --port $port --workdir $work/serve"
  )
else
  budget=([augment]=120 [augment-fast]=100 [augment-compile]=420 [train-longclip]=95 [train-cnclip]=105 [caption]=80
          [embed]=40 [serve]=40)
  # the augment parts share one random-weight SD-1.5 folder (built once, by the first that runs)
  args=(
    [augment]="augment.py --workdir $work/augment --model-cache $work/sd15 --full-size --n 24 --startup-n 4 --rounds 1"
    [augment-fast]="augment.py --workdir $work/augment-fast --model-cache $work/sd15 --full-size --n 24 --startup-n 4 --batch-size 8 --batching 8 --batching-images 16"
    [augment-compile]="augment.py --workdir $work/augment-compile --model-cache $work/sd15 --full-size --n 48 --startup-n 4 --batch-size 8 --compile --batching 8 --batching-images 32"
    [train-longclip]="train.py --full-size --use-gpu --family longclip --strategy ddp,deepspeed --workers 1 --batch-size 32 --n 300 --epochs 3"
    [train-cnclip]="train.py --full-size --use-gpu --family cnclip --strategy ddp,deepspeed --workers 1 --batch-size 32 --n 300 --epochs 3"
    [caption]="caption.py --workdir $work/caption --full-size --n 16 --presets caption --rounds 1"
    [embed]="embed.py --workdir $work/embed --full-size --n 500 --startup-n 4 --batch-size 64"
    [serve]="serve.py --full-size --device cuda --n 50 --duration-s 8 --requests 400 --concurrency 1 8 --port $port --workdir $work/serve"
  )
fi
parts=(augment augment-fast train-longclip train-cnclip caption embed serve)
if [[ -n "$only" ]]; then IFS=, read -r -a parts <<<"$only"; fi

load1() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?"; }

# Run one part in its own process session under `timeout`; afterwards end whatever that session left
# (Ray's raylet/GCS or a `serve run` of a part that was cut off), by session id, so the next part
# starts on a clean machine.
run_part() {
  local part="$1" t0 t1 before rc=0 sid
  [[ -n "${args[$part]:-}" ]] || { echo "gpu.sh: unknown part $part" >&2; return 0; }
  rm -f "$out/$part.json"
  before="$(load1)"; t0=$(date +%s)
  echo "== $part (budget ${budget[$part]} s): python bench/${args[$part]} --json $out/$part.json"
  # shellcheck disable=SC2086
  setsid -w timeout --kill-after=15 "${budget[$part]}" "$python" "$here"/${args[$part]} --json "$out/$part.json" \
    >"$out/$part.log" 2>&1 &
  sid=$!
  wait "$sid" || rc=$?
  for pid in $(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do kill -9 "$pid" 2>/dev/null || true; done
  t1=$(date +%s)
  echo "$before → $(load1), $((t1 - t0)) s" >"$out/$part.load"
  if [[ $rc -eq 0 && -s "$out/$part.json" ]]; then
    echo "   done in $((t1 - t0)) s"
  else
    [[ $rc -eq 124 || $rc -eq 137 ]] && echo "ran out of its ${budget[$part]} s budget (exit $rc)" >>"$out/$part.log"
    echo "   FAILED (exit $rc) after $((t1 - t0)) s; last lines of $out/$part.log:"
    tail -n 5 "$out/$part.log" | sed 's/^/   | /'
    rm -f "$out/$part.json"
  fi
}

echo "gpu.sh: $([[ $cpu -eq 1 ]] && echo CPU || "$python" -c 'import torch; print(torch.cuda.get_device_name())'), $([[ $tiny -eq 1 ]] && echo tiny || echo full-size) models, out $out, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
for part in "${parts[@]}"; do run_part "$part"; done
"$python" "$here/gpu_table.py" "$out" --parts "$(IFS=,; echo "${parts[*]}")"
