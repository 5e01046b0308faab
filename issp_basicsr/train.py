"""``basicsr train``: BasicSR's training pipeline with the plugin's checks, CPU resume and a final summary.

It follows ``basicsr/train.py`` step by step and reuses its helpers; it differs where BasicSR 1.4.2 cannot serve:
options are validated before anything is written, resume works without a GPU, and the run ends with a summary
(validation metrics beside bicubic, achieved sparsity).
"""
import datetime
import logging
import math
import os
import sys
import time
from os import path as osp

import torch
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import create_train_val_dataloader, init_tb_loggers
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, make_exp_dirs,
                           mkdir_and_rename)
from basicsr.utils.options import copy_opt_file, dict2str, parse_options

from .compat import load_resume_state
from .options import OptionError, validate_options


def parse(argv, is_train):
    """BasicSR's argument parser and option parsing, on ``argv`` rather than ``sys.argv``."""
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


def log_summary(logger, model):
    summary = getattr(model, 'validation_summary', lambda: {})()
    for dataset, metrics in summary.items():
        parts = [f'{m} {v:.4f}' + (f' (bicubic {b:.4f})' if b is not None else '') for m, (v, b) in metrics.items()]
        logger.info(f'Final {dataset}: ' + ', '.join(parts))
    sparsifier = getattr(model, 'sparsifier', None)
    if sparsifier is not None:
        logger.info(f'Final sparsity: {sparsifier.sparsity():.4f} of {sparsifier.num_weights():,} prunable weights '
                    f'are exactly 0 (target {sparsifier.num_pruned() / sparsifier.num_weights():.4f}, '
                    f'{sparsifier.phase} stage)')


def train_pipeline(argv):
    opt, args = parse(argv, is_train=True)
    validate_options(opt, is_train=True)
    torch.backends.cudnn.benchmark = True

    resume_state = load_resume_state(opt)
    if resume_state is None:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    copy_opt_file(args.opt, opt['path']['experiments_root'])

    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
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

    logger.info(f'Start training from epoch: {start_epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        train_sampler.set_epoch(epoch)
        prefetcher.reset()
        train_data = prefetcher.next()
        while train_data is not None:
            data_timer.record()
            current_iter += 1
            if current_iter > total_iters:
                break
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
                model.save(epoch, current_iter)
            if opt.get('val') is not None and current_iter % opt['val']['val_freq'] == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])
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
        for val_loader in val_loaders:
            model.validation(val_loader, min(current_iter, total_iters), tb_logger, opt['val']['save_img'])
    log_summary(logger, model)
    if tb_logger:
        tb_logger.close()
    return model


def main(argv):
    train_pipeline(argv)
    return 0
