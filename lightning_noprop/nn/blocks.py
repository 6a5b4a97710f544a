"""The networks of the paper's Fig. 6: the NoProp-DT denoising block and the time-conditioned CT/FM network."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.pooling import MaxPool2d
from lightning_noprop.nn.time_embedding import SinusoidalTimeEmbedding


def check_block_options(dropout: float, width: int) -> None:
    """Refuse, in one line, a dropout probability outside [0, 1) or a width below 1 for the Fig. 6 networks."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigurationError(f"dropout must be in [0, 1), got {dropout} (the paper's: 0.2).")
    if width < 1:
        raise ConfigurationError(f"width must be >= 1, got {width} (the paper's: 256).")


class ConvEncoder(nn.Sequential):
    """The image encoder of NoProp's blocks (Fig. 6): three 3x3 convolutions and a linear layer.

    conv3x3 32 -> ReLU -> maxpool2 -> dropout -> conv3x3 64 -> ReLU -> dropout -> conv3x3 128 -> ReLU
    -> maxpool2 -> dropout -> flatten -> FC ``out_features`` -> BatchNorm (``batch_norm``) or ReLU.

    Padding 1 keeps the spatial size through each conv (spec: flatten is 128x7x7 for 28x28 inputs,
    128x8x8 for 32x32). Input (B, C, H, W), output (B, out_features).
    """

    def __init__(
        self, image_shape: tuple[int, int, int], out_features: int = 256, dropout: float = 0.2, batch_norm: bool = True
    ) -> None:
        channels, height, width = image_shape
        flat = 128 * (height // 4) * (width // 4)
        super().__init__(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), MaxPool2d(2), nn.Dropout(dropout),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), MaxPool2d(2), nn.Dropout(dropout),
            nn.Flatten(), nn.Linear(flat, out_features),
            nn.BatchNorm1d(out_features) if batch_norm else nn.ReLU(),
        )  # fmt: skip
        self.image_shape = tuple(image_shape)

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[1:] == self.image_shape, f"expected images of shape (B, *{self.image_shape}), got {tuple(x.shape)}"
        return super().forward(x)


def _fc_bn(in_features: int, out_features: int, relu: bool = True) -> list[nn.Module]:
    return [nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features)] + ([nn.ReLU()] if relu else [])


class LabelEncoder(nn.Module):
    """z branch of Fig. 6: h = ReLU(BN(FC z)); out = h + BN(FC ReLU(BN(FC h))). (B, d) -> (B, width)."""

    def __init__(self, embedding_dim: int, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Sequential(*_fc_bn(embedding_dim, width))
        self.residual = nn.Sequential(*_fc_bn(width, width), *_fc_bn(width, width, relu=False))

    def forward(self, z: Tensor) -> Tensor:
        h = self.embed(z)
        return h + self.residual(h)


class DenoisingBlock(nn.Module):
    """u_hat_t(z_{t-1}, x) of NoProp-DT (Fig. 6), returning the logits whose softmax mixes W_Embed.

    Args:
        image_shape: (C, H, W) of the input images.
        num_classes: m, the size of the logits.
        embedding_dim: d, the size of z.
        z_shape: when the embedding is image-shaped (prototypes), z is reshaped to this (C, H, W) and goes
            through its own convolutional encoder instead of the FC label branch.
        dropout: dropout of the convolutional encoders (paper: 0.2).
        width: hidden width of the encoders and of the fusion MLP (paper: 256).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        embedding_dim: int,
        z_shape: tuple[int, ...] | None = None,
        dropout: float = 0.2,
        width: int = 256,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.image_encoder = ConvEncoder(image_shape, width, dropout)
        if z_shape is not None:
            assert math.prod(z_shape) == embedding_dim, f"z_shape {z_shape} does not hold {embedding_dim} values"
            self.z_shape = tuple(z_shape)
            self.label_encoder = nn.Sequential(nn.Unflatten(1, self.z_shape), ConvEncoder(self.z_shape, width, dropout))
        else:
            self.z_shape = None
            self.label_encoder = LabelEncoder(embedding_dim, width)
        self.fuse = nn.Sequential(*_fc_bn(2 * width, width), *_fc_bn(width, 128), nn.Linear(128, num_classes))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x: (B, C, H, W), z: (B, d) -> logits (B, m)."""
        assert z.dim() == 2 and z.shape[1] == self.embedding_dim, (
            f"z must be (B, {self.embedding_dim}), got {tuple(z.shape)}"
        )
        assert x.shape[0] == z.shape[0], f"batch sizes differ: x {x.shape[0]}, z {z.shape[0]}"
        return self.fuse(torch.cat([self.image_encoder(x), self.label_encoder(z)], dim=1))


class TimeConditionedBlock(nn.Module):
    """The one network of NoProp-CT and NoProp-FM (Fig. 6), shared over t in [0, 1]; no BatchNorm.

    image: the DT convs -> FC width -> ReLU;  z: FC width -> ReLU (prototype embeddings: the conv encoder
    on z reshaped to an image);  t: sinusoidal (``time_dim``) -> FC width -> ReLU;
    concat 3 width -> FC width -> ReLU -> FC 128 -> ReLU -> FC m -> logits.

    Args:
        image_shape: (C, H, W) of the input images.
        num_classes: m, the size of the logits.
        embedding_dim: d, the size of z.
        z_shape: image shape of z for prototype embeddings, else None.
        dropout: dropout of the convolutional encoders (as the DT block: 0.2).
        width: hidden width (paper: 256).
        time_dim: size of the sinusoidal time embedding (paper: 64).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        embedding_dim: int,
        z_shape: tuple[int, ...] | None = None,
        dropout: float = 0.2,
        width: int = 256,
        time_dim: int = 64,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.image_encoder = ConvEncoder(image_shape, width, dropout, batch_norm=False)
        if z_shape is not None:
            assert math.prod(z_shape) == embedding_dim, f"z_shape {z_shape} does not hold {embedding_dim} values"
            self.label_encoder = nn.Sequential(
                nn.Unflatten(1, tuple(z_shape)), ConvEncoder(tuple(z_shape), width, dropout, batch_norm=False)
            )
        else:
            self.label_encoder = nn.Sequential(nn.Linear(embedding_dim, width), nn.ReLU())
        self.time_encoder = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, width), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Linear(3 * width, width), nn.ReLU(), nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """x: (B, C, H, W), z: (B, d), t: (B,) in [0, 1] -> logits (B, m)."""
        return self.from_image_features(self.image_encoder(x), z, t)

    def from_image_features(self, image_features: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """The network after its image branch: image_features (B, width) = ``image_encoder(x)``, z (B, d),
        t (B,) -> logits (B, m). A sampler computes the image features once and reuses them at every step,
        since they depend on neither z nor t (in eval mode); this makes the convolutions a one-off cost."""
        assert z.dim() == 2 and z.shape[1] == self.embedding_dim, (
            f"z must be (B, {self.embedding_dim}), got {tuple(z.shape)}"
        )
        assert image_features.shape[0] == z.shape[0] == t.shape[0], (
            f"batch sizes differ: x {image_features.shape[0]}, z {z.shape[0]}, t {tuple(t.shape)}"
        )
        features = [image_features, self.label_encoder(z), self.time_encoder(t)]
        return self.fuse(torch.cat(features, dim=1))


def denoising_blocks(
    num_blocks: int, image_shape: tuple[int, int, int], num_classes: int, embedding: nn.Module, dropout: float, width: int
) -> nn.ModuleList:
    """``num_blocks`` independent Fig. 6 blocks sized for ``embedding`` (a built ClassEmbedding)."""
    return nn.ModuleList(
        DenoisingBlock(image_shape, num_classes, embedding.dim, embedding.z_shape, dropout, width) for _ in range(num_blocks)
    )
