"""Runs: the stored runs as a table; overlay, download, open or delete them."""

from balance.app import runs as ui_runs

ui_runs.runs_page("runs")
