"""ONNX export of the dense-with-zeros model (torch.onnx), checked with onnxruntime when it is installed.

ONNX runtimes execute the pruned weights as ordinary dense initializers (zeros included): the file is as large and
as fast as the dense model; its use is portability. The graph is traced at one input size: window-based
architectures (SwinIR) bake their attention masks for that size, so export at the size you will run.
``onnx`` (needed by the exporter) and ``onnxruntime`` (the check) are optional: ``pip install issp-basicsr[onnx]``.
Nothing here imports BasicSR.
"""
import importlib.util
import warnings

import torch


def onnx_available():
    return importlib.util.find_spec('onnx') is not None


def onnxruntime_available():
    return importlib.util.find_spec('onnxruntime') is not None


@torch.no_grad()
def export_onnx(model, path, example_input, opset_version=17):
    """Write ``model`` (evaluated on ``example_input``'s size) to ``path`` with the TorchScript-based exporter."""
    if not onnx_available():
        raise ImportError('ONNX export needs the onnx package: pip install issp-basicsr[onnx] (or pip install onnx)')
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about Python control flow on shapes
        torch.onnx.export(model, (example_input, ), path, dynamo=False, input_names=['lq'], output_names=['sr'],
                          opset_version=opset_version, do_constant_folding=True)
    return path


@torch.no_grad()
def check_onnx(model, path, example_input):
    """Largest absolute difference between onnxruntime on ``path`` and ``model`` on ``example_input``;
    None when onnxruntime is not installed."""
    if not onnxruntime_available():
        return None
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (onnx_out, ) = session.run(['sr'], {'lq': example_input.detach().cpu().numpy()})
    reference = model.eval()(example_input).detach().cpu()
    return float((torch.from_numpy(onnx_out) - reference).abs().max())
