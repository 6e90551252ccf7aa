"""Lecture: a guided, presentable walk through auto-balancing."""

from balance.app import lecture as ui_lecture

ui_lecture.page("lecture")
