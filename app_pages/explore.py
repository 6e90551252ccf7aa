"""Explore: set up a homogeneous model, press Start, and watch the layers balance live."""

from balance import ui_explore

ui_explore.explore_page("explore")
