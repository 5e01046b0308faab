"""Fixes that make BasicSR 1.4.2 (the last release, 2022) run on today's PyTorch.

Applied by ``bootstrap`` when BasicSR is imported.

1. ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``, removed in torchvision 0.17:
   ``bootstrap``'s import finder serves it as an alias of its private successor (it must be in place before
   BasicSR is imported, so it cannot wait for :func:`apply`).
2. ``basicsr.train.load_resume_state`` maps the state to ``torch.cuda.current_device()``, so resume fails without
   a GPU: :func:`load_resume_state` maps it to the device the run uses and loads with ``weights_only=True``
   (for BasicSR's own pipeline; ``basicsr train`` uses the crash-aware ``checkpoint.load_resume_state``).
3. ``init_dist`` defaults to NCCL and calls ``torch.cuda.set_device``: :func:`init_dist` picks gloo when there is
   no GPU (also when ``dist_params: backend: nccl`` asks for NCCL), and binds each process to its ``LOCAL_RANK``
   GPU when there is one.
4. ``BaseModel.model_to_device`` wraps the network in DistributedDataParallel with
   ``device_ids=[torch.cuda.current_device()]``, which fails without a GPU: :func:`model_to_device` passes
   ``device_ids=None`` for a CPU model, so ``--launcher pytorch`` trains on CPUs with gloo.
5. ``VideoBaseModel.dist_validation`` and ``VideoRecurrentModel.dist_validation`` (so EDVR, BasicVSR and the video
   GANs) allocate their metric buffers with ``device='cuda'`` on their first validation, so video models cannot
   validate on a CPU: :func:`video_metric_buffers` allocates the same buffers on the model's device first (the
   originals only allocate when the model has none yet), then runs the original. ``VideoRecurrentModel``'s also
   ``squeeze_``s the clip in place right after ``feed_data``; on a CPU ``.to(device)`` returns that same tensor,
   so the model's input loses its batch dimension and BasicVSR fails: on a CPU, ``feed_data`` gets a copy.
6. ``basicsr.utils.img_process_util.filter2D`` (Real-ESRGAN's on-the-fly degradations) ``.view()``s its input, but
   ``DiffJPEG`` returns a channels-last tensor on today's PyTorch (and ``F.interpolate`` keeps that layout), so
   Real-ESRNet/Real-ESRGAN training stops at its first ``feed_data``: :func:`contiguous_filter2D` passes a
   contiguous tensor (the same values), in BasicSR's module and in every module already bound to the original.

This module imports nothing else of issp_basicsr: everything else sits above it.
"""
import functools
import os
import subprocess
import sys
from collections import Counter

import torch
import torch.distributed as dist

_applied = False


def default_backend():
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def init_dist(launcher, backend=None, **kwargs):
    """Initialise torch.distributed for ``--launcher pytorch`` (torchrun) or ``slurm``; gloo without a GPU."""
    import torch.multiprocessing as mp
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if backend is None or (backend == 'nccl' and not torch.cuda.is_available()):
        backend = default_backend()  # option files say nccl; without a GPU only gloo can run
    if launcher == 'pytorch':
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, **kwargs)
    elif launcher == 'slurm':
        _init_dist_slurm(backend, **kwargs)
    else:
        raise ValueError(f'Invalid launcher type: {launcher}')


def _init_dist_slurm(backend, port=None):
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    num_gpus = torch.cuda.device_count()
    local_rank = int(os.environ.get('SLURM_LOCALID', proc_id % max(num_gpus, 1)))
    if num_gpus:
        torch.cuda.set_device(local_rank % num_gpus)
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    else:
        os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['LOCAL_RANK'] = str(local_rank)
    os.environ['RANK'] = str(proc_id)
    dist.init_process_group(backend=backend)


def resume_device():
    return torch.device(f'cuda:{torch.cuda.current_device()}') if torch.cuda.is_available() else torch.device('cpu')


def load_resume_state(opt):
    """BasicSR's ``load_resume_state`` without its GPU assumption: the newest ``<iter>.state`` under
    ``experiments/<name>/training_states`` with ``--auto_resume``, else ``path: resume_state``, or None."""
    from basicsr.utils import check_resume, scandir
    resume_state_path = None
    if opt['auto_resume']:
        state_dir = os.path.join(opt['path'].get('experiments_root', os.path.join('experiments', opt['name'])),
                                 'training_states')
        if os.path.isdir(state_dir):
            iters = [int(v[:-len('.state')]) for v in scandir(state_dir, suffix='.state') if v[:-6].isdigit()]
            if iters:
                resume_state_path = os.path.join(state_dir, f'{max(iters)}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    device = resume_device() if opt.get('num_gpu', 0) else torch.device('cpu')
    resume_state = torch.load(resume_state_path, map_location=device, weights_only=True)
    check_resume(opt, resume_state['iter'])
    return resume_state


def model_to_device(self, net):
    """``BaseModel.model_to_device`` that also works on a CPU: DDP takes ``device_ids=None`` for a CPU module."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids,
                                      find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def video_metric_buffers(dist_validation):
    """Wrap a video model's ``dist_validation`` so its per-clip metric buffers (``[frames, metrics]`` float32 per
    folder, zeroed by the original) live on ``self.device`` instead of the hard-coded ``'cuda'``, and so that on a
    CPU the tensors it feeds the model are not the ones it reshapes in place."""
    if getattr(dist_validation, '_issp_fixed', False):
        return dist_validation

    @functools.wraps(dist_validation)
    def wrapper(self, dataloader, current_iter, tb_logger, save_img):
        metrics = self.opt['val'].get('metrics')
        if metrics is not None and not hasattr(self, 'metric_results'):
            frames = Counter(dataloader.dataset.data_info['folder'])
            self.metric_results = {
                folder: torch.zeros(count, len(metrics), dtype=torch.float32, device=self.device)
                for folder, count in frames.items()
            }
        if self.device.type != 'cpu' or 'feed_data' in vars(self):
            return dist_validation(self, dataloader, current_iter, tb_logger, save_img)
        feed_data = self.feed_data
        self.feed_data = lambda data: feed_data({k: v.clone() if torch.is_tensor(v) else v for k, v in data.items()})
        try:
            return dist_validation(self, dataloader, current_iter, tb_logger, save_img)
        finally:
            del self.feed_data

    wrapper._issp_fixed = True
    return wrapper


def contiguous_filter2D(filter2D):
    """``filter2D`` on a contiguous copy of a non-contiguous input (a no-op for contiguous ones)."""
    if getattr(filter2D, '_issp_fixed', False):
        return filter2D

    @functools.wraps(filter2D)
    def wrapper(img, kernel):
        return filter2D(img.contiguous(), kernel)

    wrapper._issp_fixed = True
    return wrapper


def _fix_filter2D():
    import basicsr.utils.img_process_util as img_process_util
    original = img_process_util.filter2D
    fixed = contiguous_filter2D(original)
    img_process_util.filter2D = fixed
    for name, module in list(sys.modules.items()):  # modules that imported the name before this fix
        if name.split('.')[0] in ('basicsr', 'realesrgan') and getattr(module, 'filter2D', None) is original:
            module.filter2D = fixed


def apply():
    """Install every fix; safe to call more than once."""
    global _applied
    if _applied:
        return
    import basicsr.models.base_model
    import basicsr.train
    import basicsr.utils.dist_util
    import basicsr.utils.options
    basicsr.utils.dist_util.init_dist = init_dist
    basicsr.utils.options.init_dist = init_dist
    basicsr.train.load_resume_state = load_resume_state
    basicsr.models.base_model.BaseModel.model_to_device = model_to_device
    from basicsr.models.video_base_model import VideoBaseModel
    from basicsr.models.video_recurrent_model import VideoRecurrentModel
    for cls in (VideoBaseModel, VideoRecurrentModel):
        cls.dist_validation = video_metric_buffers(cls.dist_validation)
    _fix_filter2D()
    _applied = True
