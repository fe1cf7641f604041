"""Package metadata for nawsv: noise-adaptive warm-up of SSL models for speaker verification."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent

setup(
    name="nawsv",
    version="0.1.0",
    description="NAW-SV: noise-robust self-supervised speaker verification as a Kaldi-style recipe toolkit",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nawsv", "nawsv.*"]),
    install_requires=[
        # A range, not a pin: users with GPUs bring their own CUDA build (tools/install.sh picks the CPU wheel).
        "torch>=2.1,<3",
        "transformers>=4.40,<6",
        "numpy>=1.24",
        "scipy>=1.10",
        "soundfile>=0.12",
        "soxr>=0.3",
        "kaldiio>=2.18",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "pytest-timeout>=2.2"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "m4a": ["av>=18"],          # VoxCeleb2's AAC audio, decoded once to FLAC in stage 1
        # What `import wespeaker.bin.train` pulls in (its package __init__ reaches the CLI and diarisation too).
        # The checkout itself is not on PyPI: tools/install.sh --wespeaker builds that environment, with the
        # torch/torchaudio pair and torchnet (which needs pinning / no build isolation).
        "wespeaker": ["torchaudio<2.9", "s3prl", "fire", "tableprint", "lmdb", "openai-whisper", "peft", "accelerate",
                      "silero-vad", "onnxruntime", "hdbscan", "umap-learn==0.5.6"],
    },
    entry_points={"console_scripts": ["nawsv = nawsv.cli:main"]},
)
