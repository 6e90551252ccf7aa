"""Presenter view of the lecture: the speaker's notes and a timer, following the Lecture page in another window."""

from balance.app import presenter

presenter.presenter_page("presenter")
