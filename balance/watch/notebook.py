"""``w.show()``: a watched run's charts in Jupyter, updated in place while the training loop runs.

The charts are the dashboard's own (``balance.views.figures``: loss, each law's drift measured against its exact
prediction, squared norms, gradient norms, the matrix laws), each in a plotly ``FigureWidget`` (an anywidget): the
watch calls ``update`` at every flush (about once a second), which rebuilds the figures from ``w.frame()`` and
copies their traces into the widgets inside one ``batch_update`` (a chart whose traces changed, as the first rows
replace "no rows yet", gets a new widget in the same place), so the notebook redraws without a new output and a
zoom survives. Outgoing widget messages are sent while the cell still runs, so the charts move during the loop.
Law and layer names replace the charts' "layers j-(j+1)" labels (a watched run's pair j is law j).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from balance.engine.laws import of_metric
from balance.views import figures as plots
from balance.views import style

if TYPE_CHECKING:
    from balance.watch.watcher import Watch

CHARTS = ("loss", "gaps", "norms", "grad_norms", "matrix")  # "gaps": a watched run has no layer ratios
MAX_POINTS = 500  # buckets per chart: decimation keeps each bucket's extremes


class LiveView:
    """The live charts of one watch: ``figures()`` as plain plotly figures, ``display()`` the widgets, ``update()``."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.widgets: dict[str, go.FigureWidget] = {}
        self.header: Any = None
        self.box: Any = None

    def law_names(self) -> dict[int, str]:
        tracked = self.watch.predictor.tracked if self.watch.predictor is not None else []
        return {j: f"{j}: {t.law.name}" for j, t in enumerate(tracked, 1)}

    def no_law(self) -> str:
        """Why nothing is predicted, where no law of this run is (the optimiser's reason), else ''."""
        tracked = self.watch.predictor.tracked if self.watch.predictor is not None else []
        if tracked and all(t.rule is None for t in tracked):
            return tracked[0].reason
        return ""

    def figures(self) -> dict[str, go.Figure]:
        """The charts of the rows so far, by name (the matrix chart only where there are matrix laws)."""
        df = self.watch.frame()
        names = self.watch.layers or None
        out: dict[str, go.Figure] = {}
        for name in CHARTS:
            if name == "matrix" and not of_metric(df.columns, "matrix_drift"):
                continue
            fn, _ = plots.FIGURES[name]
            extra = {"no_law": self.no_law()} if name == "gaps" else {}
            layer_names = names if name in ("norms", "grad_norms") else None
            fig = fn(df, layer_names=layer_names, max_points=MAX_POINTS, **extra)
            fig = self._relabel(fig) if name in ("gaps", "matrix") else fig
            out[name] = style.fit_legend(fig, style.WIDE)  # room for the legend's rows under a notebook-wide chart
        return out

    def _relabel(self, fig: go.Figure) -> go.Figure:
        laws = self.law_names()
        for trace in fig.data:
            found = re.match(r"layers (\d+)-(\d+)(.*)", trace.name or "")
            if found and int(found.group(1)) in laws:
                label = laws[int(found.group(1))] + found.group(3)
                trace.name = html.escape(label, quote=False)
                if trace.legendgroup:
                    trace.legendgroup = trace.name
        return fig

    def display(self) -> Any:
        """A vertical box of one FigureWidget per chart under a line naming the laws; shown when in IPython."""
        import ipywidgets

        self.header = ipywidgets.HTML(self._header())
        for name, fig in self.figures().items():
            self.widgets[name] = go.FigureWidget(fig)
        self.box = ipywidgets.VBox([self.header, *self.widgets.values()])
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - ipywidgets depends on IPython
            return self.box
        if get_ipython() is not None:
            display(self.box)
        return self.box

    def _header(self) -> str:
        w = self.watch
        parts = [f"<b>{html.escape(w.name or 'watched run')}</b> · step {w.step:,}"]
        if w.run_id:
            parts.append(f"run {html.escape(w.run_id)} (Explore: ?run={html.escape(w.run_id)})")
        laws = "; ".join(html.escape(v) for v in self.law_names().values()) or "no law found"
        return " · ".join(parts) + f"<br><small>laws: {laws}</small>"

    def update(self) -> None:
        """Copy the current figures into the widgets: the same traces with more points in place (a zoom survives);
        where the traces themselves changed (the first rows replace "no rows yet"), a new widget in the same slot."""
        if not self.widgets:
            return
        self.header.value = self._header()
        changed = False
        for name, fig in self.figures().items():
            widget = self.widgets.get(name)
            if widget is not None and len(widget.data) == len(fig.data) and len(fig.data):
                with widget.batch_update():
                    for old, new in zip(widget.data, fig.data):
                        old.update(new.to_plotly_json())  # x, y, and a mode of lines once there are two points
                    widget.layout.annotations = fig.layout.annotations
                    widget.layout.height = fig.layout.height
                    for axis in ("xaxis", "yaxis"):  # whole-step ticks for a short run give way to plotly's own
                        widget.layout[axis].tickmode = fig.layout[axis].tickmode
                        widget.layout[axis].tickvals = fig.layout[axis].tickvals
            else:
                self.widgets[name] = go.FigureWidget(fig)
                changed = True
        if changed:
            self.box.children = (self.header, *self.widgets.values())
