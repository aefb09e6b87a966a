import pytest

from ftcompare.evaluate.forgetting import forgetting_matrix


def _row(a, b, c, loss=None):
    return {"pass@1": {"a": a, "b": b, "c": c}, "heldout_loss": loss}


def test_forgetting_matrix_on_a_constructed_sequence():
    rows = [
        _row(0.0, 0.0, 0.0, 2.0),  # base
        _row(0.8, 0.1, 0.0, 2.5),  # after a
        _row(0.6, 0.9, 0.0, 2.7),  # after b
        _row(0.2, 0.5, 0.7, 3.0),
    ]  # after c
    result = forgetting_matrix(["a", "b", "c"], rows)
    assert result["rows"] == ["base", "after a", "after b", "after c"]
    assert result["pass@1"][2] == [0.6, 0.9, 0.0]
    # a: best before the end is 0.8 (after a), final 0.2; b: best 0.9 (after b), final 0.5
    assert result["forgetting"] == pytest.approx({"a": 0.6, "b": 0.4})
    assert result["mean_forgetting"] == pytest.approx(0.5)
    # backward transfer: final minus right after learning
    assert result["backward_transfer"] == pytest.approx({"a": -0.6, "b": -0.4})
    assert result["heldout_loss"] == [2.0, 2.5, 2.7, 3.0]


def test_no_interference_gives_zero_forgetting_and_improvement_gives_positive_transfer():
    rows = [_row(0, 0, 0), _row(0.5, 0, 0), _row(0.5, 0.5, 0), _row(0.7, 0.5, 0.5)]
    result = forgetting_matrix(["a", "b", "c"], rows)
    assert result["forgetting"] == pytest.approx({"a": -0.2, "b": 0.0})
    assert result["mean_backward_transfer"] == pytest.approx(0.1)


def test_forgetting_matrix_needs_the_base_and_one_row_per_stage():
    with pytest.raises(ValueError, match="4 rows"):
        forgetting_matrix(["a", "b", "c"], [_row(0, 0, 0)] * 3)
