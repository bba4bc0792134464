#!/usr/bin/env bash
# measure.compile on one GPU: the CUDA equality tests (every family, bf16 and float32, compiled against eager) and the
# throughput of the compiled paths. On the device machine, from the repo root (OUT: where the figures go):
#   source benchmarks/device_env.sh && bash benchmarks/compiled_device.sh "$OUT" tests|throughput|profile|kernels|families|moe
# The tests run side by side with pytest-xdist (carry its wheel and execnet's in .whl/; not a test dependency).
# TESTS_K: a pytest -k expression (a subset of the cases); FAMILIES: the checkpoints benchmarks/families.py takes;
# TESTS_S, FAMILIES_S: their time limits in seconds; TESTS_N: pytest-xdist's workers (11); TEST_TIMEOUT: one test case's
# (pytest-timeout). A Qwen3.5 case compiles for about 350 s (fla's kernels; 8 cases side by side on an H100) and its
# float32 case, two processes, took about 500 s: give those cases 560 s (TEST_TIMEOUT=550 TESTS_S=560).
set -uo pipefail
out=${1:?usage: compiled_device.sh OUT tests|throughput|profile|kernels|families|moe}
shift
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
for what in "$@"; do
    case $what in
    tests)  # pytest-xdist: the families compile side by side (inductor's compile is CPU-bound); -v names each case as it
        # ends, so a run cut by TESTS_S still says which passed and which failed (the summary comes only at the end)
        MAXACT_COMPILE_REPORT="$out/cuda_compile_report.jsonl" timeout "${TESTS_S:-300}" python3 -m pytest -v -n "${TESTS_N:-11}" \
            -p no:cacheprovider --timeout "${TEST_TIMEOUT:-240}" -rfs --tb=short ${TESTS_K:+-k "$TESTS_K"} \
            tests/measurement/test_cuda_compiled.py 2>&1 | grep -v 'PytestBenchmarkWarning\|warner(' >"$out/cuda_compiled_tests.txt"
        grep -c ' PASSED ' "$out/cuda_compiled_tests.txt"; grep ' FAILED \|^FAILED\|^E  ' "$out/cuda_compiled_tests.txt" | tail -40 ;;
    throughput)
        timeout 250 python3 benchmarks/throughput.py --preset qwen3-8b --samples 48 --full-stats all --compiled --calibration \
            --repeats 3 --out "$out/throughput_qwen3_8b.json" 2>&1 | grep -v '^ \|^{\|^}' ;;
    profile)  # every path, then each path's GPU time by kernel category (throughput.py --profile)
        timeout "${PROFILE_S:-300}" python3 benchmarks/throughput.py --preset qwen3-8b --samples 48 --full-stats all --compiled \
            --repeats "${PROFILE_REPEATS:-1}" --profile --out "$out/throughput_qwen3_8b_profile.json" >"$out/throughput_qwen3_8b_profile.txt" 2>&1
        grep '^|\|medians\|round\|Error' "$out/throughput_qwen3_8b_profile.txt" ;;
    kernels)  # the statistics kernel alone on a Qwen3-8B batch's widths (hidden/attention/MLP 4096, gate 12288)
        timeout 90 python3 benchmarks/bench_kernels.py --tokens 53000 --channels 4096 12288 2>&1 | tee "$out/bench_kernels.txt" | tail -20 ;;
    moe)
        timeout "${MOE_S:-300}" python3 benchmarks/throughput.py --preset qwen3-30b-a3b --samples 48 --full-stats all --compiled --calibration \
            --repeats "${MOE_REPEATS:-3}" --out "$out/throughput_qwen3_30b_a3b.json" 2>&1 | grep -v '^ \|^{\|^}' ;;
    families)
        timeout "${FAMILIES_S:-540}" python3 benchmarks/families.py --compiled --layers 4 --min-tokens "${FAMILIES_TOKENS:-40000}" --repeats 2 --max-batch-tokens "${FAMILIES_MBT:-65536}" \
            ${FAMILIES:+--checkpoints $FAMILIES} --out "$out/families_compiled_4_layers.json" 2>&1 | grep '^|\|Error\|error' ;;
    esac
done
