"""Building blocks: denoising blocks, class embeddings, output heads, backbones and auxiliary classifiers."""

from lightning_noprop.nn.backbones import VGG, Backbone, ResNet

from lightning_noprop.nn.blocks import ConvEncoder, DenoisingBlock, LabelEncoder, TimeConditionedBlock
from lightning_noprop.nn.classifiers import AuxiliaryClassifier, ConvClassifier, LinearClassifier
from lightning_noprop.nn.embeddings import ClassEmbedding, LearnedEmbedding, OneHotEmbedding, PrototypeEmbedding
from lightning_noprop.nn.heads import Head, PosteriorHead, SoftmaxHead
from lightning_noprop.nn.time_embedding import SinusoidalTimeEmbedding

__all__ = [
    "AuxiliaryClassifier",
    "Backbone",
    "ConvClassifier",
    "LinearClassifier",
    "ResNet",
    "VGG",
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
