"""The style game: equilibria worked out by hand, exploitability, the metrics' conventions."""

import numpy as np
import pytest

from unialign.tasks.game import (
    DEFAULT_MATRIX,
    StyleGame,
    cyclic_matrix,
    style_distribution,
    total_variation,
)


def test_rock_paper_scissors_equilibrium_is_uniform():
    """M = ½ + A with A the RPS payoffs (±½: sure wins): by symmetry under the cyclic
    relabelling the unique equilibrium is (⅓, ⅓, ⅓)."""
    game = StyleGame(cyclic_matrix([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(game.equilibrium(), [1 / 3] * 3, atol=1e-12)
    assert abs(game.exploitability(game.equilibrium())) < 1e-12


def test_non_symmetric_cycle_equilibrium_by_hand():
    """M01 = 0.9, M12 = 0.7, M20 = 0.8, so A01 = a = 0.4, A12 = b = 0.2, A20 = c = 0.3.

    On a full support every style must be indifferent, (Aπ)_s = 0:
      s = 0:  a π1 − c π2 = 0  →  π1 = (c/a) π2
      s = 1: −a π0 + b π2 = 0  →  π0 = (b/a) π2
    so π ∝ (b, c, a) = (0.2, 0.3, 0.4), i.e. π* = (2/9, 3/9, 4/9). Check s = 2:
    c π0 − b π1 = 0.3·2/9 − 0.2·3/9 = 0. This is the default matrix.
    """
    m = [[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]]
    game = StyleGame(m)
    np.testing.assert_allclose(game.equilibrium(), [2 / 9, 3 / 9, 4 / 9], atol=1e-12)
    np.testing.assert_allclose(StyleGame(DEFAULT_MATRIX).matrix, game.matrix, atol=1e-15)
    np.testing.assert_allclose(game.style_win_probabilities(game.equilibrium()), 0.5, atol=1e-12)


def test_dominated_style_gets_zero_mass():
    """RPS plus a fourth style D that every other style beats with probability 0.6: the
    uniform mix of R, P, S beats D (+0.1) and ties R, P, S, so D is strictly dominated and the
    equilibrium is (⅓, ⅓, ⅓, 0)."""
    m = np.full((4, 4), 0.5)
    m[:3, :3] = cyclic_matrix([1.0, 1.0, 1.0])
    m[:3, 3], m[3, :3] = 0.6, 0.4
    game = StyleGame(m, ["r", "p", "s", "d"])
    np.testing.assert_allclose(game.equilibrium(), [1 / 3, 1 / 3, 1 / 3, 0.0], atol=1e-12)


def test_condorcet_winner_is_a_pure_equilibrium():
    """Style 1 beats both others (0.7, 0.6): π* = (0, 1, 0), even though 0 and 2 cycle."""
    m = [[0.5, 0.3, 0.9], [0.7, 0.5, 0.6], [0.1, 0.4, 0.5]]
    game = StyleGame(m)
    np.testing.assert_allclose(game.equilibrium(), [0, 1, 0], atol=1e-12)
    assert game.exploitability([0, 1, 0]) == 0.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_equilibrium_is_unexploitable_and_pure_styles_are_not(seed, n):
    rng = np.random.default_rng(seed)
    upper = rng.uniform(0.05, 0.95, size=(n, n))
    m = np.triu(upper, 1) + np.tril(1 - upper.T, -1) + 0.5 * np.eye(n)
    game = StyleGame(m)
    pi = game.equilibrium()
    assert pi.min() >= 0 and abs(pi.sum() - 1) < 1e-12
    assert abs(game.exploitability(pi)) <= 1e-9
    # a pure style is beaten by some style unless it is a Condorcet winner (column ≤ ½)
    for s in range(n):
        pure = np.eye(n)[s]
        if (m[:, s] <= 0.5).all():
            assert game.exploitability(pure) == 0.0
        else:
            assert game.exploitability(pure) > 0


def test_default_matrix_pure_styles_and_reference_mix_are_exploitable():
    """Against pure 'list' (style 0) the best response 'question' wins 0.8: exploitability 0.3;
    against the corpus mix (0.45, 0.35, 0.20) 'list' wins 0.9·0.35 + 0.5·0.45 + 0.2·0.2 = 0.58."""
    game = StyleGame(DEFAULT_MATRIX, ["list", "story", "question"])
    assert game.exploitability([1, 0, 0]) == pytest.approx(0.3, abs=1e-12)
    assert game.exploitability([0.45, 0.35, 0.20]) == pytest.approx(0.08, abs=1e-12)


def test_invalid_share_always_loses():
    """An invalid share enters the metrics as an extra last entry that every style beats."""
    game = StyleGame(cyclic_matrix([1.0, 1.0, 1.0]))
    eq = game.equilibrium()
    half_invalid = np.r_[eq / 2, 0.5]
    # every style wins ½ against the valid half and surely against the invalid half
    np.testing.assert_allclose(game.style_win_probabilities(half_invalid), 0.75)
    assert game.exploitability(half_invalid) == pytest.approx(0.25)
    assert game.distance(half_invalid) == pytest.approx(0.5)
    assert game.win_rate(eq, half_invalid) == pytest.approx(0.75)
    assert game.win_rate(half_invalid, eq) == pytest.approx(0.25)
    assert game.index("invalid") == 3


def test_stored_matrix_is_exactly_complementary():
    m = [[0.5, 0.1 + 0.2, 0.7], [1 - (0.1 + 0.2), 0.5, 0.3], [0.3, 0.7, 0.5]]
    game = StyleGame(m)
    assert ((game.matrix + game.matrix.T) == 1.0).all()


@pytest.mark.parametrize(
    "matrix",
    [
        [[0.5, 0.6], [0.6, 0.5]],  # M + Mᵀ ≠ 1
        [[0.5, 1.2], [-0.2, 0.5]],  # not probabilities
        [[0.5, 0.5, 0.5]],  # not square
        [[0.5]],  # one style
    ],
)
def test_bad_matrices_are_refused(matrix):
    with pytest.raises(ValueError):
        StyleGame(matrix)


def test_style_distribution_and_total_variation():
    completions = [
        "items about otter : calm .",
        "items about otter : calm , wet .",
        "is the otter calm ?",
        "wow , the otter ! calm !",  # a style outside the game's styles: invalid
        "items about otter calm",
    ]
    dist = style_distribution(completions, ["list", "story", "question"])
    np.testing.assert_allclose(dist, [0.4, 0.0, 0.2, 0.4])
    assert total_variation(dist, [0.4, 0.0, 0.6]) == pytest.approx(0.4)
