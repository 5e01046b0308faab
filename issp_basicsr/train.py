"""``basicsr train``: BasicSR's training pipeline with the plugin's checks, exact resume and a final summary.

It follows ``basicsr/train.py`` step by step and reuses its helpers; it differs where BasicSR 1.4.2 cannot serve:
options are validated before anything is written; ``--auto_resume`` skips training states a crash left damaged,
works without a GPU and continues exactly where the run stopped (the epoch's remaining batches, the saved RNG
states; see ``resume.py``); validation does not move the training's RNG; and the run ends with a summary
(validation metrics beside bicubic, achieved sparsity).
"""
import argparse
import datetime
import logging
import os
import sys
import time
from os import path as osp

import basicsr.train
import torch
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.train import init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs,
                           mkdir_and_rename)
from basicsr.utils.options import copy_opt_file, dict2str, parse_options

from .checkpoint import load_resume_state, remove_partial_files
from .lock import experiment_lock
from .models import SparseModelMixin, build_model
from .options import OptionError, check_raw_file, validate_options
from .resume import DataPosition, ResumableSampler, gather_rng_states, preserved_rng, restore_rng


def parse(argv, is_train):
    """BasicSR's argument parser and option parsing, on ``argv`` rather than ``sys.argv``. The file is read and
    its ``--force_yml`` entries checked first, so that a YAML error, a malformed entry or a missing section is
    one line (see ``options.check_raw_file``) rather than a traceback from ``parse_options``."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument('-opt')
    early.add_argument('--force_yml', nargs='+')
    known, _ = early.parse_known_args(list(argv))
    if known.opt is not None:
        check_raw_file(known.opt, known.force_yml, is_train)
    saved = sys.argv
    sys.argv = [f'basicsr {"train" if is_train else "test"}'] + list(argv)
    try:
        opt, args = parse_options(os.getcwd(), is_train=is_train)
    finally:
        sys.argv = saved
    opt['root_path'] = os.getcwd()
    return opt, args


def make_prefetcher(opt, train_loader):
    prefetch_mode = opt['datasets']['train'].get('prefetch_mode')
    if prefetch_mode is None or prefetch_mode == 'cpu':
        return CPUPrefetcher(train_loader)
    if prefetch_mode == 'cuda':
        if opt['datasets']['train'].get('pin_memory') is not True:
            raise OptionError("datasets:train:pin_memory must be true for prefetch_mode cuda")
        return CUDAPrefetcher(train_loader, opt)
    raise OptionError(f"datasets:train:prefetch_mode must be cpu or cuda, got {prefetch_mode!r}")


def create_train_val_dataloader(opt, logger):
    """BasicSR's loaders, with a train sampler that can start an epoch part-way (for an exact resume)."""
    basicsr.train.EnlargedSampler = ResumableSampler  # the name create_train_val_dataloader builds its sampler from
    return basicsr.train.create_train_val_dataloader(opt, logger)


def report_resume(opt, resume_state, warnings, logger):
    """Log what choosing the state to resume from skipped, and remove files left by saves a kill interrupted."""
    for warning in warnings:
        logger.warning(warning)
    if resume_state and opt['rank'] == 0:
        for folder in (opt['path']['models'], opt['path']['training_states']):
            for name in remove_partial_files(folder):
                logger.warning(f'Removed {osp.join(folder, name)}, left by a save that was interrupted.')


def resume_position(opt, resume_state, train_loader, logger):
    """Where in the data order to start: the saved position on resume, else the beginning."""
    position = DataPosition(train_loader.batch_size, opt['world_size'])
    if resume_state:
        position, warning = DataPosition.resumed(resume_state, train_loader.batch_size, opt['world_size'])
        if warning:
            logger.warning(f'Resume is not exact: {warning}.')
    return position


def resume_generators(opt, resume_state, logger):
    """Set this rank's RNGs to the saved ones. Call it after the epoch's DataLoader iterator exists: making the
    iterator draws a seed from torch's generator, which the saved state already reflects."""
    warning = restore_rng(resume_state, opt['rank'], opt['world_size'])
    if warning:
        logger.warning(f'Resume is not exact: {warning}.')


def save_checkpoint(model, epoch, current_iter, position):
    """``model.save`` plus what an exact resume needs: the data position and every rank's RNG states (all ranks
    take part; rank 0 writes)."""
    if isinstance(model, SparseModelMixin):
        model.save(epoch, current_iter, extra_state={'data': position.state_dict(), 'rng': gather_rng_states()})
    else:
        model.save(epoch, current_iter)


def validate(opt, model, val_loaders, current_iter, tb_logger):
    """Validation that leaves the training's RNG where it was, so it cannot change the rest of the run."""
    with preserved_rng():
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])


def log_summary(logger, model):
    summary = getattr(model, 'validation_summary', lambda: {})()
    for dataset, metrics in summary.items():
        parts = [f'{m} {v:.4f}' + (f' (bicubic {b:.4f})' if b is not None else '') for m, (v, b) in metrics.items()]
        logger.info(f'Final {dataset}: ' + ', '.join(parts))
    sparsifiers = getattr(model, 'sparsifiers', None) or {}
    for name, sparsifier in sparsifiers.items():
        label = 'Final sparsity' if name == 'net_g' else f'Final sparsity of {name}'
        logger.info(f'{label}: {sparsifier.sparsity():.4f} of {sparsifier.num_weights():,} prunable weights '
                    f'are exactly 0 (target {sparsifier.num_pruned() / sparsifier.num_weights():.4f}, '
                    f'{sparsifier.phase} stage)')


def train_pipeline(argv):
    opt, args = parse(argv, is_train=True)
    notes = validate_options(opt, is_train=True)  # every problem of the file, before anything is written
    with experiment_lock(opt) as lock_warning:  # before the folder is looked at, archived or resumed from
        return _train(opt, args, notes + ([lock_warning] if lock_warning else []))


def _train(opt, args, notes):
    torch.backends.cudnn.benchmark = True

    resume_state, resume_warnings = load_resume_state(opt)
    if resume_state is None:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    copy_opt_file(args.opt, opt['path']['experiments_root'])

    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    for note in notes:
        (logger.warning if note.startswith('Took over') else logger.info)(note)
    report_resume(opt, resume_state, resume_warnings, logger)
    tb_logger = init_tb_loggers(opt)

    train_loader, train_sampler, val_loaders, total_epochs, total_iters = create_train_val_dataloader(opt, logger)
    model = build_model(opt)
    if resume_state:
        model.resume_training(resume_state)
        logger.info(f"Resuming training from epoch: {resume_state['epoch']}, iter: {resume_state['iter']}.")
        start_epoch, current_iter = resume_state['epoch'], resume_state['iter']
    else:
        start_epoch, current_iter = 0, 0

    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetcher = make_prefetcher(opt, train_loader)
    position = resume_position(opt, resume_state, train_loader, logger)

    logger.info(f'Start training from epoch: {start_epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        train_sampler.set_epoch(epoch, start=position.begin_epoch(epoch))
        prefetcher.reset()
        if resume_state and epoch == start_epoch:
            resume_generators(opt, resume_state, logger)
        train_data = prefetcher.next()
        while train_data is not None:
            data_timer.record()
            current_iter += 1
            if current_iter > total_iters:
                break
            position.batches += 1
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter == 1:
                msg_logger.reset_start_time()
            if current_iter % opt['logger']['print_freq'] == 0:
                log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate()}
                log_vars.update({'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time()})
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                logger.info('Saving models and training states.')
                save_checkpoint(model, epoch, current_iter, position)
            if opt.get('val') is not None and current_iter % opt['val']['val_freq'] == 0:
                validate(opt, model, val_loaders, current_iter, tb_logger)
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next()
        if current_iter > total_iters:
            break

    consumed_time = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info(f'End of training. Time consumed: {consumed_time}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    if opt.get('val') is not None:
        validate(opt, model, val_loaders, min(current_iter, total_iters), tb_logger)
    log_summary(logger, model)
    if tb_logger:
        tb_logger.close()
    return model


def main(argv):
    train_pipeline(argv)
    return 0
