"""Building blocks: denoising blocks, class embeddings, output heads."""

from lightning_noprop.nn.blocks import ConvEncoder, DenoisingBlock, LabelEncoder, TimeConditionedBlock
from lightning_noprop.nn.embeddings import ClassEmbedding, LearnedEmbedding, OneHotEmbedding, PrototypeEmbedding
from lightning_noprop.nn.heads import Head, PosteriorHead, SoftmaxHead
from lightning_noprop.nn.time_embedding import SinusoidalTimeEmbedding

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
    "SinusoidalTimeEmbedding",
    "SoftmaxHead",
    "TimeConditionedBlock",
]
