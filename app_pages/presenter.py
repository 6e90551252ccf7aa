"""Presenter view of the lecture: the speaker's notes and a timer, following the Lecture page in another window."""

from balance.app import lecture as ui_lecture

ui_lecture.presenter_page("presenter")
