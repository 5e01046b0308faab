"""ISSPSRModel: BasicSR's SRModel with a sparsifier run after every optimizer step.

A thin adapter: the pruning itself is ``issp_basicsr.sparsity``; this class wires it into BasicSR's optimizer,
EMA, learning-rate schedule, training state, logging and validation.
"""
import os
from collections import OrderedDict
from copy import deepcopy
from dataclasses import replace

import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.models.swinir_model import SwinIRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from ..checkpoint import atomic_save, load_network_state, read_network
from ..distributed import check_masks_agree, mean_across_ranks
from ..errors import SparsityStateError, keys_under
from ..options import SPARSITY_KEY
from ..sparsity import Sparsifier, SparsityConfig


@MODEL_REGISTRY.register()
class ISSPSRModel(SRModel):
    """Single-image SR trained sparse with ISS-P (or IHT), configured by the ``train: sparsity:`` block."""

    def __init__(self, opt):
        self.sparsifier = None
        self._current_iter = 0
        self._bicubic_results = {}
        self._last_validation = {}
        super().__init__(opt)

    # --------------------------------------------------------------------------------------- training
    def init_training_settings(self):
        train_opt = self.opt['train']
        with keys_under(SPARSITY_KEY):
            self.sparsity_config = SparsityConfig.from_dict(train_opt.get('sparsity'), train_opt.get('total_iter'))
        method = self.sparsity_config.method_definition
        resuming = bool(self.opt['path'].get('resume_state'))
        if method.scores == 'random':
            self.sparsity_config = replace(self.sparsity_config, seed=self._scratch_seed())
        if method.reinitialize and not resuming:
            self._reinitialize_net_g(self.sparsity_config.seed)
        with keys_under(SPARSITY_KEY):
            self.sparsifier = Sparsifier(self.get_bare_model(self.net_g), self.sparsity_config)
        super().init_training_settings()
        if self.ema_decay > 0 and not resuming:  # the EMA starts from the re-initialised, masked weights
            if method.reinitialize:
                self.model_ema(0)
            self.sparsifier.apply_masks(self.net_g_ema)
        # issr/greg add their penalty's gradient right before optimizer.step(); the pruning step runs right
        # after it, before SRModel updates the EMA copy.
        self.optimizer_g.register_step_pre_hook(lambda *_: self.sparsifier.pre_step(self._current_iter))
        self.optimizer_g.register_step_post_hook(lambda *_: self.sparsifier.step(self._current_iter))
        logger = get_root_logger()
        cfg = self.sparsity_config
        logger.info(f'Sparsity: method {cfg.method}, ratio {cfg.ratio}, prune_iter {cfg.prune_iter}, '
                    f'{len(self.sparsifier.layer_names)} layers, {self.sparsifier.num_weights():,} prunable weights, '
                    f'{self.sparsifier.num_pruned():,} to prune')

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

    def _reinitialize_net_g(self, seed):
        """``scratch`` trains from fresh weights even when ``path: pretrain_network_g`` names a checkpoint: the
        architecture is built again under ``seed`` (identical on every rank, the global RNG left as it was)."""
        net_opt = deepcopy(self.opt['network_g'])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            fresh = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
        self.get_bare_model(self.net_g).load_state_dict(fresh.state_dict())

    def optimize_parameters(self, current_iter):
        self._current_iter = current_iter
        was_frozen = self.sparsifier.frozen
        super().optimize_parameters(current_iter)
        if self.ema_decay > 0:
            self.sparsifier.apply_masks(self.net_g_ema)
        if self.sparsifier.frozen and not was_frozen:
            check_masks_agree(self.sparsifier, f'at the mask freeze (iteration {current_iter})')
        if current_iter % self.opt['logger']['print_freq'] == 0:
            self.log_dict.update(mean_across_ranks(self.sparsifier.statistics(), self.device))

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """With ``hold_lr_during_pruning`` the schedule does not move until prune_iter, so its milestones count
        from there, as in the paper."""
        cfg = self.sparsity_config
        if cfg.hold_lr_during_pruning and current_iter <= cfg.prune_iter:
            return
        super().update_learning_rate(current_iter, warmup_iter)

    # ------------------------------------------------------------------------------------ persistence
    def training_state(self, epoch, current_iter):
        """The resume state: BasicSR's (epoch, iter, optimizers, schedulers) plus the sparsifier's."""
        return {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'sparsifier': self.sparsifier.state_dict(),
        }

    def save(self, epoch, current_iter, extra_state=None):
        """SRModel.save (network, then training state, each file written atomically) after the ranks have shown
        they hold the same masks; ``extra_state`` (the loop's data position and RNG states) joins the state."""
        extra_state = dict(extra_state or {})
        if current_iter != -1:
            extra_state['mask_checksums'] = check_masks_agree(self.sparsifier, f'at checkpoint {current_iter}')
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter, extra_state)

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

    @master_only
    def save_training_state(self, epoch, current_iter, extra_state=None):
        if current_iter == -1:
            return
        state = self.training_state(epoch, current_iter)
        state.update(extra_state or {})
        atomic_save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network with ``weights_only=True``; a damaged or foreign file is one OptionError line."""
        net = self.get_bare_model(net)
        state = read_network(load_path, param_key)
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: '
                               f'[{param_key}].')
        self._print_different_keys_loading(net, state, strict)
        load_network_state(net, state, strict, load_path)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if 'sparsifier' not in resume_state:
            raise SparsityStateError(f'{self.opt["path"].get("resume_state")}: training state has no sparsifier '
                                     'state (it was not saved by ISSPSRModel)')
        with keys_under(SPARSITY_KEY):
            self.sparsifier.load_state_dict(resume_state['sparsifier'])
        if self.ema_decay > 0:
            self.sparsifier.apply_masks(self.net_g_ema)
        check_masks_agree(self.sparsifier, f'after resuming from iteration {resume_state["iter"]}')

    # -------------------------------------------------------------------------------------- inference
    def test(self):
        if 'window_size' in self.opt['network_g']:  # window-based archs (SwinIR) need padded inputs
            return SwinIRModel.test(self)
        return super().test()

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        name = dataloader.dataset.opt['name']
        if self.opt['val'].get('metrics') and name not in self._bicubic_results:
            self._bicubic_results[name] = self.bicubic_metrics(dataloader)
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def bicubic_metrics(self, dataloader):
        """The validation metrics of MATLAB-bicubic upscaling of the same LR images: the floor to beat."""
        scale = self.opt['scale']
        totals = OrderedDict((metric, 0.0) for metric in self.opt['val']['metrics'])
        count = 0
        for data in dataloader:
            if 'gt' not in data:
                return {}
            upscaled = imresize(data['lq'][0].clamp(0, 1), scale)
            metric_data = {'img': tensor2img([upscaled]), 'img2': tensor2img([data['gt'][0]])}
            h, w = metric_data['img2'].shape[:2]
            metric_data['img'] = metric_data['img'][:h, :w]
            for metric, metric_opt in self.opt['val']['metrics'].items():
                totals[metric] += calculate_metric(metric_data, metric_opt)
            count += 1
        return OrderedDict((metric, value / max(count, 1)) for metric, value in totals.items())

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        bicubic = self._bicubic_results.get(dataset_name, {})
        line = ', '.join(f'{metric} {value:.4f} (bicubic {bicubic[metric]:.4f})' if metric in bicubic else
                         f'{metric} {value:.4f}' for metric, value in self.metric_results.items())
        if self.sparsifier is not None:
            line += f', sparsity {self.sparsifier.sparsity():.4f} ({self.sparsifier.phase} stage)'
        self._last_validation[dataset_name] = {
            metric: (value, bicubic.get(metric)) for metric, value in self.metric_results.items()
        }
        get_root_logger().info(f'Validation {dataset_name} @ {current_iter}: {line}')
        if tb_logger:
            for metric, value in bicubic.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}_bicubic', value, current_iter)

    def validation_summary(self):
        """``{dataset: {metric: (model value, bicubic value)}}`` of the last validation of each dataset."""
        return dict(self._last_validation)
