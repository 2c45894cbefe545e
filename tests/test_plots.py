"""The studio's figures: axes that make sense from the first epoch on."""

from tuner.ui.plots import training_curves


def _row(epoch: int, lr: float) -> dict:
    return dict(epoch=epoch, train_loss=1.0 / epoch, train_acc=0.5, val_loss=1.2 / epoch, val_acc=0.4, lr=lr)


def test_one_epoch_keeps_the_epoch_axis_on_real_epochs():
    fig = training_curves([_row(1, 0.01)])
    for axis in ("xaxis", "xaxis2", "xaxis3"):
        assert list(fig.layout[axis].range) == [0.5, 1.5]
    # Loss and learning rate start at zero rather than a range centred on a lone point (which shows negatives).
    assert fig.layout.yaxis.rangemode == "tozero" and fig.layout.yaxis3.rangemode == "tozero"
    assert list(fig.layout.yaxis2.range) == [0, 1.02]


def test_the_epoch_axis_grows_with_the_run_and_thins_its_ticks_for_long_runs():
    fig = training_curves([_row(epoch, 0.01) for epoch in range(1, 21)])
    assert list(fig.layout.xaxis.range) == [0.5, 20.5] and fig.layout.xaxis.dtick is None
    assert training_curves([_row(epoch, 0.01) for epoch in range(1, 4)]).layout.xaxis.dtick == 1


def test_no_epoch_yet_draws_empty_charts():
    fig = training_curves([])
    assert all(len(trace.x) == 0 for trace in fig.data)
    assert list(fig.layout.xaxis.range) == [0.5, 1.5]
