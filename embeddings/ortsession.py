"""One way to open an ONNX model with onnxruntime, tuned, for every ONNX embedder in the project.

Why here: the export parity check, the `onnx:` embedder and the ONNX benchmark must run a model the same way, or the
speed and the numbers they report would not be comparable. Options (see `benchmarks/bench_onnx.py --explore`): all
graph optimisations and one intra-op thread per usable core, sequential execution. These equal onnxruntime's usual
defaults; they are set explicitly so that a build with other defaults, or a process pinned to fewer cores, still
gets them (one thread instead of one per core was ~2x slower on the 2-core CI machine; with them onnxruntime ran IR
models ~1.5x faster than torch there). On a machine with a CUDA build of onnxruntime, `device="cuda"` puts the CUDA
provider first.

Example:
    >>> session = ort_session("model.onnx")
    >>> features = session.run(["features"], {"input": x.numpy()})[0]
"""
from __future__ import annotations

from pathlib import Path

from embeddings.options import usable_cores
from labels.cli import UserError


def ort_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An `onnxruntime.InferenceSession` for `path`, on `device` ('cpu' or 'cuda[:N]').

    `threads`: intra-op threads; None = the cores this process may use (os.sched_getaffinity where available).
    Raises ValueError naming the file when onnxruntime cannot read it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or usable_cores()
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for missing or corrupt files
        raise UserError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from exc
