"""Diagonal Fisher against closed forms and hand loops; FISH masks against their definition."""

from __future__ import annotations

import itertools
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from provenance.errors import InvalidParameterError
from provenance.fisher import diagonal_fisher, fish_mask

N, D, C, V, T = 12, 4, 3, 5, 4


def batches(x, y, size=5, as_dict=False):
    """``(x, y)`` cut into batches of ``size`` (the last one shorter)."""
    cuts = [(x[a : a + size], y[a : a + size]) for a in range(0, len(y), size)]
    return [{"input": xs, "labels": ys} for xs, ys in cuts] if as_dict else cuts


@pytest.fixture
def linear():
    torch.manual_seed(0)
    model = nn.Linear(D, C)
    x, y = torch.randn(N, D), torch.randint(0, C, (N,))
    return model, x, y


def closed_form(model, x, y):
    """Softmax regression in float64: ∂ log p_y / ∂W = (e_y − p) xᵀ, ∂/∂b = e_y − p."""
    w, b, x = model.weight.detach().double(), model.bias.detach().double(), x.double()
    p = torch.softmax(x @ w.T + b, dim=1)  # (N, C)
    eye = torch.eye(C, dtype=torch.float64)
    r = eye[y] - p
    empirical = {"weight": ((r[:, :, None] * x[:, None, :]) ** 2).mean(0), "bias": (r**2).mean(0)}
    # Σ_y p_y (δ_cy − p_c)², per example and class c
    a = sum(p[:, k, None] * (eye[k][None, :] - p) ** 2 for k in range(C))
    exact = {"weight": (a[:, :, None] * x[:, None, :] ** 2).mean(0), "bias": a.mean(0)}
    return empirical, exact


def assert_close(got, want, rtol=1e-4, atol=1e-7):
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), want[name].double(), rtol=rtol, atol=atol)


class ItemLinear(nn.Linear):
    """A linear layer whose forward calls ``.item()``: vmap cannot run it, so the loop path does."""

    def forward(self, x):
        if float(x.abs().sum()) >= 0:
            return super().forward(x)
        raise AssertionError


def item_copy(model):
    other = ItemLinear(D, C)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("mode", ["empirical", "exact"])
def test_softmax_regression_matches_closed_form(linear, mode):
    model, x, y = linear
    want = closed_form(model, x, y)[mode == "exact"]
    assert_close(diagonal_fisher(model, batches(x, y), mode=mode), want)
    assert_close(diagonal_fisher(model, batches(x, y, as_dict=True), mode=mode, chunk=4), want)
    custom = diagonal_fisher(model, batches(x, y, as_dict=True), mode=mode, forward=lambda m, b: m(b["input"]))
    assert_close(custom, want)
    hf_style = diagonal_fisher(model, batches(x, y), mode=mode, forward=lambda m, b: SimpleNamespace(logits=m(b[0])))
    assert_close(hf_style, want)


@pytest.mark.parametrize("mode", ["empirical", "exact"])
def test_loop_path_and_chunk_sizes_agree_with_vmap(linear, mode, caplog):
    model, x, y = linear
    with caplog.at_level(logging.INFO, logger="provenance.fisher"):
        vmapped = diagonal_fisher(model, batches(x, y), mode=mode, chunk=16)
        assert "one autograd pass per example" not in caplog.text
        looped = diagonal_fisher(item_copy(model), batches(x, y), mode=mode, chunk=3)
        assert "one autograd pass per example" in caplog.text
    assert_close(looped, vmapped, rtol=1e-5)
    for chunk in (1, 2, 7):
        assert_close(diagonal_fisher(model, batches(x, y), mode=mode, chunk=chunk), vmapped, rtol=1e-5)


def test_n_examples_params_and_progress(linear):
    model, x, y = linear

    class Recorder:
        def __init__(self):
            self.calls = []

        def start(self, description, total):
            self.calls.append(("start", description, total))

        def advance(self, n):
            self.calls.append(("advance", n))

    progress = Recorder()
    got = diagonal_fisher(model, batches(x, y), n_examples=7, params=["bias"], chunk=4, progress=progress)
    assert set(got) == {"bias"}
    torch.testing.assert_close(got["bias"].double(), closed_form(model, x[:7], y[:7])[0]["bias"], rtol=1e-4, atol=1e-7)
    assert progress.calls[0] == ("start", "Fisher (empirical)", 7)
    assert sum(c[1] for c in progress.calls[1:]) == 7
    model.weight.requires_grad_(False)  # frozen parameters are left out by default
    assert set(diagonal_fisher(model, batches(x, y))) == {"bias"}


def test_batchnorm_and_dropout_run_in_eval_mode_and_modes_come_back():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, C))
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model[2].eval()  # mixed modes must come back as they were
    x, y = torch.randn(N, D), torch.randint(0, C, (N,))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    got = diagonal_fisher(model, batches(x, y), chunk=1)  # batch norm in train mode rejects batches of one
    assert model.training and model[1].training and not model[2].training
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    model.eval()
    want = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for i in range(N):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0, y[i]]
        for (n, _), g in zip(model.named_parameters(), torch.autograd.grad(logp, list(model.parameters()))):
            want[n] += g.double() ** 2 / N
    model.zero_grad(set_to_none=True)
    assert_close(got, want, rtol=1e-4)


class TinyLM(nn.Module):
    """Embedding + Linear to the vocabulary; position t also sees token t − 1, so the shift matters."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 3)
        self.out = nn.Linear(3, V)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        h = h + torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1) * 0.5
        return self.out(torch.tanh(h))


def item_forward(model, batch):
    """The plain forward with an ``.item()`` in it: vmap cannot run it, so the loop path does."""
    assert float(batch["input_ids"].sum()) >= 0
    return model(batch["input_ids"])


def lm_data(n=6, t=T, seed=2):
    torch.manual_seed(seed)
    model, ids = TinyLM(), torch.randint(0, V, (n, t))
    labels = ids.clone()
    if n > 3:
        labels[0, 2] = labels[3, 1] = -100
    return model, ids, labels


def hand_lm_fisher(model, ids, labels, targets=None):
    """Σ over sequences of the squared gradient of Σ_t log p(target_t), with autograd, one sequence at a time."""
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for i in range(len(ids)):
        logp = torch.log_softmax(model(ids[i : i + 1]), dim=-1)[0, :-1]
        tgt = labels[i, 1:] if targets is None else targets
        ll = sum(logp[t, tgt[t]] for t in range(len(tgt)) if tgt[t] != -100)
        if isinstance(ll, int):
            continue
        for n, g in zip(params, torch.autograd.grad(ll, list(params.values()))):
            acc[n] += g.double() ** 2
    return {n: a / len(ids) for n, a in acc.items()}


def test_causal_lm_empirical_matches_hand_loop_and_ignores_masked_labels():
    model, ids, labels = lm_data()
    data = [{"input_ids": ids[:4], "labels": labels[:4]}, {"input_ids": ids[4:], "labels": labels[4:]}]
    got = diagonal_fisher(model, data, task="causal_lm", chunk=3)
    assert_close(got, hand_lm_fisher(model, ids, labels), rtol=1e-4)
    # a sequence whose labels are all ignored adds nothing but still counts as an example
    ignored = {"input_ids": ids[:1], "labels": torch.full_like(labels[:1], -100)}
    diluted = diagonal_fisher(model, [*data, ignored], task="causal_lm")
    assert_close(diluted, {n: g * len(ids) / (len(ids) + 1) for n, g in got.items()}, rtol=1e-5)
    looped = diagonal_fisher(model, data, task="causal_lm", forward=item_forward)
    assert_close(looped, got, rtol=1e-5)


def test_causal_lm_exact_is_a_sampled_estimate_of_the_sum_over_the_vocabulary():
    model, ids, labels = lm_data(n=2, t=3)
    labels[:] = ids
    data = [{"input_ids": ids, "labels": labels}]
    # the exact Fisher: every target sequence y ∈ V^(T-1), weighted by its probability
    with torch.no_grad():
        p = torch.softmax(model(ids), dim=-1)[:, :-1]
    exact = {n: torch.zeros_like(q, dtype=torch.float64) for n, q in model.named_parameters()}
    for i in range(len(ids)):
        for y in itertools.product(range(V), repeat=2):
            one = hand_lm_fisher(model, ids[i : i + 1], None, targets=torch.tensor(y))
            weight = float(p[i, 0, y[0]] * p[i, 1, y[1]])
            for n in exact:
                exact[n] += weight * one[n] / len(ids)

    torch.manual_seed(3)
    single = diagonal_fisher(model, data, mode="exact", task="causal_lm")
    assert {n: s.shape for n, s in single.items()} == {n: q.shape for n, q in model.named_parameters()}
    assert all(bool((s >= 0).all()) and float(s.sum()) > 0 for s in single.values())
    torch.manual_seed(3)
    assert_close(diagonal_fisher(model, data, mode="exact", task="causal_lm"), single, rtol=0, atol=0)
    torch.manual_seed(3)
    looped = diagonal_fisher(model, data, mode="exact", task="causal_lm", forward=item_forward)
    assert_close(looped, single, rtol=1e-5)

    torch.manual_seed(4)
    many = diagonal_fisher(model, data, mode="exact", task="causal_lm", samples=4000, chunk=2)
    for n in exact:
        error = (many[n].double() - exact[n]).norm() / exact[n].norm()
        assert error < 0.05, (n, float(error))


def test_model_is_left_unchanged(linear):
    model, x, y = linear
    state = {k: v.clone() for k, v in model.state_dict().items()}
    looped = item_copy(model)  # the per-example loop path
    for mode in ("empirical", "exact"):
        diagonal_fisher(model, batches(x, y), mode=mode)
        diagonal_fisher(looped, batches(x, y), mode=mode)
    for m in (model, looped):
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
        assert all(p.grad is None for p in m.parameters())


def test_bad_parameters_are_named(linear):
    model, x, y = linear
    data = batches(x, y)
    cases = [
        (dict(mode="fisherish"), "fisherish"),
        (dict(task="regression"), "regression"),
        (dict(n_examples=0), "n_examples"),
        (dict(chunk=0), "chunk"),
        (dict(params=["nope"]), "nope"),
        (dict(task="causal_lm"), r"rank 3, got shape \(1, 3\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidParameterError, match=message):
            diagonal_fisher(model, data, **kwargs)
    with pytest.raises(InvalidParameterError, match="no examples"):
        diagonal_fisher(model, [])
    with pytest.raises(InvalidParameterError, match=r"labels \[3\] are out of range for logits of 3"):
        diagonal_fisher(model, [(x[:2], torch.tensor([0, 3]))])
    lm, ids, _ = lm_data()
    with pytest.raises(InvalidParameterError, match="rank 2, got shape"):
        diagonal_fisher(lm, [(ids, ids[:, 0])])
    with pytest.raises(InvalidParameterError, match=r"labels \[7\]"):
        diagonal_fisher(lm, [(ids, ids.clamp(max=4).index_fill(1, torch.tensor([2]), 7))], task="causal_lm")


def test_fish_mask_keeps_the_largest():
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 0.0]]), "b": torch.tensor([4.0, 2.0, 6.0])}
    mask = fish_mask(scores, 3 / 7)
    assert mask["a"].tolist() == [[True, False], [False, False]] and mask["b"].tolist() == [True, False, True]
    with_b = fish_mask(scores, 3 / 7, always=["b"])  # k = 3, chosen within "a"
    assert with_b["a"].tolist() == [[True, True], [True, False]] and with_b["b"].all()
    assert all(m.all() for m in fish_mask(scores, 1.0).values())
    assert sum(int(m.sum()) for m in fish_mask(scores, 1e-9).values()) == 1  # at least one


def test_fish_mask_counts_ties_and_prefixes():
    torch.manual_seed(5)
    shapes = {"body.w": (30, 20), "body.b": (20,), "head.w": (3, 20), "head.b": (3,)}
    scores = {n: torch.rand(shape) for n, shape in shapes.items()}
    total = sum(t.numel() for t in scores.values())
    for ratio in (0.01, 0.3, 0.9):  # 0.9 takes the threshold from the small end
        k = round(ratio * total)
        mask = fish_mask(scores, ratio, always=["head."])
        assert mask["head.w"].all() and mask["head.b"].all()
        body = [(scores[n], mask[n]) for n in ("body.w", "body.b")]
        assert sum(int(m.sum()) for _, m in body) == k
        kept = torch.cat([s[m] for s, m in body])
        dropped = torch.cat([s[~m] for s, m in body])
        assert kept.min() >= dropped.max()
        assert all(mask[n].dtype == torch.bool and mask[n].shape == scores[n].shape for n in scores)
    ties = fish_mask({"x": torch.zeros(2, 3), "y": torch.zeros(4)}, 0.7)  # k = 7: the first seven, in order
    assert ties["x"].all() and ties["y"].tolist() == [True, False, False, False]
    ties = fish_mask({"x": torch.zeros(2, 3), "y": torch.zeros(4)}, 0.2)  # k = 2
    assert ties["x"].tolist() == [[True, True, False], [False, False, False]] and not ties["y"].any()


def test_fish_mask_rejects_bad_input():
    scores = {"head.w": torch.rand(3), "w": torch.rand(4)}
    for ratio in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(InvalidParameterError, match="keep_ratio"):
            fish_mask(scores, ratio)
    for name in ("head", "nope", "w."):
        with pytest.raises(InvalidParameterError, match=name):
            fish_mask(scores, 0.5, always=[name])
    with pytest.raises(InvalidParameterError, match="NaN"):
        fish_mask({"w": torch.tensor([1.0, float("nan")])}, 0.5)
