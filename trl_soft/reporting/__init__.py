"""What a run reports, one module per concern (import from the module):

- `table.py`: the round table, every column in Markdown, the printed one within 100 columns, a round's result line;
- `verdict.py`: the behaviour verdict (final model against the starting model), the stop line;
- `summary.py`: `summary.md` and what the end of a run prints;
- `model_card.py`: the model card made to load, and its SOFT section;
- `plots.py`: which per-round plots, and `plot_rounds` (matplotlib, the `plot` extra, in `drawing.py`, on first use);
- `html.py`: `report.html`, one self-contained page, and `write_reports` (everything written at the end of a run).
"""
