"""Helpers shared by the corpus, embedding, search and side-by-side tests."""


def run_cli(argv) -> int:
    """compute.cli.main with the embed, diff and search subcommands registered when build_parser does not
    have them yet (the lead wires them in); the exit code, as `python -m compute` would return it."""
    import compute.cli as cli
    from compute import cli_diff, cli_embed, cli_search

    orig = cli.build_parser

    def build():
        p = orig()
        sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
        for name, mod in (("embed", cli_embed), ("diff", cli_diff), ("search", cli_search)):
            if name not in sub.choices:
                mod.register(sub)
        return p

    cli.build_parser = build
    try:
        return cli.main(argv)
    finally:
        cli.build_parser = orig


def valid_figure(fig):
    """make_figure skips plotly's validation: re-validate every property, and check that the figure
    serialises to strict JSON."""
    import plotly.graph_objects as go
    import plotly.io as pio

    go.Figure(fig.to_plotly_json())
    pio.to_json(fig, validate=True)
    return fig
