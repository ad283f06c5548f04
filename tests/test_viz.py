"""Static pictures of plotly figures: one output with the interactive figure AND a PNG, for readers
without a kernel (GitHub, nbviewer, `jupyter nbconvert --to html`, a printout)."""
import base64
import shutil

import numpy as np
import plotly.graph_objects as go
import pytest

from xai_helpers import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bar():
    fig = go.Figure(go.Bar(x=["gradcam", "random"], y=[0.9, 0.2],
                           error_y=dict(type="data", array=[0.05, 0.1], arrayminus=[0.1, 0.05])))
    fig.add_hline(y=0.1, line_dash="dot")
    fig.update_layout(title="pointing game", yaxis_range=[0, 1], width=400, height=300)
    return fig


def _kaleido_works() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))


@pytest.fixture
def no_kaleido(monkeypatch):
    monkeypatch.setitem(viz._KALEIDO, "ok", False)


def test_bundle_has_the_interactive_figure_and_a_png_by_matplotlib(no_kaleido):
    bundle = viz.mimebundle(_bar())
    assert set(bundle) == {viz.PLOTLY_MIME, "image/png", "text/plain"}
    assert bundle[viz.PLOTLY_MIME]["data"][0]["type"] == "bar"
    assert base64.b64decode(bundle["image/png"]).startswith(PNG_MAGIC)
    assert "pointing game" in bundle["text/plain"]


@pytest.mark.skipif(not _kaleido_works(), reason="needs kaleido>=1 and a system Chromium (apt-get install chromium)")
def test_plotly_exporter_draws_heatmaps_too(monkeypatch):
    monkeypatch.setitem(viz._KALEIDO, "ok", None)
    fig = go.Figure(go.Heatmap(z=np.arange(12.0).reshape(3, 4)))
    fig.update_layout(width=300, height=200)
    png = viz.figure_png(fig)
    assert png is not None and png.startswith(PNG_MAGIC)
    assert viz._KALEIDO["ok"] is True


def test_without_any_renderer_the_interactive_figure_alone(no_kaleido, monkeypatch):
    heat = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]]))      # the generic fallback draws lines and bars only
    assert viz.matplotlib_figure(heat) is None
    bundle = viz.mimebundle(heat)
    assert set(bundle) == {viz.PLOTLY_MIME, "text/plain"}

    def broken():
        raise RuntimeError("no matplotlib backend")
    assert viz.figure_png(_bar(), fallback=broken) is None   # a failing fallback is no error either
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    viz.show(heat)
    assert shown and shown[0][1] is True and viz.PLOTLY_MIME in shown[0][0]


def test_colour_names_follow_the_hue():
    assert viz.color_name(viz.MASK_COLOR) == viz.MASK_COLOR_NAME == "green"
    assert viz.color_name(viz.BOX_COLOR) == "yellow"
    assert viz.color_name((1.0, 0.2, 1.0)) == "magenta"
    assert viz.color_name((0.1, 0.2, 0.9)) == "blue"
    assert viz.plotly_color((0.0, 1.0, 0.2)) == "rgb(0,255,51)"


@pytest.mark.slow
def test_html_export_of_an_executed_notebook_shows_a_picture(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import plotly.graph_objects as go\nfrom xai_helpers import viz"),
                nbformat.v4.new_code_cell("viz.show(go.Figure(go.Bar(x=['a', 'b'], y=[1, 2]),\n"
                                          "                   layout=dict(title='two bars', width=300, height=250)))")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    out = nb.cells[1].outputs
    assert len(out) == 1 and {viz.PLOTLY_MIME, "image/png"} <= set(out[0]["data"])
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert "<img" in html and "data:image/png;base64," in html


def test_exporter_log_messages_stay_out_of_the_cell_output(monkeypatch, capsys, caplog):
    """choreographer logs what it recovers from by itself (a garbled message on Chromium's pipe, with a
    traceback); unconfigured logging prints that on stderr, i.e. into the cell, beside a figure that
    came out fine (seen in CI: the browser test found 'Traceback' in notebook 08's output)."""
    import logging

    monkeypatch.setitem(viz._KALEIDO, "ok", None)
    fig = _bar()

    def to_image(**kwargs):
        try:
            raise ValueError("Expecting property name enclosed in double quotes")
        except ValueError:
            logging.getLogger("choreographer.channels.pipe").exception("JSONError decoding message. Ignoring")
        return PNG_MAGIC + b"rest"

    monkeypatch.setattr(fig, "to_image", to_image, raising=False)
    assert viz.figure_png(fig) == PNG_MAGIC + b"rest"
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Ignoring" not in err
    assert not caplog.records        # nothing reached the root logger (whose last resort is the cell's stderr)
    assert viz._KALEIDO["log"] == ["ERROR choreographer.channels.pipe: JSONError decoding message. Ignoring"]
    # outside an export the loggers are the user's again: nothing of ours is left on them
    for name in viz._EXPORTER_LOGGERS:
        assert logging.getLogger(name).propagate and not logging.getLogger(name).handlers
    logging.getLogger("choreographer").error("after the export")
    assert [r.getMessage() for r in caplog.records] == ["after the export"]
