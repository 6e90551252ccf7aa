"""The lecture: its steps and demos (``steps``, text in ``balance/assets/lecture.toml``) and the offline handout
(``handout``); its figures are ``balance.views.lecture``."""
