"""Building blocks: denoising blocks, class embeddings, output heads."""

from lightning_noprop.nn.blocks import ConvEncoder, DenoisingBlock, LabelEncoder
from lightning_noprop.nn.embeddings import ClassEmbedding, LearnedEmbedding, OneHotEmbedding, PrototypeEmbedding
from lightning_noprop.nn.heads import Head, PosteriorHead, SoftmaxHead

__all__ = [
    "ClassEmbedding",
    "ConvEncoder",
    "DenoisingBlock",
    "Head",
    "LabelEncoder",
    "LearnedEmbedding",
    "OneHotEmbedding",
    "PosteriorHead",
    "PrototypeEmbedding",
    "SoftmaxHead",
]
