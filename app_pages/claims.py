"""Claims: each reviewer's doubt as a live experiment with a verdict computed from runs."""

from balance.app import claims as ui_claims

ui_claims.page("claims")
