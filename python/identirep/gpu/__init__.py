"""The GPU layer: device arrays, the caller's stream, cuBLAS, and the two GPU backends' passes.

Modules by concern (docs/gpu.md has the map):
- ``arrays``: device views and copies of model arrays (CuPy, torch, bfloat16 as its bits);
- ``streams``: running CuPy work on the caller's stream (torch's, for torch CUDA tensors);
- ``cublas``: the pass driver's cuBLAS loader, ``cublasGemmEx`` through CuPy, the bfloat16 split;
- ``nvrtc``: the CUDA kernel headers as NVRTC programs, their names and launch table;
- ``plans``: what both passes share before their loops: operands, tile plans (compiled);
- ``state``: the device state of a pass and its statistics;
- ``cuda_backend``: the "cuda" backend (the compiled pass driver);
- ``cupy_backend``: the "cupy" backend (a Python tile loop over NVRTC-compiled kernels);
- ``pivots``: the label-side pivot criteria on the device.

Nothing here imports the engine or the measures: they import this layer.
"""
