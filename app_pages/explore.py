"""Explore: set up a homogeneous model, press Start, and watch the layers balance live."""

from balance import ui

ui.explore_page("explore")
