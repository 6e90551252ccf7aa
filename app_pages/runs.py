"""Runs: the stored runs as a table; overlay, download, open or delete them."""

from balance import ui

ui.runs_page("runs")
