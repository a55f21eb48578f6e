#!/usr/bin/env bash
# CI for csrc/ (called by .ci/run before the tests):
#   1. build + install the CPU variant of octformer-kernels (no CUDA), so tests/test_kernels.py runs;
#   2. compile-check the CUDA sources with nvcc from PyPI for sm_80 and sm_90 (no GPU needed; nothing is run).
# Build outputs are cached under csrc/build (git-ignored). Logs: csrc/build/nvcc/nvcc.log.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
start=$(date +%s)
log() { echo "== [csrc/ci.sh +$(( $(date +%s) - start ))s] $*"; }

log "1/2 CPU variant: OCTFORMER_KERNELS_CUDA=0 pip install --no-build-isolation --no-deps ./csrc"
pip install -q ninja  # parallel, header-aware incremental builds in csrc/build (torch falls back to serial without)
OCTFORMER_KERNELS_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" pip install -q --no-build-isolation --no-deps .
(cd /tmp && python -c "
import torch, octformer_kernels
assert not octformer_kernels.has_cuda()
print('octformer_kernels', octformer_kernels.__version__, 'loaded; ops:',
      sorted(n for n in dir(torch.ops.octformer) if not n.startswith('__')))")

log "2/2 nvcc compile check of src/*.cu for sm_80 and sm_90"
# Toolchain matching torch's CUDA major.minor (torch 2.13 wheels: 13.0). nvvm and crt are pinned too: the nvcc
# wheel's unpinned dependencies otherwise pull a newer cicc whose PTX the pinned ptxas rejects.
cuda_ver=$(python -c "import torch; print(torch.version.cuda or '13.0')")
case "$cuda_ver" in
  13.*) ;;
  *) echo "csrc/ci.sh: torch reports CUDA $cuda_ver; this script knows the PyPI nvcc layout of CUDA 13 only" >&2; exit 1 ;;
esac
mm=$(echo "$cuda_ver" | cut -d. -f1,2)
pip install -q "nvidia-cuda-nvcc==${mm}.*" "nvidia-nvvm==${mm}.*" "nvidia-cuda-crt==${mm}.*" \
  "nvidia-cuda-cccl==${mm}.*" "nvidia-cuda-runtime==${mm}.*"
nv=$(python -c "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
nvcc="$nv/bin/nvcc"
"$nvcc" --version | tail -1
torch_inc=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
py_inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
abi=$(python -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
mkdir -p build/nvcc
: > build/nvcc/nvcc.log
for src in src/*.cu; do
  obj="build/nvcc/$(basename "${src%.cu}").o"
  cmd=("$nvcc" -c "$src" -o "$obj" -Isrc $torch_inc "-I$py_inc" "-I$nv/include" -std=c++17 -O3
       --expt-relaxed-constexpr -diag-suppress 3306 -Xcompiler -fPIC -Xcompiler -Wno-c++20-extensions
       "-D_GLIBCXX_USE_CXX11_ABI=$abi"
       -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90)
  key=$( (cat src/*.h "$src"; echo "${cmd[*]}"; "$nvcc" --version) | sha256sum | cut -c1-16)
  if [ -f "$obj" ] && [ -f "$obj.key" ] && [ "$(cat "$obj.key")" = "$key" ]; then
    log "cached (sources and command unchanged): $obj"
  else
    log "running: ${cmd[*]}"
    "${cmd[@]}"
    echo "$key" > "$obj.key"
  fi
  echo "nvcc OK: $src -> $obj ($(stat -c %s "$obj") bytes; SASS for sm_80 and sm_90)" | tee -a build/nvcc/nvcc.log
  echo "command: ${cmd[*]}" >> build/nvcc/nvcc.log
done
log "done: CPU kernels installed, CUDA sources compiled (not run: no GPU in CI)"
