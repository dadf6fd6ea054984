"""Developer tools around pan_ops, run from the repository root as `python -m tools.<name>`.

- op_check: the op's test inputs and float64 ground truth (shared by tests/ and gpu_probe)
- cuda_spills: where the CUDA kernels' register spills sit, from the built extension's SASS
- triton_compile: the Triton kernels compiled ahead of time for a chosen GPU architecture
- gpu_probe: small GPU workloads for compute-sanitizer and ncu
- gpu_check.sh: the one script run on a GPU machine (build, GPU tests, timings, sanitizer, ncu)
"""
