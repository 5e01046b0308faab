"""issp-basicsr: train sparse super-resolution networks from scratch with ISS-P (ICCV 2023) inside BasicSR."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, 'issp_basicsr', 'version.py')) as f:
    exec(f.read(), version)

setup(
    name='issp-basicsr',
    version=version['__version__'],
    description='Iterative Soft Shrinkage-Percentage (ISS-P) pruning for image super-resolution in BasicSR',
    long_description=open(os.path.join(here, 'README.md')).read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['issp_basicsr', 'issp_basicsr.*']),
    python_requires='>=3.9',
    # torch and torchvision are pinned as a pair: the CPU-only torch wheel has no matching torchvision.
    install_requires=[
        'basicsr==1.4.2',
        'torch==2.14.1',
        'torchvision==0.29.1',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'scikit-image',
        'tqdm',
        'matplotlib',
        # granularity: channel (coupled channel groups) and export --slim (physical removal)
        'torch-pruning==1.6.1',
    ],
    # onnx: `basicsr export --onnx` checks the exported graph with onnxruntime when it is installed
    # realesrgan: Real-ESRGAN's RealESRNetModel/RealESRGANModel, UNetDiscriminatorSN, RealESRGANDataset (imported
    # when an option file names a type BasicSR does not register; see docs/ModelTypes.md)
    extras_require={
        'test': ['pytest', 'ruff==0.17.5'],
        'onnx': ['onnx>=1.16', 'onnxruntime>=1.18'],
        'realesrgan': ['realesrgan==0.3.0'],
    },
    entry_points={'console_scripts': ['basicsr=issp_basicsr.cli:main']},
)
