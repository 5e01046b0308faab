"""``basicsr test``: BasicSR's test pipeline with the plugin's option checks and a metric summary."""
import logging
from os import path as osp

import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_root_logger, get_time_str, make_exp_dirs
from basicsr.utils.options import dict2str

from .options import validate_options
from .train import log_summary, parse


def test_pipeline(argv):
    opt, _ = parse(argv, is_train=False)
    notes = validate_options(opt, is_train=False)  # every problem of the file, before anything is written
    torch.backends.cudnn.benchmark = True

    make_exp_dirs(opt)
    log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    for note in notes:
        logger.info(note)

    test_loaders = []
    for _, dataset_opt in sorted(opt['datasets'].items()):
        test_set = build_dataset(dataset_opt)
        test_loaders.append(
            build_dataloader(test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=None,
                             seed=opt['manual_seed']))
        logger.info(f"Number of test images in {dataset_opt['name']}: {len(test_set)}")

    model = build_model(opt)
    for test_loader in test_loaders:
        logger.info(f"Testing {test_loader.dataset.opt['name']}...")
        model.validation(test_loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val']['save_img'])
    log_summary(logger, model)
    return model


def main(argv):
    test_pipeline(argv)
    return 0
