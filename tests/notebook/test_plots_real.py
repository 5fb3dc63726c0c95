"""Plot functions and the analysis tables they draw on the real calibration."""

import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from nbquant.errors import ConfigError
from nbquant.notebook import plots
from nbquant.notebook import tables as analysis

pytestmark = pytest.mark.real


def test_real_calibration_figures_and_tables(real_calibration, tmp_path):
    names = list(real_calibration.layers["layer"])
    few = [names[0], names[3], names[-1]]
    clips = analysis.clip_ranges(real_calibration, few)
    assert len(clips) == 12 and clips.groupby("layer")["chosen"].sum().tolist() == [1, 1, 1]
    assert (clips["clip_max"] >= clips["clip_min"]).all() and clips["sqnr_db"].gt(10).all()
    minmax = clips[clips["method"] == "minmax"]
    assert minmax["clipped_fraction"].max() < 1e-3
    with pytest.raises(ConfigError, match="not a layer of"):
        analysis.clip_ranges(real_calibration, ["nope"])
    for fig in (plots.plot_clip_methods(real_calibration, few), plots.plot_weight_scales(real_calibration)):
        fig.savefig(tmp_path / "f.png")
    diag = analysis.layer_diagnostics(real_calibration)
    assert len(diag) == 50 and diag["weight_scale_spread"].ge(1).all()
    fake = pd.DataFrame({"rank": range(1, 51), "layer": names, "op": real_calibration.layers["op"], "score": 0.0})
    why = analysis.explain_sensitive(fake, real_calibration, top=5)
    assert len(why) == 5 and why["why"].str.len().gt(0).all()
