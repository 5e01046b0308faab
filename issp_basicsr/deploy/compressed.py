"""The compressed checkpoint: each pruned weight as its non-zero values plus a compact index, the rest dense.

Layout (a dict saved with ``torch.save``, read back with ``torch.load(..., weights_only=True)``)::

    {'format': 'issp_basicsr.compressed/1', 'half': bool, 'wrapped': bool,
     'checkpoint': {'params': {name: entry, ...}, 'params_ema': {...}}}

An entry is ``{'kind': 'sparse', ...}`` for a pruned Conv2d/Linear weight (a float tensor of 2 or 4 dimensions named
``*weight`` with zeros; one uint8 ``blob``: the index, then the values), and for every other tensor a dense form:
the tensor itself, ``{'kind': 'half', ...}`` (a float tensor stored as float16 by ``half=True``) or
``{'kind': 'deflated', ...}`` (its bytes deflated, when that halves them: SwinIR's attention-mask and position-index
buffers, which are most of a BasicSR SwinIR-light checkpoint).

* The index is a bitmask (one bit per weight) or CSR (non-zeros per output row, then the column gap to the
  previous non-zero of the row), whichever is smaller for that layer once deflated. Gaps are small integers
  (uint8 for densities above ~1%), so CSR wins at high sparsity and the bitmask at moderate sparsity.
* The values are stored byte-plane by byte-plane (all first bytes, then all second bytes, ...) and deflated:
  the surviving weights of a pruned layer share a few exponents, so the sign/exponent plane compresses to about
  a third, which pays for the index. Lossless: :func:`decompress_checkpoint` returns the same bits.

"Non-zero" means a non-zero bit pattern, so a stored -0.0 comes back as -0.0. With ``half=True`` every float tensor
is rounded to float16 (lossy, about half the size again) and cast back to its original dtype when loaded.

Nothing here imports BasicSR.
"""
import io
import os
import zlib
from collections import OrderedDict

import numpy as np
import torch

from ..errors import CompressedFormatError

FORMAT = 'issp_basicsr.compressed/1'
PARAM_KEYS = ('params', 'params_ema')
DEFLATE_MIN_NUMEL = 1024  # smaller dense tensors are stored as they are
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_FLOAT_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32,
                 'float64': torch.float64}


# ------------------------------------------------------------------------------------------ byte helpers
def _deflate(array: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(array).tobytes(), 9)


def _inflate(data: bytes, dtype, count: int) -> np.ndarray:
    array = np.frombuffer(zlib.decompress(data), dtype=dtype)
    if array.size != count:
        raise ValueError(f'expected {count} items, found {array.size}')
    return array


def _byte_planes(array: np.ndarray) -> np.ndarray:
    """Bytes of ``array`` regrouped plane by plane (all byte 0, all byte 1, ...): a shuffle that deflate likes."""
    return np.ascontiguousarray(array.view(np.uint8).reshape(-1, array.itemsize).T)


def _from_byte_planes(planes: np.ndarray, dtype, count: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    return np.ascontiguousarray(planes.reshape(itemsize, count).T).view(dtype).reshape(count)


def _smallest_uint(max_value: int):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def _numpy_dtype(torch_dtype):
    # bfloat16 has no NumPy twin: its bytes travel as int16
    return {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64,
            torch.bfloat16: np.int16}[torch_dtype]


def _to_numpy(tensor):
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy()
    return tensor.numpy()


def _from_numpy(array, torch_dtype):
    tensor = torch.from_numpy(np.array(array))
    return tensor.view(torch.bfloat16) if torch_dtype == torch.bfloat16 else tensor


def _dtype_name(dtype):
    return str(dtype).replace('torch.', '')


# ------------------------------------------------------------------------------------------ index coding
def _encode_bitmask(mask_2d: np.ndarray):
    return [_deflate(np.packbits(mask_2d.reshape(-1)))], {}


def _decode_bitmask(parts, meta, rows, cols):
    packed = np.frombuffer(zlib.decompress(parts[0]), dtype=np.uint8)
    if packed.size != (rows * cols + 7) // 8:
        raise ValueError('bitmask length does not match the shape')
    return np.flatnonzero(np.unpackbits(packed, count=rows * cols))


def _encode_csr(mask_2d: np.ndarray):
    rows_idx, cols_idx = np.nonzero(mask_2d)  # row-major order
    counts = np.bincount(rows_idx, minlength=mask_2d.shape[0])
    gaps = cols_idx.astype(np.int64)
    if gaps.size:
        gaps[1:] -= cols_idx[:-1].astype(np.int64) + 1
        row_start = np.ones(gaps.size, dtype=bool)
        row_start[1:] = rows_idx[1:] != rows_idx[:-1]
        gaps[row_start] = cols_idx[row_start]
    count_dtype = _smallest_uint(int(counts.max(initial=0)))
    gap_dtype = _smallest_uint(int(gaps.max(initial=0)))
    parts = [_deflate(_byte_planes(counts.astype(count_dtype))), _deflate(_byte_planes(gaps.astype(gap_dtype)))]
    return parts, {'count_dtype': np.dtype(count_dtype).name, 'gap_dtype': np.dtype(gap_dtype).name}


def _decode_csr(parts, meta, rows, cols):
    count_dtype, gap_dtype = np.dtype(meta['count_dtype']), np.dtype(meta['gap_dtype'])
    counts = _from_byte_planes(_inflate(parts[0], np.uint8, rows * count_dtype.itemsize), count_dtype, rows)
    nnz = int(counts.sum(dtype=np.int64))
    gaps = _from_byte_planes(_inflate(parts[1], np.uint8, nnz * gap_dtype.itemsize), gap_dtype, nnz)
    steps = gaps.astype(np.int64) + 1
    running = np.cumsum(steps)
    starts = np.cumsum(counts.astype(np.int64)) - counts  # first element of each row
    before_row = np.where(starts > 0, running[np.maximum(starts - 1, 0)] if nnz else 0, 0)
    cols_idx = running - 1 - np.repeat(before_row, counts)
    rows_idx = np.repeat(np.arange(rows, dtype=np.int64), counts)
    if nnz and (cols_idx.min() < 0 or cols_idx.max() >= cols):
        raise ValueError('CSR column index out of range')
    return rows_idx * cols + cols_idx


_INDEX_CODECS = {'bitmask': (_encode_bitmask, _decode_bitmask), 'csr': (_encode_csr, _decode_csr)}


# ------------------------------------------------------------------------------------------ tensor entries
def is_pruned_weight(name, tensor):
    """A Conv2d/Linear weight (float, 2 or 4 dims, named ``*weight``) with at least one zero."""
    return (name.endswith('weight') and torch.is_tensor(tensor) and tensor.dtype in _FLOAT_DTYPES.values()
            and tensor.dim() in (2, 4) and tensor.numel() > 0
            and bool((tensor.view(_INT_VIEW[tensor.element_size()]) == 0).any()))


def encode_sparse(tensor, half=False):
    """The sparse entry of one weight, or None when storing it dense would be as small."""
    tensor = tensor.detach().cpu().contiguous()
    bits = tensor.view(_INT_VIEW[tensor.element_size()])
    mask = (bits != 0).numpy().reshape(tensor.shape[0], -1)
    values = tensor.reshape(-1)[torch.from_numpy(mask.reshape(-1))]
    if half:
        values = values.to(torch.float16)
    value_bytes = _deflate(_byte_planes(_to_numpy(values)))
    best = None
    for index_kind, (encode, _) in _INDEX_CODECS.items():
        parts, meta = encode(mask)
        size = sum(len(p) for p in parts)
        if best is None or size < best[0]:
            best = (size, index_kind, parts, meta)
    _, index_kind, parts, meta = best
    parts = parts + [value_bytes]
    if sum(len(p) for p in parts) >= tensor.numel() * (2 if half else tensor.element_size()):
        return None
    blob = torch.frombuffer(bytearray(b''.join(parts)), dtype=torch.uint8)
    return {
        'kind': 'sparse', 'shape': list(tensor.shape), 'dtype': _dtype_name(tensor.dtype),
        'value_dtype': _dtype_name(values.dtype), 'nnz': int(values.numel()), 'index': index_kind,
        'sections': [len(p) for p in parts], 'blob': blob, **meta
    }


def decode_sparse(entry):
    shape = [int(s) for s in entry['shape']]
    dtype, value_dtype = _FLOAT_DTYPES[entry['dtype']], _FLOAT_DTYPES[entry['value_dtype']]
    numel = int(np.prod(shape))
    rows = shape[0]
    cols = numel // rows if rows else 0
    data = entry['blob'].numpy().tobytes()
    sections = [int(s) for s in entry['sections']]
    if sum(sections) != len(data):
        raise ValueError('blob length does not match its sections')
    parts, start = [], 0
    for size in sections:
        parts.append(data[start:start + size])
        start += size
    positions = _INDEX_CODECS[entry['index']][1](parts[:-1], entry, rows, cols)
    nnz = int(entry['nnz'])
    if positions.size != nnz:
        raise ValueError(f'index has {positions.size} non-zeros, entry says {nnz}')
    np_value_dtype = _numpy_dtype(value_dtype)
    planes = _inflate(parts[-1], np.uint8, nnz * np.dtype(np_value_dtype).itemsize)
    values = _from_numpy(_from_byte_planes(planes, np_value_dtype, nnz), value_dtype).to(dtype)
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(positions)] = values
    return flat.view(shape)


def encode_dense(tensor, half=False):
    """A dense tensor as stored: itself, deflated when that halves it (SwinIR's attention-mask and
    position-index buffers, mostly repeated values), and rounded to float16 first when ``half``."""
    tensor = tensor.detach().cpu().contiguous()
    stored = tensor.half() if half and tensor.is_floating_point() else tensor
    if stored.numel() >= DEFLATE_MIN_NUMEL:
        raw = stored.view(-1).view(torch.uint8).numpy()
        data = _deflate(raw.reshape(-1, stored.element_size()).T)
        if len(data) * 2 <= raw.size:
            return {'kind': 'deflated', 'shape': list(stored.shape), 'dtype': _dtype_name(tensor.dtype),
                    'stored_dtype': _dtype_name(stored.dtype),
                    'blob': torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    if stored is not tensor:
        return {'kind': 'half', 'dtype': _dtype_name(tensor.dtype), 'tensor': stored}
    return tensor


def decode_deflated(entry):
    dtype, stored_dtype = _torch_dtype(entry['dtype']), _torch_dtype(entry['stored_dtype'])
    shape = [int(s) for s in entry['shape']]
    itemsize = torch.empty(0, dtype=stored_dtype).element_size()
    count = int(np.prod(shape)) if shape else 1
    planes = _inflate(entry['blob'].numpy().tobytes(), np.uint8, count * itemsize)
    data = np.ascontiguousarray(planes.reshape(itemsize, count).T).reshape(-1)
    return torch.from_numpy(data).view(stored_dtype).reshape(shape).to(dtype)


def _torch_dtype(name):
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f'unknown dtype {name!r}')
    return dtype


def encode_state_dict(state_dict, half=False):
    encoded = OrderedDict()
    for name, value in state_dict.items():
        entry = None
        if is_pruned_weight(name, value):
            entry = encode_sparse(value, half)
        if entry is None:
            entry = encode_dense(value, half) if torch.is_tensor(value) else value
        encoded[name] = entry
    return encoded


def decode_state_dict(encoded):
    decoded = OrderedDict()
    for name, entry in encoded.items():
        if isinstance(entry, dict) and entry.get('kind') == 'sparse':
            decoded[name] = decode_sparse(entry)
        elif isinstance(entry, dict) and entry.get('kind') == 'deflated':
            decoded[name] = decode_deflated(entry)
        elif isinstance(entry, dict) and entry.get('kind') == 'half':
            decoded[name] = entry['tensor'].to(_FLOAT_DTYPES[entry['dtype']])
        else:
            decoded[name] = entry
    return decoded


# ------------------------------------------------------------------------------------------ checkpoints
def _describe(path):
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else 'the checkpoint'


def read_torch_file(path):
    """``torch.load(path, weights_only=True)`` on the CPU, with any failure as one line naming the file."""
    if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):
        raise FileNotFoundError(f'{path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # truncated zip, pickle of foreign objects, not a torch file at all
        reason = (str(error).strip().splitlines() or [''])[0].split('. ')[0]
        raise CompressedFormatError(f'{_describe(path)}: not a readable PyTorch checkpoint, truncated or foreign '
                                    f'({type(error).__name__}: {reason[:120]})') from None


def is_compressed(obj):
    return isinstance(obj, dict) and obj.get('format') == FORMAT


def _plain_parts(checkpoint, source):
    """``(wrapped, {param_key: state_dict})`` of a plain BasicSR checkpoint (or of a bare state dict)."""
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CompressedFormatError(f'{source}: not a model checkpoint (expected a dict of tensors)')
    if is_compressed(checkpoint):
        raise CompressedFormatError(f'{source}: is already compressed (use --dense to restore it)')
    if any(key in checkpoint for key in PARAM_KEYS):
        parts = OrderedDict((key, value) for key, value in checkpoint.items())
        for key, state_dict in parts.items():
            if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
                raise CompressedFormatError(f'{source}: {key} is not a state dict of tensors')
        return True, parts
    if all(torch.is_tensor(v) for v in checkpoint.values()):
        return False, OrderedDict(params=checkpoint)
    raise CompressedFormatError(f'{source}: not a model checkpoint (no params/params_ema and not a state dict; '
                                'a training state is not a model checkpoint)')


def compress_checkpoint(checkpoint, half=False, ema=False, source='the checkpoint'):
    """The compressed form (a dict) of a plain checkpoint: ``{'params': ...}``, with ``params_ema``, or bare.

    ``ema=True`` keeps only ``params_ema`` and stores it as ``params``, so the restored file loads with BasicSR's
    default ``param_key_g``.
    """
    wrapped, parts = _plain_parts(checkpoint, source)
    if ema:
        if 'params_ema' not in parts:
            raise CompressedFormatError(f'{source}: has no params_ema (trained without ema_decay); drop --ema')
        parts, wrapped = OrderedDict(params=parts['params_ema']), True
    return {
        'format': FORMAT, 'half': bool(half), 'wrapped': wrapped,
        'checkpoint': OrderedDict((key, encode_state_dict(sd, half)) for key, sd in parts.items())
    }


def decompress_checkpoint(compressed, source='the checkpoint'):
    """The plain checkpoint (``{'params': OrderedDict, ...}`` or a bare state dict) a compressed dict stands for."""
    if not is_compressed(compressed):
        raise CompressedFormatError(f'{source}: not an issp_basicsr compressed checkpoint (no {FORMAT!r} tag)')
    parts = OrderedDict()
    for key, encoded in compressed['checkpoint'].items():
        try:
            parts[key] = decode_state_dict(encoded)
        except (ValueError, KeyError, TypeError, RuntimeError, zlib.error) as error:
            raise CompressedFormatError(f'{source}: {key} is corrupt ({error})') from None
    if not compressed.get('wrapped', True):
        return parts['params']
    return dict(parts)


def save_compressed(checkpoint, path, half=False, ema=False, source=None):
    """Compress ``checkpoint`` (a dict, or the path of a plain checkpoint) into ``path``; returns the dict."""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or os.fspath(checkpoint)
        checkpoint = read_torch_file(checkpoint)
    compressed = compress_checkpoint(checkpoint, half=half, ema=ema, source=source or 'the checkpoint')
    torch.save(compressed, path)
    return compressed


def load_compressed(path):
    """The plain checkpoint stored in the compressed file ``path`` (dense tensors, original dtypes)."""
    return decompress_checkpoint(read_torch_file(path), source=_describe(path))


def load_checkpoint(path):
    """A plain checkpoint from ``path``, whether it is compressed or a plain BasicSR ``.pth``."""
    obj = read_torch_file(path)
    return decompress_checkpoint(obj, source=_describe(path)) if is_compressed(obj) else obj


def state_dict_from(checkpoint, param_key='params', source='the checkpoint'):
    """BasicSR's choice of weights: ``param_key``, falling back to ``params`` when it is missing."""
    if isinstance(checkpoint, dict) and not any(key in checkpoint for key in PARAM_KEYS):
        return checkpoint  # a bare state dict
    if param_key not in checkpoint and 'params' in checkpoint:
        param_key = 'params'
    if param_key not in checkpoint:
        raise CompressedFormatError(f'{source}: has no {param_key} (it has {", ".join(checkpoint)})')
    return checkpoint[param_key]


def load_state_dict(path, param_key='params'):
    """The state dict stored under ``param_key`` in a compressed (or plain) checkpoint file."""
    return state_dict_from(load_checkpoint(path), param_key, _describe(path))


def load_into(model, path, param_key='params', strict=True):
    """Load a compressed (or plain) checkpoint into a plain architecture; returns ``model``."""
    model.load_state_dict(load_state_dict(path, param_key), strict=strict)
    return model


def load_sparse(model, path, param_key='params', example_input=None, **convert_options):
    """Load a checkpoint into ``model`` and convert its pruned layers to sparse execution (inference only)."""
    from .sparse_modules import convert_to_sparse
    load_into(model, path, param_key)
    return convert_to_sparse(model.eval(), example_input=example_input, inplace=True, **convert_options)


def unpruned_bytes(compressed):
    """Raw bytes of the tensors a compressed checkpoint does not store sparse (the "+ unpruned" of the size bound)."""
    total = 0
    for encoded in compressed['checkpoint'].values():
        for entry in encoded.values():
            if torch.is_tensor(entry):
                total += entry.numel() * entry.element_size()
            elif isinstance(entry, dict) and entry.get('kind') in ('deflated', 'half'):
                shape = entry['shape'] if entry['kind'] == 'deflated' else entry['tensor'].shape
                itemsize = torch.empty(0, dtype=_torch_dtype(entry['dtype'])).element_size()
                total += int(np.prod(shape)) * itemsize
    return total


def serialized_size(obj):
    """Bytes ``torch.save`` writes for ``obj`` (what the file on disk would take)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes
