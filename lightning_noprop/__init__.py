"""lightning_noprop: local learning (NoProp-DT/CT/FM, BWBPF) and its backprop baselines in PyTorch Lightning."""

__version__ = "0.1.0"
