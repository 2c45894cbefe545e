"""Plotly figures from plain data; the studio shows them and reports can reuse them."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TRAIN_COLOUR = "#2563eb"
VAL_COLOUR = "#ea580c"
FROZEN_COLOUR = "#cbd5e1"
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), height=340,
              legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))


def training_curves(history: Sequence[dict[str, Any]]) -> go.Figure:
    """Loss and accuracy (train vs val) per epoch, and the learning rate."""
    frame = pd.DataFrame(list(history), columns=["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"])
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Loss", "Accuracy", "Learning rate (head)"))
    for col, (key, title) in enumerate((("loss", "Loss"), ("acc", "Accuracy")), start=1):
        for split, colour in (("train", TRAIN_COLOUR), ("val", VAL_COLOUR)):
            fig.add_trace(go.Scatter(x=frame.epoch, y=frame[f"{split}_{key}"], mode="lines+markers", name=split,
                                     line=dict(color=colour), legendgroup=split, showlegend=col == 1), row=1, col=col)
    fig.add_trace(go.Scatter(x=frame.epoch, y=frame.lr, mode="lines+markers", name="lr", line=dict(color="#64748b"),
                             showlegend=False), row=1, col=3)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=3)
    # Plotly's autorange spans -1..1 around a lone point (the first epoch) and shows epoch "0" and "-1";
    # a fixed half-epoch margin keeps the axis on real epochs from the first point on.
    last_epoch = int(frame.epoch.max()) if len(frame) else 1
    fig.update_xaxes(title_text="epoch", range=[0.5, last_epoch + 0.5], dtick=1 if last_epoch <= 15 else None)
    fig.update_layout(**LAYOUT)
    # Above the subplot titles, at the right: the default spot sits on top of the "Loss" title.
    fig.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.1, xanchor="right", x=1),
                      margin=dict(LAYOUT["margin"], t=70))
    return fig


def class_counts(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """Images per class, train and val stacked."""
    frame = pd.DataFrame(list(rows), columns=["class", "train", "val"])
    fig = go.Figure([go.Bar(x=frame["class"], y=frame.train, name="train", marker_color=TRAIN_COLOUR),
                     go.Bar(x=frame["class"], y=frame.val, name="val", marker_color=VAL_COLOUR)])
    fig.update_layout(barmode="stack", title="Images per class", yaxis_title="images", **LAYOUT)
    return fig


def parameters_per_stage(summary: pd.DataFrame) -> go.Figure:
    """Parameters per ResNet stage, trainable vs frozen (from inspect.stage_summary)."""
    part = summary[summary.stage != "total"]
    fig = go.Figure([go.Bar(x=part.stage, y=part.trainable, name="trainable", marker_color=TRAIN_COLOUR),
                     go.Bar(x=part.stage, y=part.frozen, name="frozen", marker_color=FROZEN_COLOUR)])
    total = summary[summary.stage == "total"].iloc[0]
    fig.update_layout(barmode="stack", yaxis_title="parameters",
                      title=f"{int(total.trainable):,} of {int(total.params):,} parameters train", **LAYOUT)
    return fig


def confusion_heatmap(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """Rows are the true class, columns the predicted one; cells show counts."""
    fig = go.Figure(go.Heatmap(z=matrix, x=list(classes), y=list(classes), colorscale="Blues", showscale=False,
                               text=matrix, texttemplate="%{text}", hovertemplate="true %{y}<br>predicted %{x}"
                               "<br>%{z} images<extra></extra>"))
    fig.update_layout(title="Confusion matrix", xaxis_title="predicted", yaxis_title="true",
                      yaxis_autorange="reversed", **{**LAYOUT, "height": max(340, 60 + 40 * len(classes))})
    return fig


def top_k_bars(top_k: Sequence[tuple[str, float]], title: str = "") -> go.Figure:
    """Horizontal bars of label probabilities, most likely on top."""
    labels = [label for label, _ in top_k][::-1]
    probs = [prob for _, prob in top_k][::-1]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", marker_color=TRAIN_COLOUR,
                           text=[f"{p:.1%}" for p in probs], textposition="auto"))
    fig.update_layout(title=title, xaxis=dict(range=[0, 1], tickformat=".0%"),
                      **{**LAYOUT, "height": max(220, 60 + 36 * len(labels))})
    return fig
