import math

import numpy as np
import torch

from shazam.losses import bin_index, nll_survival, survival_bins, survival_from_logits


def test_nll_matches_hand_computation():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
    h = 1 / (1 + np.exp(-logits.numpy()))
    s = np.cumprod(1 - h, axis=1)
    # case 0: event in bin 1 -> -log S_0 - log h_1 ; case 1: censored in bin 2 -> -log S_2
    unc0 = -(math.log(s[0, 0]) + math.log(h[0, 1]))
    cen1 = -math.log(s[1, 2])
    alpha = 0.4
    expected = ((1 - alpha) * unc0 + alpha * unc0 + (1 - alpha) * cen1 + alpha * 0.0) / 2
    got = nll_survival(logits, torch.tensor([1, 2]), torch.tensor([True, False]), alpha)
    assert abs(float(got) - expected) < 1e-5
    # event in the first bin: S_{-1} = 1
    got0 = nll_survival(logits[:1], torch.tensor([0]), torch.tensor([True]), 0.0)
    assert abs(float(got0) + math.log(h[0, 0])) < 1e-5


def test_bins_from_training_uncensored_times_only():
    t = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])
    e = np.array([True, True, True, True, False, False])
    edges = survival_bins(t, e, 2)
    assert edges[0] == 0 and np.isinf(edges[-1])
    assert edges[1] == np.median([1, 2, 3, 4])  # censored 5 and 100 ignored
    assert bin_index([0.5, 2.5, 2.6, 1000.0], edges).tolist() == [0, 1, 1, 1]


def test_risk_is_minus_sum_of_survival():
    logits = torch.tensor([[-3.0, -3.0], [3.0, 3.0]])
    h, s, risk = survival_from_logits(logits)
    torch.testing.assert_close(risk, -s.sum(1))
    assert risk[1] > risk[0]  # high hazards -> high risk
