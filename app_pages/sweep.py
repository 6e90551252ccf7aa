"""Sweeps: many configurations trained at once; heat maps and the step-size study."""

from balance import ui_sweep

ui_sweep.page("sweep")
