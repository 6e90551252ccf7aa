"""Lecture: a guided, presentable walk through auto-balancing."""

from balance import ui_lecture

ui_lecture.page("lecture")
