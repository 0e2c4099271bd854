"""Helpers shared by the corpus, embedding, search and side-by-side tests."""


def run_cli(argv) -> int:
    """compute.cli.main in this process; the exit code, as `python -m compute` would return it."""
    from compute.cli import main
    return main(argv)


def valid_figure(fig):
    """make_figure skips plotly's validation: re-validate every property, and check that the figure
    serialises to strict JSON."""
    import plotly.graph_objects as go
    import plotly.io as pio

    go.Figure(fig.to_plotly_json())
    pio.to_json(fig, validate=True)
    return fig
