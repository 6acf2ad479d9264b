"""`bench turns` reads a reply that starts before the caller's last word as talking over them,
not as a fast answer."""

from payphone.bench.turns import TurnFigure, _summary


def _figure(v2v: float | None, paused: bool = False) -> TurnFigure:
    return TurnFigure(v2v, paused, cut_off=v2v is not None and v2v < 0, split=False, filler=False)


def test_a_reply_over_the_caller_is_counted_as_cut_off_and_is_no_latency() -> None:
    figures = [_figure(-700.0), _figure(500.0), _figure(600.0), _figure(-50.0, paused=True)]
    figures.append(_figure(None))  # never answered
    summary = _summary("turn model", figures)
    assert summary["cut_off"] == 2
    assert summary["paused_cut_off"] == 1
    assert summary["answered"] == 4
    assert summary["p50_ms"] == 550.0  # over the two replies after the caller's last word
