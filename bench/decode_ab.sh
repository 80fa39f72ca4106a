#!/usr/bin/env bash
# A/B-time the working tree's CPU decode kernels against those of git revision REV (see
# bench/decode_ab.cpp). Usage: bench/decode_ab.sh REV [BITS=4] [M...=1]
#   e.g. bench/decode_ab.sh HEAD~1 4 1 2 4 8
# Environment: LAYERS (16), SIZE (N = K, or NxK; 4096), ROUNDS (30), SCALES (fp32 or fp16), ACT (8:
# the working tree runs the -a8 kernel, int8 activations, against REV's weight-only one), ACT_BASE
# (8: REV runs its -a8 kernel too), ISA (avx2 or avx512; default: avx512 where the CPU has it),
# THREADS (the kernels' threads, 2), XDT (bf16: x and y in bf16), GROUP (INT4 group size, 128).
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/decode_ab.sh REV [BITS] [M...]}
bits=${2:-4}
shift $(( $# >= 2 ? 2 : 1 ))
ms=("$@")
[ ${#ms[@]} -gt 0 ] || ms=(1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# REV's headers that qmatmul_kernels.h includes, renamed base_*.h (older revisions lack some).
# GCC's #pragma once takes two files of the same contents and modification time for one: when
# REV's header equals the working tree's, the base build would skip it. A comment tells them apart.
git show "$rev:csrc/cpu/qmatmul_kernels.h" \
  | sed -e 's/#include "qmatmul_\(a8\|a8_prefill\|dot_prefill\|prefill\|amx\).h"/#include "base_\1.h"/' > "$tmp/base_kernels.h"
for h in a8 a8_prefill dot_prefill prefill amx; do
  git show "$rev:csrc/cpu/qmatmul_$h.h" > "$tmp/base_$h.h" 2>/dev/null || true
  echo "// $rev" >> "$tmp/base_$h.h"
done
isa=${ISA:-$(grep -qw avx512bw /proc/cpuinfo && echo avx512 || echo avx2)}
flags=(-mavx2 -mfma -mf16c -mbmi2)
[ "$isa" = avx512 ] && flags+=(-mavx512f -mavx512bw -mavx512vl -mavx512dq)
# Both revisions' kernels for $isa, renamed into namespaces isa_new and isa_base.
sed -e "s/isa_$isa/isa_new/g" "csrc/cpu/qmatmul_$isa.cpp" > "$tmp/new_isa.cpp"
git show "$rev:csrc/cpu/qmatmul_$isa.cpp" \
  | sed -e "s/isa_$isa/isa_base/g" -e 's/#include "qmatmul_kernels.h"/#include "base_kernels.h"/' > "$tmp/base_isa.cpp"
echo "ISA: $isa"
g++ -O3 -fopenmp -Wno-ignored-attributes "${flags[@]}" -std=c++17 -Icsrc/include -Icsrc/cpu -I"$tmp" bench/decode_ab.cpp \
  csrc/cpu/cpu_features.cpp -o "$tmp/decode_ab"
for m in "${ms[@]}"; do "$tmp/decode_ab" "$bits" "$m" ${LAYERS:-16} ${SIZE:-4096} ${ROUNDS:-30} ${SCALES:-fp32}; done
