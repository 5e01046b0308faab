"""CUDA against CPU: the pruning core selects the same weights on a GPU as on a CPU, bit for bit.

Every test here is marked ``cuda``: collected everywhere, skipped without a CUDA device (tests/conftest.py), run on a
GPU machine by ``benchmarks/gpu_check.py`` (``pytest -m cuda tests/test_cuda.py``).

How the comparison works: one model lives on the GPU and trains with real Adam steps; after every optimizer step its
weights are copied bit for bit into a CPU twin, then both sparsifiers run the same pruning step. The CPU one takes the
threshold check wherever it can (see ``sparsity/selection.py``), the CUDA one always ranks exactly, so equal masks and
equal weights after every step show that both paths and both devices select the same set, ties included.
Channel granularity is not tested: the core has no channel pruning yet.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import issp_basicsr  # noqa: F401  (BasicSR 1.4.2 fixes before its archs are imported)
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.swinir_arch import SwinIR
from issp_basicsr.distributed import mask_checksum
from issp_basicsr.sparsity import build_sparsifier, prunable_layers, pruned_count

pytestmark = pytest.mark.cuda

PRUNE_ITER = 3  # steps 1-2 shrink, 3 freezes, 4-5 fine-tune
STEPS = 5


def swinir_light():
    """SwinIR-light x4 as in the paper: embed 60, depths/heads 6x4, window 8, mlp 2, pixelshuffledirect."""
    return SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6],
                  embed_dim=60, num_heads=[6, 6, 6, 6], mlp_ratio=2, upsampler='pixelshuffledirect',
                  resi_connection='1conv')


def edsr_l():
    """EDSR-L x4 as in the paper: 256 features, 32 residual blocks, residual scale 0.1."""
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=256, num_block=32, upscale=4, res_scale=0.1)


# key -> (builder, Adam lr of the moving steps, LR patch of their random batch)
MODELS = {'swinir': (swinir_light, 1e-3, 16), 'edsr': (edsr_l, 1e-4, 12)}

# the sparsity blocks compared (prune_iter is added); 2:4 leaves conv_first dense: its input size is 3
CASES = {
    'issp': dict(method='issp', ratio=0.9, alpha=0.95),
    'iht': dict(method='iht', ratio=0.9),
    'issr': dict(method='issr', ratio=0.9, reg_step=0.01, reg_interval=1, reg_max=0.1),
    'greg': dict(method='greg', ratio=0.9, reg_step=0.01, reg_interval=1, reg_max=0.1),
    'l1': dict(method='l1', ratio=0.9),
    'scratch': dict(method='scratch', ratio=0.9, seed=3),
    'dense': dict(method='dense'),
    'issp-global': dict(method='issp', ratio=0.9, alpha=0.95, scope='global'),
    'issp-2:4': dict(method='issp', ratio=0.5, alpha=0.95, pattern='2:4', exclude=['conv_first']),
    'iht-2:4-0.75': dict(method='iht', ratio=0.75, pattern='2:4', exclude=['conv_first']),
    'iht-global-2:4': dict(method='iht', ratio=0.9, scope='global', pattern='2:4', exclude=['conv_first']),
}


def cuda():
    return torch.device('cuda')


@pytest.fixture(scope='module')
def trained():
    """``{key: model on the GPU}`` after 3 real Adam steps from the seeded initialisation (built on first use)."""
    cache = {}

    def get(key):
        if key not in cache:
            build, lr, patch = MODELS[key]
            torch.manual_seed(0)
            model = build().to(cuda())
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
            generator = torch.Generator().manual_seed(1)
            for _ in range(3):
                adam_step(model, optimizer, patch, generator)
            cache[key] = model
        return cache[key]

    return get


def batch(patch, generator, device):
    lq = torch.rand(1, 3, patch, patch, generator=generator).to(device)
    gt = torch.rand(1, 3, patch * 4, patch * 4, generator=generator).to(device)
    return lq, gt


def adam_step(model, optimizer, patch, generator):
    backward(model, optimizer, patch, generator)
    optimizer.step()


def backward(model, optimizer, patch, generator):
    lq, gt = batch(patch, generator, next(model.parameters()).device)
    optimizer.zero_grad(set_to_none=True)
    F.l1_loss(model(lq), gt).backward()


def weights(model):
    return {name: module.weight for name, module in prunable_layers(model)}


def same_bits(a, b):
    """Bit-for-bit equality of two float tensors (NaN included, +0.0 and -0.0 told apart)."""
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
    return a.dtype == b.dtype and torch.equal(a.view(bits), b.view(bits))


def assert_same(sp_gpu, sp_cpu, gpu, cpu, where):
    """Masks, phase and every prunable weight identical bit for bit between the CUDA and the CPU twin."""
    masks_gpu, masks_cpu = sp_gpu.masks(), sp_cpu.masks()
    assert list(masks_gpu) == list(masks_cpu), where
    for name, mask in masks_gpu.items():
        assert mask.device.type == cuda().type, (where, name)
        different = int((mask.cpu() != masks_cpu[name]).sum())
        assert different == 0, f'{where}: layer {name}: {different} weights selected on one device only'
    assert sp_gpu.frozen == sp_cpu.frozen, where
    cpu_weights = weights(cpu)
    for name, weight in weights(gpu).items():
        assert same_bits(weight.detach().cpu(), cpu_weights[name].detach()), f'{where}: weights of {name} differ'


def lockstep(model, block, patch, lr, steps=STEPS):
    """Train ``model`` (on the GPU) for ``steps`` Adam steps with a sparsifier, a CPU twin following it.

    Returns the two sparsifiers and the two models after the last step; every step is compared on the way.
    """
    gpu = copy.deepcopy(model)
    cpu = copy.deepcopy(gpu).cpu()
    block = dict(block, prune_iter=PRUNE_ITER)
    sp_gpu, sp_cpu = build_sparsifier(gpu, **block), build_sparsifier(cpu, **block)
    if cuda().type == 'cuda':  # CUDA always ranks exactly, the CPU twin checks thresholds where it can
        assert not any(getattr(group, 'incremental', False) for group in sp_gpu.groups)
    assert_same(sp_gpu, sp_cpu, gpu, cpu, 'after building')
    optimizer = torch.optim.Adam(gpu.parameters(), lr=lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(2)
    cpu_params = dict(cpu.named_parameters())
    for it in range(1, steps + 1):
        backward(gpu, optimizer, patch, generator)
        before = {}
        for name, param in gpu.named_parameters():
            cpu_params[name].grad = param.grad.detach().cpu().clone()
            before[name] = cpu_params[name].grad.clone()
        sp_gpu.pre_step(it)
        sp_cpu.pre_step(it)
        changed = 0
        for name, param in gpu.named_parameters():  # issr/greg: the same penalty gradient, up to rounding (FMA)
            grad_cpu = cpu_params[name].grad
            torch.testing.assert_close(param.grad.cpu(), grad_cpu, rtol=1e-5,
                                       atol=1e-6 * float(grad_cpu.abs().max()) + 1e-12)
            changed += int((grad_cpu != before[name]).sum())
        if block['method'] in ('issr', 'greg') and not sp_cpu.frozen:
            assert changed > 0, f'step {it}: the penalty changed no gradient'
        optimizer.step()
        with torch.no_grad():
            for name, param in gpu.named_parameters():
                cpu_params[name].copy_(param.detach().cpu())
        sp_gpu.step(it)
        sp_cpu.step(it)
        assert_same(sp_gpu, sp_cpu, gpu, cpu, f'after step {it}')
    return sp_gpu, sp_cpu, gpu, cpu


# EDSR-L (43M weights) leaves out the two extra N:M cases: its CPU twin's global and 2:4 rankings take seconds each
PAIRS = [(key, case) for key in MODELS for case in CASES
         if key == 'swinir' or case not in ('iht-2:4-0.75', 'iht-global-2:4')]


@pytest.mark.parametrize('key,case', PAIRS, ids=[f'{key}-{case}' for key, case in PAIRS])
def test_cuda_selects_what_the_cpu_selects(trained, key, case):
    _, lr, patch = MODELS[key]
    block = CASES[case]
    sp_gpu, sp_cpu, gpu, cpu = lockstep(trained(key), block, patch, lr)
    assert torch.equal(mask_checksum(sp_gpu.masks()), mask_checksum(sp_cpu.masks()))
    if block['method'] == 'dense':
        assert sp_gpu.masks() == {} and sp_gpu.num_pruned() == 0
        return
    assert sp_gpu.frozen
    total = sum(int((w == 0).sum()) for w in weights(gpu).values())
    if block.get('scope', 'layer') == 'layer' and 'pattern' not in block:
        for name, weight in weights(gpu).items():  # exactly ceil(ratio * n) zeros in every layer
            assert int((weight == 0).sum()) == pruned_count(block['ratio'], weight.numel()), name
    assert total == sp_gpu.num_pruned()


# ----------------------------------------------------------------------------------- random layers with ties
class Ties(nn.Module):
    """Layers whose weights take a handful of values: ties everywhere, across the k-th value too."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(64, 32)  # same size as a: stacked into one group
        self.c = nn.Conv2d(16, 8, 3)
        self.d = nn.Linear(128, 16)


def quantized(shape, generator, dtype):
    """Multiples of 1/8 in [-0.5, 0.5] (exact in every float dtype): massive ties, +0.0 and -0.0 both present."""
    values = torch.randint(-4, 5, shape, generator=generator).to(torch.float32) / 8
    values[torch.rand(shape, generator=generator) < 0.05] = -0.0
    return values.to(dtype)


def reference_selection(flat_weights, k):
    """The documented order: the k smallest |w|, ties broken by the lower flat position (stable sort)."""
    order = torch.sort(flat_weights.abs().double(), stable=True).indices[:k]
    mask = torch.zeros(flat_weights.numel(), dtype=torch.bool)
    mask[order] = True
    return mask


@pytest.mark.parametrize('variant', ['layer', 'global', '2:4', 'global-2:4'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16], ids=['fp32', 'fp16', 'bf16'])
def test_ties_select_the_same_weights_on_cuda_and_cpu(dtype, variant):
    generator = torch.Generator().manual_seed(0)
    cpu = Ties().to(dtype)
    with torch.no_grad():
        for weight in weights(cpu).values():
            weight.copy_(quantized(weight.shape, generator, dtype))
        if dtype == torch.float32:  # NaN ranks above +inf, on both paths and devices
            flat = cpu.a.weight.view(-1)
            flat[:4] = torch.tensor([float('nan'), float('inf'), -float('inf'), 2.0**-126])
    gpu = copy.deepcopy(cpu).to(cuda())
    block = dict(method='issp', ratio=0.6, alpha=0.5, prune_iter=100)  # alpha 0.5 is exact: ties stay ties
    if 'global' in variant:
        block['scope'] = 'global'
    if '2:4' in variant:
        block['pattern'] = '2:4'
    sp_gpu, sp_cpu = build_sparsifier(gpu, **block), build_sparsifier(cpu, **block)
    for it in range(1, 9):
        with torch.no_grad():
            if it % 2 == 0:  # fresh values at 3% of the positions: some selections change, thresholds fail
                for weight in weights(cpu).values():
                    moved = torch.rand(weight.shape, generator=generator) < 0.03
                    weight[moved] = quantized(weight.shape, generator, dtype)[moved]
            for name, weight in weights(gpu).items():
                weight.copy_(weights(cpu)[name])
        sp_gpu.step(it)
        sp_cpu.step(it)
        assert_same(sp_gpu, sp_cpu, gpu, cpu, f'{dtype} {variant} after step {it}')
        masks = sp_cpu.masks()
        if variant == 'layer':
            for name, weight in weights(cpu).items():  # against the definition, before this step's shrink
                before = weight.detach().reshape(-1).float().clone()
                selected = masks[name].reshape(-1)
                before[selected] /= 0.5
                assert torch.equal(selected, reference_selection(before, pruned_count(0.6, weight.numel()))), name
        elif variant == 'global':
            flat = torch.cat([w.detach().reshape(-1).float() for w in weights(cpu).values()])
            selected = torch.cat([m.reshape(-1) for m in masks.values()])
            flat[selected] /= 0.5
            assert torch.equal(selected, reference_selection(flat, pruned_count(0.6, flat.numel())))
        else:  # every group of 4 consecutive weights along the input channels has at least 2 selected
            for name, mask in masks.items():
                layout = mask if mask.dim() == 2 else mask.permute(0, 2, 3, 1)
                assert int(layout.reshape(-1, 4).sum(dim=1).min()) >= 2, name
        assert sum(int(m.sum()) for m in masks.values()) == sp_cpu.num_pruned()
    if variant == 'layer':  # the CPU threshold check settled some selections, and agreed with CUDA's exact ranking
        assert sum(group.checked_rows for group in sp_cpu.groups) > 0


# ------------------------------------------------------------------------------ freeze and fine-tune on CUDA
@pytest.mark.parametrize('key', list(MODELS))
def test_frozen_masks_hold_through_fine_tuning_on_cuda(trained, key):
    _, lr, patch = MODELS[key]
    model = copy.deepcopy(trained(key))
    ema = copy.deepcopy(model)
    sparsifier = build_sparsifier(model, method='issp', ratio=0.9, alpha=0.95, prune_iter=PRUNE_ITER)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(3)
    frozen = None
    for it in range(1, 9):
        adam_step(model, optimizer, patch, generator)
        if frozen is not None:  # Adam's momentum revives pruned weights; the step zeroes them again
            revived = sum(int((w.detach()[frozen[name]] != 0).sum()) for name, w in weights(model).items())
            assert revived > 0, f'step {it}: no pruned weight moved, the test shows nothing'
        sparsifier.step(it)
        if it == PRUNE_ITER:
            assert sparsifier.frozen
            frozen = {name: mask.clone() for name, mask in sparsifier.masks().items()}
        if frozen is not None:
            for name, weight in weights(model).items():
                assert torch.equal(sparsifier.masks()[name], frozen[name]), f'step {it}: mask of {name} moved'
                assert torch.equal(weight.detach() == 0, frozen[name]), f'step {it}: zeros of {name}'
                assert int(frozen[name].sum()) == pruned_count(0.9, weight.numel()), name
    sparsifier.apply_masks(ema)
    for name, weight in weights(ema).items():
        assert bool((weight.detach()[frozen[name]] == 0).all()), name

    # the saved state restores the same masks on the CPU and on the GPU
    state = sparsifier.state_dict()
    assert all(mask.device.type == 'cpu' for mask in state['selected'].values())
    for device in ('cpu', cuda().type):
        twin = copy.deepcopy(model).to(device)
        restored = build_sparsifier(twin, method='issp', ratio=0.9, alpha=0.95, prune_iter=PRUNE_ITER)
        restored.load_state_dict(state)
        assert restored.frozen
        for name, mask in restored.masks().items():
            assert mask.device.type == device and torch.equal(mask.cpu(), frozen[name].cpu()), (device, name)
        assert torch.equal(mask_checksum(restored.masks()), mask_checksum(sparsifier.masks())), device


@pytest.mark.parametrize('key', list(MODELS))
def test_mask_checksum_is_the_same_on_cuda_and_cpu(trained, key):
    """The checksum the ranks compare: computed on the GPU masks and on their CPU copies, for a real selection."""
    model = copy.deepcopy(trained(key))
    sparsifier = build_sparsifier(model, method='iht', ratio=0.95, prune_iter=1)
    sparsifier.step(1)
    on_gpu = mask_checksum(sparsifier.masks())
    on_cpu = mask_checksum({name: mask.cpu() for name, mask in sparsifier.masks().items()})
    assert on_gpu.device.type == 'cpu' and on_gpu.dtype == torch.int64
    assert torch.equal(on_gpu, on_cpu)
    assert int(on_gpu[:, 0].sum()) == sparsifier.num_pruned()
