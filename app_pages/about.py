"""About: what the dashboard shows and the theorem behind it."""

from balance import ui

ui.about_page()
