"""Sweeps: many configurations trained at once; heat maps and the step-size study."""

from balance.app import sweeps as ui_sweep

ui_sweep.page("sweep")
