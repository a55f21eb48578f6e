"""Build octformer-kernels: the octformer torch ops (CPU always; CUDA when nvcc is found and not disabled).

OCTFORMER_KERNELS_CUDA=0 forces the CPU-only variant (what CI installs); =1 requires CUDA.
"""

import glob
import os

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
if use_cuda:
    ext = CUDAExtension(
        "octformer_kernels._C",
        cpp_sources + cu_sources,
        extra_compile_args={
            "cxx": cxx_flags + ["-DOCTFORMER_WITH_CUDA"],
            "nvcc": ["-O3", "-std=c++17", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"],
        },
        py_limited_api=True,
    )
else:
    ext = CppExtension(
        "octformer_kernels._C", cpp_sources, extra_compile_args={"cxx": cxx_flags}, py_limited_api=True
    )

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
