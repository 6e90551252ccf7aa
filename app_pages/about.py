"""About: what the dashboard shows and the theorem behind it."""

from balance.app import common as ui

ui.about_page()
