"""Installs patronus_jax: Patronus and B-cos interpretable diffusion in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name='patronus_jax',
    version='0.1.0',
    description='Patronus (prototype-based interpretable diffusion) and B-cos interpretable '
                'diffusion in JAX/Flax for TPUs, GPUs and CPUs',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['patronus_jax', 'patronus_jax.*']),
    include_package_data=True,
    package_data={'patronus_jax': ['**/*.json', '**/*.txt']},
    install_requires=[
        'jax>=0.10.2',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.8',
        'tensorflow-datasets>=4.9.10',
        'tensorflow-cpu>=2.21.0',  # TFDS prepares datasets with TensorFlow
        'grain>=0.2.18',
        'array_record>=0.8.1',
        'ml_collections>=1.1.0',
        'clu>=0.0.12',
        'numpy>=1.26',
        'scipy>=1.13',
        'scikit-learn>=1.5',
        'matplotlib>=3.8',
        'pillow>=10.0',
        'absl-py>=2.1',
        'tqdm>=4.66',
        'tensorboard>=2.16',  # clu's metric writers write TensorBoard event files
        'importlib_resources>=6.0',  # TFDS 4.9 imports it on every Python version
    ],
    extras_require={
        'test': ['ruff>=0.6', 'pytest>=8.0', 'pytest-xdist>=3.5', 'nbclient>=0.10', 'nbformat>=5.10',
                 'ipykernel>=6.29'],
        'torch': ['torch==2.13.0'],  # only to read official .tar/.pt checkpoints
        'tpu': ['jax[tpu]>=0.10.2'],
        'cuda': ['jax[cuda12]>=0.10.2'],
    },
    entry_points={'console_scripts': ['patronus-jax=patronus_jax.main:_console']},
)
