"""SparseModelMixin: the ISS-P lifecycle for any BasicSR model class, configured by the ``train: sparsity:`` block.

The mixin goes first in the bases (``class Sparse<Name>(SparseModelMixin, <Name>)``) and wraps the class's own
methods, so everything the class does stays as it is (its losses, discriminator steps, ``net_d_iters``,
optimizer groups, ``fix_flow``, on-the-fly degradations in ``feed_data``). What it adds:

- after the class's ``init_training_settings``: one :class:`~issp_basicsr.sparsity.Sparsifier` per pruned network
  (``net_g`` by default; the block's ``networks`` key names others), hooked to that network's optimizer
  (``net_g`` -> ``optimizer_g``, ``net_d`` -> ``optimizer_d``): ``pre_step`` before and ``step`` after every step of
  that optimizer, with the training iteration. A discriminator step never runs the generator's pruning step, and
  an iteration where the class skips the generator's step (``net_d_iters``, ``net_d_init_iters``) prunes nothing;
- the EMA copy ``net_g_ema`` is masked after every iteration, on resume and at the start;
- training states hold every sparsifier's state; checkpoints and states are written atomically with BasicSR's
  file mode; mask checksums are compared across ranks at the freeze, on resume and at every checkpoint;
- sparsity statistics in the iteration log; a validation line beside MATLAB-bicubic upscaling; a summary.

``issp_basicsr.models.factory`` makes the subclass of a registered model class when the options carry the block.
"""
import os
from collections import OrderedDict
from copy import deepcopy
from dataclasses import replace
from fnmatch import fnmatchcase

import torch
from torch import nn
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import ARCH_REGISTRY

from ..checkpoint import atomic_save, load_network_state, read_network
from ..distributed import check_masks_agree, mean_across_ranks
from ..errors import OptionError, SparsityConfigError, SparsityStateError, keys_under
from ..sparsity import Sparsifier, SparsityConfig

SPARSITY_KEY = 'train:sparsity'  # where the block sits in an option file: the prefix of the core's messages
NETWORKS_KEY = f'{SPARSITY_KEY}:networks'
DEFAULT_NETWORKS = ('net_g', )


def split_block(block):
    """``(networks, the block without 'networks')``: the adapter's key is read here, the core never sees it."""
    if block is None:
        return DEFAULT_NETWORKS, None
    if not isinstance(block, dict) or 'networks' not in block:
        return DEFAULT_NETWORKS, block
    block = dict(block)
    networks = block.pop('networks')
    if (isinstance(networks, str) or not isinstance(networks, (list, tuple)) or not networks
            or not all(isinstance(n, str) and n for n in networks)):
        raise SparsityConfigError(f'{NETWORKS_KEY} must be a non-empty list of network names such as [net_g, net_d], '
                                  f'got {networks!r}')
    if len(set(networks)) != len(networks):
        raise SparsityConfigError(f'{NETWORKS_KEY} names a network twice: {list(networks)!r}')
    for name in networks:
        if name.endswith('_ema'):
            raise SparsityConfigError(f'{NETWORKS_KEY}: {name} is the EMA copy of {name[:-4]} and is masked with it; '
                                      f'list {name[:-4]}')
        if not name.startswith('net_'):
            raise SparsityConfigError(f'{NETWORKS_KEY}: {name!r} is not a network name (BasicSR names them net_g, '
                                      'net_d, ...)')
    return tuple(networks), block


def network_option_key(name):
    """``net_d`` -> ``network_d``: the option section BasicSR builds that network from."""
    return 'network_' + name[len('net_'):]


def optimizer_name(name):
    """``net_d`` -> ``optimizer_d``: the optimizer BasicSR's model classes step that network with."""
    return 'optimizer_' + name[len('net_'):]


def check_networks_in_options(opt, networks):
    """Every named network has its ``network_*`` section in the options (a check before anything is built)."""
    known = [f'net_{k[len("network_"):]}' for k in opt if k.startswith('network_')]
    for name in networks:
        if network_option_key(name) not in opt:
            raise SparsityConfigError(f'{NETWORKS_KEY}: {name!r} is not a network of model_type '
                                      f'{opt.get("model_type")} (the options define {", ".join(known) or "none"})')


def _module_names(net):
    return [name for name, _ in net.named_modules() if name]


def configs_per_network(config, nets):
    """``{name: config}``. With one network the block applies as written. With several, each gets the exclude
    and ratios patterns that name one of its modules; a pattern that names a module of none of them goes to the
    first, where the core reports it (one line naming the key)."""
    if len(nets) == 1:
        return {name: config for name in nets}
    names = {name: _module_names(net) for name, net in nets.items()}
    first = next(iter(nets))

    def keep(pattern, name):
        found = any(fnmatchcase(m, pattern) for m in names[name])
        nowhere = not any(fnmatchcase(m, pattern) for ms in names.values() for m in ms)
        return found or (nowhere and name == first)

    return {
        name: replace(config, exclude=tuple(p for p in config.exclude if keep(p, name)),
                      ratios=tuple((p, r) for p, r in config.ratios if keep(p, name)))
        for name in nets
    }


def check_weights_are_parameters(name, net, layer_names):
    """A layer whose ``weight`` is computed from other parameters (spectral norm, weight parametrizations) cannot be
    masked: the zeros would be recomputed away at the next forward pass, silently."""
    params = {id(p) for p in net.parameters()}
    for layer in layer_names:
        if id(net.get_submodule(layer).weight) not in params:
            raise SparsityConfigError(f'{NETWORKS_KEY}: layer {layer} of {name} ({type(net).__name__}) computes its '
                                      'weight from other parameters (spectral norm or a parametrization), so it '
                                      f'cannot be pruned: add it to train:sparsity:exclude or leave {name} dense')


class SparseModelMixin:
    """ISS-P (or IHT, ...) for the BasicSR model class it is mixed into; see the module docstring."""

    def __init__(self, opt):
        self.sparsifier = None  # net_g's (else the first pruned network's): the one the summary lines report
        self.sparsifiers = OrderedDict()
        self._current_iter = 0
        self._bicubic_results = {}
        self._last_validation = {}
        super().__init__(opt)

    # --------------------------------------------------------------------------------------- training
    def init_training_settings(self):
        train_opt = self.opt['train']
        networks, block = split_block(train_opt.get('sparsity'))
        with keys_under(SPARSITY_KEY):
            self.sparsity_config = SparsityConfig.from_dict(block, train_opt.get('total_iter'))
        method = self.sparsity_config.method_definition
        resuming = bool(self.opt['path'].get('resume_state'))
        if method.scores == 'random':
            self.sparsity_config = replace(self.sparsity_config, seed=self._scratch_seed())
        super().init_training_settings()
        cls = self._served_class_name()
        nets = OrderedDict()
        available = [n for n, v in vars(self).items() if n.startswith('net_') and isinstance(v, nn.Module)]
        for name in networks:
            net = getattr(self, name, None)
            if not isinstance(net, nn.Module):
                raise SparsityConfigError(f'{NETWORKS_KEY}: {name!r} is not a network of {cls} (its networks: '
                                          f'{", ".join(available) or "none"})')
            nets[name] = self.get_bare_model(net)
        optimizers = {}
        for name, net in nets.items():
            optimizer = getattr(self, optimizer_name(name), None)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise OptionError(f'model_type {self.opt["model_type"]}: {cls} has no {optimizer_name(name)} after '
                                  f'init_training_settings, so train:sparsity cannot prune {name} (the pruning step '
                                  f'runs after each step of {name}\'s optimizer)')
            optimized = {id(p) for group in optimizer.param_groups for p in group['params']}
            if not any(id(p) in optimized for p in net.parameters()):
                raise OptionError(f'model_type {self.opt["model_type"]}: {cls}.{optimizer_name(name)} optimizes no '
                                  f'parameter of {name}, so train:sparsity cannot prune {name}')
            optimizers[name] = optimizer
        if method.reinitialize and not resuming:
            for name in nets:
                self._reinitialize(name, self.sparsity_config.seed)
        for name, config in configs_per_network(self.sparsity_config, nets).items():
            with keys_under(SPARSITY_KEY):
                self.sparsifiers[name] = Sparsifier(nets[name], config)
            check_weights_are_parameters(name, nets[name], self.sparsifiers[name].layer_names)
        self.sparsifier = self.sparsifiers.get('net_g', next(iter(self.sparsifiers.values())))
        if getattr(self, 'ema_decay', 0) > 0 and 'net_g' in self.sparsifiers and not resuming:
            if method.reinitialize:
                self.model_ema(0)  # the EMA starts from the re-initialised, masked weights
            self._mask_ema()
        for name, optimizer in optimizers.items():
            self._hook(optimizer, self.sparsifiers[name])
        self._log_setup(type(self).__name__)

    def _served_class_name(self):
        """The model class the mixin serves (``SRGANModel`` for ``SparseSRGANModel``), for messages."""
        return next((c.__name__ for c in type(self).__mro__ if not issubclass(c, SparseModelMixin)), '?')

    def _hook(self, optimizer, sparsifier):
        # issr/greg add their penalty's gradient right before optimizer.step(); the pruning step runs right
        # after it, before the class updates the EMA copy.
        optimizer.register_step_pre_hook(lambda *_: sparsifier.pre_step(self._current_iter))
        optimizer.register_step_post_hook(lambda *_: sparsifier.step(self._current_iter))

    def _log_setup(self, cls):
        logger = get_root_logger()
        cfg = self.sparsity_config
        for name, sparsifier in self.sparsifiers.items():
            logger.info(f'Sparsity: {cls} {name}: method {cfg.method}, ratio {cfg.ratio}, prune_iter '
                        f'{cfg.prune_iter}, {len(sparsifier.layer_names)} layers, {sparsifier.num_weights():,} '
                        f'prunable weights, {sparsifier.num_pruned():,} to prune; pruning step after each '
                        f'{optimizer_name(name)} step')
            if sparsifier.capped_layers:
                logger.info(f'Sparsity: {name}: {len(sparsifier.capped_layers)} layer(s) keep one weight, which the '
                            f'ratio would remove whole: {", ".join(sparsifier.capped_layers)}')
        if 'net_g' in self.sparsifiers and hasattr(self, 'net_g_ema'):
            logger.info('Sparsity: net_g_ema is masked with net_g')
        dense = [n for n, v in vars(self).items() if n.startswith('net_') and isinstance(v, nn.Module)
                 and n not in self.sparsifiers and not (n == 'net_g_ema' and 'net_g' in self.sparsifiers)]
        if dense:
            logger.info(f'Sparsity: {", ".join(dense)} stay dense (name them in {NETWORKS_KEY} to prune them)')

    def _scratch_seed(self):
        """``scratch``'s mask seed: the block's ``seed``, else ``manual_seed``; rank 0's value on every rank (BasicSR
        draws a missing manual_seed per process)."""
        seed = self.sparsity_config.seed
        seed = self.opt.get('manual_seed', 0) if seed is None else seed
        if self.opt.get('dist') and torch.distributed.is_initialized():
            shared = [seed]
            torch.distributed.broadcast_object_list(shared, src=0)
            seed = shared[0]
        return int(seed)

    def _reinitialize(self, name, seed):
        """``scratch`` trains from fresh weights even when ``path: pretrain_network_*`` names a checkpoint: the
        architecture is built again under ``seed`` (identical on every rank, the global RNG left as it was)."""
        net_opt = deepcopy(self.opt[network_option_key(name)])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            fresh = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
        self.get_bare_model(getattr(self, name)).load_state_dict(fresh.state_dict())

    def _mask_ema(self):
        if getattr(self, 'ema_decay', 0) > 0 and 'net_g' in self.sparsifiers and hasattr(self, 'net_g_ema'):
            self.sparsifiers['net_g'].apply_masks(self.net_g_ema)

    def optimize_parameters(self, current_iter):
        self._current_iter = current_iter
        was_frozen = {name: s.frozen for name, s in self.sparsifiers.items()}
        super().optimize_parameters(current_iter)
        self._mask_ema()
        for name, sparsifier in self.sparsifiers.items():
            if sparsifier.frozen and not was_frozen[name]:
                check_masks_agree(sparsifier, f'at the mask freeze of {name} (iteration {current_iter})')
        if current_iter % self.opt['logger']['print_freq'] == 0:
            for name, sparsifier in self.sparsifiers.items():
                stats = sparsifier.statistics()
                if name != 'net_g':
                    stats = {key.replace('sparsity/', f'sparsity_{name}/', 1): v for key, v in stats.items()}
                self.log_dict.update(mean_across_ranks(stats, self.device))

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """With ``hold_lr_during_pruning`` the schedules (every optimizer's) do not move until prune_iter, so their
        milestones count from there, as in the paper. BasicSR's linear warm-up (``warmup_iter``) still runs inside
        the hold; the held LR is then the initial one."""
        cfg = self.sparsity_config
        if cfg.lr_held(current_iter):
            if current_iter < warmup_iter:
                self._set_lr([[lr / warmup_iter * current_iter for lr in group] for group in self._get_init_lr()])
            elif current_iter == warmup_iter:
                self._set_lr(self._get_init_lr())
            return
        super().update_learning_rate(current_iter, warmup_iter)

    # ------------------------------------------------------------------------------------ persistence
    def sparsifier_states(self):
        return {name: sparsifier.state_dict() for name, sparsifier in self.sparsifiers.items()}

    def save(self, epoch, current_iter, extra_state=None):
        """The class's own ``save`` (its networks, then the training state; each file written atomically) after the
        ranks have shown they hold the same masks; ``extra_state`` (the loop's data position and RNG states) joins
        the training state."""
        extra_state = dict(extra_state or {})
        if current_iter != -1:
            checksums = {name: check_masks_agree(s, f'at checkpoint {current_iter} ({name})')
                         for name, s in self.sparsifiers.items()}
            extra_state['mask_checksums'] = checksums.get('net_g', next(iter(checksums.values())))
            if len(checksums) > 1:
                extra_state['mask_checksums_per_network'] = checksums
        else:
            self._warn_unfrozen()
        self._pending_extra_state = extra_state
        try:
            super().save(epoch, current_iter)
        finally:
            self._pending_extra_state = None

    def _warn_unfrozen(self):
        for name, sparsifier in self.sparsifiers.items():
            if sparsifier.config.prunes and not sparsifier.frozen:
                get_root_logger().warning(
                    f'Sparsity: the mask of {name} never froze: {optimizer_name(name)} took no step at or after '
                    f'train:sparsity:prune_iter ({sparsifier.config.prune_iter}); {name} is not exactly sparse')

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's save_network, written atomically: a kill mid-save leaves the previous files intact."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = {(k[7:] if k.startswith('module.') else k): v.cpu() for k, v in state.items()}
        name = f'{net_label}_{"latest" if current_iter == -1 else current_iter}.pth'
        atomic_save(save_dict, os.path.join(self.opt['path']['models'], name))

    def training_state(self, epoch, current_iter):
        """The resume state: BasicSR's (epoch, iter, optimizers, schedulers) plus every sparsifier's
        (``sparsifiers``: by network; ``sparsifier``: net_g's, the same object, as earlier versions wrote it)."""
        states = self.sparsifier_states()
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'sparsifiers': states,
        }
        if 'net_g' in states:
            state['sparsifier'] = states['net_g']
        return state

    @master_only
    def save_training_state(self, epoch, current_iter, extra_state=None):
        if current_iter == -1:
            return
        state = self.training_state(epoch, current_iter)
        state.update(getattr(self, '_pending_extra_state', None) or {})
        state.update(extra_state or {})
        atomic_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network with ``weights_only=True``; a damaged or foreign file is one OptionError line."""
        bare = self.get_bare_model(net)
        state = read_network(load_path, param_key)
        get_root_logger().info(f'Loading {bare.__class__.__name__} model from {load_path}, with param key: '
                               f'[{param_key}].')
        self._print_different_keys_loading(bare, state, strict)
        generator = [self.get_bare_model(n) for n in (getattr(self, 'net_g', None), getattr(self, 'net_g_ema', None))
                     if n is not None]
        if any(bare is g for g in generator):
            load_network_state(bare, state, strict, load_path)  # mismatches as one line naming network_g
        else:
            bare.load_state_dict(state, strict=strict)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        path = self.opt['path'].get('resume_state')
        states = resume_state.get('sparsifiers')
        if states is None and 'sparsifier' in resume_state:
            states = {'net_g': resume_state['sparsifier']}
        if states is None:
            raise SparsityStateError(f'{path}: training state has no sparsifier state (it was not saved by a run '
                                     'with train:sparsity)')
        for name, sparsifier in self.sparsifiers.items():
            if name not in states:
                raise SparsityStateError(f'{path}: training state has no sparsifier state for {name} (it was saved '
                                         f'with {NETWORKS_KEY} {sorted(states)})')
            with keys_under(SPARSITY_KEY):
                sparsifier.load_state_dict(states[name])
        self._mask_ema()
        for name, sparsifier in self.sparsifiers.items():
            check_masks_agree(sparsifier, f'after resuming {name} from iteration {resume_state["iter"]}')

    # -------------------------------------------------------------------------------------- inference
    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        name = dataloader.dataset.opt['name']
        if (self.opt['val'].get('metrics') and name not in self._bicubic_results
                and (not self.opt.get('dist') or get_dist_info()[0] == 0)):
            self._bicubic_results[name] = self.bicubic_metrics(dataloader)
        super().validation(dataloader, current_iter, tb_logger, save_img)

    def bicubic_metrics(self, dataloader):
        """The validation metrics of MATLAB-bicubic upscaling of the same LR images: the floor to beat.

        Averaged as the class averages its own metrics: over images; for video, over the frames of each clip
        (``folder``) and then over the clips. Video frames are upscaled one by one; where the ground truth is one
        frame (EDVR, center_frame_only) it is compared with the LR clip's center frame."""
        scale = self.opt['scale']
        metrics = self.opt['val']['metrics']
        folders = OrderedDict()
        for index, data in enumerate(dataloader):
            if 'gt' not in data or 'lq' not in data:
                return {}
            lq, gt = data['lq'][0], data['gt'][0]
            if lq.dim() == 4 and gt.dim() == 3:
                lq = lq[lq.size(0) // 2]
            pairs = zip(lq, gt) if lq.dim() == 4 else [(lq, gt)]
            folder = data['folder'][0] if 'folder' in data else index
            rows = folders.setdefault(folder, [])
            for lq_frame, gt_frame in pairs:
                upscaled = imresize(lq_frame.clamp(0, 1), scale)
                metric_data = {'img': tensor2img([upscaled]), 'img2': tensor2img([gt_frame])}
                h, w = metric_data['img2'].shape[:2]
                metric_data['img'] = metric_data['img'][:h, :w]
                rows.append([calculate_metric(metric_data, metric_opt) for metric_opt in metrics.values()])
        if not folders:
            return {}
        means = [torch.tensor(rows, dtype=torch.float64).mean(dim=0) for rows in folders.values()]
        total = torch.stack(means).mean(dim=0)
        return OrderedDict((metric, float(value)) for metric, value in zip(metrics, total))

    def _validation_values(self):
        """``{metric: value}`` of the last validation: SRModel keeps the averages, the video models keep a
        ``[frames, metrics]`` tensor per clip (averaged here as VideoBaseModel logs them)."""
        results = getattr(self, 'metric_results', None) or {}
        names = list(self.opt['val'].get('metrics') or {})
        if results and all(torch.is_tensor(v) and v.dim() == 2 for v in results.values()):
            per_clip = torch.stack([v.detach().double().mean(dim=0).cpu() for v in results.values()])
            return OrderedDict((metric, float(value)) for metric, value in zip(names, per_clip.mean(dim=0)))
        return OrderedDict((k, float(v)) for k, v in results.items() if isinstance(v, (int, float)) or
                           (torch.is_tensor(v) and v.numel() == 1))

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        bicubic = self._bicubic_results.get(dataset_name, {})
        values = self._validation_values()
        line = ', '.join(f'{metric} {value:.4f} (bicubic {bicubic[metric]:.4f})' if metric in bicubic else
                         f'{metric} {value:.4f}' for metric, value in values.items())
        for name, sparsifier in self.sparsifiers.items():
            label = 'sparsity' if name == 'net_g' else f'sparsity {name}'
            line += f', {label} {sparsifier.sparsity():.4f} ({sparsifier.phase} stage)'
        self._last_validation[dataset_name] = {metric: (value, bicubic.get(metric)) for metric, value in values.items()}
        get_root_logger().info(f'Validation {dataset_name} @ {current_iter}: {line}')
        if tb_logger:
            for metric, value in bicubic.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}_bicubic', value, current_iter)

    def validation_summary(self):
        """``{dataset: {metric: (model value, bicubic value)}}`` of the last validation of each dataset."""
        return dict(self._last_validation)
