import statistics

import pytest
import torch

from lightning_noprop.errors import ConfigurationError
from lightning_noprop.nn.embeddings import LearnedEmbedding, OneHotEmbedding, PrototypeEmbedding, medoid_index


def test_one_hot_is_identity_and_fixed():
    embedding = OneHotEmbedding()
    embedding.build(4, (1, 2, 2))
    assert torch.equal(embedding.weight, torch.eye(4)) and not list(embedding.parameters())
    assert torch.equal(embedding(torch.tensor([2, 0])), torch.eye(4)[[2, 0]])


def test_learned_orthogonal_when_dim_at_least_classes():
    embedding = LearnedEmbedding(dim=20)
    embedding.build(10, (1, 28, 28))
    w = embedding.weight
    assert w.shape == (10, 20) and w.requires_grad
    assert torch.allclose(w @ w.T, torch.eye(10), atol=1e-5)


def test_learned_unit_norm_when_dim_below_classes():
    embedding = LearnedEmbedding(dim=5)
    embedding.build(100, (3, 32, 32))
    assert torch.allclose(embedding.weight.norm(dim=1), torch.ones(100), atol=1e-5)


def test_medoid_index_matches_brute_force_median_of_others():
    points = torch.randn(37, 4, dtype=torch.float64)
    distances = torch.cdist(points, points)
    medians = [statistics.median_low([distances[i, j].item() for j in range(37) if j != i]) for i in range(37)]
    assert medoid_index(points, chunk_size=5) == min(range(37), key=medians.__getitem__)


def test_prototype_picks_each_class_medoid_and_marks_initialised():
    # Lower medians of the distances to the others: class 0 -> 2, 1, 2, 3, 96; class 1 -> 3, 2, 3, 8.
    images = torch.tensor([0.0, 1.0, 2.0, 4.0, 100.0, 10.0, 12.0, 13.0, 20.0]).view(9, 1, 1, 1)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    embedding = PrototypeEmbedding()
    embedding.build(2, (1, 1, 1))
    with pytest.raises(ConfigurationError, match="never initialised"):
        embedding(labels)
    embedding.initialize_from_data(images, labels)
    assert embedding.weight.flatten().tolist() == [1.0, 12.0]
    assert embedding.z_shape == (1, 1, 1) and embedding.requires_data_init


def test_prototype_initialised_flag_travels_with_the_state_dict():
    trained = PrototypeEmbedding()
    trained.build(2, (1, 1, 1))
    trained.initialize_from_data(torch.tensor([0.0, 1.0, 5.0, 6.0]).view(4, 1, 1, 1), torch.tensor([0, 0, 1, 1]))
    restored = PrototypeEmbedding()
    restored.build(2, (1, 1, 1))
    assert trained.data_initialized and not restored.data_initialized
    restored.load_state_dict(trained.state_dict())
    assert restored.data_initialized and torch.equal(restored.weight, trained.weight)
    assert OneHotEmbedding().data_initialized and LearnedEmbedding().data_initialized, "nothing to initialise"


def test_prototype_needs_every_class():
    embedding = PrototypeEmbedding()
    embedding.build(3, (1, 1, 1))
    with pytest.raises(ValueError, match="no image of class 2"):
        embedding.initialize_from_data(torch.zeros(4, 1, 1, 1), torch.tensor([0, 1, 0, 1]))


def test_build_twice_is_refused():
    embedding = OneHotEmbedding()
    embedding.build(3, (1, 1, 1))
    with pytest.raises(RuntimeError, match="already built"):
        embedding.build(3, (1, 1, 1))
