"""FedSegNet: federated 3D medical image segmentation on NVIDIA FLARE."""

from setuptools import find_packages, setup

setup(
    name="fedsegnet",
    version="0.1.0",
    description="Federated 3D medical image segmentation (Transformer U-Net, AAM) as an NVIDIA FLARE app bundle",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "custom"},
    packages=find_packages(where="custom"),
    install_requires=[
        # FLARE changes APIs between minor releases: stay on the 2.9 series.
        "nvflare>=2.9.0,<2.10",
        # MONAI 1.6 needs torch >= 2.8 (Opacus 1.6: >= 2.6); bring your own CUDA build. CI pins the CPU build.
        "torch>=2.8",
        # fire: `python -m monai.bundle run` (how the bundles of `fedsegnet export bundle` run) parses its command line with it.
        "monai[einops,fire]>=1.5,<1.7",
        "numpy>=1.24",
        # MONAI's Hausdorff distance (HD95) and surface metrics run on scipy.ndimage.
        "scipy>=1.10",
        "nibabel>=5.0",
        # DICOM series in (`fedsegnet infer --image SERIES_FOLDER`, read through MONAI's PydicomReader) and DICOM SEG out
        # (`--dicom-seg`); highdicom changes APIs between minor releases: stay on 0.28.
        "pydicom>=3.0.1,<4",
        "highdicom>=0.28,<0.29",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        # Process memory (RSS) of server and site processes in the per-round records; cross-platform.
        "psutil>=5.9",
        # Differential privacy at the sites (fedsegnet.privacy): DP-SGD and its RDP accountant;
        # dp-accounting (Google) cross-checks the accountant in the tests.
        "opacus>=1.6,<1.7",
        "dp-accounting>=0.6,<0.7",
        # Ledger signatures and kit certificates (fedsegnet.ledger.signing); nvflare needs it too, we import it.
        "cryptography>=42",
    ],
    extras_require={
        # pymerkle: an independent RFC 9162 implementation the ledger's Merkle roots are checked against.
        "test": ["pytest>=8", "pytest-timeout>=2.2", "pymerkle>=7,<8"],
    },
    entry_points={"console_scripts": ["fedsegnet=fedsegnet.cli:main"]},
)
