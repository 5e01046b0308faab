"""Data preparation with BasicSR's own utilities: the scikit-image sample set, DIV2K/DF2K sub-image LMDBs and the
five standard test sets. The command line is ``basicsr datasets`` (``prepare.py``)."""
from .benchmark import SETS as BENCHMARK_SETS
from .benchmark import prepare_benchmark
from .div2k import prepare_div2k
from .sample import build_sample, sample_paths

__all__ = ['BENCHMARK_SETS', 'build_sample', 'prepare_benchmark', 'prepare_div2k', 'sample_paths']
