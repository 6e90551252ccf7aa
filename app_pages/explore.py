"""Explore: set up a homogeneous model, press Start, and watch the layers balance live."""

from balance.app import explore as ui_explore

ui_explore.explore_page("explore")
