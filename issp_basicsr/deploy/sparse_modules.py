"""Sparse execution of pruned Conv2d and Linear layers on a CPU with PyTorch's CSR matrix product (MKL).

Why this layout is fast: a 3x3 convolution is the sum, over the 9 kernel offsets, of a (Cout x Cin) weight slice
times the input shifted by that offset. With the zero-padded input flattened per channel to ``(Cin, rows * Wp)``,
the shift by offset ``(kh, kw)`` is the contiguous column window starting at ``kh * Wp + kw``: a plain dense
matrix with leading dimension ``rows * Wp``, which MKL's sparse x dense product reads in place. So a stride-1
convolution is 9 CSR products accumulated into one output, with no im2col/unfold (the unfold copy alone costs
more than a dense 3x3 convolution here). Each output row then carries ``Wp - Wo`` columns of garbage (windows that
wrap around the row end); the result is returned as a strided view that skips them.

Which layers become sparse (see :func:`plan_sparse_layers`): with an example input, each candidate layer is timed
dense and sparse on its real input and kept dense unless the sparse one is faster; without one, a layer is
converted when its density (fraction of non-zero weights) is at most ``max_density`` (0.1). Grouped or
non-zero-padded convolutions, and weights that are not float32/float64, always stay dense.

Nothing here imports BasicSR: it works on any ``nn.Module``.
"""
import contextlib
import copy
import threading
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# The rule used without an example input, from single-layer timings on this 2-core CPU (64x64 input, 4096 tokens,
# one thread): sparse/dense break even near density 0.15 for every shape measured (3x3 convolutions 256->256,
# 64->64, 60->60; SwinIR-light's Linear layers 60->180, 60->120, 120->60); at 0.1 sparse is 1.15-1.7x faster, at
# 0.05 1.6-3.5x, at 0.01 2-12x (the larger the layer, the larger the gain). 0.1 keeps a margin for noise.
DEFAULT_MAX_DENSITY = 0.1
SPARSE_DTYPES = (torch.float32, torch.float64)
# Column blocking of a convolution's products: when the input matrix exceeds UNTILED_MAX_BYTES (EDSR-L's 128x128
# upsampling convolution: 17 MB), the output columns are done in blocks whose input slice is about TILE_BYTES, so
# each block stays in the L2 cache while every output row reads it. Measured (one thread, 256->1024 at 128x128,
# density 0.1): 1.02 s unblocked, 0.55 s blocked, 0.77 s dense. Smaller inputs gain little and are not blocked.
TILE_BYTES = 1 << 20
UNTILED_MAX_BYTES = 8 << 20

_workspace = threading.local()


@contextlib.contextmanager
def _quiet_beta():
    """Silence PyTorch's 'sparse CSR support is in beta' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        yield


def _csr_parts(dense_2d):
    """``(crow, col, values)`` of ``dense_2d`` in CSR form, with int32 indices: MKL's, so the products do not
    convert int64 indices on every call. Kept as plain tensors (buffers), so modules copy, move and save as usual."""
    index_dtype = torch.int32 if dense_2d.numel() < 2**31 else torch.int64
    with _quiet_beta():
        csr = dense_2d.contiguous().to_sparse_csr()
    return csr.crow_indices().to(index_dtype), csr.col_indices().to(index_dtype), csr.values()


def _csr(crow, col, values, shape):
    """A CSR tensor over existing index/value tensors (no copy)."""
    with _quiet_beta():
        return torch.sparse_csr_tensor(crow, col, values, shape)


def _padded_buffer(key, shape, dtype, device):
    """A zero-filled scratch tensor reused across calls and layers of the same geometry (per thread).

    Only its interior is ever written, so its border stays zero; reusing it avoids a fresh multi-megabyte
    allocation per layer, whose page faults cost as much as the sparse product itself on this machine.
    """
    cache = getattr(_workspace, 'buffers', None)
    if cache is None:
        cache = _workspace.buffers = {}
    full_key = (key, tuple(shape), dtype, device)
    buffer = cache.get(full_key)
    if buffer is None:
        buffer = cache[full_key] = torch.zeros(shape, dtype=dtype, device=device)
    return buffer


def clear_workspace():
    """Free the scratch buffers of this thread (they are re-made on the next sparse forward)."""
    _workspace.buffers = {}


def _conv_padding(conv):
    """(top, bottom, left, right) zero padding of ``conv``, resolving 'valid' and 'same'."""
    if isinstance(conv.padding, str):
        if conv.padding == 'valid':
            return 0, 0, 0, 0
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads[0][0], pads[0][1], pads[1][0], pads[1][1]
    ph, pw = conv.padding
    return ph, ph, pw, pw


def sparse_supported(module):
    """Whether :class:`SparseConv2d` / :class:`SparseLinear` can stand in for ``module``."""
    if isinstance(module, nn.Linear):
        return module.weight.dtype in SPARSE_DTYPES
    if isinstance(module, nn.Conv2d):
        return (module.groups == 1 and module.padding_mode == 'zeros' and module.weight.dtype in SPARSE_DTYPES)
    return False


class SparseConv2d(nn.Module):
    """A Conv2d (groups 1, zero padding) that stores its weight as one CSR matrix per kernel offset.

    Same arguments and output as the dense layer it was made from (:meth:`from_dense`); ``to_dense()`` gives it back.
    """

    def __init__(self, weight, bias, stride, padding, dilation):
        super().__init__()
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.padding = tuple(padding)  # top, bottom, left, right
        self.weight_shape = tuple(weight.shape)
        self.nnz = int(torch.count_nonzero(weight))
        # kernel offset (i, j) -> (Cout x Cin) CSR slice; offsets whose slice is all zero are skipped. The slices'
        # row pointers are rows of `crow`; their columns and values are runs of `col` / `values`.
        self.offsets, self.runs = [], []
        crows, cols, values = [], [], []
        start = 0
        for i in range(kh):
            for j in range(kw):
                crow, col, vals = _csr_parts(weight[:, :, i, j].detach())
                if vals.numel():
                    self.offsets.append((i, j))
                    self.runs.append((start, start + vals.numel()))
                    start += vals.numel()
                    crows.append(crow)
                    cols.append(col)
                    values.append(vals)
        device = weight.device
        self.register_buffer('crow', torch.stack(crows) if crows else torch.zeros(0, self.out_channels + 1,
                                                                                   dtype=torch.int32, device=device))
        self.register_buffer('col', torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int32, device=device))
        self.register_buffer('values', torch.cat(values) if values else weight.new_zeros(0))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def slices(self):
        """``[(offset, CSR slice)]``, views of the buffers."""
        shape = (self.out_channels, self.in_channels)
        return [(offset, _csr(self.crow[k], self.col[a:b], self.values[a:b], shape))
                for k, (offset, (a, b)) in enumerate(zip(self.offsets, self.runs))]

    @classmethod
    def from_dense(cls, conv: nn.Conv2d):
        if not sparse_supported(conv):
            raise ValueError(f'{conv} cannot run sparse (grouped, non-zero padding or dtype {conv.weight.dtype})')
        return cls(conv.weight, conv.bias, conv.stride, _conv_padding(conv), conv.dilation)

    def dense_weight(self):
        weight = self.values.new_zeros(self.weight_shape)
        for (i, j), part in self.slices():
            weight[:, :, i, j] = part.to_dense()
        return weight

    def to_dense(self):
        top, bottom, left, right = self.padding
        if top != bottom or left != right:
            raise ValueError('asymmetric padding has no nn.Conv2d equivalent')
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, (top, left),
                         self.dilation, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self):
        total = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, '
                f'padding={self.padding}, dilation={self.dilation}, density={self.nnz / total:.4f}')

    def forward(self, x):
        n, c, h, w = x.shape
        top, bottom, left, right = self.padding
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        sh, sw = self.stride
        hp, wp = h + top + bottom, w + left + right
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        if sh == 1 and sw == 1:
            return self._forward_stride1(x, n, c, h, w, hp, wp, ho, wo)
        return self._forward_strided(x, n, c, h, w, hp, wp, ho, wo)

    def _init_output(self, columns, like):
        if self.bias is None:
            return torch.zeros(self.out_channels, columns, dtype=like.dtype, device=like.device)
        return self.bias.to(like.dtype).unsqueeze(1).expand(self.out_channels, columns).contiguous()

    def _forward_stride1(self, x, n, c, h, w, hp, wp, ho, wo):
        top, _, left, _ = self.padding
        dh, dw = self.dilation
        # images side by side in one (C, n * hp * wp) matrix; one extra zero row keeps every window in bounds
        rows = n * hp + (self.kernel_size[0] - 1) * dh + 1
        padded = _padded_buffer((n, hp, top, left, h, w), (c, rows, wp), x.dtype, x.device)
        padded[:, :n * hp].view(c, n, hp, wp)[:, :, top:top + h, left:left + w].copy_(x.transpose(0, 1))
        flat = padded.view(c, rows * wp)
        columns = n * hp * wp
        out = self._init_output(columns, x)
        slices = self.slices()
        block = columns
        if c * columns * x.element_size() > UNTILED_MAX_BYTES:
            block = max(TILE_BYTES // (c * x.element_size()), 256)
        for first in range(0, columns, block):
            last = min(first + block, columns)
            target = out[:, first:last]  # a view: the products write into `out` in place
            for (i, j), part in slices:
                start = i * dh * wp + j * dw
                target.addmm_(part, flat[:, start + first:start + last])
        return out.view(self.out_channels, n, hp, wp)[:, :, :ho, :wo].transpose(0, 1)

    def _forward_strided(self, x, n, c, h, w, hp, wp, ho, wo):
        top, bottom, left, right = self.padding
        dh, dw = self.dilation
        sh, sw = self.stride
        padded = F.pad(x, (left, right, top, bottom)).transpose(0, 1)
        out = self._init_output(n * ho * wo, x)
        for (i, j), part in self.slices():
            window = padded[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            out.addmm_(part, window.reshape(c, n * ho * wo))
        return out.view(self.out_channels, n, ho, wo).transpose(0, 1)


class SparseLinear(nn.Module):
    """A Linear layer with a CSR weight: ``y^T = W x^T`` through MKL's sparse x dense product.

    The input is read in place as a column-major matrix and the result returned as a transposed view, so the
    layer makes no copy of its input or output.
    """

    def __init__(self, weight, bias):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.nnz = int(torch.count_nonzero(weight))
        crow, col, values = _csr_parts(weight.detach())
        self.register_buffer('crow', crow)
        self.register_buffer('col', col)
        self.register_buffer('values', values)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def weight_csr(self):
        return _csr(self.crow, self.col, self.values, (self.out_features, self.in_features))

    @classmethod
    def from_dense(cls, linear: nn.Linear):
        if not sparse_supported(linear):
            raise ValueError(f'{linear} cannot run sparse (dtype {linear.weight.dtype})')
        return cls(linear.weight, linear.bias)

    def dense_weight(self):
        return self.weight_csr().to_dense()

    def to_dense(self):
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self):
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'density={self.nnz / (self.in_features * self.out_features):.4f}')

    def forward(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.bias is None:
            out = torch.mm(self.weight_csr(), x2.t())
        else:
            out = torch.addmm(self.bias.to(x.dtype).unsqueeze(1), self.weight_csr(), x2.t())
        return out.t().reshape(*lead, self.out_features)


def to_sparse_module(module):
    return SparseConv2d.from_dense(module) if isinstance(module, nn.Conv2d) else SparseLinear.from_dense(module)


def layer_density(module):
    weight = module.weight
    return int(torch.count_nonzero(weight)) / weight.numel()


def _best_time(fn, repeats):
    fn()  # warm-up (workspace, MKL handles)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def plan_sparse_layers(model, example_input=None, max_density=DEFAULT_MAX_DENSITY, repeats=3):
    """Decide, per Conv2d/Linear layer, whether it runs sparse; returns ``{name: decision dict}``.

    A layer is a candidate when :func:`sparse_supported` and it has zeros. Without ``example_input``: sparse when
    its density is at most ``max_density``. With it: the model runs once on the example to capture each
    candidate's input, then the dense and the sparse layer are each timed (best of ``repeats``) on that input,
    and the faster one is kept. Timing makes the choice right for this machine and input size.
    """
    plan = {}
    candidates = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        density = layer_density(module)
        entry = {'type': type(module).__name__, 'density': density, 'sparse': False, 'reason': ''}
        if not sparse_supported(module):
            entry['reason'] = 'unsupported (grouped, padding mode or dtype)'
        elif density >= 1.0:
            entry['reason'] = 'dense weight'
        elif example_input is None:
            entry['sparse'] = density <= max_density
            entry['reason'] = f'density {density:.4f} {"<=" if entry["sparse"] else ">"} {max_density}'
        else:
            candidates[name] = module
        plan[name] = entry
    if example_input is None or not candidates:
        return plan

    inputs = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, args[0].clone()))
        for name, module in candidates.items()
    ]
    try:
        model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in candidates.items():
        entry = plan[name]
        if name not in inputs:
            entry['reason'] = 'not called on the example input'
            continue
        sparse = to_sparse_module(module)
        layer_input = inputs.pop(name)
        dense_s = _best_time(lambda: module(layer_input), repeats)
        sparse_s = _best_time(lambda: sparse(layer_input), repeats)
        entry.update(dense_ms=dense_s * 1e3, sparse_ms=sparse_s * 1e3, sparse=sparse_s < dense_s,
                     reason='timed')
    return plan


@torch.no_grad()
def convert_to_sparse(model, example_input=None, max_density=DEFAULT_MAX_DENSITY, plan=None, inplace=False,
                      repeats=3):
    """Swap the pruned Conv2d/Linear layers of ``model`` for :class:`SparseConv2d` / :class:`SparseLinear`.

    ``plan`` (from :func:`plan_sparse_layers`, or ``{name: True/False}``) says which; by default it is made here
    from ``example_input`` or ``max_density``. Returns the converted model (a copy unless ``inplace``); its
    ``sparse_plan`` attribute holds the plan. Inference only: the sparse layers hold no trainable weight.
    """
    if plan is None:
        plan = plan_sparse_layers(model, example_input, max_density, repeats)
    if not inplace:
        model = copy.deepcopy(model)
    for name, decision in plan.items():
        use_sparse = decision['sparse'] if isinstance(decision, dict) else bool(decision)
        if not use_sparse:
            continue
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, to_sparse_module(getattr(parent, child)))
    model.sparse_plan = plan
    return model.eval()


def convert_to_dense(model, inplace=False):
    """The inverse of :func:`convert_to_sparse`: plain Conv2d/Linear layers again (zeros included)."""
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, (SparseConv2d, SparseLinear)):
            parent_name, _, child = name.rpartition('.')
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.to_dense())
    return model
