#!/usr/bin/env bash
# The checks that need a GPU, each a section of its own, prepared to run in one call on a lent GPU machine:
#   bash benchmarks/gpu_checks.sh loop precision scale     (three; about 15 minutes on one H100)
#   bash benchmarks/gpu_checks.sh compile                  (about 10 minutes more)
#   bash benchmarks/gpu_checks.sh precision                (one)
# loop:      the training loop against the in-memory ceiling, yolov5s at 640, batch 64, AMP (2,000 COCO-sized JPEGs)
# compile:   the same loop for yolov5n and yolov5s at 640 with AMP, plain and with --compile (torch.compile, inductor;
#            the compile time is first_epoch_extra_seconds)
# precision: fp32 against --mixed-precision auto (fp16 autocast, the head in fp32) on the demo data, yolov5n and
#            yolov5nu, seeds 0 and 1 (add --seeds 0 1 2 when there is time)
# scale:     DDP against FSDP on every GPU here (world size 1 exercises the path): peak memory per GPU and epoch
#            time for yolov5x6 at 1280 px, AMP, and a DDP run with --sync-bn
# Results are JSON lines in $OUT (default /tmp/gpu-checks) and on stdout; a section that fails does not stop the
# others.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for section in "$@"; do
  case "$section" in
    loop)
      [ -f "$OUT/coco/data.yaml" ] || python benchmarks/make_dataset.py --out "$OUT/coco" --kind coco \
        --images 2000 --val-images 100
      timeout 600 python benchmarks/train.py --data "$OUT/coco/data.yaml" --cfg yolov5s.yaml --img 640 \
        --batch-size 64 --workers 8 --device 0 --epochs 2 | tail -n 1 | tee "$OUT/loop.json"
      ;;
    compile)
      [ -f "$OUT/coco/data.yaml" ] || python benchmarks/make_dataset.py --out "$OUT/coco" --kind coco \
        --images 2000 --val-images 100
      for cfg in yolov5n yolov5s; do
        for flag in "" --compile; do
          timeout 600 python benchmarks/train.py --data "$OUT/coco/data.yaml" --cfg $cfg.yaml --img 640 \
            --batch-size 64 --workers 8 --device 0 --epochs 3 $flag | tail -n 1 | tee -a "$OUT/compile.json"
        done
      done
      ;;
    precision)
      timeout 900 python benchmarks/accuracy.py --data demo --precision no auto --device 0 --seeds 0 1 \
        --trainers "yolo-accel yolov5n" "yolo-accel yolov5nu" --out "$OUT/precision" | tail -n 1 \
        | tee "$OUT/precision.json"
      ;;
    scale)
      timeout 600 python benchmarks/scale_out.py --cfg yolov5x6.yaml --img 1280 --batch-size 8 --epochs 1 \
        --images 64 --out "$OUT/scale" | tail -n 1 | tee "$OUT/scale.json"
      timeout 300 python benchmarks/scale_out.py --cfg yolov5s.yaml --img 640 --batch-size 32 --epochs 1 \
        --images 64 --modes ddp --sync-bn --out "$OUT/scale-syncbn" | tail -n 1 | tee "$OUT/scale-syncbn.json"
      ;;
    *)
      echo "unknown section $section (loop, compile, precision, scale)" >&2
      ;;
  esac
done
