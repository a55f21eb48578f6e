"""Build octformer-kernels: the octformer torch ops (CPU always; CUDA when nvcc is found and not disabled).

OCTFORMER_KERNELS_CUDA=0 forces the CPU-only variant (what CI installs); =1 requires CUDA.
"""

import glob
import os
import sys

import torch

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob(os.path.join("src", "*.cpp")))
cu_sources = sorted(glob.glob(os.path.join("src", "*.cu")))

flag = os.environ.get("OCTFORMER_KERNELS_CUDA", "auto")
use_cuda = flag == "1" or (flag == "auto" and CUDA_HOME is not None)
if flag == "1" and CUDA_HOME is None:
    raise RuntimeError("OCTFORMER_KERNELS_CUDA=1 but torch.utils.cpp_extension found no CUDA_HOME/nvcc")

cxx_flags = ["-O3", "-std=c++17", "-DPy_LIMITED_API=0x03090000"]
link_flags = []
# at::parallel_for is a header template: on OpenMP builds of torch it only runs in parallel when the extension itself
# is compiled with -fopenmp (otherwise it silently runs every range on the calling thread). The libgomp.so.1 we link
# resolves to the copy torch has already loaded (same soname), so torch.set_num_threads applies to our loops too.
if torch._C.has_openmp and sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
if use_cuda:
    ext = CUDAExtension(
        "octformer_kernels._C",
        cpp_sources + cu_sources,
        extra_compile_args={
            "cxx": cxx_flags + ["-DOCTFORMER_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"],
        },
        extra_link_args=link_flags,
        py_limited_api=True,
    )
else:
    ext = CppExtension(
        "octformer_kernels._C",
        cpp_sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
        py_limited_api=True,
    )

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
