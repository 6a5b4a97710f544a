"""NoProp-DT: T blocks, each trained alone to denoise a noisy class embedding (spec NOPROP.md, Eq. 8)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_noprop.diffusion import (
    PosteriorCoefficients,
    kl_to_standard_normal,
    mix_embeddings,
    posterior_coefficients,
    sample_q,
    standard_normal_start,
)
from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.blocks import check_block_options, denoising_blocks
from lightning_noprop.nn.embeddings import ClassEmbedding
from lightning_noprop.nn.heads import Head, check_readout, readout_logits
from lightning_noprop.nn.stacked import call_stacked, stacked_template
from lightning_noprop.samplers import posterior_chain
from lightning_noprop.schedules import CosineSchedule, NoiseSchedule
from lightning_noprop.strategies.base import BlockLoss, EmbeddingStrategy, Prediction


@dataclass
class SharedTerms:
    """The parts of L_t that are the same for every block on a batch, computed once per batch when they carry no
    gradient (a fixed schedule, a one-hot embedding). A part that does carry one is None and is recomputed in each
    block's loss: ``backward_mode="per_block"`` frees each block's graph before the next block's backward.

    alpha_bar: (T + 1,) on the grid i / T; weights: (T,) the denoising weights; u: (B, d) the clean embeddings u_y;
    kl: () the batch-mean KL(q(z_0 | y) || N(0, I)).
    """

    alpha_bar: Tensor | None = None
    weights: Tensor | None = None
    u: Tensor | None = None
    kl: Tensor | None = None


class NoPropDT(EmbeddingStrategy):
    """NoProp-DT (Li et al., 2025): T blocks, each trained on its own to denoise a noisy label embedding (Eq. 8).

    NoProp in discrete time. Block t (1-indexed, code index t - 1) sees the image x and a fresh sample
    z_{t-1} ~ q(z_{t-1} | y), never another block's output, and minimises (Eq. 8)

        L_t = CE(head(z_T), y) + KL(q(z_0 | y) || N(0, I))
              + (T / 2) eta (SNR(t) - SNR(t-1)) ||u_hat_t(z_{t-1}, x) - u_y||^2

    with z_T ~ q(z_T | y) and u_hat_t = softmax(logits_t) @ W_Embed. L_t trains block t, the head and a
    learned W_Embed; no gradient reaches another block. Inference chains the blocks with Eq. 3.

    Args:
        num_blocks: T, the number of blocks (paper: 10).
        embedding: class embedding W_Embed; None means one-hot.
        head: output head; None means the softmax head.
        noise_schedule: alpha_bar(t) evaluated at t_i = i / T; None means the clamped flipped cosine schedule. A
            ``LearnedSchedule`` also works: it is then trained by every block's loss with the shared parameters.
        eta: weight of the denoising term (paper: 0.1).
        dropout: dropout in each block's convolutional encoders (paper: 0.2).
        width: hidden width of each block (paper: 256).
        inference_noise: sample z_t with the sqrt(c_t) eps term of Eq. 3 (the paper); False uses the
            posterior mean (eps = 0), which one reimplementation found more accurate.
        readout: how z_T becomes class scores: "head" (the paper) or "nearest" (the nearest class embedding,
            as NoProp-FM reads out; it measures the blocks alone, independently of how far the head has trained).
        block_execution: deprecated, use the module's ``block_execution`` (``model.block_execution``), which runs
            ``stacked_block_losses``; None (the default) leaves it to the module.
    """

    loss_terms = ("ce", "kl", "denoise")
    capture_units = ("denoising_loss", "stacked_denoising_loss")
    execution_options = ("inference_noise", "readout", "block_execution")

    def __init__(
        self,
        num_blocks: int = 10,
        embedding: ClassEmbedding | None = None,
        head: Head | None = None,
        noise_schedule: NoiseSchedule | None = None,
        eta: float = 0.1,
        dropout: float = 0.2,
        width: int = 256,
        inference_noise: bool = True,
        readout: Literal["head", "nearest"] = "head",
        block_execution: Literal["loop", "vmap"] | None = None,
    ) -> None:
        super().__init__(embedding, head)
        if num_blocks < 1:
            raise ConfigurationError(f"num_blocks must be >= 1, got {num_blocks}.")
        if eta <= 0:
            raise ConfigurationError(f"eta must be > 0, got {eta}.")
        self.num_blocks = num_blocks
        self.noise_schedule = noise_schedule if noise_schedule is not None else CosineSchedule()
        self.eta = eta
        check_block_options(dropout, width)
        self.dropout = dropout
        self.width = width
        check_readout(readout)
        if block_execution not in (None, "loop", "vmap"):
            raise ConfigurationError(f"block_execution must be 'loop' or 'vmap', got {block_execution!r}.")
        self.inference_noise = inference_noise
        self.readout = readout
        self.block_execution = block_execution

    def _build_blocks(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.blocks = denoising_blocks(self.num_blocks, image_shape, num_classes, self.embedding, self.dropout, self.width)

    @property
    def num_local_losses(self) -> int:
        return self.num_blocks

    def block_parameters(self, block: int) -> list[nn.Parameter]:
        return list(self.blocks[block].parameters())

    def block_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def shared_parameters(self) -> list[nn.Parameter]:
        # A learned schedule (e.g. LearnedSchedule) weights every block's loss, so it is shared like the head.
        return super().shared_parameters() + [p for p in self.noise_schedule.parameters() if p.requires_grad]

    def alpha_bar(self) -> Tensor:
        """alpha_bar on the grid t_i = i / T, i = 0..T: shape (T + 1,)."""
        grid = torch.linspace(0.0, 1.0, self.num_blocks + 1, device=self.embedding.weight.device)
        return self.noise_schedule.alpha_bar(grid)

    def loss_weights(self, alpha_bar: Tensor | None = None) -> Tensor:
        """(T / 2) eta (SNR(t) - SNR(t-1)) for t = 1..T: shape (T,), from ``alpha_bar()`` unless it is given."""
        alpha_bar = self.alpha_bar() if alpha_bar is None else alpha_bar
        snr = alpha_bar / (1.0 - alpha_bar)
        return 0.5 * self.num_blocks * self.eta * (snr[1:] - snr[:-1])

    def coefficients(self) -> PosteriorCoefficients:
        """a_t, b_t, c_t of Eq. 3 for t = 1..T."""
        return posterior_coefficients(self.alpha_bar())

    def denoise(self, block: int, x: Tensor, z: Tensor, embedding: Tensor) -> Tensor:
        """u_hat_t(z, x) = softmax(logits_t) @ W_Embed for code index ``block`` = t - 1. Returns (B, d)."""
        return self.denoise_with(self.blocks[block], x, z, embedding)

    @staticmethod
    def denoise_with(net: nn.Module, x: Tensor, z: Tensor, embedding: Tensor) -> Tensor:
        """u_hat(z, x) = softmax(net(x, z)) @ W_Embed for a block ``net``. Returns (B, d)."""
        return mix_embeddings(net(x, z).softmax(dim=-1), embedding)

    @property
    def block_dependency(self) -> Literal["independent"]:
        return "independent"

    def modules_of_block(self, block: int) -> list[nn.Module]:
        return [self.blocks[block]]

    def local_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> Iterator[BlockLoss]:
        shared = self.shared_terms(y)
        for block in blocks:
            with self.random_stream(block):
                loss = self.block_loss(x, y, block, shared)
            yield loss

    def shared_terms(self, y: Tensor) -> SharedTerms:
        """``SharedTerms`` for labels y (B,): every part that needs no gradient, the others None."""
        shared = SharedTerms()
        alpha_bar = self.alpha_bar()
        if not alpha_bar.requires_grad:
            shared.alpha_bar, shared.weights = alpha_bar, self.loss_weights(alpha_bar)
        u = self.embedding(y)
        if not u.requires_grad:
            shared.u = u
        if shared.alpha_bar is not None and shared.u is not None:
            shared.kl = kl_to_standard_normal(u, alpha_bar[0]).mean()
        return shared

    def stacked_block_losses(self, x: Tensor, y: Tensor, blocks: Sequence[int]) -> list[BlockLoss]:
        """``[block_loss(x, y, b) for b in blocks]`` with the blocks' forward passes run as one vmapped call (what the
        module's ``block_execution`` "vmap" runs). The losses share one graph, so they need a joint backward.

        The noise is drawn in the same order as the loop draws it, so without dropout both give the same losses.
        """
        embedding = self.embedding.weight
        u = self.embedding(y)
        alpha_bar = self.alpha_bar()
        z_prev, z_last = [], []
        for block in blocks:  # each block's noise from its own stream, drawn as block_loss draws it
            with self.random_stream(block):
                z_prev.append(sample_q(u, alpha_bar[block]))
                z_last.append(sample_q(u, alpha_bar[-1]))
        nets = [self.blocks[b] for b in blocks]
        weights = self.loss_weights(alpha_bar)[list(blocks)]
        kl = kl_to_standard_normal(u, alpha_bar[0]).mean()
        loss, ce, denoise = self.stacked_denoising_loss(nets, stacked_template(nets[0]), x, y, u, embedding,
                                                        torch.stack(z_prev), torch.stack(z_last), weights, kl)  # fmt: skip
        return [BlockLoss(block=b, loss=loss[i], terms={"ce": ce[i], "kl": kl.detach(), "denoise": denoise[i]})
                for i, b in enumerate(blocks)]  # fmt: skip

    def stacked_denoising_loss(self, nets: list[nn.Module], template: nn.Module, x: Tensor, y: Tensor, u: Tensor,
                               embedding: Tensor, z_prev: Tensor, z_last: Tensor, weights: Tensor,
                               kl: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """Eq. 8 for K blocks ``nets`` at once, from modules and tensors alone (what ``capture_step`` compiles under
        ``block_execution`` "vmap"): x (B, C, H, W), y (B,), u = u_y (B, d), embedding (m, d), z_prev the blocks'
        z_{t-1} (K, B, d), z_last their z_T draws (K, B, d), weights (K,), kl the batch-mean KL term (0-d);
        ``template`` is ``stacked_template(nets[0])``. Returns (L_t, detached CE, detached denoising term), each (K,)."""
        assert z_prev.shape[0] == len(nets) == weights.shape[0], f"{len(nets)} blocks, z_prev {tuple(z_prev.shape)}"
        logits = call_stacked(nets, x, z_prev, template)  # (K, B, m)
        u_hat = mix_embeddings(logits.softmax(dim=-1), embedding)  # (K, B, d)
        denoise = weights * (u_hat - u).pow(2).sum(-1).mean(-1)  # (K,)
        k = len(nets)
        head_logits = self.head(z_last.flatten(0, 1), embedding)
        ce = F.cross_entropy(head_logits, y.repeat(k), reduction="none").view(k, -1).mean(-1)
        return ce + kl + denoise, ce.detach(), denoise.detach()

    def block_loss(self, x: Tensor, y: Tensor, block: int, shared: SharedTerms | None = None) -> BlockLoss:
        """L_t of Eq. 8 for code index ``block`` = t - 1; ``shared`` supplies the batch's gradient-free parts."""
        assert 0 <= block < self.num_blocks, f"block must be in [0, {self.num_blocks}), got {block}"
        shared = SharedTerms() if shared is None else shared
        embedding = self.embedding.weight
        u = self.embedding(y) if shared.u is None else shared.u
        alpha_bar = self.alpha_bar() if shared.alpha_bar is None else shared.alpha_bar
        weights = self.loss_weights(alpha_bar) if shared.weights is None else shared.weights
        kl = kl_to_standard_normal(u, alpha_bar[0]).mean() if shared.kl is None else shared.kl
        loss, ce, denoise = self.denoising_loss(self.blocks[block], x, y, u, embedding, alpha_bar[block],
                                                alpha_bar[-1], weights[block], kl)  # fmt: skip
        return BlockLoss(block=block, loss=loss, terms={"ce": ce, "kl": kl.detach(), "denoise": denoise})

    def denoising_loss(self, net: nn.Module, x: Tensor, y: Tensor, u: Tensor, embedding: Tensor, alpha_prev: Tensor,
                       alpha_last: Tensor, weight: Tensor, kl: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """Eq. 8 for one block ``net`` from tensors alone (what ``capture_step`` compiles, one graph for every block):
        x (B, C, H, W), y (B,), u = u_y (B, d), embedding W_Embed (m, d), alpha_prev = alpha_bar(t - 1), alpha_last =
        alpha_bar(T), weight = (T / 2) eta (SNR(t) - SNR(t - 1)), kl the batch-mean KL term (all 0-d).
        Returns (L_t, detached CE, detached denoising term)."""
        z_prev = sample_q(u, alpha_prev)  # z_{t-1}: Eq. 8 conditions block t on z_{t-1}, not z_t
        denoise = weight * (self.denoise_with(net, x, z_prev, embedding) - u).pow(2).sum(-1).mean()
        ce = F.cross_entropy(self.head(sample_q(u, alpha_last), embedding), y)
        return ce + kl + denoise, ce.detach(), denoise.detach()

    @torch.no_grad()
    def predict(self, x: Tensor, num_steps: int | None = None) -> Prediction:
        """Eq. 3: z_0 ~ N(0, I); z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps; logits = head(z_T).

        ``num_steps`` < T stops after that many blocks (the "anytime" prediction). ``readout`` picks the head
        or the nearest class embedding.
        """
        embedding = self.embedding.weight
        z = standard_normal_start(x.shape[0], embedding)
        z = posterior_chain(lambda t, z_prev: self.denoise(t, x, z_prev, embedding), z, self.coefficients(),
                            self.inference_noise, num_steps)  # fmt: skip
        logits = readout_logits(self.readout, self.head, z, embedding)
        return Prediction(logits=logits, z=z)
