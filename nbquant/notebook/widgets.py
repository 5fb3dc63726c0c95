"""The fallback-loop widget: pick an accuracy-loss target, a budget kind and a strategy, press
run, see the result table and plot; the logic is plain Python, testable without a browser."""

from __future__ import annotations

import base64
import html

import pandas as pd

from ..errors import NbquantError
from ..search.auto_settings import AutoSettings
from ..search.retarget import FallbackExplorer, SearchAnswer
from ..search.strategies import STRATEGIES
from .plots import figure_png, plot_search_history


class FallbackWidget:
    """Controls (``target``, ``mode``, ``strategy``, ``run_button``) over a FallbackExplorer.

    Each run re-searches through the explorer's evaluation cache; ``answer_`` is the last
    SearchAnswer, ``answers_`` all of them; ``table`` and ``plot`` show the last one.
    """

    def __init__(self, explorer: FallbackExplorer, max_drop: float = 0.01, relative: bool = False,
                 strategy: str = AutoSettings.strategy, max_target: float = 0.05):
        w = _ipywidgets()
        self.explorer = explorer
        self.target = w.FloatSlider(value=max_drop, min=0.0, max=max_target, step=max_target / 100,
                                    readout_format=".4f", description="max loss", continuous_update=False)
        self.mode = w.ToggleButtons(options=["absolute", "relative"], value="relative" if relative else "absolute",
                                    description="budget")
        self.strategy = w.Dropdown(options=list(STRATEGIES), value=strategy, description="strategy")
        self.run_button = w.Button(description="Run search", button_style="primary", icon="play")
        self.status = w.HTML()
        self.table = w.HTML()
        # an <img> with a data URI in an HTML widget: an Image widget was seen keeping its old picture in
        # JupyterLab after the value changed (screenshot after a re-target)
        self.plot = w.HTML()
        self.answers_: list[SearchAnswer] = []
        self.run_button.on_click(lambda _: self.run())
        for control in (self.target, self.mode, self.strategy, self.run_button, self.status, self.table):
            control.add_class("nbquant-fallback")
        self.box = w.VBox([w.HBox([self.target, self.mode]), w.HBox([self.strategy, self.run_button]),
                           self.status, w.HBox([self.plot, self.table], layout=w.Layout(align_items="flex-start"))])

    def __repr__(self) -> str:
        return (f"FallbackWidget(target={self.target.value}, mode={self.mode.value!r}, "
                f"strategy={self.strategy.value!r}, runs={len(self.answers_)})")

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    @property
    def answer_(self) -> SearchAnswer:
        if not self.answers_:
            raise AttributeError("no search has run yet; press run (or call run())")
        return self.answers_[-1]

    def run(self) -> SearchAnswer | None:
        """Search for the current target, mode and strategy, then update status, table and plot."""
        self.run_button.disabled = True
        self.status.value = "<i>searching&hellip;</i>"
        try:
            answer = self.explorer.search(self.target.value, self.mode.value == "relative", self.strategy.value)
        except NbquantError as exc:
            self.status.value = f"<b style='color:#d62728'>error:</b> {html.escape(str(exc))}"
            return None
        finally:
            self.run_button.disabled = False
        self.answers_.append(answer)
        fig = plot_search_history(self.explorer.points(), self.explorer.original_metric, answer.target,
                                  answer.relative, chosen=answer.float_layers if answer.ok else None)
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.plot.value = f'<img src="data:image/png;base64,{png}" style="width:560px" alt="search history">'
        self.table.value = answer_html(answer)
        self.status.value = status_text(answer)
        return answer


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise ImportError("nbquant.widgets needs ipywidgets: pip install 'nbquant[notebooks]'") from None
    return ipywidgets


def status_text(answer: SearchAnswer) -> str:
    """One line: met or not (and the predicted latency, where the explorer has costs), and whether the answer
    came from the cache."""
    if answer.new_evaluations == 0:
        cost = f"answered from the evaluation cache in {answer.seconds * 1000:.0f} ms (no new evaluation)"
    else:
        cost = f"{answer.new_evaluations} new evaluation(s) in {answer.seconds:.1f} s"
    verdict = (f"target met with {answer.n_int8} of {answer.n_layers} layers in int8" if answer.ok
               else "target not met: no configuration found")
    latency = f", predicted {answer.predicted_ms:.2f} ms a run on this CPU" if answer.predicted_ms is not None else ""
    return f"<b>{verdict}{latency}</b>; {cost}"


def answer_html(answer: SearchAnswer) -> str:
    """The answer's summary row and the layers that fell back to float, as HTML tables."""
    summary = answer.summary().T.rename(columns={0: "value"})
    fallen = pd.DataFrame({"fell back to float": answer.float_layers or ["(none: all layers in int8)"]})
    return (summary.to_html(classes="nbquant-summary", float_format=lambda v: f"{v:.4f}")
            + "<div style='max-height:300px;overflow-y:auto'>"
            + fallen.to_html(classes="nbquant-fallen", index=False) + "</div>")
