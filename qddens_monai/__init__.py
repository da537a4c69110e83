"""QDD-Ens for MONAI: deep diversified ensembles with diverse low-bit quantization."""

__version__ = "0.1.0"
