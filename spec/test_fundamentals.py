"""Properties of the PyTorch fundamentals (appendix A): logistic loss, datasets, a small MLP."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt_components.fundamentals import (
    NeuralNetwork,
    ToyDataset,
    available_devices,
    compute_accuracy,
    default_device,
    logistic_loss,
    logistic_loss_grad,
    train_classifier,
)
from spec.strategies import generator, seeds

pytestmark = pytest.mark.appendix_a

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3)


@st.composite
def logistic_inputs(draw):
    """x, w, b, y in float64: w and b broadcast against x (possibly after dropping leading dims)."""
    shape = draw(shapes)
    g = generator(draw(seeds))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    # Parameters may drop leading dimensions or keep a dimension at size 1 (both broadcast).
    kept = shape[draw(st.integers(0, len(shape))):]
    w_shape = [size if draw(st.booleans()) else 1 for size in kept]
    b_shape = draw(st.sampled_from([[], [1], w_shape, [1] * len(shape)]))
    w = torch.randn(w_shape, generator=g, dtype=torch.float64)
    b = torch.randn(b_shape, generator=g, dtype=torch.float64)
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        y = (y > 0.5).to(torch.float64)
    return x, w, b, y


def book_inputs():
    return (torch.tensor([1.1]), torch.tensor([2.2]), torch.tensor([0.0]), torch.tensor([1.0]))


@given(logistic_inputs())
def test_logistic_loss_is_binary_cross_entropy_of_the_sigmoid(inputs):
    x, w, b, y = inputs
    expected = F.binary_cross_entropy(torch.sigmoid(x * w + b), y)
    torch.testing.assert_close(logistic_loss(x, w, b, y), expected, rtol=1e-10, atol=1e-12)


def test_logistic_loss_matches_the_books_figure():
    # Appendix A: z = 1.1 * 2.2, loss = -log(sigmoid(z)) = 0.0852.
    loss = logistic_loss(*book_inputs())
    assert loss.shape == ()
    assert loss.item() == pytest.approx(0.0852, abs=5e-5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2.42)), rel=1e-6)


def test_logistic_loss_grad_matches_the_books_figures():
    # Appendix A: autograd gives dL/dw1 = -0.0898 and dL/db = -0.0817.
    grad_w, grad_b = logistic_loss_grad(*book_inputs())
    assert grad_w.item() == pytest.approx(-0.0898, abs=5e-5)
    assert grad_b.item() == pytest.approx(-0.0817, abs=5e-5)


@given(logistic_inputs())
def test_hand_derived_gradient_equals_autograd_in_float64(inputs):
    x, w, b, y = inputs
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    reference = F.binary_cross_entropy(torch.sigmoid(x * w + b), y)
    ref_w, ref_b = torch.autograd.grad(reference, (w, b))
    auto_w, auto_b = torch.autograd.grad(logistic_loss(x, w, b, y), (w, b))
    grad_w, grad_b = logistic_loss_grad(x, w.detach(), b.detach(), y)
    assert grad_w.shape == w.shape and grad_b.shape == b.shape
    for got, want in ((grad_w, ref_w), (grad_b, ref_b), (auto_w, ref_w), (auto_b, ref_b)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_logistic_loss_stays_finite_when_the_sigmoid_saturates():
    x, w, b = torch.tensor([100.0]), torch.tensor([1.0]), torch.tensor([0.0])
    loss = logistic_loss(x, w, b, torch.tensor([0.0]))
    assert loss.item() == pytest.approx(100.0)
    grad_w, grad_b = logistic_loss_grad(x, w, b, torch.tensor([0.0]))
    assert grad_w.item() == pytest.approx(100.0) and grad_b.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (([1.1], torch.tensor([2.2]), torch.tensor([0.0]), torch.tensor([1.0])), "x"),
        ((torch.tensor([1.1]), 2.2, torch.tensor([0.0]), torch.tensor([1.0])), "w"),
        ((torch.tensor([1.1]), torch.tensor([2.2]), None, torch.tensor([1.0])), "b"),
        ((torch.tensor([1.1]), torch.tensor([2.2]), torch.tensor([0.0]), [1.0]), "y"),
        ((torch.tensor([1]), torch.tensor([2.2]), torch.tensor([0.0]), torch.tensor([1.0])), "x"),
        ((torch.tensor([1.1]), torch.tensor([2.2]), torch.tensor([0.0]), torch.tensor([1])), "y"),
    ],
)
def test_non_float_tensors_are_rejected_naming_the_parameter(args, name):
    for function in (logistic_loss, logistic_loss_grad):
        with pytest.raises(TypeError, match=rf"\b{name}\b"):
            function(*args)


@pytest.mark.parametrize(
    ("x", "w", "b", "y", "name"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], [0.0], [1.0, 0.0], "w"),
        ([1.0, 2.0], [1.0], [0.0, 1.0, 2.0], [1.0, 0.0], "b"),
        ([1.0, 2.0], [1.0], [0.0], [1.0, 0.0, 1.0], "y"),
        ([1.0], [1.0], [0.0, 0.0], [1.0], "y"),
        ([1.0], [1.0], [0.0], [1.5], "y"),
        ([1.0], [1.0], [0.0], [-0.5], "y"),
    ],
)
def test_mismatched_shapes_and_labels_outside_zero_one_are_rejected(x, w, b, y, name):
    args = [torch.tensor(v) for v in (x, w, b, y)]
    for function in (logistic_loss, logistic_loss_grad):
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            function(*args)


@given(st.integers(1, 40), st.integers(1, 5), st.booleans(), st.integers(1, 7), seeds)
def test_a_dataloader_epoch_visits_every_sample_exactly_once(n, features, shuffle, batch, seed):
    X = torch.arange(n * features, dtype=torch.float32).reshape(n, features)
    y = torch.arange(n)
    dataset = ToyDataset(X, y)
    assert len(dataset) == n
    loader = DataLoader(dataset, batch_size=batch, shuffle=shuffle, generator=generator(seed))
    seen_x, seen_y = zip(*loader, strict=True)
    seen_y = torch.cat(seen_y)
    assert sorted(seen_y.tolist()) == list(range(n))
    torch.testing.assert_close(torch.cat(seen_x), X[seen_y], rtol=0, atol=0)
    if not shuffle:
        assert seen_y.tolist() == list(range(n))


def test_toy_dataset_returns_the_pair_at_an_index():
    X = torch.tensor([[-1.2, 3.1], [-0.9, 2.9], [2.3, -1.1]])
    y = torch.tensor([0, 0, 1])
    features, label = ToyDataset(X, y)[2]
    assert features.tolist() == X[2].tolist() and label.item() == 1


@pytest.mark.parametrize(
    ("X", "y", "error", "name"),
    [
        ([[1.0]], torch.tensor([0]), TypeError, r"X\b.*\blist"),
        (torch.zeros(2, 1), [0, 1], TypeError, "y"),
        (torch.zeros(2, 1), torch.tensor([0, 1, 1]), ValueError, "y"),
        (torch.tensor(1.0), torch.tensor(0), ValueError, "X"),
    ],
)
def test_toy_dataset_rejects_bad_inputs_naming_them(X, y, error, name):
    with pytest.raises(error, match=rf"\b{name}"):
        ToyDataset(X, y)


def test_neural_network_has_the_books_layers_and_parameter_count():
    model = NeuralNetwork(50, 3)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2213
    widths = [(m.in_features, m.out_features) for m in model.layers if hasattr(m, "in_features")]
    assert widths == [(50, 30), (30, 20), (20, 3)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.layers) == 2


@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 5), seeds)
def test_neural_network_is_the_composition_of_its_layers(inputs, outputs, batch, seed):
    model = NeuralNetwork(inputs, outputs, generator=generator(seed)).double()
    x = torch.randn(batch, inputs, generator=generator(seed + 1), dtype=torch.float64)
    l1, l2, l3 = (m for m in model.layers if isinstance(m, torch.nn.Linear))
    h = torch.clamp(x @ l1.weight.T + l1.bias, min=0)
    h = torch.clamp(h @ l2.weight.T + l2.bias, min=0)
    torch.testing.assert_close(model(x), h @ l3.weight.T + l3.bias)


@given(seeds)
def test_neural_network_initialisation_follows_its_generator_and_pytorchs_bounds(seed):
    a = NeuralNetwork(4, 2, generator=generator(seed))
    b = NeuralNetwork(4, 2, generator=generator(seed))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for layer in (m for m in a.layers if isinstance(m, torch.nn.Linear)):
        bound = 1 / math.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.std() > bound / 4


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [((0, 2), ValueError, "num_inputs"), ((2, 0), ValueError, "num_outputs"),
     ((2.0, 2), TypeError, "num_inputs"), ((2, True), TypeError, "num_outputs")],
)
def test_neural_network_rejects_bad_sizes_naming_them(args, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        NeuralNetwork(*args)


@st.composite
def separable_sets(draw):
    """Two clusters on either side of a random hyperplane, with a margin."""
    g = generator(draw(seeds))
    features = draw(st.integers(2, 4))
    n = draw(st.integers(8, 16))
    direction = torch.randn(features, generator=g)
    direction /= direction.norm()
    X = torch.randn(n, features, generator=g)
    y = torch.arange(n) % 2
    side = torch.where(y == 1, 1.0, -1.0)
    X += (side * 2.0 - X @ direction)[:, None] * direction  # project onto +-2 along the normal
    return X, y, g


@given(separable_sets())
def test_training_lowers_the_loss_on_a_linearly_separable_set(data):
    X, y, g = data
    model = NeuralNetwork(X.shape[1], 2, generator=g)
    loader = DataLoader(ToyDataset(X, y), batch_size=4, shuffle=True, generator=g)
    before = F.cross_entropy(model(X), y).item()
    losses = train_classifier(model, loader, epochs=6, lr=0.2)
    after = F.cross_entropy(model(X), y).item()
    assert len(losses) == 6 and all(isinstance(v, float) for v in losses)
    assert after < before
    assert losses[-1] < losses[0]
    assert not model.training
    assert compute_accuracy(model, DataLoader(ToyDataset(X, y), batch_size=5)) >= 0.9


def test_train_classifier_reports_each_epochs_mean_sample_loss():
    # With lr tiny the model barely moves, so each epoch's loss is the loss of the start model,
    # averaged per sample even when the last batch is smaller.
    g = generator(0)
    X = torch.randn(7, 3, generator=g)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    model = NeuralNetwork(3, 2, generator=g)
    expected = F.cross_entropy(model(X), y).item()
    losses = train_classifier(model, DataLoader(ToyDataset(X, y), batch_size=3), 2, lr=1e-12)
    assert losses == pytest.approx([expected, expected], rel=1e-5)


def test_train_classifier_takes_one_step_per_batch_like_plain_sgd():
    g = generator(1)
    X, y = torch.randn(6, 2, generator=g), torch.tensor([0, 1, 1, 0, 1, 0])
    model = NeuralNetwork(2, 2, generator=g)
    reference = NeuralNetwork(2, 2)
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    for start in (0, 3):
        optimizer.zero_grad()
        F.cross_entropy(reference(X[start:start + 3]), y[start:start + 3]).backward()
        optimizer.step()
    train_classifier(model, DataLoader(ToyDataset(X, y), batch_size=3), epochs=1, lr=0.5)
    for got, want in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want)


def test_train_classifier_runs_on_one_sample_and_on_a_named_device():
    X, y = torch.tensor([[1.0, -1.0]]), torch.tensor([1])
    model = NeuralNetwork(2, 2, generator=generator(3))
    losses = train_classifier(model, DataLoader(ToyDataset(X, y)), 2, 0.1, device="cpu")
    assert len(losses) == 2 and losses[1] < losses[0]
    assert compute_accuracy(model, DataLoader(ToyDataset(X, y)), device="cpu") in (0.0, 1.0)


def test_an_empty_loader_is_rejected_naming_loader():
    empty = DataLoader(ToyDataset(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ValueError, match=r"^loader must yield at least one batch"):
        train_classifier(NeuralNetwork(2, 2), empty, 1, 0.1)
    with pytest.raises(ValueError, match=r"^loader must yield at least one sample"):
        compute_accuracy(NeuralNetwork(2, 2), empty)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [({"epochs": 0}, ValueError, "epochs"), ({"epochs": 1.5}, TypeError, "epochs"),
     ({"lr": 0.0}, ValueError, "lr"), ({"lr": float("nan")}, ValueError, "lr"),
     ({"lr": "0.1"}, TypeError, "lr")],
)
def test_train_classifier_rejects_bad_arguments_naming_them(kwargs, error, name):
    model = NeuralNetwork(2, 2)
    loader = DataLoader(ToyDataset(torch.zeros(2, 2), torch.tensor([0, 1])))
    with pytest.raises(error, match=rf"\b{name}\b"):
        train_classifier(model, loader, **{"epochs": 1, "lr": 0.1, **kwargs})


def test_devices_are_listed_in_preference_order_ending_with_cpu():
    devices = available_devices()
    assert devices[-1] == "cpu"
    assert devices == [d for d in ("cuda", "mps", "cpu") if d in devices]
    assert default_device() == torch.device(devices[0])
    assert ("cuda" in devices) == torch.cuda.is_available()


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, ["cuda", "mps", "cpu"]), (False, True, ["mps", "cpu"]),
     (True, False, ["cuda", "cpu"]), (False, False, ["cpu"])],
)
def test_devices_follow_what_torch_reports(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert available_devices() == expected
    assert default_device() == torch.device(expected[0])


@given(st.lists(st.booleans(), min_size=1, max_size=20), st.integers(1, 4))
def test_compute_accuracy_is_the_fraction_of_argmax_matches(correct, batch):
    n = len(correct)
    logits = torch.zeros(n, 3)
    predicted = torch.arange(n) % 3
    logits[torch.arange(n), predicted] = 1.0
    labels = torch.where(torch.tensor(correct), predicted, (predicted + 1) % 3)

    class Fixed(torch.nn.Module):
        def forward(self, index):
            return logits[index]

    loader = DataLoader(ToyDataset(torch.arange(n), labels), batch_size=batch)
    assert compute_accuracy(Fixed(), loader) == pytest.approx(sum(correct) / n, abs=1e-12)
