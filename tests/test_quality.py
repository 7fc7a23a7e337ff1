"""Label quality: per-sample losses over a loader, the torch GMM against scikit-learn, history."""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from anm_fast import quality
from anm_fast.losses import soft_cross_entropy


def _bimodal(n_clean, n_noisy, seed, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n_clean, generator=g).pow(3) * spread          # small losses
    noisy = 1.5 + torch.randn(n_noisy, generator=g) * 0.5             # large losses
    return torch.cat((clean, noisy.abs()))[torch.randperm(n_clean + n_noisy, generator=g)]


def _sklearn_posterior(losses, normalize=True, random_state=0, same_init=False):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    x = losses.double()
    if normalize:
        x = (x - x.min()) / (x.max() - x.min())
    kwargs = {}
    if same_init:
        # Start sklearn's EM from our deterministic k-means split: isolates the EM itself.
        labels = quality._kmeans_1d(x)
        w, m, v = quality._m_step(x, torch.nn.functional.one_hot(labels, 2).double(), 5e-4)
        kwargs = dict(weights_init=w.numpy(), means_init=m.numpy()[:, None],
                      precisions_init=(1 / v).numpy()[:, None, None])
    x = x.numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4,
                          random_state=random_state, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x)
    return gmm.predict_proba(x)[:, gmm.means_.argmin()]


@pytest.mark.parametrize("seed,n_clean,n_noisy", [(0, 800, 200), (1, 500, 500), (2, 300, 2700),
                                                   (3, 4000, 1000)])
def test_gmm_em_matches_sklearn_from_the_same_start(seed, n_clean, n_noisy):
    losses = _bimodal(n_clean, n_noisy, seed)
    ours = quality.gmm_clean_posterior(losses)
    assert ours.dtype == torch.float32 and ours.shape == losses.shape
    np.testing.assert_allclose(ours.numpy(), _sklearn_posterior(losses, same_init=True),
                               atol=1e-5)


@pytest.mark.parametrize("random_state", [0, 1, 2])
@pytest.mark.parametrize("seed,n_clean,n_noisy", [(0, 800, 200), (3, 4000, 1000)])
def test_gmm_matches_default_sklearn(seed, n_clean, n_noisy, random_state):
    # sklearn seeds its k-means randomly and stops Lloyd early, so its own posteriors move by
    # ~1e-3 with random_state where the split is ambiguous; on clearly bimodal losses they agree.
    losses = _bimodal(n_clean, n_noisy, seed)
    np.testing.assert_allclose(quality.gmm_clean_posterior(losses).numpy(),
                               _sklearn_posterior(losses, random_state=random_state), atol=1e-3)


def test_gmm_matches_sklearn_on_real_cross_entropy():
    # Cross-entropy of a half-trained classifier: a heavy-tailed clean mode and a noisy mode.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3000, 10, generator=g) * 2
    labels = logits.argmax(1)
    flip = torch.rand(3000, generator=g) < 0.4
    labels[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    losses = soft_cross_entropy(logits, labels, reduction="none")
    np.testing.assert_allclose(quality.gmm_clean_posterior(losses).numpy(),
                               _sklearn_posterior(losses), atol=1e-3)


def test_gmm_clean_component_is_the_low_loss_one():
    losses = torch.cat((torch.full((50,), 0.1), torch.full((50,), 3.0))) + torch.rand(100) * 0.05
    q = quality.gmm_clean_posterior(losses)
    assert (q[:50] > 0.99).all() and (q[50:] < 0.01).all()


def test_gmm_runs_on_the_losses_device_and_dtype():
    losses = _bimodal(200, 100, 7).half()
    q = quality.gmm_clean_posterior(losses)
    assert q.device == losses.device and q.dtype == torch.float32
    assert float(q.min()) >= 0.0 and float(q.max()) <= 1.0


def test_gmm_edge_cases():
    assert torch.equal(quality.gmm_clean_posterior(torch.full((10,), 2.0)), torch.ones(10))
    with pytest.raises(ValueError, match="NaN"):
        quality.gmm_clean_posterior(torch.tensor([0.1, float("nan"), 0.3]))
    with pytest.raises(ValueError, match="at least 2"):
        quality.gmm_clean_posterior(torch.tensor([0.1]))
    with pytest.raises(TypeError):
        quality.gmm_clean_posterior([0.1, 0.2])


class _Indexed(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def test_per_sample_losses_follow_the_index_and_restore_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Dropout(0.5))
    x, y = torch.randn(37, 3, 2, 2), torch.randint(0, 4, (37,))
    model.train()
    expected = soft_cross_entropy(model.eval()(x), y, reduction="none")
    model.train()
    shuffled = DataLoader(_Indexed(x, y), batch_size=8, shuffle=True)
    got = quality.per_sample_losses(model, shuffled)
    assert model.training  # restored
    torch.testing.assert_close(got, expected)
    plain = DataLoader(TensorDataset(x, y), batch_size=10)
    torch.testing.assert_close(quality.per_sample_losses(model, plain, device="cpu"), expected)


def test_per_sample_losses_soft_targets_and_bad_batches():
    model = torch.nn.Linear(3, 2)
    x, t = torch.randn(5, 3), torch.softmax(torch.randn(5, 2), 1)
    got = quality.per_sample_losses(model, [(x, t)])
    torch.testing.assert_close(got, soft_cross_entropy(model(x), t, reduction="none").detach())
    with pytest.raises(ValueError, match="yield"):
        quality.per_sample_losses(model, [(x,)])
    with pytest.raises(ValueError, match="no batches"):
        quality.per_sample_losses(model, [])


def test_loss_history_averages_last_window():
    history = quality.LossHistory(window=5)
    epochs = [torch.rand(20) * (i + 1) for i in range(7)]
    for e in epochs:
        history.append(e)
    assert len(history) == 5
    expected = torch.stack([quality.normalize_losses(e) for e in epochs[-5:]]).mean(0)
    torch.testing.assert_close(history.mean(), expected)
    q = history.clean_posterior()
    torch.testing.assert_close(q, quality.gmm_clean_posterior(expected, normalize=False))
    with pytest.raises(ValueError, match="samples"):
        history.append(torch.rand(3))
    with pytest.raises(ValueError, match="empty"):
        quality.LossHistory().mean()


def test_loss_history_state_dict_round_trip(tmp_path):
    history = quality.LossHistory(window=3)
    for i in range(4):
        history.append(torch.rand(10) * (i + 1))
    path = tmp_path / "h.pt"
    torch.save(history.state_dict(), path)
    restored = quality.LossHistory(window=3)
    restored.load_state_dict(torch.load(path, weights_only=True))  # checkpoints load this way
    assert len(restored) == 3
    torch.testing.assert_close(restored.mean(), history.mean())
    # checkpoints written before state_dict existed hold a plain list of epochs
    legacy = quality.LossHistory(window=2)
    legacy.load_state_dict(history.state_dict()["epochs"])
    assert len(legacy) == 2  # the newest `window` epochs
    newest = history.state_dict()["epochs"][1:]
    torch.testing.assert_close(legacy.mean(), torch.stack(newest).mean(0))
    with pytest.raises(ValueError, match="different lengths"):
        legacy.load_state_dict([torch.rand(3), torch.rand(4)])
    with pytest.raises(ValueError, match="1-D loss tensors"):
        legacy.load_state_dict({"epochs": [torch.rand(2, 2)]})
