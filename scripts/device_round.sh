#!/usr/bin/env bash
# One device session of checks after a change to the defaults (issues 13, 14, 16), in parts; one call runs several
# (`bash scripts/device_round.sh tests rows`), each call < 10 min, the full-scale bundle made by the first call and
# reused while the machine stays warm. Parts:
#   tests     pytest -m gpu (tiny bundle; runs while the full bundle is made, TESTS_LIMIT)
#   forward   one stage forward with compiled blocks off and on (fp8-scaled-mm, CUDA graphs)
#   bench     BENCH_RESOLUTIONS (768x512,1280x768) persistent x3 + the stock pipeline x BASELINE_RUNS (2; BASELINE=none: without);
#             BENCH_FLAGS: more bench options (e.g. --decode-tiling frame), BENCH_NAME: the files' name (bench-default-...)
#   restart   a new process's first request at RESTART_RESOLUTION (768x512; kept states, Inductor cache from bench)
#   roofline  ROOFLINE_SHAPE (1280x768)'s FLOPs per stage
#   rows      the H200 fidelity rows FIDELITY_ROWS (ROWS_LIMIT)
#   accum     the cuBLAS fast-accumulation shape sweep (scripts/fast_accum_shapes.py)
#   fidelity  reference vs stock at 97/30 (FIDELITY_QUANTIZATION), then rows
#   modes     768x512 persistent, cold-start, host-cached x2, with the prompt cache (the default: after the first run
#             every text comes from it) and, unless MODES_PROMPT_CACHE_OFF=0, again with --prompt-cache 0
#             (MODES_COMPILE=1: also with --compile-blocks on, which auto leaves off for per-request modes;
#             MODES_GRAPHS=1: also with --cuda-graphs on and --compile-blocks on, which auto leaves off for
#             per-request modes (each request captures again); MODES_DEFAULT=0: without the default settings' run;
#             MODES_EXTRA=1: also the roofline and a 30 s recording)
#   textmodels  768x512 persistent x2 with --text-models on-device (Gemma and the processor stay on the device: the
#             peak against the bench part's auto = on-host), then on-host with --prompt-cache 0 (every run uploads
#             them: their cost per new prompt)
#   determinism  768x512 persistent x2 with --inductor-deterministic in two processes after one another (a restart:
#             the second reads the first's Inductor cache): its speed, and whether both render the same hash
#   mp4       scripts/mp4_tail_bench.py on the newest mp4 the bench parts wrote, one per size (the x264 settings'
#             seconds on the synthetic bundle's frames)
#   decodemp4  scripts/decode_mp4_bench.py at 768x512 (3 rounds) and 1280x768 (2): the decode and the mp4 encoder
#             together, x264 and mapping variants (needs no bundle: a call of only tests/decodemp4 makes none)
#   compile   COMPILE_RESOLUTIONS (768x512) persistent x3, compiled blocks, recompiles logged; the Inductor cache
#             comes back as $OUT/inductor-cache.tgz
# Results: $OUT/results.tgz (the JSON and logs; the device tool returns at most 8 files), written again after each
# part, so a call stopped at its limit still brings back the parts that finished. The parts write to /tmp/round-out.
set -uo pipefail
RESULTS=${OUT:-/tmp/device-out}/results.tgz
export OUT=/tmp/round-out
. scripts/device_env.sh
pack() { tar czf /tmp/round-results.tgz -C "$OUT" . && mv /tmp/round-results.tgz "$RESULTS"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
quiet() { grep -v -E "^INFO|it/s\]|^\s*$"; }
gpu_tests_pid=
if [[ " $* " == *" tests "* ]]; then  # the tests use the tiny bundle: they need not wait for the full one
  (LTX_DEMO_CACHE=/tmp/ltx-demo-cache timeout ${TESTS_LIMIT:-400} python3 -u -m pytest -m gpu tests/test_gpu*.py \
    tests/test_streamed_read.py -p no:cacheprovider -o addopts="" -v -rA --durations=15 >"$OUT/gpu-tests.log" 2>&1;
   echo "gpu tests rc=$?" >>"$OUT/gpu-tests.log") &
  gpu_tests_pid=$!
fi
needs_bundle=0
for part in "$@"; do [[ $part == tests || $part == decodemp4 ]] || needs_bundle=1; done
[ $needs_bundle = 1 ] && ensure_full_bundle
pack
bench_into() {  # bench_into NAME ARGS...: `ltx_demo bench ARGS` -> $OUT/NAME.json and .log; its rc and run lines
  local name=$1; shift
  python3 -m ltx_demo bench --bundle "$BUNDLE" --output-dir /tmp/bench-mp4 --out "$OUT/$name.json" "$@" \
    2> >(quiet >"$OUT/$name.log")
  echo "$name rc=$?"
  grep -E '^\{"config"' "$OUT/$name.log" | cut -c1-400
}
run_rows() {
  timeout ${ROWS_LIMIT:-280} python3 -m ltx_demo fidelity --bundle "$BUNDLE" --width 512 --height 384 --num-frames 25 --steps 8 \
    --only ${FIDELITY_ROWS:-compiled_blocks,default} --timed-runs 1 --out "$OUT/fidelity-h200.json" --markdown "$OUT/fidelity-h200.md" \
    2> >(quiet >"$OUT/fidelity-h200.log")
  echo "fidelity rc=$?"
}
for part in "$@"; do
  case $part in
    bench)
      resolutions=${BENCH_RESOLUTIONS:-768x512,1280x768}
      bench_into "${BENCH_NAME:-bench-default}-${resolutions//,/_}" --resolutions "$resolutions" --runs ${BENCH_RUNS:-3} \
        --residency persistent --baseline ${BASELINE:-stock} --baseline-runs ${BASELINE_RUNS:-2} ${BENCH_FLAGS:-}
      ;;
    textmodels)
      bench_into bench-text-on-device --resolutions 768x512 --runs 2 --residency persistent --baseline none \
        --text-models on-device
      bench_into bench-text-on-host-no-prompt-cache --resolutions 768x512 --runs 2 --residency persistent \
        --baseline none --text-models on-host --prompt-cache 0
      ;;
    determinism)
      export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-deterministic
      for process in 1 2; do
        bench_into bench-deterministic-$process --resolutions 768x512 --runs 2 --residency persistent --baseline none \
          --inductor-deterministic
      done
      python3 -c "import json, sys; h = [{r['output_hash'] for c in json.load(open(f'$OUT/bench-deterministic-{i}.json'))['configs'] for r in c['runs'] if 'output_hash' in r} for i in (1, 2)]; print('hashes per process', h, 'same across processes:', len(h[0] | h[1]) == 1)"
      unset TORCHINDUCTOR_CACHE_DIR
      ;;
    roofline)
      shape=${ROOFLINE_SHAPE:-1280x768}
      timeout 200 python3 -m ltx_demo roofline --bundle "$BUNDLE" --width ${shape%x*} --height ${shape#*x} \
        --out "$OUT/roofline-$shape.json" 2> >(quiet >"$OUT/roofline-$shape.log")
      echo "roofline rc=$?"
      ;;
    modes)
      if [ "${MODES_DEFAULT:-1}" = 1 ]; then
        bench_into bench-modes --resolutions 768x512 --runs 2 --residency persistent,cold-start,host-cached --baseline none
      fi
      if [ "${MODES_PROMPT_CACHE_OFF:-1}" = 1 ]; then
        bench_into bench-modes-no-prompt-cache --resolutions 768x512 --runs 2 --residency persistent,cold-start,host-cached \
          --baseline none --prompt-cache 0
      fi
      if [ "${MODES_COMPILE:-0}" = 1 ]; then
        bench_into bench-modes-compiled --resolutions 768x512 --runs 2 --residency persistent,cold-start,host-cached \
          --baseline none --compile-blocks on
      fi
      if [ "${MODES_GRAPHS:-0}" = 1 ]; then
        bench_into bench-modes-graphed --resolutions 768x512 --runs 2 --residency persistent,cold-start,host-cached \
          --baseline none --cuda-graphs on --compile-blocks on
      fi
      if [ "${MODES_EXTRA:-0}" = 1 ]; then
        python3 -m ltx_demo roofline --bundle "$BUNDLE" --out "$OUT/roofline.json" 2> >(quiet >"$OUT/roofline.log")
        echo "roofline rc=$?"
        timeout 240 python3 scripts/long_recording_bench.py --bundle "$BUNDLE" --seconds 30 --out "$OUT/long-30s.json" \
          2> >(quiet >"$OUT/long-30s.log")
        echo "long rc=$?"
      fi
      ;;
    compile)
      export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache TORCH_LOGS=recompiles
      timeout ${COMPILE_LIMIT:-400} python3 -m ltx_demo bench --bundle "$BUNDLE" --output-dir /tmp/bench-mp4 \
        --out "$OUT/bench-compile.json" --resolutions ${COMPILE_RESOLUTIONS:-768x512} --runs 3 --residency persistent --baseline none \
        --compile-blocks on 2>"$OUT/bench-compile.log"
      echo "compile bench rc=$?"
      grep -E '^\{"config"' "$OUT/bench-compile.log" | cut -c1-600
      tar czf "$OUT/inductor-cache.tgz" -C /tmp inductor-cache && du -h "$OUT/inductor-cache.tgz"
      ;;
    mp4)
      timeout 240 python3 scripts/mp4_tail_bench.py --out "$OUT/mp4-tail.json" --newest-per-size /tmp/bench-mp4 \
        >"$OUT/mp4-tail.log" 2>&1
      echo "mp4 tail rc=$?"; cut -c1-300 "$OUT/mp4-tail.log"
      ;;
    decodemp4)
      for shape in 768x512:3 1280x768:2; do
        size=${shape%:*}
        timeout ${DECODEMP4_LIMIT:-240} python3 scripts/decode_mp4_bench.py --out "$OUT/decode-mp4-$size.json" --width ${size%x*} \
          --height ${size#*x} --rounds ${shape#*:} >"$OUT/decode-mp4-$size.log" 2>&1
        echo "decode-mp4 $size rc=$?"
        python3 -c "import json; [print(k, v) for k, v in json.load(open('$OUT/decode-mp4-$size.json'))['median'].items()]"
      done
      ;;
    tests)
      wait $gpu_tests_pid
      grep -E "rc=|passed|failed|^FAILED|^ERROR" "$OUT/gpu-tests.log" | tail -30
      ;;
    forward)
      for compiled in off on; do
        timeout 200 python3 -m ltx_demo forward-bench --bundle "$BUNDLE" --output-dir /tmp/bench-mp4 --shapes 384x256x97/4,768x512x97 \
          --quantization fp8-scaled-mm --cuda-graphs on --compile-blocks $compiled --warmup 2 --repeats 5 \
          --out "$OUT/forward-compile-$compiled.json" 2> >(quiet >"$OUT/forward-compile-$compiled.log")
        echo "forward compile=$compiled rc=$?"
      done
      ;;
    fidelity)
      timeout 300 python3 scripts/fidelity_gpu.py --bundle "$BUNDLE" --out "$OUT/fidelity-full-97.json" --num-frames 97 \
        --steps 30 --quantization ${FIDELITY_QUANTIZATION:-fp8-cast} 2> >(quiet >"$OUT/fidelity-full-97.log")
      echo "fidelity-97 rc=$?"
      run_rows
      ;;
    rows)
      run_rows
      ;;
    accum)
      timeout 120 python3 scripts/fast_accum_shapes.py "$OUT/fast-accum-shapes.json" >"$OUT/fast-accum-shapes.log" 2>&1
      echo "fast-accum shapes rc=$?"
      ;;
    restart)
      bench_into bench-restart --resolutions ${RESTART_RESOLUTION:-768x512} --runs ${RESTART_RUNS:-2} \
        --residency persistent --baseline none
      ;;
    *) echo "unknown part: $part"; exit 2;;
  esac
  pack
done
pack
ls -la "$(dirname "$RESULTS")"
